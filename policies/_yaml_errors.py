"""Turn pydantic validation errors into messages positioned on the YAML source.

pydantic reports where an error is as a location tuple (``("rules", 2, "action")``); the YAML
node tree kept by ``yaml.compose`` maps that tuple back to a line and column.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from policies._layers import Layered, locate
from policies.conditions import CONDITION_TAGS
from policies.errors import PolicyIssue, did_you_mean
from policies.schema import Policy, thresholds_model

Loc = tuple[str | int, ...]

# pydantic's wording for container and scalar types speaks Python; a policy author writes YAML.
_EXPECTED = {
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
}


def position(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where a node starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def _strip_tags(loc: Loc) -> Loc:
    return tuple(seg for seg in loc if not (isinstance(seg, str) and seg in CONDITION_TAGS))


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model validating the value at ``loc`` (tags included), if any."""
    current: Any = Policy
    for seg in loc:
        current = _unwrap(current)
        if isinstance(seg, str) and seg in CONDITION_TAGS:
            current = CONDITION_TAGS[seg]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {(f.alias or name): f for name, f in current.model_fields.items()}
            if seg not in fields:
                return None
            current = fields[seg].annotation
        elif get_origin(current) is tuple and isinstance(seg, int):
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    if get_origin(current) in (Union, types.UnionType):
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def dotted(loc: Loc) -> str:
    """``("rules", 2, "when", "all", 0)`` as ``rules[2].when.all[0]``."""
    text = ""
    for seg in _strip_tags(loc):
        text += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if text else str(seg))
    return text


def shown(value: Any) -> str:
    """A short rendering of a YAML value for messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def issue_from_error(error: ErrorDetails, layered: Layered, prefix: str = "") -> PolicyIssue:
    """One pydantic error as a positioned, human-readable issue; ``prefix`` opens the message."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    if "at" in context:
        loc = loc + tuple(context["at"])
    where = dotted(loc[:-1])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        if model is None and _strip_tags(loc[:-1]) == ("thresholds",):
            # Thresholds are numbers or a risk target; the value's keys tell which it meant.
            model = thresholds_model(layered.data.get("thresholds"))
        valid = [f.alias or name for name, f in model.model_fields.items()] if model else []
        message = f"unknown key {key!r}" + (f" in {where}" if where else "")
        if valid:
            message += f"{did_you_mean(key, valid)}; valid keys here: {', '.join(valid)}"
        want_key = True
    elif kind == "missing":
        message = f"missing required key {str(loc[-1])!r}" + (f" in {where}" if where else "")
        want_key = False
    elif kind == "invalid_key":
        message = f"invalid key {shown(error['input'])}" + (f" in {where}" if where else "")
        message += ": keys must be names (text)"
        want_key = True
    elif "url" not in error:
        # Our own PydanticCustomError messages already say what is wrong and what is valid.
        message = error["msg"]
        want_key = False
    else:
        text = _EXPECTED.get(kind) or error["msg"][:1].lower() + error["msg"][1:]
        message = f"{dotted(loc) or 'policy'}: {text}, got {shown(error['input'])}"
        want_key = False
    source, line, column = locate(layered, _strip_tags(loc), want_key=want_key)
    return PolicyIssue(line, column, prefix + message, source)
