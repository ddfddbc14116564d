"""The refusal-rate dashboard: ``GET /dashboard`` (a page with no build step) and
``GET /v1/dashboard/data`` (the numbers it draws, read from the decision store).

The page shows, per tenant and policy, the refusal (defer), hedge and escalation rates over
time, the confidence distribution and the latest decisions with their reasons; it marks a
*drift* (the recent window's rates or mean confidence against the reference window's, with
the alert rules' defaults: ``DriftSettings``), and shows how many decisions carry a label and
the error measured among the answered ones, with its exact 95% interval, against the policy's
certified target. Decisions of
every tenant are visible there, so the data needs the admin key when one is configured
(the page reads it from ``#key=...`` in its address, which browsers never send to servers).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from guardrail.risk import binomial_interval
from policies import Policy
from service.settings import DriftSettings
from service.store import CONFIDENCE_BINS, Bucket, DecisionStore, Labelled
from service.store.base import ESCALATED, policy_answered

ACTIONS = ("answer", "hedge", "defer")
LATEST_FIELDS = (
    "id",
    "recorded_at",
    "tenant",
    "policy_name",
    "action",
    "policy_action",
    "mode",
    "confidence",
    "question",
    "rule",
    "reasons",
    "escalated",
)


def _rates(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.get(action, 0) for action in ACTIONS)

    def rate(n: int) -> float | None:
        return n / total if total else None

    return {
        "total": total,
        **{action: counts.get(action, 0) for action in ACTIONS},
        "escalated": counts.get(ESCALATED, 0),
        "refusal_rate": rate(counts.get("defer", 0)),
        "hedge_rate": rate(counts.get("hedge", 0)),
        "escalation_rate": rate(counts.get(ESCALATED, 0)),
    }


Key = tuple[str | None, str]


def _window(
    buckets: Iterable[Bucket], histogram: Mapping[Key, list[int]]
) -> dict[Key, dict[str, Any]]:
    """Per tenant and policy: the rates of ``buckets`` and the mean confidence of
    ``histogram`` (from the bins' midpoints, so within half a bin: 0.05)."""
    counts: dict[Key, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for bucket in buckets:
        counts[(bucket.tenant, bucket.policy)][bucket.action] += bucket.count
    out = {key: _rates(c) for key, c in counts.items()}
    for key, bins in histogram.items():
        n = sum(bins)
        mean = sum((i + 0.5) / len(bins) * c for i, c in enumerate(bins)) / n if n else None
        out.setdefault(key, _rates({}))["confidence_mean"] = mean
    return out


def _read_window(store: DecisionStore, since: float) -> dict[Key, dict[str, Any]]:
    return _window(store.action_counts(since, 3600), store.confidence_histogram(since))


DRIFT_MEASURES = ("refusal_rate", "hedge_rate", "escalation_rate")


def drift_marks(
    recent: dict[str, Any], reference: dict[str, Any], settings: DriftSettings
) -> list[dict[str, Any]]:
    """What drifted between the two windows of one tenant and policy: a share that moved by
    more than ``share_change`` either way, a mean confidence that fell by more than
    ``confidence_drop``; nothing with fewer than ``min_decisions`` recent decisions."""
    if recent.get("total", 0) < settings.min_decisions:
        return []
    marks = []
    for measure in (*DRIFT_MEASURES, "confidence_mean"):
        now, then = recent.get(measure), reference.get(measure)
        if now is None or then is None:
            continue
        change = now - then
        if (measure == "confidence_mean" and -change > settings.confidence_drop) or (
            measure != "confidence_mean" and abs(change) > settings.share_change
        ):
            marks.append({"measure": measure, "recent": now, "reference": then, "change": change})
    return marks


def label_status(errors: int, answered: int, target: float | None) -> str:
    """Where the measured error stands against the target: ``above_target`` when even the
    interval's lower end is above it, ``within_target`` when its upper end is not,
    ``inconclusive`` in between; ``no_target`` (fixed thresholds promise nothing) and
    ``no_labels`` (no labelled answer) otherwise."""
    if not answered:
        return "no_labels"
    if target is None:
        return "no_target"
    lower, upper = binomial_interval(errors, answered)
    if lower > target:
        return "above_target"
    return "within_target" if upper <= target else "inconclusive"


def labels(
    store: DecisionStore, since: float, targets: Mapping[str, float | None]
) -> list[dict[str, Any]]:
    """Per tenant and policy since ``since``: decisions, labelled decisions, labelled answers
    (the policy answered: ``policy_action``, so shadow mode counts what it would have done),
    the wrong ones, the measured error with its exact 95% interval, the policy's target."""
    # Every decision is in the confidence histogram once: hourly counters in Redis, where the
    # action counts are kept per minute (a week of those would be 10,080 reads a refresh).
    decisions = {key: sum(bins) for key, bins in store.confidence_histogram(since).items()}
    groups: dict[Key, list[Labelled]] = defaultdict(list)
    for item in store.labelled(since):
        groups[(item.record.get("tenant"), str(item.record.get("policy_name", "")))].append(item)
    rows = []
    for key in sorted(set(decisions) | set(groups), key=lambda k: (k[0] or "", k[1])):
        items = groups.get(key, [])
        answered = [i for i in items if policy_answered(i.record)]
        wrong = sum(not i.label.correct for i in answered)
        lower, upper = binomial_interval(wrong, len(answered))
        target = targets.get(key[1])
        rows.append(
            {
                "tenant": key[0],
                "policy": key[1],
                "decisions": decisions.get(key, 0),
                "labelled": len(items),
                "labelled_answers": len(answered),
                "wrong": wrong,
                "error": wrong / len(answered) if answered else None,
                "interval": [lower, upper] if answered else None,
                "target": target,
                "status": label_status(wrong, len(answered), target),
            }
        )
    return rows


def dashboard_data(
    store: DecisionStore,
    *,
    hours: float = 24.0,
    bucket_seconds: int = 3600,
    latest: int = 50,
    drift: DriftSettings | None = None,
    targets: Mapping[str, float | None] | None = None,
    label_days: float = 7.0,
) -> dict[str, Any]:
    """Rates over time per tenant and policy with their drift marks, the confidence
    histogram, the labels and measured error, the latest decisions. ``targets`` maps a
    policy name to its certified error target (None: fixed thresholds)."""
    drift = drift or DriftSettings()
    now = time.time()
    since = now - hours * 3600
    per_series: dict[tuple[str | None, str], dict[float, dict[str, int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    overall: dict[str, int] = defaultdict(int)
    window = store.action_counts(since, bucket_seconds)
    for bucket in window:
        cell = per_series[(bucket.tenant, bucket.policy)][bucket.start]
        cell[bucket.action] = cell.get(bucket.action, 0) + bucket.count
        overall[bucket.action] += bucket.count
    confidence = store.confidence_histogram(since)
    recent = _read_window(store, now - drift.recent_hours * 3600)
    reference = (
        _window(window, confidence)  # the page's own window (the default): read once
        if drift.reference_hours == hours
        else _read_window(store, now - drift.reference_hours * 3600)
    )
    series = []
    for (tenant, policy), buckets in sorted(
        per_series.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        totals: dict[str, int] = defaultdict(int)
        for counts in buckets.values():
            for action, n in counts.items():
                totals[action] += n
        series.append(
            {
                "tenant": tenant,
                "policy": policy,
                "totals": _rates(totals),
                "buckets": [
                    {"start": start, **_rates(counts)} for start, counts in sorted(buckets.items())
                ],
                "drift": _drift(recent, reference, (tenant, policy), drift),
            }
        )
    histogram = [
        {"tenant": tenant, "policy": policy, "bins": bins}
        for (tenant, policy), bins in sorted(
            confidence.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        )
    ]
    records = [{key: record.get(key) for key in LATEST_FIELDS} for record in store.recent(latest)]
    return {
        "window": {"since": since, "until": now, "hours": hours, "bucket_seconds": bucket_seconds},
        "drift": drift.model_dump(),
        "labels": {
            "days": label_days,
            "rows": labels(store, now - label_days * 86400, targets or {}),
        },
        "totals": _rates(overall),
        "series": series,
        "confidence": {"bins": CONFIDENCE_BINS, "histograms": histogram},
        "latest": records,
        "store": store.kind,
    }


def _drift(
    recent: dict[Key, dict[str, Any]],
    reference: dict[Key, dict[str, Any]],
    key: Key,
    settings: DriftSettings,
) -> dict[str, Any]:
    now, then = recent.get(key, _rates({})), reference.get(key, _rates({}))
    picked = ("total", *DRIFT_MEASURES, "confidence_mean")
    return {
        "recent": {k: now.get(k) for k in picked},
        "reference": {k: then.get(k) for k in picked},
        "marks": drift_marks(now, then, settings),
    }


def policy_targets(policies: Iterable[Policy]) -> dict[str, float | None]:
    """Each policy's certified error target by name (None for fixed thresholds)."""
    targets: dict[str, float | None] = {}
    for policy in policies:
        certified = policy.decision_thresholds().certified
        targets[policy.name] = certified.max_error_rate if certified else None
    return targets


def page() -> str:
    """The dashboard page (``service/static/dashboard.html``; no build step)."""
    return resources.files("service").joinpath("static", "dashboard.html").read_text("utf-8")
