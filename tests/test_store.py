"""The decision store contract, run against SQLite and against a real Redis server; then
persistence across restarts and the spool that keeps decisions while Redis is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, free_port

from service.store import (
    Bucket,
    DecisionStore,
    Feedback,
    RedisStore,
    ResilientStore,
    SqliteStore,
    StoreError,
    UnknownDecisionError,
    cache_key,
    normalize_question,
)

T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15); tests round it to their bucket


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decision(
    n: int, *, at: float = T0, tenant: str | None = None, action: str = "answer", c: float = 0.9
) -> dict[str, Any]:
    return {
        "id": f"dec_{n}",
        "recorded_at": at,
        "tenant": tenant,
        "policy_name": "balanced" if tenant is None else f"balanced.{tenant}",
        "action": action,
        "confidence": c,
        "question": f"question {n}",
        "text": f"text {n} ü",
    }


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis", "resilient"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[DecisionStore, Clock]]:
    clock = Clock()
    made: DecisionStore
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "d.sqlite", clock=clock)
    else:
        prefix = f"test:{tmp_path.name}:"  # every test its own keys on the shared server
        redis_store = RedisStore(redis_server.url, prefix=prefix, clock=clock)
        if request.param == "redis":
            made = redis_store
        else:
            made = ResilientStore(redis_store, SqliteStore(tmp_path / "spool.sqlite", clock=clock))
    yield made, clock
    made.close()


# --------------------------------------------------------------------------- the contract


def test_record_and_get(store: tuple[DecisionStore, Clock]) -> None:
    s, _ = store
    assert s.record(decision(1)) == "dec_1"
    assert s.get("dec_1") == decision(1)
    with pytest.raises(UnknownDecisionError):
        s.get("dec_nope")


def test_feedback(store: tuple[DecisionStore, Clock]) -> None:
    s, _ = store
    s.record(decision(1))
    s.add_feedback(Feedback("dec_1", False, label="wrong-year", comment="it was 1974", at=T0))
    s.add_feedback(Feedback("dec_1", True, at=T0 + 1))
    labels = s.feedback("dec_1")
    assert [(f.correct, f.label) for f in labels] == [(False, "wrong-year"), (True, None)]
    assert labels[0].comment == "it was 1974"
    assert s.feedback("dec_other") == []
    with pytest.raises(UnknownDecisionError):
        s.add_feedback(Feedback("dec_nope", True))


def test_labelled_keeps_each_decisions_latest_right_or_wrong_label(
    store: tuple[DecisionStore, Clock],
) -> None:
    s, _ = store
    for n in range(4):
        s.record(decision(n, at=T0 + n, tenant="acme" if n % 2 else None))
    s.add_feedback(Feedback("dec_0", False, at=T0 + 10))
    s.add_feedback(Feedback("dec_0", True, at=T0 + 11))  # relabelled: the latest counts
    s.add_feedback(Feedback("dec_0", None, comment="a remark, not a label", at=T0 + 12))
    s.add_feedback(Feedback("dec_1", False, at=T0 + 10))
    s.add_feedback(Feedback("dec_2", None, comment="unsure", at=T0 + 10))  # never labelled
    s.add_feedback(Feedback("dec_3", True, at=T0 + 10))
    labelled = s.labelled()
    assert [(item.record["id"], item.label.correct) for item in labelled] == [
        ("dec_0", True),
        ("dec_1", False),
        ("dec_3", True),
    ]
    assert labelled[1].record == decision(1, at=T0 + 1, tenant="acme")
    assert [item.record["id"] for item in s.labelled(since=T0 + 1)] == ["dec_1", "dec_3"]


def test_recent_is_newest_first(store: tuple[DecisionStore, Clock]) -> None:
    s, _ = store
    for n in range(5):
        s.record(decision(n, at=T0 + n))
    assert [r["id"] for r in s.recent(3)] == ["dec_4", "dec_3", "dec_2"]
    assert len(s.recent(50)) == 5


def test_action_counts_by_bucket_tenant_and_policy(store: tuple[DecisionStore, Clock]) -> None:
    s, clock = store
    start = T0 - T0 % 3600
    s.record(decision(1, at=start + 10, action="answer"))
    s.record(decision(2, at=start + 20, action="defer"))
    s.record(decision(3, at=start + 30, action="defer", tenant="acme"))
    s.record(decision(4, at=start + 3700, action="defer"))
    s.record(decision(5, at=start - 7200, action="answer"))  # before the window
    clock.now = start + 3800
    counts = s.action_counts(since=start, bucket_seconds=3600)
    assert counts == [
        Bucket(start, None, "balanced", "answer", 1),
        Bucket(start, None, "balanced", "defer", 1),
        Bucket(start, "acme", "balanced.acme", "defer", 1),
        Bucket(start + 3600, None, "balanced", "defer", 1),
    ]


def test_confidence_histogram(store: tuple[DecisionStore, Clock]) -> None:
    s, clock = store
    for n, c in enumerate((0.0, 0.05, 0.55, 0.99, 1.0)):
        s.record(decision(n, at=T0, c=c))
    s.record(decision(9, at=T0, c=0.3, tenant="acme"))
    clock.now = T0 + 10
    histogram = s.confidence_histogram(since=T0 - 60)
    assert histogram[(None, "balanced")] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert histogram[("acme", "balanced.acme")] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_response_cache(store: tuple[DecisionStore, Clock]) -> None:
    s, _ = store
    key = cache_key("What is X?", "corpus-1", "hash-1", None)
    assert s.cache_get(key) is None
    s.cache_put(key, {"text": "X"}, ttl_seconds=60)
    assert s.cache_get(key) == {"text": "X"}
    assert s.cache_get(cache_key("What is X?", "corpus-2", "hash-1", None)) is None


def test_rate_limit_counts_per_key_and_minute(store: tuple[DecisionStore, Clock]) -> None:
    s, clock = store
    clock.now = T0 - T0 % 60 + 1
    assert [s.hit_rate_limit("key-a", 3) for _ in range(4)] == [False, False, False, True]
    assert s.hit_rate_limit("key-b", 3) is False
    clock.now += 60
    assert s.hit_rate_limit("key-a", 3) is False


def test_ping(store: tuple[DecisionStore, Clock]) -> None:
    s, _ = store
    s.ping()


# --------------------------------------------------------------------------- expiry, keys


def test_cache_entries_expire(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    sqlite = SqliteStore(tmp_path / "d.sqlite", clock=clock)
    sqlite.cache_put("k", {"a": 1}, ttl_seconds=30)
    clock.now += 31
    assert sqlite.cache_get("k") is None
    redis_store = RedisStore(redis_server.url, prefix=f"ttl:{tmp_path.name}:")
    redis_store.cache_put("k", {"a": 1}, ttl_seconds=30)
    ttl = redis_store._redis.ttl(redis_store._key("cache", "k"))
    assert 0 < ttl <= 30


def test_cache_key_normalises_the_question() -> None:
    assert normalize_question("  What  is THE capital of France?? ") == (
        "what is the capital of france"
    )
    same = cache_key("What is the capital of France?", "c", "p", "acme")
    assert same == cache_key("what is the  capital of France", "c", "p", "acme")
    assert same != cache_key("What is the capital of France?", "c", "p", "other")


# --------------------------------------------------------------------------- durability


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "d.sqlite")
    first.record(decision(1))
    first.add_feedback(Feedback("dec_1", True))
    first.close()
    again = SqliteStore(tmp_path / "d.sqlite")
    assert again.get("dec_1") == decision(1)
    assert len(again.feedback("dec_1")) == 1


def test_redis_survives_a_server_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        RedisStore(server.url).record(decision(1))
        server.stop()
        server.start()
        assert RedisStore(server.url).get("dec_1") == decision(1)
    finally:
        server.stop()


def test_no_decision_is_lost_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    clock = Clock(0.0)
    store = ResilientStore(
        RedisStore(server.url, timeout_seconds=0.5),
        SqliteStore(tmp_path / "spool.sqlite"),
        retry_seconds=5,
        clock=clock,
    )
    try:
        store.record(decision(1))
        assert store.degraded is None
        server.stop()
        store.record(decision(2))
        store.add_feedback(Feedback("dec_2", False))
        assert store.degraded is not None and "Redis" in store.degraded
        assert store.get("dec_2") == decision(2)  # from the spool
        with pytest.raises(StoreError, match="retry later"):
            store.add_feedback(Feedback("dec_1", True))  # only the unreachable Redis has it
        store.ping()  # degraded, not unavailable: the spool takes the writes (/readyz)
        assert store.degraded is not None
        server.start()
        clock.now += 10
        store.record(decision(3))  # drains the spool first
        assert store.degraded is None
        redis_only = RedisStore(server.url)
        assert [redis_only.get(f"dec_{n}")["id"] for n in (1, 2, 3)] == ["dec_1", "dec_2", "dec_3"]
        assert [f.correct for f in redis_only.feedback("dec_2")] == [False]
        assert store.spool.all_records() == []
    finally:
        store.close()
        server.stop()


class CountingStore:
    """A store that forwards every call to ``inner`` and counts the calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


