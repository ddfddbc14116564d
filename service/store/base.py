"""The decision store's interface, shared by the SQLite and the Redis implementation.

A store keeps every decision record (what ``Guardrail.ask`` returns, plus an id), the
feedback labels given for them, a response cache with a time to live, and per-minute rate
limits; and it answers the dashboard's questions: counts of actions over time per tenant and
policy, the confidence distribution, the latest decisions.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

CONFIDENCE_BINS = 10
"""The confidence histogram has this many equal bins over [0, 1]."""


class StoreError(Exception):
    """The store could not do what was asked (its backend is unreachable or failed)."""


class UnknownDecisionError(KeyError):
    """No decision has this id."""


@dataclass(frozen=True)
class Feedback:
    """A label for a past decision: was the response right, and anything else said."""

    decision_id: str
    correct: bool | None
    label: str | None = None
    comment: str | None = None
    at: float = field(default_factory=time.time)
    feedback_id: str = field(default_factory=lambda: "fb_" + uuid.uuid4().hex)
    """Storing the same label twice (a retried spool drain) keeps it once."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "id": self.feedback_id,
            "decision_id": self.decision_id,
            "correct": self.correct,
            "label": self.label,
            "comment": self.comment,
            "at": self.at,
        }


@dataclass(frozen=True)
class Labelled:
    """A recorded decision with the label it carries: the latest feedback that said right or
    wrong (feedback with ``correct: null`` is a comment, not a label)."""

    record: dict[str, Any]
    label: Feedback


def latest_labels(pairs: Sequence[tuple[dict[str, Any], Feedback]]) -> list[Labelled]:
    """Each decision once, with its latest right-or-wrong label, oldest decision first."""
    latest: dict[str, Labelled] = {}
    for record, feedback in pairs:
        if feedback.correct is None:
            continue
        seen = latest.get(feedback.decision_id)
        if seen is None or (feedback.at, feedback.feedback_id) >= (
            seen.label.at,
            seen.label.feedback_id,
        ):
            latest[feedback.decision_id] = Labelled(record, feedback)
    return sorted(latest.values(), key=lambda item: float(item.record.get("recorded_at") or 0))


@dataclass(frozen=True)
class Bucket:
    """How many decisions of one action one tenant's policy made in one time bucket."""

    start: float
    tenant: str | None
    policy: str
    action: str
    count: int


