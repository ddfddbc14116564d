"""``guardrail policy``: check, explain, schema and compare.

guardrail policy check FILE [--tenant NAME]     validate; print the merged policy
guardrail policy explain FILE --signals JSON    which rule fires and why (a replay)
guardrail policy schema [--out FILE]            the JSON Schema for editors
guardrail policy compare LOG                    shadow decisions against enforced ones
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from guardrail.assessment import FLAG_NAMES
from guardrail.decision_log import read_records
from guardrail.errors import ConfigError
from guardrail.judge import Judge
from guardrail.policy_runtime import PolicyRuntime, load_policies, policy_path
from guardrail.signals import SIGNAL_NAMES
from policies import Assessment, Policy
from policies.errors import did_you_mean
from policies.json_schema import policy_json_schema
from policies.loader import PolicySet

ACTIONS = ("answer", "hedge", "defer", "escalate")


def _load(value: str) -> tuple[Path, PolicySet]:
    path = policy_path(value)
    return path, load_policies(path)


def _pick(policies: PolicySet, tenant: str | None) -> Policy:
    if tenant is None:
        return policies.base
    if tenant not in policies.tenants:
        names = sorted(policies.tenants)
        raise ConfigError(
            f"{policies.source} has no tenant {tenant!r}{did_you_mean(tenant, names)}; "
            f"tenants: {', '.join(names) or 'none'}"
        )
    return policies.tenants[tenant]


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a policy file (its base, its tenants) and print the merged result."""
    path, policies = _load(args.file)
    policy = _pick(policies, args.tenant)
    tenants = ", ".join(f"{name} ({p.content_hash})" for name, p in policies.tenants.items())
    print(
        f"# {path}: valid. Policy {policies.base.name!r} ({policies.base.content_hash})"
        + (f"; tenants: {tenants}" if tenants else "; no tenants"),
    )
    if args.tenant:
        print(f"# Tenant {args.tenant!r}: the base policy with its overrides merged.")
    print(f"# Merged policy {policy.name!r}, content hash {policy.content_hash}:")
    data = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    print(yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True), end="")
    return 0


def _signals_argument(text: str) -> dict[str, Any]:
    """``--signals``: inline JSON, ``@FILE`` with JSON, or ``-`` for standard input."""
    if text == "-":
        raw, where = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        where = text[1:]
        try:
            raw = Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --signals file {where}: {exc.strerror}") from None
    else:
        raw, where = text, "--signals"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} must be a JSON object such as "
            '{"confidence": 0.4, "signals": {"cg_mean": 0.1}, "flags": []} '
            "or a decision record from the decision log"
        )
    return data


def assessment_from(data: Mapping[str, Any], judge: Judge) -> Assessment:
    """The assessment in a ``--signals`` object or a recorded decision.

    Signals may sit under ``"signals"`` or at the top level; without ``"confidence"`` the
    judge computes it with the policy's own scorer (its calibrator, or the heuristic).
    """
    raw = data.get("signals", {k: v for k, v in data.items() if k in SIGNAL_NAMES})
    if not isinstance(raw, dict):
        raise ConfigError('"signals" must be an object of signal name to number or null')
    unknown = sorted(set(raw) - SIGNAL_NAMES)
    if unknown:
        named = ", ".join(f"{u}{did_you_mean(u, SIGNAL_NAMES)}" for u in unknown)
        raise ConfigError(f"unknown signals: {named}; valid: {', '.join(sorted(SIGNAL_NAMES))}")
    signals: dict[str, float | None] = {}
    for name, value in raw.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"signal {name} must be a number or null, got {value!r}")
        signals[name] = None if value is None else float(value)
    flags = data.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ConfigError('"flags" must be a list of flag names')
    bad_flags = sorted(set(flags) - FLAG_NAMES)
    if bad_flags:
        raise ConfigError(
            f"unknown flags: {', '.join(bad_flags)}; valid: {', '.join(sorted(FLAG_NAMES))}"
        )
    confidence = data.get("confidence")
    try:
        given = None if confidence is None else float(confidence)
        return judge.assessment(
            signals, flags, abstained="model_abstained" in flags, confidence=given
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"confidence: {exc}") from None