def test_a_circuit_breaker_stops_paying_for_a_redis_that_is_down(tmp_path: Path) -> None:
    """After a failure the primary is left alone for retry_seconds, then probed once, the wait
    doubling while it keeps failing; every decision meanwhile goes to the spool."""
    clock = Clock(0.0)
    down = CountingStore(RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5))
    store = ResilientStore(
        down, SqliteStore(tmp_path / "spool.sqlite"), retry_seconds=5, clock=clock
    )
    for n in range(20):
        store.record(decision(n))
    assert down.calls == 1  # the first failed; the other 19 never touched Redis
    store.ping()
    assert down.calls == 1 and store.degraded is not None
    clock.now += 5
    store.record(decision(20))  # the wait is over: one probe (the drain), which fails
    assert down.calls == 2
    clock.now += 5
    store.record(decision(21))  # now the wait is 10 s
    assert down.calls == 2
    clock.now += 5
    store.record(decision(22))
    assert down.calls == 3
    assert len(store.spool.all_records()) == 23  # nothing lost


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
def test_what_a_redis_restart_keeps(tmp_path: Path, persistent: bool) -> None:
    """With the append-only file (as compose runs it) every acknowledged decision survives a
    restart; without persistence they are all gone, which is what docs/service.md warns of."""
    server = RedisServer(tmp_path / "redis", persistent=persistent).start()
    try:
        store = ResilientStore(RedisStore(server.url), SqliteStore(tmp_path / "spool.sqlite"))
        for n in range(20):
            store.record(decision(n))
        server.stop()
        server.start()
        kept = RedisStore(server.url).recent(100)
        assert len(kept) == (20 if persistent else 0)
    finally:
        server.stop()


