"""Rule conditions of the policy language: signal comparisons, flags, all/any/not.

Conditions are data, never code. Which model a mapping becomes is decided by which of the keys
``signal``, ``flag``, ``all``, ``any``, ``not`` it has. Signal and flag names are checked only
when the validation context supplies the valid ones (see :func:`validation_context`).
"""

from __future__ import annotations

import string
from collections.abc import Collection, Iterator
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from policies.errors import did_you_mean

CONFIDENCE = "confidence"
"""The pseudo-signal naming the calibrated confidence; always valid in conditions."""
COMPARISONS: tuple[str, ...] = ("lt", "le", "gt", "ge", "eq", "ne")

_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")

Bound = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True)]


def validation_context(
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> dict[str, Any]:
    """The pydantic validation context that makes a policy check its signal and flag names."""
    return {
        "signal_names": frozenset(signal_names),
        "flag_names": frozenset(flag_names),
    }


def _context_names(info: ValidationInfo, key: str) -> frozenset[str] | None:
    context = info.context
    if isinstance(context, dict) and key in context:
        return frozenset(context[key])
    return None


def _error(kind: str, message: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A custom error; ``at`` is where it points, relative to the validated object's location.

    pydantic substitutes ``{key}`` in the message for every context key, so only messages
    without user-written braces may pass ``at`` (names and numbers are safe).
    """
    return PydanticCustomError(kind, message, {"at": at} if at else None)


def _check_name(value: str, what: str) -> str:
    if not value or value[0] in "-_." or not set(value) <= _NAME_CHARS:
        raise _error(
            "invalid_name",
            f"invalid {what} {value!r}: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit",
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalCondition(_Model):
    """``{signal: NAME, <op>: number}``: true when the signal's value compares as stated.

    Exactly one of ``lt``, ``le``, ``gt``, ``ge``, ``eq``, ``ne`` is given. A missing value
    (``None``) makes the condition false.
    """

    signal: Text
    lt: Bound | None = None
    le: Bound | None = None
    gt: Bound | None = None
    ge: Bound | None = None
    eq: Bound | None = None
    ne: Bound | None = None

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str, info: ValidationInfo) -> str:
        names = _context_names(info, "signal_names")
        if names is None or value == CONFIDENCE or value in names:
            return value
        valid = sorted(names | {CONFIDENCE})
        if value in (_context_names(info, "flag_names") or ()):
            hint = f" ({value!r} is a flag: write {{flag: {value}}})"
        else:
            hint = did_you_mean(value, valid)
        message = f"unknown signal {value!r}{hint}; valid signals: {', '.join(valid)}"
        raise _error("unknown_signal", message)

    @model_validator(mode="after")
    def _one_comparison(self) -> SignalCondition:
        given = [op for op in COMPARISONS if getattr(self, op) is not None]
        if len(given) != 1:
            if given:
                found = f"found {len(given)}: {', '.join(given)} (combine comparisons with all:)"
            else:
                found = f"found none (for example {{signal: {self.signal}, lt: 0.5}})"
            raise _error(
                "comparison_count",
                f"the condition on signal {self.signal!r} needs exactly one comparison of "
                f"{', '.join(COMPARISONS)}; {found}",
            )
        return self

    @property
    def op(self) -> str:
        """The comparison operator's key, e.g. ``"lt"``."""
        return next(op for op in COMPARISONS if getattr(self, op) is not None)

    @property
    def threshold(self) -> float:
        """The number the signal is compared with."""
        value: float = getattr(self, self.op)
        return value

    def leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        """This condition itself: it is a leaf."""
        yield self


class FlagCondition(_Model):
    """``{flag: NAME}``: true when the assessment has the flag set."""

    flag: Text

    @field_validator("flag")
    @classmethod
    def _known_flag(cls, value: str, info: ValidationInfo) -> str:
        names = _context_names(info, "flag_names")
        if names is None or value in names:
            return value
        valid = sorted(names)
        if value == CONFIDENCE or value in (_context_names(info, "signal_names") or ()):
            hint = f" ({value!r} is a signal: compare it, e.g. {{signal: {value}, lt: 0.5}})"
        else:
            hint = did_you_mean(value, valid)
        raise _error(
            "unknown_flag", f"unknown flag {value!r}{hint}; valid flags: {', '.join(valid)}"
        )

    def leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        """This condition itself: it is a leaf."""
        yield self


def _non_empty(value: tuple[Any, ...], key: str) -> tuple[Any, ...]:
    if not value:
        raise _error("empty_combinator", f"'{key}' needs at least one condition")
    return value


class AllCondition(_Model):
    """``{all: [cond, ...]}``: true when every listed condition is true."""

    conditions: tuple[Condition, ...] = Field(alias="all")

    @field_validator("conditions")
    @classmethod
    def _non_empty(cls, value: tuple[Condition, ...]) -> tuple[Condition, ...]:
        return _non_empty(value, "all")

    def leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        """The signal and flag conditions nested inside, in order."""
        for condition in self.conditions:
            yield from condition.leaves()


class AnyCondition(_Model):
    """``{any: [cond, ...]}``: true when at least one listed condition is true."""

    conditions: tuple[Condition, ...] = Field(alias="any")

    @field_validator("conditions")
    @classmethod
    def _non_empty(cls, value: tuple[Condition, ...]) -> tuple[Condition, ...]:
        return _non_empty(value, "any")

    def leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        """The signal and flag conditions nested inside, in order."""
        for condition in self.conditions:
            yield from condition.leaves()


class NotCondition(_Model):
    """``{not: cond}``: true when the inner condition is false (a missing signal included)."""

    condition: Condition = Field(alias="not")

    def leaves(self) -> Iterator[SignalCondition | FlagCondition]:
        """The signal and flag conditions nested inside, in order."""
        yield from self.condition.leaves()


_CONDITION_TYPES: dict[str, type[_Model]] = {
    "signal": SignalCondition,
    "flag": FlagCondition,
    "all": AllCondition,
    "any": AnyCondition,
    "not": NotCondition,
}
_CONDITION_KEYS = ", ".join(_CONDITION_TYPES)


def _condition_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if isinstance(value, dict):
        for key, model in _CONDITION_TYPES.items():
            if key in value:
                return model.__name__
    return None


def _check_condition_shape(value: Any) -> Any:
    """Explain a malformed condition before the union looks for its discriminating key."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise _error(
            "invalid_condition",
            "a condition must be a mapping such as {flag: NAME}, {signal: NAME, lt: 0.5}, "
            f"{{all: [...]}}, {{any: [...]}} or {{not: ...}}; got {type(value).__name__} {value!r}",
        )
    present = [key for key in _CONDITION_TYPES if key in value]
    if not present:
        keys = ", ".join(f"{k}{did_you_mean(str(k), _CONDITION_TYPES)}" for k in value)
        raise _error(
            "invalid_condition",
            f"a condition needs one of the keys {_CONDITION_KEYS}; got keys: {keys or 'none'}",
        )
    if len(present) > 1:
        raise _error(
            "invalid_condition",
            f"a condition must have exactly one of the keys {_CONDITION_KEYS}; this one has "
            f"{' and '.join(present)}; combine conditions with all: or any:",
        )
    return value


Condition = Annotated[
    Annotated[SignalCondition, Tag("SignalCondition")]
    | Annotated[FlagCondition, Tag("FlagCondition")]
    | Annotated[AllCondition, Tag("AllCondition")]
    | Annotated[AnyCondition, Tag("AnyCondition")]
    | Annotated[NotCondition, Tag("NotCondition")],
    Discriminator(_condition_tag),
    BeforeValidator(_check_condition_shape),
]
"""Any condition; which model applies is decided by which of its keys is present."""

CONDITION_TAGS: dict[str, type[_Model]] = {m.__name__: m for m in _CONDITION_TYPES.values()}
"""Tags pydantic inserts into error locations inside conditions (not YAML keys), by model."""

for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()
