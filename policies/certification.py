"""Certification: thresholds given as a risk target turned into certified numbers.

Loading a policy (:mod:`policies.loader`) only reads and validates it: thresholds written as a
:class:`~policies.schema.RiskTarget` load as that target, and
:func:`~policies.decide.decide` refuses a policy until they are certified. Certifying is one
explicit step that the loader's caller runs, with a resolver that can read the calibrator the
policy names (this package does no I/O; guardrail's ``load_policies`` supplies the resolver)::

    policies = certify(load_policy_set(path, signal_names=..., flag_names=...), resolve)

A resolver that fails (raises ``ValueError`` or ``OSError``) becomes a
:class:`~policies.errors.PolicyValidationError` positioned on the ``thresholds`` it certifies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from policies.errors import PolicyIssue
from policies.loader import PolicySet, validation_error
from policies.schema import Policy, RiskTarget, Thresholds

RiskResolver = Callable[[RiskTarget, str], Thresholds]
"""Turns a risk target and the calibrator path its policy names (as written, relative to the
policy file) into certified thresholds; raises ``ValueError`` or ``OSError`` when it cannot."""


def certify(policies: PolicySet, resolve: RiskResolver) -> PolicySet:
    """The same policies with every risk target replaced by the thresholds ``resolve``
    certifies for it; a policy with fixed thresholds is returned as it is.

    Each distinct (target, calibrator) is resolved once. Raises
    :class:`~policies.errors.PolicyValidationError` listing every target that could not be
    certified, at the file, line and column of its ``thresholds``.
    """
    resolved: dict[tuple[RiskTarget, str], Thresholds | str] = {}
    certified: dict[str | None, Policy] = {}
    issues: list[PolicyIssue] = []
    for tenant, policy in policies.all().items():
        target = policy.thresholds
        if not isinstance(target, RiskTarget):
            certified[tenant] = policy
            continue
        # The schema requires the calibration block of a risk target.
        assert policy.calibration is not None
        key = (target, policy.calibration.calibrator)
        if key not in resolved:
            try:
                resolved[key] = resolve(*key)
            except (ValueError, OSError) as exc:
                resolved[key] = str(exc)
        outcome = resolved[key]
        if isinstance(outcome, Thresholds):
            certified[tenant] = _with_thresholds(policy, outcome)
            continue
        issue = policies.issue(tenant, ("thresholds",), outcome)
        # A tenant inheriting the base's target repeats the base's issue: report it once.
        if issue not in issues:
            prefix = "" if tenant is None else f"tenant {tenant!r}: "
            issues.append(issue._replace(message=prefix + issue.message))
    if issues:
        raise validation_error(issues, policies.source)
    base = certified.pop(None)
    return dataclasses.replace(
        policies, base=base, tenants={str(name): p for name, p in certified.items()}
    )


def _with_thresholds(policy: Policy, thresholds: Thresholds) -> Policy:
    """``policy`` with other thresholds, validated again (its content hash is recomputed)."""
    fields = {name: getattr(policy, name) for name in Policy.model_fields}
    return Policy.model_validate({**fields, "thresholds": thresholds})