def test_a_frozen_redis_costs_one_timeout_then_the_spool_takes_the_writes(
    tmp_path: Path,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): the first write times
    out, the breaker opens, later writes go straight to the spool, and once Redis answers
    again the spool drains into it: nothing is lost."""
    server = RedisServer(tmp_path / "redis").start()
    clock = Clock(0.0)
    frozen = CountingStore(RedisStore(server.url, timeout_seconds=0.3))
    store = ResilientStore(
        frozen, SqliteStore(tmp_path / "spool.sqlite"), retry_seconds=5, clock=clock
    )
    try:
        store.record(decision(0))
        server.freeze()
        for n in range(1, 11):
            store.record(decision(n))
        assert frozen.calls == 2  # one write answered, one timed out; the rest skipped Redis
        assert store.degraded is not None
        server.thaw()
        clock.now += 5
        store.record(decision(11))  # the wait is over: the spool drains, then this write
        assert store.degraded is None
        kept = {r["id"] for r in RedisStore(server.url).recent(100)}
        assert kept == {f"dec_{n}" for n in range(12)}
    finally:
        server.thaw()
        server.stop()


def test_a_spool_left_by_a_previous_process_is_drained(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    spool = SqliteStore(tmp_path / "spool.sqlite")
    spool.record(decision(7))
    spool.close()
    prefix = f"drain:{tmp_path.name}:"
    store = ResilientStore(
        RedisStore(redis_server.url, prefix=prefix), SqliteStore(tmp_path / "spool.sqlite")
    )
    store.record(decision(8))
    assert RedisStore(redis_server.url, prefix=prefix).get("dec_7") == decision(7)
    assert store.spool.all_records() == []


def test_escalations_are_counted_besides_the_final_action(
    store: tuple[DecisionStore, Clock],
) -> None:
    s, clock = store
    start = T0 - T0 % 3600
    s.record({**decision(1, at=start + 1, action="answer"), "escalated": True})
    s.record({**decision(2, at=start + 2, action="defer"), "rule": "escalation:exhausted"})
    s.record(decision(3, at=start + 3, action="defer"))
    clock.now = start + 10
    counts = {(b.action, b.count) for b in s.action_counts(since=start, bucket_seconds=3600)}
    assert counts == {("answer", 1), ("defer", 2), ("escalated", 2)}


def test_the_service_keeps_answering_while_redis_is_down(tmp_path: Path) -> None:
    """Redis stops under a running service: answers go on under the policy, /readyz and the
    metrics say the store is degraded, and the decisions reach Redis once it is back."""
    import httpx
    from fakes import ScriptedBackend, peaked
    from test_service import serve, settings

    from guardrail.pipeline import Guardrail
    from guardrail.policy_runtime import PolicyRuntime
    from service import create_app

    vocab = ("Paris", "Lyon", "unanswerable")
    model = ScriptedBackend(
        vocab, contextual=[peaked(vocab, "Paris", 0.9)], parametric=[peaked(vocab, "Paris", 0.9)]
    )
    server = RedisServer(tmp_path / "redis").start()
    config = settings(tmp_path, store="redis", redis_url=server.url)
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting("balanced"))
    body = {"question": "What is the capital of France?", "passages": [{"text": "Paris is."}]}
    try:
        with serve(create_app(config, guard=guard)) as url:
            first = httpx.post(f"{url}/v1/answer", json=body, timeout=30).json()
            assert httpx.get(f"{url}/readyz").json()["store"]["status"] == "ok"
            server.stop()
            during = httpx.post(f"{url}/v1/answer", json=body, timeout=30)
            assert during.status_code == 200 and during.json()["action"] == "answer"
            assert during.json()["recorded"] is True  # in the local spool
            ready = httpx.get(f"{url}/readyz").json()
            assert ready["status"] == "ready"
            assert ready["store"]["status"] in ("unavailable", "degraded")
            assert "guardrail_store_up 0.0" in httpx.get(f"{url}/metrics").text
            server.start()
            time.sleep(5.5)  # the spool is retried at most every 5 s
            after = httpx.post(f"{url}/v1/answer", json=body, timeout=30).json()
            assert httpx.get(f"{url}/readyz").json()["store"]["status"] == "ok"
        stored = RedisStore(server.url)
        for record in (first, during.json(), after):
            assert stored.get(record["id"])["question"] == body["question"]
    finally:
        server.stop()


# --------------------------------------------------------------------------- shared budgets


def test_escalation_budgets_hold_across_replicas(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two replicas' ledgers on one Redis share the budget; the counts match the
    in-process ledger's rules (tests/test_escalation.py)."""
    from policies.schema import Budget, Target
    from service.store.ledger import RedisLedger

    clock = Clock()
    prefix = f"ledger:{tmp_path.name}:"
    one = RedisLedger(redis_server.url, prefix=prefix, clock=clock)
    two = RedisLedger(redis_server.url, prefix=prefix, clock=clock)
    target = Target(name="larger", budget=Budget(per_minute=3))
    taken = [ledger.acquire("p", target, None) for ledger in (one, two, one, two)]
    assert taken[:3] == [None, None, None]
    assert taken[3] is not None
    assert "3 escalations in the last minute (limit 3 per minute, across replicas)" in taken[3]
    clock.now += 61
    assert two.acquire("p", target, None) is None
    # A target that failed gives its escalation back, on every replica.
    one.release("p", target)
    assert one.acquire("p", target, None) is None

    share = Budget(max_share=0.25)
    plain = Target(name="mid")
    allowed = []
    for n in range(8):
        (one if n % 2 else two).record_decision("q")
        allowed.append((two if n % 2 else one).acquire("q", plain, share) is None)
    assert allowed == [True, False, False, False, True, False, False, False]


