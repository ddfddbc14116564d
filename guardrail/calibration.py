"""Calibrators: from the signal vector of one response to the probability that it is right.

The model's own abstention is treated as what it is, an outcome rather than an answer: a
calibrator has two *branches*, one fitted on the responses where the model answered (the
label: the answer is correct) and one on those where it abstained (the label: the question
really was unanswerable). The answered branch is what the answer threshold reads; the
abstained branch says how far an "I cannot answer" can be trusted.

Two calibrators, with scikit-learn's conventions (``fit`` returns ``self``; using an unfitted
one raises ``NotFittedError``):

- ``LogisticCalibrator``: Platt-style logistic regression over standardised signals. A missing
  value is filled with the training mean *and* flagged by an indicator column (for every
  signal that was missing in training), because a missing signal often means something (no
  passage sentence holds the answer, say). The L2 strength ``C`` is chosen per branch by
  5-fold cross-validated log loss over ``C_GRID`` (``C="auto"``, the default) or fixed;
- ``IsotonicCalibrator``: the same logistic model for the ranking, then an isotonic map from
  its out-of-fold linear score to the probability (Zadrozny and Elkan, 2002).

Fitting needs scikit-learn (the ``eval`` extra); applying a fitted calibrator needs only
numpy: the artifact is a small versioned JSON file (no pickle), loaded with ``load_calibrator``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.errors import ConfigError
from guardrail.signals import REGISTRY, Group, Needs

ARTIFACT_FORMAT = "guardrail-calibrator"
ARTIFACT_VERSION = 1
ABSTAINED = "abstained"
"""The key of the observation that selects the branch: 1.0 when the model abstained."""

CG_FEATURES: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.needs is Needs.PARAMETRIC)
"""The signals that need the no-passage pass (Confidence Gain and parametric agreement)."""

DEFAULT_FEATURES: tuple[str, ...] = tuple(
    s.name for s in sorted(REGISTRY, key=lambda s: list(Group).index(s.group)) if s.feature
)
"""The signals the calibrator reads (``Signal.feature``), group by group in ``Group``'s
order and in registry order within a group. A fitted artifact stores its own features; a
refit reproduces one only in the same column order."""
C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
"""The regularisation strengths ``C="auto"`` chooses from (smaller is stronger)."""
MIN_BRANCH_SIZE = 12
"""A branch with fewer examples, or with one class only, predicts its smoothed base rate."""


class NotFittedError(RuntimeError):
    """A calibrator was used before ``fit``."""


Observation = Mapping[str, float | None]


@dataclass
class _Branch:
    """One branch: a standardised logistic model, or a constant base rate."""

    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    constant: float | None = None
    iso_x: list[float] = field(default_factory=list)
    iso_y: list[float] = field(default_factory=list)
    size: int = 0
    missing: list[int] = field(default_factory=list)
    """Feature indices that also get a "was missing" indicator column (after the features)."""
    C: float | None = None
    """The regularisation strength this branch was fitted with."""

    def design(self, x: np.ndarray) -> np.ndarray:
        """Standardised features (missing filled with the mean), then missing indicators."""
        filled = np.where(np.isnan(x), np.asarray(self.mean), x)
        z = (filled - np.asarray(self.mean)) / np.asarray(self.scale)
        if self.missing:
            z = np.hstack([z, np.isnan(x[:, self.missing]).astype(float)])
        return np.asarray(z)

    def linear(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.design(x) @ np.asarray(self.coef) + self.intercept)

    def proba(self, x: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(x), self.constant)
        lin = self.linear(x)
        if self.iso_x:
            return np.interp(lin, self.iso_x, self.iso_y)
        return 1.0 / (1.0 + np.exp(-lin))


def _matrix(rows: Sequence[Observation], features: Sequence[str]) -> np.ndarray:
    out = np.full((len(rows), len(features)), np.nan)
    for i, row in enumerate(rows):
        for j, name in enumerate(features):
            value = row.get(name)
            if value is not None and math.isfinite(value):
                out[i, j] = float(value)
    return out


def _abstained(rows: Sequence[Observation]) -> np.ndarray:
    return np.array([bool(row.get(ABSTAINED)) for row in rows], dtype=bool)


class LogisticCalibrator:
    """Two-branch logistic (Platt) calibration over named signals."""

    kind = "logistic"

    def __init__(
        self, features: Sequence[str] = DEFAULT_FEATURES, *, C: float | str = "auto"
    ) -> None:
        if not features:
            raise ValueError("a calibrator needs at least one feature")
        if C != "auto" and not (isinstance(C, int | float) and C > 0):
            raise ValueError(f"C must be a positive number or 'auto', got {C!r}")
        self.features = tuple(features)
        self.C: float | str = C
        self.branches_: dict[str, _Branch] | None = None
        self.metadata: dict[str, Any] = {}

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: Sequence[Observation], y: Sequence[bool]) -> LogisticCalibrator:
        """Fit both branches; ``X[i][ABSTAINED]`` selects the branch of row ``i``."""
        if len(X) != len(y):
            raise ValueError(f"{len(X)} observations but {len(y)} labels")
        if not len(X):
            raise ValueError("cannot fit a calibrator on no data")
        matrix = _matrix(X, self.features)
        labels = np.asarray(y, dtype=bool)
        mask = _abstained(X)
        self.branches_ = {
            "answered": self._fit_branch(matrix[~mask], labels[~mask]),
            "abstained": self._fit_branch(matrix[mask], labels[mask]),
        }
        return self

    def _choose_C(self, z: np.ndarray, y: np.ndarray) -> float:
        """``C`` itself, or (``"auto"``) the grid value with the best 5-fold log loss."""
        if self.C != "auto":
            return float(self.C)
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        folds = min(5, int(y.sum()), int((~y).sum()))
        if folds < 2:
            return 1.0
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        best, best_loss = 1.0, math.inf
        for c in C_GRID:
            loss = 0.0
            for train, held in splitter.split(z, y):
                model = LogisticRegression(C=c, max_iter=2000).fit(z[train], y[train])
                p = np.clip(model.predict_proba(z[held])[:, 1], 1e-6, 1 - 1e-6)
                loss -= float(np.sum(np.where(y[held], np.log(p), np.log(1 - p))))
            if loss < best_loss - 1e-9:
                best, best_loss = c, loss
        return best

    def _logistic(self, z: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(z, y)
        return model.coef_[0], float(model.intercept_[0])

    def _fit_branch(self, x: np.ndarray, y: np.ndarray, c: float | None = None) -> _Branch:
        """One branch; ``c`` fixes the regularisation (else ``self.C``, or chosen by CV)."""
        n = len(y)
        positives = int(y.sum())
        if n < MIN_BRANCH_SIZE or positives in (0, n):
            return _Branch(constant=(positives + 1) / (n + 2), size=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column
            mean = np.nanmean(x, axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean)
        filled = np.where(np.isnan(x), mean, x)
        scale = filled.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        gaps = np.isnan(x)
        missing = [j for j in range(x.shape[1]) if 0 < gaps[:, j].sum() < n]
        branch = _Branch(mean=mean.tolist(), scale=scale.tolist(), size=n, missing=missing)
        z = branch.design(x)
        branch.C = c if c is not None else self._choose_C(z, y)
        coef, branch.intercept = self._logistic(z, y, branch.C)
        branch.coef = [float(c) for c in coef]
        return branch

    # -- use ----------------------------------------------------------------------------
    def _branches(self) -> dict[str, _Branch]:
        if self.branches_ is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted; call fit() first")
        return self.branches_

    def predict_proba(self, X: Sequence[Observation]) -> np.ndarray:
        """The probability that each response is right, shape ``(n,)``."""
        branches = self._branches()
        matrix = _matrix(X, self.features)
        mask = _abstained(X)
        out = np.empty(len(X))
        if (~mask).any():
            out[~mask] = branches["answered"].proba(matrix[~mask])
        if mask.any():
            out[mask] = branches["abstained"].proba(matrix[mask])
        return np.clip(out, 0.0, 1.0)

    def confidence(self, signals: Observation, *, abstained: bool) -> float:
        """The calibrated confidence of one response (the pipeline's scorer interface)."""
        row = {**signals, ABSTAINED: 1.0 if abstained else 0.0}
        return float(self.predict_proba([row])[0])

    @property
    def method(self) -> str:
        """How the confidence was computed, as recorded with each response."""
        return f"calibrated:{self.kind}"

    # -- the artifact -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON artifact."""
        branches = self._branches()
        return {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "kind": self.kind,
            "features": list(self.features),
            "C": self.C,
            "branches": {name: vars(b) for name, b in branches.items()},
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON artifact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


class IsotonicCalibrator(LogisticCalibrator):
    """Logistic ranking with an isotonic map fitted on out-of-fold linear scores."""

    kind = "isotonic"

    def __init__(
        self, features: Sequence[str] = DEFAULT_FEATURES, *, C: float | str = "auto", folds: int = 5
    ) -> None:
        super().__init__(features, C=C)
        self.folds = folds

    def _fit_branch(self, x: np.ndarray, y: np.ndarray, c: float | None = None) -> _Branch:
        from sklearn.isotonic import IsotonicRegression
        from sklearn.model_selection import StratifiedKFold

        branch = super()._fit_branch(x, y, c)
        if branch.constant is not None:
            return branch
        folds = min(self.folds, int(y.sum()), int((~y).sum()))
        if folds < 2:
            return branch
        oof = np.empty(len(y))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        for train, held in splitter.split(x, y):
            # The folds use the branch's own C, so that the map fits the scores it is applied to.
            part = super()._fit_branch(x[train], y[train], branch.C)
            oof[held] = part.linear(x[held]) if part.constant is None else 0.0
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, y)
        branch.iso_x = [float(v) for v in iso.X_thresholds_]
        branch.iso_y = [float(v) for v in iso.y_thresholds_]
        return branch


CALIBRATORS: dict[str, type[LogisticCalibrator]] = {
    "logistic": LogisticCalibrator,
    "isotonic": IsotonicCalibrator,
}


def calibrator_from_dict(
    data: Mapping[str, Any], *, where: str = "calibrator"
) -> LogisticCalibrator:
    """Rebuild a fitted calibrator from its JSON artifact, checking what it holds."""
    if data.get("format") != ARTIFACT_FORMAT:
        raise ConfigError(f"{where}: not a guardrail calibrator (format {data.get('format')!r})")
    if data.get("version") != ARTIFACT_VERSION:
        raise ConfigError(
            f"{where}: calibrator version {data.get('version')!r} is not supported "
            f"(supported: {ARTIFACT_VERSION})"
        )
    kind = data.get("kind")
    cls = CALIBRATORS.get(str(kind))
    if cls is None:
        raise ConfigError(
            f"{where}: unknown calibrator kind {kind!r}; valid: {', '.join(CALIBRATORS)}"
        )
    try:
        raw_c = data.get("C", 1.0)
        calibrator = cls(tuple(data["features"]), C=raw_c if raw_c == "auto" else float(raw_c))
        branches = {name: _Branch(**fields) for name, fields in data["branches"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: malformed calibrator artifact ({exc})") from exc
    if set(branches) != {"answered", "abstained"}:
        raise ConfigError(f"{where}: expected branches 'answered' and 'abstained'")
    for name, branch in branches.items():
        width = len(calibrator.features)
        if branch.constant is None and not (
            len(branch.mean) == len(branch.scale) == width
            and len(branch.coef) == width + len(branch.missing)
            and all(0 <= j < width for j in branch.missing)
        ):
            raise ConfigError(f"{where}: branch {name!r} does not match the feature list")
    calibrator.branches_ = branches
    calibrator.metadata = dict(data.get("metadata", {}))
    return calibrator


def load_calibrator(path: str | Path) -> LogisticCalibrator:
    """Load a calibrator artifact written by ``save``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"calibrator file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return calibrator_from_dict(data, where=str(path))