def cmd_explain(args: argparse.Namespace) -> int:
    """Which rule of the policy fires on the given signals, and why."""
    path = policy_path(args.file)
    loaded = PolicyRuntime.from_setting(str(path)).current
    data = _signals_argument(args.signals)
    notes: list[str] = []
    if args.tenant is not None:
        _pick(loaded.policies, args.tenant)  # an unknown tenant is an error here
        tenant = args.tenant
    else:
        tenant = data.get("tenant") if isinstance(data.get("tenant"), str) else None
        if tenant is not None and tenant not in loaded.policies.tenants:
            notes.append(f"Tenant {tenant!r} has no overrides in this file: the base policy.")
    judge = loaded.judge(tenant)
    policy = judge.policy
    assessment = assessment_from(data, judge)
    traces, decision = judge.trace(assessment)
    recorded = data.get("policy_hash")
    lines = [f"Policy {policy.name!r} ({policy.content_hash}) from {path}", *notes]
    if recorded and recorded != policy.content_hash:
        lines.append(
            f"Note: the record was decided under policy hash {recorded}; this file now hashes "
            f"to {policy.content_hash}, so the replay shows what the current file decides."
        )
    flags = ", ".join(sorted(assessment.flags)) or "none"
    lines.append(f"Confidence {assessment.confidence:.4g}; flags: {flags}")
    for item in traces:
        mark = "MATCH" if item.matched else "no   "
        lines.append(f"  {mark} rule {item.rule}: {'; '.join(item.reasons)}")
    lines.append(f"Decision: {decision.action.value} (rule {decision.rule})")
    lines.extend(f"  because {reason}" for reason in decision.reasons)
    recorded_action = data.get("policy_action") or data.get("action")
    if data.get("escalated") or str(data.get("rule", "")).startswith("escalation:"):
        # The record holds the escalation's outcome; the policy's own decision was to escalate.
        recorded_action = "escalate"
    if recorded and recorded == policy.content_hash and recorded_action:
        same = recorded_action == decision.action.value
        lines.append(
            f"Replay: the recorded decision was {recorded_action}; "
            + ("the replay agrees." if same else "the replay DIFFERS.")
        )
    if args.json:
        print(
            json.dumps(
                {
                    "policy_name": policy.name,
                    "policy_hash": policy.content_hash,
                    "confidence": assessment.confidence,
                    "rules": [vars(t) | {"reasons": list(t.reasons)} for t in traces],
                    "decision": decision.to_dict(),
                },
                indent=2,
            )
        )
    else:
        print("\n".join(lines))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print or write the JSON Schema of policy files."""
    text = json.dumps(policy_json_schema(SIGNAL_NAMES, FLAG_NAMES), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def compare(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Enforced actions against shadow ones, over decision records.

    A record of a policy in shadow mode compares what was done (``action``, always
    ``answer``) with what the policy decided (``policy_action``); a record with a ``shadow``
    decision (a shadow policy next to the enforced one) compares ``action`` with it.
    """
    pairs: Counter[tuple[str, str]] = Counter()
    names: Counter[str] = Counter()
    for record in records:
        if record.get("mode") == "shadow":
            enforced, shadow = str(record.get("action")), str(record.get("policy_action"))
            names[f"{record.get('policy_name')} (shadow mode)"] += 1
        elif isinstance(record.get("shadow"), dict):
            enforced, shadow = str(record.get("action")), str(record["shadow"].get("action"))
            names[f"{record['shadow'].get('policy_name')} (shadow policy)"] += 1
        else:
            continue
        pairs[(enforced, shadow)] += 1
    total = sum(pairs.values())

    def share(predicate: Any) -> float:
        return sum(n for pair, n in pairs.items() if predicate(pair)) / total if total else 0.0

    return {
        "decisions": total,
        "shadow_policies": dict(names),
        "table": {f"{e} -> {s}": n for (e, s), n in sorted(pairs.items())},
        "enforced_refusal_rate": share(lambda p: p[0] == "defer"),
        "shadow_refusal_rate": share(lambda p: p[1] == "defer"),
        "shadow_hedge_rate": share(lambda p: p[1] == "hedge"),
        "shadow_escalation_rate": share(lambda p: p[1] == "escalate"),
        "agreement": share(lambda p: p[0] == p[1]),
        "answered_but_shadow_refuses": share(lambda p: p[0] == "answer" and p[1] == "defer"),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    """Summarise a decision log: shadow decisions against enforced ones."""
    result = compare(read_records(args.log))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["decisions"]:
        print(f"{args.log}: no decision with a shadow decision (mode: shadow or shadow_policy)")
        return 0
    print(f"{result['decisions']} decisions with a shadow decision in {args.log}")
    for name, count in result["shadow_policies"].items():
        print(f"  {name}: {count}")
    print("enforced -> shadow: count")
    for pair, count in result["table"].items():
        print(f"  {pair}: {count}")
    print(
        f"refusal rate: enforced {result['enforced_refusal_rate']:.1%}, "
        f"shadow {result['shadow_refusal_rate']:.1%}; shadow hedges "
        f"{result['shadow_hedge_rate']:.1%}, escalates {result['shadow_escalation_rate']:.1%}; "
        f"agreement {result['agreement']:.1%}; answered but the shadow would defer "
        f"{result['answered_but_shadow_refuses']:.1%}"
    )
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``policy`` and its subcommands to the command line. They read no settings, so
    they take none of the ``common`` options (the cache and index folders)."""
    policy = sub.add_parser("policy", help="check, explain, schema, compare policies")
    actions = policy.add_subparsers(dest="policy_command", required=True)

    p = actions.add_parser("check", help="validate a policy file and print the merged result")
    p.add_argument("file", help="policy YAML path or bundled policy name")
    p.add_argument("--tenant", help="print this tenant's merged policy")
    p.set_defaults(func=cmd_check)

    p = actions.add_parser("explain", help="which rule fires on given signals, and why")
    p.add_argument("file", help="policy YAML path or bundled policy name")
    p.add_argument(
        "--signals",
        required=True,
        help="JSON object (inline, @FILE or - for stdin): confidence, signals, flags; "
        "or a decision record from the decision log (replayed)",
    )
    p.add_argument("--tenant", help="use this tenant's policy")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=cmd_explain)

    p = actions.add_parser("schema", help="the JSON Schema of policy files, for editors")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.set_defaults(func=cmd_schema)

    p = actions.add_parser("compare", help="shadow decisions against enforced ones, from a log")
    p.add_argument("log", type=Path, help="a decision log (JSON Lines, setting decision_log)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_compare)