def test_a_shared_ledger_falls_back_to_its_own_count_when_redis_is_down(
    tmp_path: Path,
) -> None:
    from policies.schema import Budget, Target
    from service.store.ledger import RedisLedger

    server = RedisServer(tmp_path / "redis").start()
    ledger = RedisLedger(server.url, timeout_seconds=0.5)
    target = Target(name="larger", budget=Budget(per_minute=1))
    try:
        server.stop()
        assert ledger.acquire("p", target, None) is None  # counted locally
        assert ledger.degraded
        assert ledger.acquire("p", target, None) is not None  # the local budget holds
    finally:
        server.stop()


def test_replicas_sharing_redis_share_their_budgets(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from test_service import settings

    from service.store.ledger import RedisLedger, shared_ledger

    assert shared_ledger(settings(tmp_path)) is None  # SQLite: the in-process ledger
    ledger = shared_ledger(settings(tmp_path, store="redis", redis_url=redis_server.url))
    assert isinstance(ledger, RedisLedger)


def test_recording_again_changes_nothing(store: tuple[DecisionStore, Clock]) -> None:
    """A retried write (a spool drain that failed half-way) never counts twice."""
    s, clock = store
    start = T0 - T0 % 3600
    s.record(decision(1, at=start + 5))
    s.record(decision(1, at=start + 5))
    label = Feedback("dec_1", True, at=T0)
    s.add_feedback(label)
    s.add_feedback(label)
    clock.now = start + 10
    assert [b.count for b in s.action_counts(since=start, bucket_seconds=3600)] == [1]
    assert len(s.recent(10)) == 1
    assert len(s.feedback("dec_1")) == 1
    assert sum(sum(b) for b in s.confidence_histogram(since=start).values()) == 1


def test_readyz_says_degraded_while_redis_is_down(tmp_path: Path) -> None:
    """The docs' promise: with Redis unreachable the service answers, records into the spool,
    and /readyz says the store is degraded (not unavailable)."""
    import httpx
    from test_service import confident, serve, settings

    from guardrail.pipeline import Guardrail, load_policy_setting
    from service import create_app

    config = settings(
        tmp_path,
        store="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        store_path=tmp_path / "spool.sqlite",
    )
    guard = Guardrail(backend=confident(), policy=load_policy_setting("balanced"))
    with serve(create_app(config, guard=guard)) as url:
        answer = httpx.post(
            f"{url}/v1/answer",
            json={"question": "What is the capital of France?", "passages": [{"text": "Paris."}]},
            timeout=30,
        )
        ready = httpx.get(f"{url}/readyz", timeout=30)
    assert answer.status_code == 200 and answer.json()["recorded"] is True
    assert ready.json()["store"]["status"] == "degraded", ready.text
