"""Back-pressure and cancellation: the admission gate alone, then the real app over HTTP.

The gate bounds the questions in work and those waiting; a full queue is a 503 with
``Retry-After``; a client that disconnects takes its question out of the queue, or stops its
model work at the next checkpoint, and nothing is recorded for it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from test_service import GatedBackend, confident, serve, settings

from guardrail.cancel import Cancelled, CancelToken, checkpoint, run_cancellable
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.types import Generation
from policies import Policy
from service import create_app
from service.admission import AdmissionGate, ClientGone, Overloaded

QUESTION = "What is the capital of France?"
BODY = {"question": QUESTION, "passages": [{"text": "Paris is the capital of France."}]}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_setting("balanced")


# ---------------------------------------------------------------- the gate alone


def test_the_gate_admits_in_order_queues_and_refuses_beyond_its_queue() -> None:
    async def scenario() -> list[str]:
        gate = AdmissionGate(max_active=1, max_queued=2, initial_seconds=4.0)
        order: list[str] = []
        release = asyncio.Event()

        async def question(name: str) -> None:
            async with gate.admitted():
                order.append(name)
                await release.wait()

        first = asyncio.create_task(question("a"))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(question(n)) for n in ("b", "c")]
        await asyncio.sleep(0.01)
        assert (gate.active, gate.queued) == (1, 2)
        with pytest.raises(Overloaded) as refused:
            async with gate.admitted():
                pass
        # Two ahead plus this one, at 4 s a question, one at a time.
        assert refused.value.retry_after == 12
        assert "1 questions in work, 2 waiting" in str(refused.value)
        release.set()
        await asyncio.gather(first, *waiting)
        assert (gate.active, gate.queued) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c"]


def test_a_client_that_leaves_the_queue_gives_its_place_up() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(max_active=1, max_queued=4)
        gone = False

        async def disconnected() -> bool:
            return gone

        release = asyncio.Event()

        async def busy() -> None:
            async with gate.admitted():
                await release.wait()

        async def leaver() -> None:
            async with gate.admitted(disconnected):
                raise AssertionError("a departed client must not be admitted")

        holder = asyncio.create_task(busy())
        await asyncio.sleep(0.01)
        leaving = asyncio.create_task(leaver())
        await asyncio.sleep(0.05)
        assert gate.queued == 1
        gone = True
        with pytest.raises(ClientGone):
            await leaving
        assert gate.queued == 0
        release.set()
        await holder
        assert gate.active == 0

    asyncio.run(scenario())


def test_the_retry_estimate_follows_observed_question_times() -> None:
    gate = AdmissionGate(max_active=2, max_queued=8, initial_seconds=5.0)
    assert gate.retry_after() == 3  # one place ahead of two, at 5 s
    for _ in range(30):
        gate.observe(1.0)
    assert gate.seconds_per_question == pytest.approx(1.0, abs=0.01)
    assert gate.retry_after() == 1
    with pytest.raises(ValueError, match="max_active must be at least 1"):
        AdmissionGate(max_active=0, max_queued=1)


def test_a_cancelled_token_stops_work_at_its_next_checkpoint() -> None:
    token = CancelToken()
    steps: list[int] = []

    def work() -> None:
        for step in range(100):
            checkpoint()
            steps.append(step)
            if step == 3:
                token.cancel("the test left")

    with pytest.raises(Cancelled, match="the test left"):
        run_cancellable(token, work)
    assert steps == [0, 1, 2, 3]
    checkpoint()  # outside the token nothing is cancelled


# ---------------------------------------------------------------- over HTTP


class CancellableBackend(GatedBackend):
    """The confident scripted model, whose ``generate`` decodes slowly, step by step,
    through the cancellation checkpoints (the way the local model's decoding loop does)."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        self.entered.set()
        try:
            for _ in range(300):  # 30 s unless cancelled
                checkpoint()
                time.sleep(0.1)
        except Cancelled:
            self.cancelled.set()
            raise
        self.finished.set()
        self.gate.set()
        return super().generate(prompt, max_new_tokens=max_new_tokens, probe=probe)


def metric(base: str, name: str) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def decisions(base: str) -> int:
    """How many decisions the service has served (``guardrail_requests_total``, all labels)."""
    lines = httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
    return int(
        sum(float(x.split()[-1]) for x in lines if x.startswith("guardrail_requests_total{"))
    )


def post_later(
    base: str, results: list[httpx.Response], body: dict[str, object]
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.append(httpx.post(f"{base}/v1/answer", json=body, timeout=60))
    )
    thread.start()
    return thread


def test_a_full_queue_is_a_503_with_retry_after(tmp_path: Path, policy: Policy) -> None:
    backend = GatedBackend()
    guard = Guardrail(backend=backend, policy=policy)
    app = create_app(
        settings(tmp_path, max_active_questions=1, max_queued_questions=1), guard=guard
    )
    results: list[httpx.Response] = []
    with serve(app) as base:
        running = post_later(base, results, BODY)
        assert backend.entered.wait(timeout=30)
        queued = post_later(base, results, BODY)
        deadline = time.monotonic() + 10
        while metric(base, "guardrail_questions_queued") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(base, "guardrail_questions_queued") == 1
        refused = httpx.post(f"{base}/v1/answer", json=BODY, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "overloaded"
        assert "1 questions in work, 1 waiting" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert metric(base, "guardrail_overloaded_total") == 1
        backend.gate.set()
        running.join(timeout=30)
        queued.join(timeout=30)
        assert [r.status_code for r in results] == [200, 200]
        assert decisions(base) == 2  # the refused question made no decision
        assert metric(base, "guardrail_questions_active") == 0


def _send_and_vanish(base: str, body: bytes) -> None:
    """POST ``body`` on a raw socket, then close it without reading the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/answer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        time.sleep(0.3)  # the question reaches the model before the client goes


def test_a_client_that_disconnects_cancels_its_running_question(
    tmp_path: Path, policy: Policy
) -> None:
    backend = CancellableBackend()
    guard = Guardrail(backend=backend, policy=policy)
    with serve(create_app(settings(tmp_path), guard=guard)) as base:
        _send_and_vanish(base, json.dumps(BODY).encode())
        assert backend.entered.wait(timeout=30)
        assert backend.cancelled.wait(timeout=10), "the model kept working for a gone client"
        assert not backend.finished.is_set()
        deadline = time.monotonic() + 10
        while metric(base, 'guardrail_cancelled_total{stage="running"}') < 1:
            assert time.monotonic() < deadline, "the cancellation was not counted"
            time.sleep(0.05)
        assert decisions(base) == 0  # no decision was made, none recorded
        assert metric(base, "guardrail_questions_active") == 0


def test_a_client_that_disconnects_while_queued_never_reaches_the_model(
    tmp_path: Path, policy: Policy
) -> None:
    backend = GatedBackend()
    guard = Guardrail(backend=backend, policy=policy)
    app = create_app(settings(tmp_path, max_active_questions=1), guard=guard)
    results: list[httpx.Response] = []
    with serve(app) as base:
        running = post_later(base, results, BODY)
        assert backend.entered.wait(timeout=30)
        _send_and_vanish(base, json.dumps({**BODY, "question": "Is Lyon in France?"}).encode())
        deadline = time.monotonic() + 10
        while metric(base, 'guardrail_cancelled_total{stage="queued"}') < 1:
            assert time.monotonic() < deadline, "the departed client stayed in the queue"
            time.sleep(0.05)
        assert metric(base, "guardrail_questions_queued") == 0
        backend.gate.set()
        running.join(timeout=30)
        assert results[0].status_code == 200
        prompts: Sequence[tuple[str, str]] = backend.calls
        assert sum(1 for method, _ in prompts if method == "generate") == 1
        assert decisions(base) == 1


@pytest.mark.parametrize("question", ["\u0000" * 10, "?!?", "   ...   "])
def test_a_question_without_words_is_refused_before_the_model(
    tmp_path: Path, policy: Policy, question: str
) -> None:
    backend = confident()
    with serve(
        create_app(settings(tmp_path), guard=Guardrail(backend=backend, policy=policy))
    ) as base:
        response = httpx.post(f"{base}/v1/answer", json={**BODY, "question": question}, timeout=30)
        assert response.status_code == 422, response.text
        assert "no letter or digit" in response.json()["error"]["message"]
    assert backend.calls == []


def test_the_rate_limit_is_on_by_default(tmp_path: Path, policy: Policy) -> None:
    config = settings(tmp_path)
    assert config.rate_limit_per_minute == 120
    assert settings(tmp_path, rate_limit_per_minute=0).rate_limit_per_minute == 0
    limited = settings(tmp_path, rate_limit_per_minute=2)
    guard = Guardrail(backend=confident(), policy=policy)
    with serve(create_app(limited, guard=guard)) as base:
        codes = [
            httpx.post(f"{base}/v1/answer", json=BODY, timeout=30).status_code for _ in range(3)
        ]
    assert codes == [200, 200, 429]
