"""The policy language, version 1, as frozen pydantic models.

A policy is data: thresholds on the calibrated confidence, an ordered list of rules (checked
first, first match wins) and settings for each action. Every model forbids unknown keys, so a
misspelt key is an error rather than a silently ignored setting.

Validate untrusted data with the names of the signals and flags the caller can measure::

    Policy.model_validate(data, context=validation_context(signal_names, flag_names))

:func:`policies.loader.parse_policy` does this and turns errors into file positions.
Validation is pure: thresholds given as a risk target stay a :class:`RiskTarget` until the
caller certifies them with :func:`policies.certification.certify`.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from policies.conditions import (
    CONFIDENCE,
    Condition,
    FlagCondition,
    SignalCondition,
    Text,
    _check_name,
    _error,
    _Model,
)
from policies.errors import PolicyNotCertifiedError, did_you_mean
from policies.types import Action

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
TEMPLATE_FIELDS: tuple[str, ...] = (
    "answer",
    "caveat",
    "sources",
    "question",
    "parametric_answer",
    "passage",
)
DEFAULT_HEDGE_TEMPLATE = "{answer}\n\n(Caveat: {caveat})"
DEFAULT_CONFLICT_TEMPLATE = (
    "The documents say: {answer}. Without them I would have said: {parametric_answer}. "
    "Check the source: {passage}\n\n{sources}"
)
DEFAULT_DEFER_MESSAGE = (
    "I don't know: the documents I have do not support an answer to this question."
)
DEFAULT_ESCALATION_TARGETS: tuple[str, ...] = ("larger",)

Score = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Rate = Annotated[float, Field(strict=False, gt=0.0, lt=1.0, allow_inf_nan=False)]


def _to_action(value: Any, allowed: tuple[Action, ...], field: str = "") -> Any:
    if isinstance(value, Action) and value in allowed:
        return value
    if isinstance(value, str) and value in {a.value for a in allowed}:
        return Action(value)
    valid = ", ".join(a.value for a in allowed)
    where = f" for {field}" if field else ""
    raise _error("unknown_action", f"unknown action {value!r}{where}; valid actions: {valid}")


class Certificate(_Model):
    """How thresholds derived from a risk target were certified.

    When a target cannot be met (``answer_feasible`` false) no confidence answers plainly;
    likewise ``hedge_feasible`` for the hedge band. ``message`` says what was certified.
    """

    max_error_rate: Rate
    delta: Rate
    answer_feasible: bool
    hedge_feasible: bool
    message: Text


class Thresholds(_Model):
    """Cut-offs on the confidence, used when no rule matches.

    ``confidence >= answer`` answers, ``hedge <= confidence < answer`` hedges, and anything
    lower takes the ``otherwise`` action. Set ``hedge`` equal to ``answer`` to never hedge.
    """

    answer: Score
    hedge: Score
    otherwise: Literal[Action.DEFER, Action.ESCALATE]
    certified: Certificate | None = None
    """Set when the numbers come from a risk target: what was certified, on what data."""

    @field_validator("otherwise", mode="before")
    @classmethod
    def _otherwise(cls, value: Any) -> Any:
        return _to_action(value, (Action.DEFER, Action.ESCALATE), "thresholds.otherwise")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.hedge > self.answer:
            raise _error(
                "threshold_order",
                f"the hedge threshold {self.hedge:g} is above the answer threshold "
                f"{self.answer:g}; hedge must be <= answer (equal means never hedge)",
                at=("hedge",),
            )
        return self


class RiskTarget(_Model):
    """Thresholds given as a promise instead of numbers.

    ``max_error_rate`` (and optionally ``hedge_max_error_rate`` for the hedge band) is the
    error among answered questions that must not be exceeded with probability ``1 - delta``.
    Loading keeps the target as it is; :func:`policies.certification.certify` (run by
    guardrail right after loading) turns it into certified :class:`Thresholds` from the
    certification data stored in the calibrator artifact that the policy's ``calibration``
    block names (written by ``guardrail calibrate``); when no threshold meets the target,
    everything is deferred.
    """

    max_error_rate: Rate
    delta: Rate
    hedge_max_error_rate: Rate | None = None
    method: Literal["binomial", "hoeffding-bentkus"] = "binomial"
    otherwise: Literal[Action.DEFER, Action.ESCALATE] = Action.DEFER

    @field_validator("otherwise", mode="before")
    @classmethod
    def _otherwise(cls, value: Any) -> Any:
        return _to_action(value, (Action.DEFER, Action.ESCALATE), "thresholds.otherwise")

    @model_validator(mode="after")
    def _ordered(self) -> RiskTarget:
        if (
            self.hedge_max_error_rate is not None
            and self.hedge_max_error_rate < self.max_error_rate
        ):
            raise _error(
                "threshold_order",
                f"hedge_max_error_rate {self.hedge_max_error_rate:g} is below max_error_rate "
                f"{self.max_error_rate:g}; a hedged answer may be wrong more often, not less",
                at=("hedge_max_error_rate",),
            )
        return self


def thresholds_model(value: Any) -> type[Thresholds] | type[RiskTarget]:
    """The model a ``thresholds`` value is validated with: a mapping with ``max_error_rate``
    is a risk target, anything else fixed numbers."""
    if isinstance(value, Thresholds | RiskTarget):
        return type(value)
    return RiskTarget if isinstance(value, dict) and "max_error_rate" in value else Thresholds


class Rule(_Model):
    """A named condition and the action taken when it holds; ``reason`` explains it to users."""

    name: Text
    when: Condition
    action: Action
    reason: Text | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "rule name")

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        return _to_action(value, tuple(Action))


class HedgeSettings(_Model):
    """How a hedged answer is rendered: format strings over a fixed set of placeholders.

    ``conflict_template`` is used instead of ``template`` on a knowledge conflict (the
    passages disagree with what the model answers without them), so that the hedge can state
    both answers. ``quote_words`` caps the ``{passage}`` quote of the supporting passage.
    """

    template: Text = DEFAULT_HEDGE_TEMPLATE
    conflict_template: Text = DEFAULT_CONFLICT_TEMPLATE
    quote_words: int = Field(default=40, strict=True, ge=1, le=400)

    @field_validator("template", "conflict_template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        valid = ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise _error(
                "template_syntax",
                f"the hedge template is not a valid format string ({exc}); "
                "write a literal brace as {{ or }}",
            ) from None
        problems: list[str] = []
        seen: set[str] = set()
        for _, field_name, spec, conversion in parsed:
            if field_name is None:
                continue
            seen.add(field_name)
            if not field_name or field_name.isdigit():
                problems.append(
                    f"positional placeholder {{{field_name}}}: name it, e.g. {{answer}}"
                )
            elif field_name not in TEMPLATE_FIELDS:
                hint = did_you_mean(field_name, TEMPLATE_FIELDS)
                problems.append(f"unknown placeholder {{{field_name}}}{hint}")
            elif spec or conversion:
                problems.append(f"placeholder {{{field_name}}} takes no conversion or format spec")
        if "answer" not in seen:
            problems.append("the hedge template must contain {answer}")
        if problems:
            raise _error(
                "template_placeholder",
                f"{'; '.join(problems)}; valid placeholders: {valid}",
            )
        return value


class DeferSettings(_Model):
    """What the user is told when the middleware defers: the message, used verbatim, and
    (with ``show_related``) the titles of up to ``max_related`` passages that were found."""

    message: Text = DEFAULT_DEFER_MESSAGE
    show_related: bool = Field(default=True, strict=True)
    max_related: int = Field(default=3, strict=True, ge=1, le=20)

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise _error("empty_message", "the defer message must not be empty")
        return value


MAX_WINDOW_SECONDS = 172800.0
"""The longest budget window (two days): decisions older than this are forgotten."""


class Budget(_Model):
    """A cap on escalations: a share of all decisions, requests per minute, or both.

    ``max_share`` counts over the decisions of the last ``window_seconds``: an escalation is
    allowed while ``escalations + 1 <= ceil(max_share * decisions)`` (so the first one is).
    """

    max_share: Annotated[float, Field(strict=False, gt=0.0, le=1.0, allow_inf_nan=False)] | None = (
        None
    )
    per_minute: Annotated[int, Field(strict=True, ge=1)] | None = None
    window_seconds: Annotated[
        float, Field(strict=False, gt=0.0, le=MAX_WINDOW_SECONDS, allow_inf_nan=False)
    ] = 3600.0

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.max_share is None and self.per_minute is None:
            raise _error(
                "empty_budget",
                "a budget needs max_share (a fraction of decisions), per_minute, or both",
            )
        return self


class Target(_Model):
    """One escalation target: a backend name from the configuration and its own budget."""

    name: Text
    budget: Budget | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise _error("invalid_target", f"invalid escalation target {value!r}")
        return value


def _target(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class EscalateSettings(_Model):
    """Where escalated questions go: targets tried in order, budgets, and the fallback.

    A target that is over its budget (or the chain over ``budget``) is skipped and the next
    one is tried; when none answers, ``on_failure`` decides: ``defer``, or ``hedge`` the first
    model's answer (deferred anyway when that model found no answer).
    """

    targets: tuple[Annotated[Target, BeforeValidator(_target)], ...] = tuple(
        Target(name=name) for name in DEFAULT_ESCALATION_TARGETS
    )
    budget: Budget | None = None
    on_failure: Literal[Action.DEFER, Action.HEDGE] = Action.DEFER

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[Target, ...]) -> tuple[Target, ...]:
        if not value:
            raise _error("no_targets", "escalation needs at least one target backend name")
        names = [target.name for target in value]
        for name in names:
            if names.count(name) > 1:
                raise _error("duplicate_target", f"escalation target {name!r} is listed twice")
        return value

    @field_validator("on_failure", mode="before")
    @classmethod
    def _on_failure(cls, value: Any) -> Any:
        return _to_action(value, (Action.DEFER, Action.HEDGE), "escalate.on_failure")

    def target_names(self) -> tuple[str, ...]:
        """The target backend names, in order."""
        return tuple(target.name for target in self.targets)


class ActionSettings(_Model):
    """Per-action settings; every part has a default."""

    hedge: HedgeSettings = Field(default_factory=HedgeSettings)
    defer: DeferSettings = Field(default_factory=DeferSettings)
    escalate: EscalateSettings = Field(default_factory=EscalateSettings)


class CalibrationSettings(_Model):
    """Where the calibrated confidence comes from and what its thresholds promise.

    ``calibrator`` is a calibrator artifact (JSON), relative to the policy file. The
    thresholds of a calibrated policy were chosen on a calibration split so that the error
    among answered questions is at most ``target_error`` with probability at least
    ``1 - delta`` (``guardrail calibrate`` writes both files).
    """

    calibrator: Text
    target_error: Rate | None = None
    delta: Rate | None = None
    hedge_target_error: Rate | None = None
    method: Literal["binomial", "hoeffding-bentkus"] = "binomial"
    fitted_on: Text = ""


class Policy(_Model):
    """A complete, validated policy (version 1)."""

    version: Literal[1]
    name: Text
    description: Text = ""
    mode: Literal["enforce", "shadow"] = "enforce"
    """``shadow``: decide and record, but pass the model's answer through unchanged."""
    thresholds: Thresholds | RiskTarget
    """Fixed numbers, or a risk target that is not certified yet (see :class:`RiskTarget`)."""
    rules: tuple[Rule, ...] = ()
    actions: ActionSettings = Field(default_factory=ActionSettings)
    calibration: CalibrationSettings | None = None

    _content_hash: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _risk_target(cls, data: Any) -> Any:
        """A risk target names the calibrator it is certified with; certifying is not done
        here (validation is pure) but by :func:`policies.certification.certify`."""
        if not isinstance(data, dict):
            return data
        calibration = data.get("calibration")
        if thresholds_model(data.get("thresholds")) is Thresholds or isinstance(
            calibration, CalibrationSettings
        ):
            return data
        calibrator = calibration.get("calibrator") if isinstance(calibration, dict) else None
        if not isinstance(calibrator, str):
            raise _error(
                "risk_target_needs_calibrator",
                "thresholds given as a risk target (max_error_rate, delta) need the "
                "calibration block that names the calibrator artifact they are certified "
                "with (calibration: {calibrator: FILE, ...}; `guardrail calibrate` writes one)",
                at=("thresholds",),
            )
        return data

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: Any, info: ValidationInfo) -> Any:
        """A mapping with ``max_error_rate`` is a risk target, anything else fixed numbers;
        validated against that one model so that errors do not list both."""
        if isinstance(value, Thresholds | RiskTarget):
            return value
        return thresholds_model(value).model_validate(value, context=info.context)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if type(value) is int and value in SUPPORTED_VERSIONS:
            return value
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise _error(
            "unsupported_version",
            f"unsupported policy version {value!r}; supported versions: {supported}",
        )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "policy name")

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for index, rule in enumerate(rules):
            if rule.name in seen:
                raise _error(
                    "duplicate_rule_name",
                    f"duplicate rule name {rule.name!r}; rule names must be unique, "
                    "because decisions record which rule matched",
                    at=(index, "name"),
                )
            seen.add(rule.name)
        return rules

    def model_post_init(self, context: Any, /) -> None:
        """Compute the content hash once; the model is frozen."""
        canonical = json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_none=True),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        self._content_hash = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def content_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of this policy.

        Formatting, comments, key order and spelled-out defaults do not change it.
        """
        return self._content_hash

    def decision_thresholds(self) -> Thresholds:
        """The numbers decisions compare the confidence with: the fixed thresholds, or those
        certified for a risk target. Raises :class:`~policies.errors.PolicyNotCertifiedError`
        while the thresholds are a risk target that was not certified."""
        thresholds = self.thresholds
        if isinstance(thresholds, RiskTarget):
            raise PolicyNotCertifiedError(
                f"policy {self.name!r} gives its thresholds as a risk target (max_error_rate "
                f"{thresholds.max_error_rate:g}, delta {thresholds.delta:g}) that is not "
                "certified, so there are no thresholds to decide with; certify the loaded "
                "policies first: policies.certify(policy_set, resolve), or load them with "
                "guardrail.policy_runtime.load_policies, which does"
            )
        return thresholds

    def _leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        for rule in self.rules:
            yield from rule.when.leaves()

    def signal_names(self) -> frozenset[str]:
        """Names of the signals the rules compare (the built-in ``confidence`` excluded)."""
        return frozenset(
            leaf.signal
            for leaf in self._leaves()
            if isinstance(leaf, SignalCondition) and leaf.signal != CONFIDENCE
        )

    def flag_names(self) -> frozenset[str]:
        """Names of the flags the rules test."""
        return frozenset(leaf.flag for leaf in self._leaves() if isinstance(leaf, FlagCondition))
