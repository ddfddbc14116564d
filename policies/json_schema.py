"""The JSON Schema of policy files, for editors (``guardrail policy schema``).

It is generated from the pydantic models, so it cannot drift from what the loader accepts,
and then completed with what the loader handles around them: ``extends``, ``tenants``,
thresholds given as a risk target, escalation targets written as plain names, and (when the
caller knows them) the valid signal and flag names as enums for completion.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from policies.conditions import CONFIDENCE
from policies.schema import Policy, RiskTarget

SCHEMA_ID = "https://guardrail.invalid/schemas/policy-v1.json"


def policy_json_schema(
    signal_names: Collection[str] | None = None, flag_names: Collection[str] | None = None
) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version 1 policy file."""
    schema = Policy.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    risk = RiskTarget.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    for name, definition in risk.pop("$defs", {}).items():
        defs.setdefault(name, definition)
    defs["RiskTarget"] = risk
    properties = schema["properties"]
    properties["thresholds"] = {
        "anyOf": [{"$ref": "#/$defs/Thresholds"}, {"$ref": "#/$defs/RiskTarget"}],
        "description": "Fixed numbers on the confidence, or a risk target certified at load.",
    }
    defs["Thresholds"]["properties"].pop("certified", None)
    targets = defs["EscalateSettings"]["properties"]["targets"]
    targets["items"] = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/Target"}]}
    properties["extends"] = {
        "type": "string",
        "description": "A bundled policy name or a policy file path (relative to this file) "
        "whose settings this file overrides.",
    }
    # A tenant's overrides are partial (validated only after merging): any top-level key.
    overrides: dict[str, Any] = {key: {} for key in properties if key != "extends"}
    overrides["extends"] = {
        "type": "string",
        "description": "Another tenant of this file whose overrides this tenant builds on.",
    }
    properties["tenants"] = {
        "type": "object",
        "description": "Per-tenant overrides of this policy: mappings merge key by key, any "
        "other value replaces the base value.",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "properties": overrides,
        },
    }
    if signal_names is not None:
        signal = defs["SignalCondition"]["properties"]["signal"]
        signal["enum"] = sorted({*signal_names, CONFIDENCE})
    if flag_names is not None:
        defs["FlagCondition"]["properties"]["flag"]["enum"] = sorted(flag_names)
    # A file that extends another may leave out what its base gives.
    required = schema.pop("required", [])
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {"required": required}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }
