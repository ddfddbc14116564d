"""Prometheus metrics of one app (its own registry, so that two apps never share counters).

guardrail_requests_total{endpoint, tenant, policy, action}   decisions served
guardrail_confidence{tenant, policy}                        histogram of the confidence
guardrail_stage_seconds{stage}                              retrieve generate score signals total
guardrail_escalations_total{tenant, policy, outcome}         escalated | fell_back
guardrail_errors_total{type}                                errors answered, by type
guardrail_cache_hits_total                                  answers from the response cache
guardrail_rate_limited_total{tenant}                        requests refused with 429
guardrail_questions_active                                  questions in work now
guardrail_questions_queued                                  questions waiting for a turn
guardrail_overloaded_total                                  refused with 503 (queue full)
guardrail_cancelled_total{stage}                            client left while queued | running
guardrail_store_up                                          1 when the store answers, else 0
guardrail_store_fallbacks_total                             writes that went to the spool
guardrail_escalation_budget_share{policy, target}           a budget's max_share, in force now
guardrail_escalation_budget_per_minute{policy, target}      a budget's per_minute, in force now

The two budget gauges are read from the policies in force at every scrape (so a reload shows
at once); ``target`` is a target's name, or ``chain`` for the budget of the whole chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from policies import Policy

NO_TENANT = "-"
"""The tenant label of requests made without a tenant."""

STAGES = ("retrieve", "generate", "score", "signals", "total")
"""The request stages timed, as the decision record's ``timings`` name them."""

CHAIN = "chain"
"""The ``target`` label of a budget on the whole escalation chain."""


class BudgetCollector:
    """The escalation budgets of the policies that ``source`` returns, read at each scrape.

    Budgets are counted per policy name (the ledger's scope), so the gauges are labelled by
    policy and target, not by tenant.
    """

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[Policy]] = tuple

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The two families, without samples (the registry checks names with these)."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per budget limit of every policy in force."""
        share, per_minute = self._families()
        seen: set[str] = set()
        for policy in self.source():
            if policy.name in seen:
                continue
            seen.add(policy.name)
            escalate = policy.actions.escalate
            budgets = [(t.name, t.budget) for t in escalate.targets] + [(CHAIN, escalate.budget)]
            for target, budget in budgets:
                if budget is not None and budget.max_share is not None:
                    share.add_metric([policy.name, target], budget.max_share)
                if budget is not None and budget.per_minute is not None:
                    per_minute.add_metric([policy.name, target], budget.per_minute)
        yield share
        yield per_minute

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "guardrail_escalation_budget_share",
                "The most escalations a budget allows, as a share of decisions.",
                labels=["policy", "target"],
            ),
            GaugeMetricFamily(
                "guardrail_escalation_budget_per_minute",
                "The most escalations a budget allows per minute.",
                labels=["policy", "target"],
            ),
        )


class Metrics:
    """The counters and histograms of one app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "guardrail_requests",
            "Decisions served, by endpoint, tenant, policy and action (as enforced).",
            ["endpoint", "tenant", "policy", "action"],
            registry=r,
        )
        self.confidence = Histogram(
            "guardrail_confidence",
            "The confidence of each decision.",
            ["tenant", "policy"],
            buckets=[i / 10 for i in range(1, 11)],
            registry=r,
        )
        self.stage = Histogram(
            "guardrail_stage_seconds",
            "Seconds spent per stage of a request.",
            ["stage"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.escalations = Counter(
            "guardrail_escalations",
            "Escalations, by outcome: escalated (a target answered) or fell_back.",
            ["tenant", "policy", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "guardrail_errors", "Error responses, by error type.", ["type"], registry=r
        )
        self.cache_hits = Counter(
            "guardrail_cache_hits", "Answers served from the response cache.", registry=r
        )
        self.rate_limited = Counter(
            "guardrail_rate_limited", "Requests refused with 429.", ["tenant"], registry=r
        )
        self.active = Gauge("guardrail_questions_active", "Questions in work now.", registry=r)
        self.queued = Gauge(
            "guardrail_questions_queued", "Questions waiting for a turn.", registry=r
        )
        self.overloaded = Counter(
            "guardrail_overloaded",
            "Questions refused with 503 because the queue was full.",
            registry=r,
        )
        self.cancelled = Counter(
            "guardrail_cancelled",
            "Questions whose client disconnected, by where they were: queued or running.",
            ["stage"],
            registry=r,
        )
        self.store_up = Gauge(
            "guardrail_store_up", "1 when the decision store answers, else 0.", registry=r
        )
        self.store_fallbacks = Gauge(
            "guardrail_store_fallbacks",
            "Store operations that fell back to the local spool since the start.",
            registry=r,
        )
        self.budgets = BudgetCollector()
        r.register(self.budgets)

    def follow_policies(self, source: Callable[[], Iterable[Policy]]) -> None:
        """Report the escalation budgets of the policies ``source`` returns (called at every
        scrape: give it the policies in force, not a copy)."""
        self.budgets.source = source

    def observe(self, endpoint: str, record: Mapping[str, Any]) -> None:
        """Count one served decision record."""
        tenant = record.get("tenant") or NO_TENANT
        policy = str(record.get("policy_name", ""))
        self.requests.labels(endpoint, tenant, policy, str(record.get("action"))).inc()
        self.confidence.labels(tenant, policy).observe(float(record.get("confidence") or 0.0))
        timings = record.get("timings") or {}
        for stage in STAGES:
            if stage in timings:
                self.stage.labels(stage).observe(float(timings[stage]))
        if record.get("escalated"):
            self.escalations.labels(tenant, policy, "escalated").inc()
        elif record.get("rule") == "escalation:exhausted":
            self.escalations.labels(tenant, policy, "fell_back").inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
