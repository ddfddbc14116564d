"""A shared store that never loses a decision: Redis first, a local SQLite spool when Redis
is unreachable, drained back into Redis once it answers again."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from service.store.base import (
    Bucket,
    CircuitBreaker,
    DecisionStore,
    Feedback,
    Labelled,
    StoreError,
    UnknownDecisionError,
    latest_labels,
    merge_buckets,
)
from service.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)


class ResilientStore:
    """``primary`` (Redis) with ``spool`` (SQLite) as the fallback for writes.

    While the primary fails, decisions go to the spool and :attr:`degraded` says why; reads
    fall back to the spool's (partial) view. Every write first tries to drain the spool
    (at most every ``retry_seconds``), oldest first, deleting each record only once the
    primary holds it. A circuit breaker stops calling a primary that just failed (for
    ``retry_seconds``, doubling up to a minute while it keeps failing), so that requests do not
    each pay its timeouts: meanwhile everything goes straight to the spool.
    """

    rate_limit_in_memory = False
    """Counted by the primary (Redis, shared); by the spool's memory while it is down."""

    def __init__(
        self,
        primary: DecisionStore,
        spool: SqliteStore,
        *,
        retry_seconds: float = 5.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.primary = primary
        self.spool = spool
        self.kind = f"{primary.kind}+spool"
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_try = float("-inf")
        self.degraded: str | None = None
        self.fallbacks = 0
        """How many operations fell back to the spool (for the metrics)."""
        self.breaker = CircuitBreaker(cooldown=retry_seconds, clock=clock)
        self._pending = not spool.is_empty()

    def _failed(self, exc: StoreError) -> None:
        if self.degraded is None:
            logger.warning("decision store degraded, using the local spool: %s", exc)
        self.degraded = str(exc)
        self.fallbacks += 1
        self.breaker.failed()

    def _call(self, what: str, func: Any, *args: Any) -> Any:
        """``func(*args)`` on the primary, its failure noted (``degraded``, the breaker); a
        ``StoreError`` at once, without touching the primary, while the breaker is open."""
        if not self.breaker.allow():
            self.fallbacks += 1
            raise StoreError(f"skipped ({what}): {self.degraded}")
        try:
            result = func(*args)
        except UnknownDecisionError:
            self.breaker.succeeded()  # the primary answered
            raise
        except StoreError as exc:
            self._failed(exc)
            raise
        self.breaker.succeeded()
        return result

    def _drain(self) -> None:
        """Move spooled records into the primary, oldest first."""
        with self._lock:
            if not self._pending or self._clock() - self._last_try < self.retry_seconds:
                return
            if not self.breaker.allow():
                return
            self._last_try = self._clock()
            try:
                for record in self.spool.all_records():
                    self.primary.record(record)
                    for label in self.spool.feedback(str(record["id"])):
                        self.primary.add_feedback(label)
                    self.spool.delete(str(record["id"]))
            except StoreError as exc:
                self._failed(exc)
                return
            self.breaker.succeeded()
            self._pending = not self.spool.is_empty()
            if self.degraded is not None:
                logger.info("decision store recovered; the spool is drained")
            self.degraded = None

    def record(self, record: Mapping[str, Any]) -> str:
        self._drain()
        try:
            decision_id = self._call("record", self.primary.record, record)
        except StoreError:
            with self._lock:  # never between a drain's read and its delete
                self._pending = True
                return self.spool.record(record)
        self.degraded = None
        return decision_id

    def get(self, decision_id: str) -> dict[str, Any]:
        try:
            return self._call("get", self.primary.get, decision_id)
        except UnknownDecisionError:
            return self.spool.get(decision_id)
        except StoreError as exc:
            try:
                return self.spool.get(decision_id)
            except UnknownDecisionError:
                # Perhaps only the unreachable primary holds it: unavailable, not unknown.
                raise StoreError(
                    f"the decision store is unavailable ({exc}); retry later"
                ) from None

    def add_feedback(self, feedback: Feedback) -> None:
        try:
            self._call("add feedback", self.primary.add_feedback, feedback)
            return
        except (UnknownDecisionError, StoreError):
            pass
        # The decision is in the spool (recorded while the primary was down): the label waits
        # there with it. A decision held only by an unreachable primary cannot be labelled now.
        with self._lock:  # never between a drain's read and its delete
            try:
                self.spool.add_feedback(feedback)
            except UnknownDecisionError:
                if self.degraded is not None:
                    raise StoreError(
                        f"the decision store is unavailable ({self.degraded}); retry later"
                    ) from None
                raise
            self._pending = True

    def feedback(self, decision_id: str) -> list[Feedback]:
        try:
            labels = self._call("read feedback", self.primary.feedback, decision_id)
        except StoreError:
            labels = []
        return labels + self.spool.feedback(decision_id)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        spooled = self.spool.recent(limit)
        try:
            records = self._call("read recent decisions", self.primary.recent, limit)
        except StoreError:
            records = []
        merged = sorted(spooled + records, key=lambda r: r.get("recorded_at", 0), reverse=True)
        return merged[:limit]

    def labelled(self, since: float = 0.0) -> list[Labelled]:
        """The primary's labelled decisions and the spool's (decisions recorded while the
        primary was down, labelled there); the spool's alone while the primary is down."""
        try:
            shared = self._call("read labelled decisions", self.primary.labelled, since)
        except StoreError:
            shared = []
        spooled = self.spool.labelled(since)
        pairs = [(item.record, item.label) for item in (*shared, *spooled)]
        return latest_labels(pairs)

    def action_counts(self, since: float, bucket_seconds: int) -> list[Bucket]:
        spooled = self.spool.action_counts(since, bucket_seconds)
        try:
            counted = self._call("count actions", self.primary.action_counts, since, bucket_seconds)
        except StoreError:
            counted = []
        return merge_buckets([*counted, *spooled])

    def confidence_histogram(self, since: float) -> dict[tuple[str | None, str], list[int]]:
        merged = self.spool.confidence_histogram(since)
        try:
            counted = self._call("read the histogram", self.primary.confidence_histogram, since)
        except StoreError:
            counted = {}
        for key, bins in counted.items():
            mine = merged.setdefault(key, [0] * len(bins))
            merged[key] = [a + b for a, b in zip(mine, bins, strict=True)]
        return merged

    def cache_get(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call("read the cache", self.primary.cache_get, key)
        except StoreError:
            return None

    def cache_put(self, key: str, record: Mapping[str, Any], ttl_seconds: int) -> None:
        with contextlib.suppress(StoreError):  # a cache: nothing to fall back to
            self._call("write the cache", self.primary.cache_put, key, record, ttl_seconds)

    def hit_rate_limit(self, key: str, per_minute: int) -> bool:
        try:
            return self._call("count a request", self.primary.hit_rate_limit, key, per_minute)
        except StoreError:
            # Counted per replica while the shared counter is down.
            return self.spool.hit_rate_limit(key, per_minute)

    def ping(self) -> None:
        """Check the primary; while it fails the store is degraded (the spool takes the
        writes), which is what ``/readyz`` reports, not unavailable."""
        with contextlib.suppress(StoreError):  # noted: ``degraded`` says why
            self._call("answer a ping", self.primary.ping)

    def close(self) -> None:
        self.primary.close()
        self.spool.close()
