"""Serving one question for an API caller: rate limit, response cache, the pipeline, then
the decision recorded in the store and counted in the metrics.

Every endpoint that answers (``/v1/answer``, ``/v1/chat/completions``) goes through
:meth:`Answerer.answer`, so they record the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi.concurrency import run_in_threadpool

from guardrail.cancel import Cancelled, CancelToken, run_cancellable
from guardrail.conversation import needs_rewrite
from guardrail.pipeline import Guardrail
from retrievers.types import Passage
from service.admission import AdmissionGate, ClientGone, Disconnected, Overloaded, watch
from service.errors import ApiError
from service.metrics import NO_TENANT, Metrics
from service.settings import ServiceSettings
from service.store import DecisionStore, StoreError, cache_key, new_decision_id

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499
"""The status logged for a question whose client disconnected (nginx's convention; nobody
receives it)."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: their tenant (``None``: the base policy) and a key fingerprint that
    identifies the key in logs and limits without revealing it."""

    tenant: str | None
    key_id: str
    admin: bool = False
    """The admin key: sees every tenant's policies (a tenant sees only its own)."""

    @classmethod
    def from_key(cls, key: str, tenant: str | None, *, admin: bool = False) -> Caller:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        return cls(tenant=tenant, key_id=f"key-{digest}", admin=admin)


ANONYMOUS = Caller(tenant=None, key_id="anonymous", admin=True)
"""The caller when the server has no API keys: a local set-up where everything is open."""


class Answerer:
    """The store, the metrics and the settings that every answering endpoint shares."""

    def __init__(self, settings: ServiceSettings, store: DecisionStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.gate = AdmissionGate(settings.resolved_max_active(), settings.max_queued_questions)
        metrics.active.set_function(lambda: self.gate.active)  # read at every scrape
        metrics.queued.set_function(lambda: self.gate.queued)

    async def answer(
        self,
        guard: Guardrail,
        question: str,
        passages: Sequence[Passage] | None,
        caller: Caller,
        *,
        endpoint: str,
        history: Sequence[tuple[str, str]] = (),
        disconnected: Disconnected | None = None,
    ) -> dict[str, Any]:
        """The decision record for one question, recorded (with its ``id``) and counted.
        A follow-up in a conversation (``history`` with an earlier user turn) is never served
        from the response cache: its meaning depends on the turns before it.

        The pipeline runs behind the admission gate (503 ``overloaded`` when its queue is
        full); ``disconnected`` tells when the client has gone away, which cancels the
        question's work (nothing is recorded: no decision was made)."""
        question = guard.check_question(question)
        await self._limit(caller)
        key = None
        index = guard.index
        if (
            self.settings.cache_ttl_seconds
            and passages is None
            and index is not None
            and not needs_rewrite(history)
        ):
            policy = guard.policy_for(caller.tenant)
            key = cache_key(question, index.corpus_version, policy.content_hash, caller.tenant)
            cached = await run_in_threadpool(self._cache_get, key)
            if cached is not None:
                self.metrics.cache_hits.inc()
                # Served now: a new decision at this time, with no model time spent.
                record = {**cached, "cached": True, "recorded_at": time.time(), "timings": {}}
                record = await run_in_threadpool(self._stored, record)
                return self._counted(record, endpoint)
        ask = partial(guard.ask, question, passages=passages, tenant=caller.tenant, history=history)

        def work() -> dict[str, Any]:
            # The decision is recorded in the same worker thread as soon as it is made (one
            # thread hop less per question), whether or not the client still waits for it.
            return self._stored({**ask().to_dict(), "cached": False})

        record = await self._run(work, disconnected)
        if key is not None:
            fresh = {k: v for k, v in record.items() if k not in ("id", "recorded")}
            await run_in_threadpool(self._cache_put, key, fresh)
        return self._counted(record, endpoint)

    async def _run(
        self, work: Callable[[], dict[str, Any]], disconnected: Disconnected | None
    ) -> dict[str, Any]:
        """``work`` in a worker thread, behind the gate, cancelled if the client leaves."""
        token = CancelToken()
        try:
            async with self.gate.admitted(disconnected):
                watcher = asyncio.create_task(watch(token, disconnected))
                began = time.perf_counter()
                try:
                    record = await run_in_threadpool(run_cancellable, token, work)
                finally:
                    watcher.cancel()
                self.gate.observe(time.perf_counter() - began)
                return record
        except Overloaded as exc:
            self.metrics.overloaded.inc()
            raise ApiError(
                503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None
        except (ClientGone, Cancelled) as exc:
            stage = "queued" if isinstance(exc, ClientGone) else "running"
            self.metrics.cancelled.labels(stage).inc()
            logger.info("question cancelled while %s: %s", stage, exc)
            raise ApiError(
                CLIENT_CLOSED, "client_closed_request", f"{exc}; no decision was made"
            ) from None

    async def _limit(self, caller: Caller) -> None:
        limit = self.settings.rate_limit_per_minute
        if not limit:
            return
        try:
            if self.store.rate_limit_in_memory:  # no I/O: a thread hop would cost more
                limited = self.store.hit_rate_limit(caller.key_id, limit)
            else:
                limited = await run_in_threadpool(self.store.hit_rate_limit, caller.key_id, limit)
        except StoreError as exc:
            self._store_failed(exc)
            return
        if limited:
            self.metrics.rate_limited.labels(caller.tenant or NO_TENANT).inc()
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit} requests in this minute for this API key; retry in a minute",
                headers={"Retry-After": "60"},
            )

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        try:
            return self.store.cache_get(key)
        except StoreError as exc:
            self._store_failed(exc)
            return None

    def _cache_put(self, key: str, record: dict[str, Any]) -> None:
        try:
            self.store.cache_put(key, record, self.settings.cache_ttl_seconds)
        except StoreError as exc:
            self._store_failed(exc)

    def _stored(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its new ``id``, written to the store (blocking: a worker thread's
        job); ``recorded`` says whether the write succeeded."""
        record = {**record, "id": new_decision_id()}
        try:
            self.store.record(record)
        except StoreError as exc:
            # The answer still goes out under the policy; the failure is logged and counted.
            self._store_failed(exc)
            record["recorded"] = False
        else:
            record["recorded"] = True
        return record

    def _counted(self, record: dict[str, Any], endpoint: str) -> dict[str, Any]:
        self.metrics.observe(endpoint, record)
        self._update_store_gauges()
        return record

    def _store_failed(self, exc: StoreError) -> None:
        logger.error("decision store error: %s", exc)
        self.metrics.errors.labels("store_error").inc()
        self.metrics.store_up.set(0)

    def _update_store_gauges(self) -> None:
        degraded = getattr(self.store, "degraded", None)
        self.metrics.store_up.set(0 if degraded else 1)
        self.metrics.store_fallbacks.set(getattr(self.store, "fallbacks", 0))

    def store_status(self) -> dict[str, Any]:
        """What ``/readyz`` says about the store."""
        try:
            self.store.ping()
        except StoreError as exc:
            self.metrics.store_up.set(0)
            return {"kind": self.store.kind, "status": "unavailable", "detail": str(exc)}
        degraded = getattr(self.store, "degraded", None)
        if degraded:
            return {"kind": self.store.kind, "status": "degraded", "detail": degraded}
        self.metrics.store_up.set(1)
        return {"kind": self.store.kind, "status": "ok"}
