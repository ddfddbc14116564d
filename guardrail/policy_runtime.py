"""The policies a pipeline serves: loaded from a file, per tenant, with their confidence
scorers, certified risk targets, and a reload that never replaces a good file with a bad one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from guardrail.assessment import FLAG_NAMES, HeuristicConfidence
from guardrail.errors import ConfigError
from guardrail.judge import ConfidenceScorer, Judge, needs_probe
from guardrail.signals import SIGNAL_NAMES
from policies import Policy, PolicyError, bundled_policy_path
from policies.certification import RiskResolver, certify
from policies.loader import PolicySet, load_policy_set
from policies.schema import Certificate, RiskTarget, Thresholds


def policy_path(value: str) -> Path:
    """The file of a bundled policy name or of a policy path."""
    path = Path(value)
    if value.endswith((".yaml", ".yml")) or path.exists():
        if not path.exists():
            raise ConfigError(f"policy file {value} does not exist")
        return path
    return Path(str(bundled_policy_path(value)))


def _calibrator_path(calibrator: str, folder: Path) -> Path:
    path = Path(calibrator)
    return path if path.is_absolute() else folder / path


def risk_resolver(folder: Path) -> RiskResolver:
    """A resolver that certifies risk targets with the certification data stored in the
    calibrator artifact (relative paths are relative to ``folder``, the policy's folder)."""

    def resolve(target: RiskTarget, calibrator: str) -> Thresholds:
        return certify_target(target, _calibrator_path(calibrator, folder))

    return resolve


def certify_target(target: RiskTarget, calibrator_file: Path) -> Thresholds:
    """Thresholds certified for ``target`` on the calibrator's held-out certification data."""
    from guardrail.calibration import load_calibrator
    from guardrail.risk import RiskControl, control_risk

    try:
        calibrator = load_calibrator(calibrator_file)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    data = calibrator.metadata.get("certification")
    if not isinstance(data, dict) or not {"scores", "correct", "eligible"} <= set(data):
        raise ValueError(
            f"calibrator {calibrator_file} holds no certification data (scores, correct, "
            "eligible); re-run `guardrail calibrate` to write it, or give fixed thresholds"
        )

    def certify(error: float) -> RiskControl:
        return control_risk(
            data["scores"],
            data["correct"],
            eligible=data["eligible"],
            target_error=error,
            delta=target.delta,
            method=target.method,
        )

    answer = certify(target.max_error_rate)
    hedge = answer
    if target.hedge_max_error_rate is not None:
        hedge = certify(target.hedge_max_error_rate)
    t_answer = answer.threshold if answer.threshold is not None else 1.0
    t_hedge = hedge.threshold if hedge.threshold is not None else t_answer
    if answer.feasible:
        t_hedge = min(t_hedge, t_answer)
    else:
        t_answer = max(t_answer, t_hedge)
    where = data.get("data") or calibrator.metadata.get("fitted_on", "")
    message = answer.message
    if target.hedge_max_error_rate is not None:
        message += f"; hedge band (error <= {target.hedge_max_error_rate:.0%}): {hedge.message}"
    if where:
        message += f" [{where}]"
    return Thresholds(
        answer=float(t_answer),
        hedge=float(t_hedge),
        otherwise=target.otherwise,
        certified=Certificate(
            max_error_rate=target.max_error_rate,
            delta=target.delta,
            answer_feasible=answer.feasible,
            hedge_feasible=hedge.feasible,
            message=message,
        ),
    )


def scorer_for(policy: Policy, folder: Path) -> ConfidenceScorer:
    """The policy's calibrator (its path is relative to the policy's folder), or the
    documented heuristic when the policy names none."""
    if policy.calibration is None:
        return HeuristicConfidence()
    from guardrail.calibration import load_calibrator

    path = _calibrator_path(policy.calibration.calibrator, folder)
    calibrator = load_calibrator(path)
    unknown = sorted(set(calibrator.features) - SIGNAL_NAMES)
    if unknown:
        raise ConfigError(
            f"calibrator {path} reads signals this version does not measure: {', '.join(unknown)}"
        )
    return calibrator


def load_policies(path: Path) -> PolicySet:
    """Every policy of a file (base and tenants), validated against the signals this version
    measures (a pure load), then its risk targets certified from their calibrators."""
    loaded = load_policy_set(path, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)
    return certify(loaded, risk_resolver(path.parent))


@dataclass(frozen=True)
class Loaded:
    """One consistent generation of policies and their scorers, swapped in as a whole."""

    policies: PolicySet
    scorers: Mapping[str, ConfidenceScorer]
    path: Path | None
    loaded_at: float = field(default_factory=time.time)

    def policy_for(self, tenant: str | None) -> Policy:
        """The tenant's policy (the base policy for ``None`` or an unlisted tenant)."""
        return self.policies.policy_for(tenant)

    def scorer(self, policy: Policy) -> ConfidenceScorer:
        """The confidence scorer that ``policy`` was loaded with."""
        return self.scorers[policy.content_hash]

    def judge(self, tenant: str | None = None, *, probe: bool | None = None) -> Judge:
        """The judge for ``tenant``: its policy, that policy's scorer, and whether the
        abstention probe is measured (``probe``, or when ``None`` whether the policy needs
        it). Every decision is made by a judge obtained here."""
        policy = self.policy_for(tenant)
        scorer = self.scorer(policy)
        return Judge(policy, scorer, needs_probe(policy, scorer) if probe is None else probe)


def _loaded(policies: PolicySet, path: Path | None, fixed: ConfidenceScorer | None) -> Loaded:
    folder = path.parent if path is not None else Path(".")
    scorers: dict[str, ConfidenceScorer] = {}
    for policy in policies.all().values():
        scorers[policy.content_hash] = fixed or scorer_for(policy, folder)
    return Loaded(policies, scorers, path)


class PolicyRuntime:
    """The current policies; :meth:`reload` validates a file before it replaces them."""

    def __init__(self, loaded: Loaded, *, fixed_scorer: ConfidenceScorer | None = None) -> None:
        self._loaded = loaded
        self._fixed = fixed_scorer
        self._lock = threading.Lock()

    @classmethod
    def from_setting(cls, value: str) -> PolicyRuntime:
        """A bundled policy name or a policy file path."""
        path = policy_path(value)
        return cls(_loaded(load_policies(path), path, None))

    @classmethod
    def from_policy(
        cls, policy: Policy | PolicySet, scorer: ConfidenceScorer | None = None
    ) -> PolicyRuntime:
        """Policies already in memory (nothing to reload from)."""
        policies = policy if isinstance(policy, PolicySet) else PolicySet(policy, {}, "<memory>")
        return cls(_loaded(policies, None, scorer), fixed_scorer=scorer)

    @property
    def current(self) -> Loaded:
        """The policies in force now (one consistent generation)."""
        return self._loaded

    def reload(self) -> Loaded:
        """Read the file again; the new policies replace the old only if all of them are valid.

        Raises :class:`~policies.PolicyError` or :class:`~guardrail.errors.ConfigError`
        (a calibrator that cannot be read) and keeps the current policies in force.
        """
        path = self._loaded.path
        if path is None:
            raise ConfigError("these policies were given in memory; there is no file to reload")
        with self._lock:
            fresh = _loaded(load_policies(path), path, self._fixed)
            self._loaded = fresh
        return fresh


RELOAD_ERRORS = (PolicyError, ConfigError)
"""What a failed reload raises (the old policies stay in force)."""
