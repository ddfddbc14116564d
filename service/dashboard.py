"""The refusal-rate dashboard: ``GET /dashboard`` (a page with no build step) and
``GET /v1/dashboard/data`` (the numbers it draws, read from the decision store).

The page shows, per tenant and policy, the refusal (defer), hedge and escalation rates over
time, the confidence distribution and the latest decisions with their reasons. Decisions of
every tenant are visible there, so the data needs the admin key when one is configured
(the page reads it from ``#key=...`` in its address, which browsers never send to servers).
"""

from __future__ import annotations

import time
from collections import defaultdict
from importlib import resources
from typing import Any

from service.store import CONFIDENCE_BINS, DecisionStore
from service.store.base import ESCALATED

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


def dashboard_data(
    store: DecisionStore, *, hours: float = 24.0, bucket_seconds: int = 3600, latest: int = 50
) -> dict[str, Any]:
    """Rates over time per tenant and policy, the confidence histogram, the latest decisions."""
    now = time.time()
    since = now - hours * 3600
    per_series: dict[tuple[str | None, str], dict[float, dict[str, int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    overall: dict[str, int] = defaultdict(int)
    for bucket in store.action_counts(since, bucket_seconds):
        cell = per_series[(bucket.tenant, bucket.policy)][bucket.start]
        cell[bucket.action] = cell.get(bucket.action, 0) + bucket.count
        overall[bucket.action] += bucket.count
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
            }
        )
    histogram = [
        {"tenant": tenant, "policy": policy, "bins": bins}
        for (tenant, policy), bins in sorted(
            store.confidence_histogram(since).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        )
    ]
    records = [{key: record.get(key) for key in LATEST_FIELDS} for record in store.recent(latest)]
    return {
        "window": {"since": since, "until": now, "hours": hours, "bucket_seconds": bucket_seconds},
        "totals": _rates(overall),
        "series": series,
        "confidence": {"bins": CONFIDENCE_BINS, "histograms": histogram},
        "latest": records,
        "store": store.kind,
    }


def page() -> str:
    """The dashboard page (``service/static/dashboard.html``; no build step)."""
    return resources.files("service").joinpath("static", "dashboard.html").read_text("utf-8")
