"""Selective-prediction metrics over (confidence, correct) pairs.

- ``auroc``: probability that a random correct item outranks a random wrong one (ties count
  one half): the Mann-Whitney statistic.
- ``risk_coverage``: answer the ``k`` most confident items, for every ``k``; the risk is the
  error rate among them. ``aurc`` is the mean risk over coverages 1/n .. n/n (lower is
  better); ties in confidence enter together.
- ``prr``: prediction rejection ratio, ``(AURC_random - AURC) / (AURC_random - AURC_oracle)``:
  1 for a perfect ranking, 0 for a random one.
- ``ece``: expected calibration error over ``bins`` equal-width confidence bins.
- ``selective_accuracy``: accuracy among the most confident ``coverage`` share of items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


def _arrays(scores: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    y = np.asarray(correct, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape}, {y.shape}")
    if s.size == 0:
        raise ValueError("no items to measure")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; fill missing values first")
    return s, y


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auroc(scores: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for ``correct`` (NaN with only one class)."""
    s, y = _arrays(scores, correct)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def risk_coverage(scores: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Coverages ``k/n`` and the error rate among the ``k`` most confident items, with tied
    scores given the mean error of their tie group (so the curve does not depend on order)."""
    s, y = _arrays(scores, correct)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, err = s[order], (~y[order]).astype(float)
    # Within a tie group, spread the group's errors evenly.
    start = 0
    while start < len(s_sorted):
        end = start
        while end + 1 < len(s_sorted) and s_sorted[end + 1] == s_sorted[start]:
            end += 1
        err[start : end + 1] = err[start : end + 1].mean()
        start = end + 1
    k = np.arange(1, len(s) + 1)
    return k / len(s), np.cumsum(err) / k


def aurc(scores: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve (mean risk over the coverages)."""
    _, risk = risk_coverage(scores, correct)
    return float(risk.mean())


def oracle_aurc(correct: ArrayLike) -> float:
    """AURC of the perfect ranking (every correct item before every wrong one)."""
    y = np.asarray(correct, dtype=bool)
    return aurc(y.astype(float), y)


def prr(scores: ArrayLike, correct: ArrayLike) -> float:
    """Prediction rejection ratio (NaN when every item is right or every one wrong)."""
    s, y = _arrays(scores, correct)
    random = float((~y).mean())
    oracle = oracle_aurc(y)
    if random == oracle:
        return float("nan")
    return (random - aurc(s, y)) / (random - oracle)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: its range, size, mean confidence and accuracy."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def reliability(probs: ArrayLike, correct: ArrayLike, bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; the last bin includes 1."""
    p, y = _arrays(probs, correct)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("reliability needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        out.append(
            ReliabilityBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=count,
                confidence=float(p[mask].mean()) if count else float("nan"),
                accuracy=float(y[mask].mean()) if count else float("nan"),
            )
        )
    return out


def ece(probs: ArrayLike, correct: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| per bin."""
    table = reliability(probs, correct, bins)
    n = sum(b.count for b in table)
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table if b.count) / n)


def selective_accuracy(scores: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Accuracy among the most confident ``coverage`` share of the items (at least one)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    cov, risk = risk_coverage(scores, correct)
    k = max(1, round(coverage * len(cov)))
    return float(1.0 - risk[k - 1])


def abstention_precision_recall(
    answered: ArrayLike, unanswerable: ArrayLike
) -> tuple[float, float]:
    """Of the questions not answered, the share that were unanswerable (precision); of the
    unanswerable questions, the share not answered (recall). NaN where undefined."""
    a = np.asarray(answered, dtype=bool)
    u = np.asarray(unanswerable, dtype=bool)
    abstained = ~a
    precision = float((abstained & u).sum() / abstained.sum()) if abstained.any() else float("nan")
    recall = float((abstained & u).sum() / u.sum()) if u.any() else float("nan")
    return precision, recall
