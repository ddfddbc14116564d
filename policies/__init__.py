"""Policies: the YAML policy language and the pure decision function.

For every question, the middleware measures an :class:`Assessment` (calibrated confidence,
signal values, flags) and asks a :class:`Policy` what to do with it::

    policy = load_policy(bundled_policy_path("balanced"), signal_names=..., flag_names=...)
    decision = decide(Assessment(confidence=0.42, signals={...}), policy)
    decision.action  # Action.HEDGE; decision.reasons explains why

A policy lists rules (checked in order, first match wins) and then thresholds on the
confidence: answer, hedge (answer with a caveat), defer ("I don't know") or escalate (ask a
larger model). This package imports nothing else of the project; callers supply the names of
the signals and flags they can measure.

Everything here is pure: loading reads the policy files and nothing else. Thresholds given as
a risk target (``max_error_rate``, ``delta``) load uncertified, and :func:`decide` refuses
them; certifying is one explicit step the caller runs after loading, with a resolver that
reads the calibrator the policy names (guardrail's ``load_policies`` does both)::

    policies = certify(loader.load_policy_set(path, signal_names=..., flag_names=...), resolve)
"""

from policies.certification import RiskResolver, certify
from policies.decide import decide
from policies.errors import (
    PolicyError,
    PolicyIssue,
    PolicyLoadError,
    PolicyNotCertifiedError,
    PolicyNotFoundError,
    PolicyValidationError,
)
from policies.loader import bundled_policy_path, load_policy, parse_policy
from policies.schema import Policy
from policies.types import Action, Assessment, Decision

__all__ = [
    "Action",
    "Assessment",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyLoadError",
    "PolicyNotCertifiedError",
    "PolicyNotFoundError",
    "PolicyValidationError",
    "RiskResolver",
    "bundled_policy_path",
    "certify",
    "decide",
    "load_policy",
    "parse_policy",
]