class DecisionStore(Protocol):
    """Where decisions, feedback, cached responses and rate-limit counts live."""

    kind: str
    rate_limit_in_memory: bool
    """``hit_rate_limit`` only touches this process's memory (cheap enough to call from the
    event loop); otherwise it may wait on the network or the disk."""

    def record(self, record: Mapping[str, Any]) -> str:
        """Keep one decision record (it must have a string ``id``); return the id."""
        ...

    def get(self, decision_id: str) -> dict[str, Any]:
        """The record with this id, or :class:`UnknownDecisionError`."""
        ...

    def add_feedback(self, feedback: Feedback) -> None:
        """Keep a label for a recorded decision, or :class:`UnknownDecisionError`."""
        ...

    def feedback(self, decision_id: str) -> list[Feedback]:
        """The labels given for a decision, oldest first."""
        ...

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest records, newest first."""
        ...

    def labelled(self, since: float = 0.0) -> list[Labelled]:
        """Every decision made since ``since`` that carries a right-or-wrong label, with its
        latest such label, oldest first (every tenant: callers keep tenants apart)."""
        ...

    def action_counts(self, since: float, bucket_seconds: int) -> list[Bucket]:
        """Counts per time bucket, tenant, policy and action (as enforced) since ``since``;
        decisions that were escalated are counted again under :data:`ESCALATED`."""
        ...

    def confidence_histogram(self, since: float) -> dict[tuple[str | None, str], list[int]]:
        """Per (tenant, policy): counts of confidences in :data:`CONFIDENCE_BINS` bins."""
        ...

    def cache_get(self, key: str) -> dict[str, Any] | None:
        """A cached response record, or ``None`` when absent or expired."""
        ...

    def cache_put(self, key: str, record: Mapping[str, Any], ttl_seconds: int) -> None:
        """Cache a response record for ``ttl_seconds``."""
        ...

    def hit_rate_limit(self, key: str, per_minute: int) -> bool:
        """Count one request for ``key``; ``True`` when that exceeds ``per_minute``."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreError` when the store cannot be reached."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class CircuitBreaker:
    """Stops paying timeouts to a server that is down: after a failure, calls are skipped
    (``allow`` is False) for ``cooldown`` seconds, doubling up to ``max_cooldown`` while the
    server keeps failing; once the wait is over, one call goes through as a probe, and a
    success closes the breaker again."""

    def __init__(
        self, cooldown: float = 5.0, max_cooldown: float = 60.0, clock: Any = time.monotonic
    ) -> None:
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._wait = 0.0
        self._until = float("-inf")

    @property
    def is_open(self) -> bool:
        """Whether calls are being skipped right now."""
        return self._clock() < self._until

    def allow(self) -> bool:
        """Whether to call the server now (closed, or the wait is over: a probe)."""
        if self._clock() < self._until:
            return False
        if self._wait:
            # Half-open: this caller probes; the others keep skipping until it reports.
            self._until = self._clock() + self._wait
        return True

    def failed(self) -> None:
        """A call failed: open (again), for twice as long as last time, up to the maximum."""
        self._wait = min(self.max_cooldown, self._wait * 2 if self._wait else self.cooldown)
        self._until = self._clock() + self._wait

    def succeeded(self) -> None:
        """A call succeeded: close."""
        self._wait = 0.0
        self._until = float("-inf")


def new_decision_id() -> str:
    """A fresh, unguessable decision id."""
    return "dec_" + uuid.uuid4().hex


def confidence_bin(confidence: float) -> int:
    """The histogram bin of a confidence in [0, 1]."""
    return min(int(max(confidence, 0.0) * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)


def normalize_question(question: str) -> str:
    """The question as a cache key part: Unicode-normalised, case-folded, spaces collapsed,
    trailing punctuation dropped."""
    text = unicodedata.normalize("NFKC", question).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(" ?!.")


def cache_key(question: str, corpus_version: str, policy_hash: str, tenant: str | None) -> str:
    """The response cache key: the normalised question, the corpus version and the policy."""
    parts = [normalize_question(question), corpus_version, policy_hash, tenant or ""]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def summary_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every store indexes a record by."""
    return {
        "id": str(record["id"]),
        "at": float(record.get("recorded_at") or time.time()),
        "tenant": record.get("tenant"),
        "policy": str(record.get("policy_name", "")),
        "action": str(record.get("action", "")),
        "confidence": float(record.get("confidence") or 0.0),
        "escalated": bool(record.get("escalated") or record.get("rule") == "escalation:exhausted"),
    }


def policy_answered(record: Mapping[str, Any]) -> bool:
    """Whether the policy answered (``policy_action``: in shadow mode what it would have
    done; hedges do not count): the decisions an error target speaks about."""
    return (record.get("policy_action") or record.get("action")) == "answer"


ESCALATED = "escalated"
"""The pseudo-action that :meth:`DecisionStore.action_counts` also counts: decisions that went
to escalation, whatever their final action (answered by a target, or fallen back)."""


def merge_buckets(rows: Sequence[Bucket]) -> list[Bucket]:
    """Buckets with the same key summed, in time order."""
    totals: dict[tuple[float, str | None, str, str], int] = {}
    for row in rows:
        key = (row.start, row.tenant, row.policy, row.action)
        totals[key] = totals.get(key, 0) + row.count
    return [
        Bucket(start, tenant, policy, action, count)
        for (start, tenant, policy, action), count in sorted(
            totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2], kv[0][3])
        )
    ]
