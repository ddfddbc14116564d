"""The HTTP service, served for real by uvicorn on 127.0.0.1 and called with httpx.

Most tests serve a ``Guardrail`` built from the scripted backend (tests/fakes.py), the bundled
default policy and, where retrieval is needed, a FAISS index over three passages with the
hashing embedder: the HTTP layer is under test, the real-model path is covered by
test_real_models.py. One slow test serves the real pipeline built from settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fakes import ScriptedBackend, peaked
from fastapi import FastAPI

from guardrail.cli import main
from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.types import Generation, Response, TokenStats
from policies import Policy, bundled_policy_path
from retrievers import HashingEmbedder, Passage, PassageIndex, SentenceTransformerEmbedder
from service import ServiceSettings, create_app
from service.schemas import MAX_PASSAGES

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable", "Berlin", "Oslo", "Nice", "Madrid")
PARIS = Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France")
ROME = Passage("rome", "Rome is the capital of Italy.", "atlas.txt", title="Italy")
MADRID = Passage("madrid", "Madrid is the capital of Spain.", "atlas.txt", title="Spain")
QUESTION = "What is the capital of France?"
LIMIT = 4096  # max_body_bytes of the test servers: small, so oversized bodies are cheap


# ---------------------------------------------------------------- serving for real


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port of 127.0.0.1; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave logging alone, so that caplog sees the service's records.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start within 60 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def settings(tmp_path: Path, **fields: Any) -> ServiceSettings:
    """Settings independent of the caller's environment and user cache."""
    values: dict[str, Any] = {"cache_dir": tmp_path / "cache", "max_body_bytes": LIMIT}
    return ServiceSettings(**(values | fields))


def confident(token: str = "Paris") -> ScriptedBackend:
    """A model that says ``token`` with probability 0.95, with and without passages."""
    return ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, token, 0.95)], parametric=[peaked(VOCAB, token, 0.95)]
    )


class RaisingBackend:
    """A backend whose every call raises ``error``: a model failing while it runs."""

    name = "raising"
    chat = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        raise self.error

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        raise self.error

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        raise self.error


class GatedBackend(ScriptedBackend):
    """The confident scripted model, whose ``generate`` waits until the test opens a gate."""

    def __init__(self) -> None:
        model = confident()
        super().__init__(
            model.vocab,
            contextual=model.scripts["contextual"],
            parametric=model.scripts["parametric"],
        )
        self.entered = threading.Event()
        self.gate = threading.Event()

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return super().generate(
            prompt, max_new_tokens=max_new_tokens, temperature=temperature, probe=probe
        )


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_setting("balanced")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Iterator[str]:
    """One server for the module: the confident model over a three-passage index."""
    index = PassageIndex.build([PARIS, ROME, MADRID], HashingEmbedder(), progress=False)
    guard = Guardrail(backend=confident(), policy=policy, index=index)
    with serve(create_app(settings(tmp_path_factory.mktemp("svc")), guard=guard)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def serve_guard(tmp_path: Path, policy: Policy, backend: Any) -> Any:
    """Serve a pipeline without an index over ``backend``."""
    return serve(create_app(settings(tmp_path), guard=Guardrail(backend=backend, policy=policy)))


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> str:
    """``status`` with exactly the body {"error": {"type": error_type, "message": ...}}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    message: str = body["error"]["message"]
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- health and readiness


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_policy_and_the_index_size(client: httpx.Client, policy: Policy) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "policy": "balanced",
        "policy_hash": policy.content_hash,
        "index_passages": 3,
        "model": "scripted",
        "store": {"kind": "sqlite", "status": "ok"},
    }


def test_readyz_is_503_while_building_and_after_a_failed_build(tmp_path: Path) -> None:
    # The policy "file" is a named pipe: loading it blocks until the test writes the policy,
    # which holds the build in its "starting" state for as long as the test needs.
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    config = settings(tmp_path, policy=str(fifo), index_dir=tmp_path / "no-index")
    with serve(create_app(config)) as base, httpx.Client(base_url=base, timeout=30) as client:
        starting = client.get("/readyz")
        assert starting.status_code == 503
        assert starting.json()["status"] == "starting"
        assert starting.json()["error"]["type"] == "not_ready"
        assert "still being built" in starting.json()["error"]["message"]
        refused = client.post("/v1/answer", json={"question": QUESTION, "passages": []})
        assert_error(refused, 503, "not_ready", "still being built", "/readyz")
        assert refused.headers["retry-after"] == "5"
        assert client.get("/healthz").status_code == 200  # alive while not ready

        # A valid policy lets the build go on to the index, which does not exist.
        fifo.write_text(bundled_policy_path("balanced").read_text(encoding="utf-8"))
        deadline = time.monotonic() + 30
        while (failed := client.get("/readyz")).json()["status"] == "starting":
            assert time.monotonic() < deadline, "the build neither finished nor failed"
            time.sleep(0.05)
        assert failed.status_code == 503
        assert failed.json()["status"] == "failed"
        message = failed.json()["error"]["message"]
        assert f"no index at {tmp_path / 'no-index'}" in message
        assert "guardrail ingest" in message
        refused = client.post("/v1/answer", json={"question": QUESTION})
        assert_error(refused, 503, "not_ready", "could not be built", "no index at")
        assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------- answering


RESPONSE_FIELDS = {field.name for field in dataclasses.fields(Response)} | {
    "id",  # the decision id, for /v1/feedback
    "cached",  # served from the response cache
    "recorded",  # kept in the decision store
}


def test_answer_with_given_passages(client: httpx.Client) -> None:
    response = client.post(
        "/v1/answer",
        json={
            "question": f"  {QUESTION} ",
            "passages": [
                {"text": ROME.text, "id": "rome", "title": "Italy"},
                {"text": PARIS.text, "source": "atlas.txt"},
            ],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_FIELDS
    assert body["question"] == QUESTION
    assert body["action"] == "answer"
    assert body["answer"] == "Paris"
    assert body["policy_name"] == "balanced"
    # A passage without an id is named by its position.
    assert body["citations"] == [
        {"id": "request-2", "source": "atlas.txt", "title": "", "score": None}
    ]
    assert body["signals"]["answer_in_passages"] == 1.0


def test_answer_without_passages_searches_the_index(client: httpx.Client) -> None:
    response = client.post("/v1/answer", json={"question": QUESTION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["action"] == "answer"
    assert [c["id"] for c in body["citations"]] == ["paris"]
    assert body["citations"][0]["score"] is not None  # set by retrieval


def test_empty_passage_list_means_no_documents(client: httpx.Client) -> None:
    response = client.post("/v1/answer", json={"question": QUESTION, "passages": []})
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "defer"
    assert response.json()["citations"] == []


def test_the_event_loop_serves_while_the_model_runs(tmp_path: Path, policy: Policy) -> None:
    backend = GatedBackend()
    body = {"question": QUESTION, "passages": [{"text": PARIS.text}]}
    results: list[httpx.Response] = []
    with serve_guard(tmp_path, policy, backend) as base:
        asking = threading.Thread(
            target=lambda: results.append(httpx.post(f"{base}/v1/answer", json=body, timeout=60))
        )
        asking.start()
        assert backend.entered.wait(timeout=30), "the question never reached the model"
        # The model is busy in the threadpool; the event loop still answers.
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert asking.is_alive() and not results
        backend.gate.set()
        asking.join(timeout=30)
    assert results[0].status_code == 200
    assert results[0].json()["answer"] == "Paris"


# ---------------------------------------------------------------- request errors


def too_many_passages() -> list[dict[str, str]]:
    return [{"text": f"Passage {i}."} for i in range(MAX_PASSAGES + 1)]


REQUEST_ERRORS: list[tuple[str, Any, int, str, tuple[str, ...]]] = [
    # (id, body: JSON value or raw bytes, status, error type, message fragments)
    ("malformed-json", b'{"question": "What', 400, "invalid_json", ("not valid JSON",)),
    ("trailing-comma", b'{"question": "q",}', 400, "invalid_json", ("not valid JSON",)),
    ("no-body", b"", 422, "invalid_request", ("no body", '"question"')),
    ("not-an-object", ["What?"], 422, "invalid_request", ("body:", "object")),
    ("missing-question", {}, 422, "invalid_request", ("question: required",)),
    ("question-not-text", {"question": 42}, 422, "invalid_request", ("question:", "string")),
    ("question-null", {"question": None}, 422, "invalid_request", ("question:", "string")),
    (
        "unknown-field",
        {"question": "q", "passage": [{"text": "t"}]},
        422,
        "invalid_request",
        ("passage: unknown field", '"passages"'),
    ),
    (
        "passages-not-a-list",
        {"question": "q", "passages": "Paris is the capital."},
        422,
        "invalid_request",
        ("passages:", "list"),
    ),
    (
        "passage-not-an-object",
        {"question": "q", "passages": ["Paris is the capital."]},
        422,
        "invalid_request",
        ("passages[0]:",),
    ),
    (
        "passage-without-text",
        {"question": "q", "passages": [{"text": "t"}, {"title": "France"}]},
        422,
        "invalid_request",
        ("passages[1].text: required",),
    ),
    (
        "passage-blank-text",
        {"question": "q", "passages": [{"text": "  \n"}]},
        422,
        "invalid_request",
        ("passages[0].text:", "blank"),
    ),
    (
        "passage-text-not-text",
        {"question": "q", "passages": [{"text": 7}]},
        422,
        "invalid_request",
        ("passages[0].text:", "string", "got 7"),
    ),
    (
        "passage-unknown-field",
        {"question": "q", "passages": [{"text": "t", "score": 0.9}]},
        422,
        "invalid_request",
        ("passages[0].score: unknown field",),
    ),
    (
        "duplicate-passage-ids",
        {"question": "q", "passages": [{"text": "a", "id": "x"}, {"text": "b", "id": "x"}]},
        422,
        "invalid_request",
        ("passages[1]", "'x'", "unique"),
    ),
    (
        "too-many-passages",
        {"question": "q", "passages": too_many_passages()},
        422,
        "invalid_request",
        ("passages:", f"at most {MAX_PASSAGES}"),
    ),
    ("empty-question", {"question": " \t "}, 422, "invalid_question", ("question is empty",)),
    (
        "too-long-question",
        {"question": "why " * 300, "passages": [{"text": "t"}]},
        422,
        "invalid_question",
        ("1199 characters", "limit is 1000"),
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "error_type", "fragments"),
    [case[1:] for case in REQUEST_ERRORS],
    ids=[case[0] for case in REQUEST_ERRORS],
)
def test_request_errors(
    client: httpx.Client, body: Any, status: int, error_type: str, fragments: tuple[str, ...]
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(
        "/v1/answer", content=content, headers={"content-type": "application/json"}
    )
    message = assert_error(response, status, error_type, *fragments)
    assert "Traceback" not in message
    if status in (400, 422) and error_type != "invalid_question":
        assert "expected a JSON object" in message  # says what a valid body looks like


def test_body_that_is_not_json(client: httpx.Client) -> None:
    response = client.post(
        "/v1/answer", content=json.dumps({"question": "q"}), headers={"content-type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_media_type", "application/json", "text/plain")


def test_body_over_the_limit_by_content_length(client: httpx.Client) -> None:
    body = json.dumps({"question": "q", "passages": [{"text": "x" * LIMIT}]}).encode()
    response = client.post("/v1/answer", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large", f"{len(body)} bytes", f"limit is {LIMIT}")


def test_body_over_the_limit_without_content_length(client: httpx.Client) -> None:
    body = json.dumps({"question": "q", "passages": [{"text": "x" * LIMIT}]}).encode()
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    request = client.build_request(
        "POST", "/v1/answer", content=iter(chunks), headers={"content-type": "application/json"}
    )
    assert "content-length" not in request.headers  # sent chunked: counted as it arrives
    response = client.send(request)
    assert_error(response, 413, "body_too_large", f"exceeds the limit of {LIMIT} bytes")


def test_body_of_exactly_the_limit_is_accepted(client: httpx.Client) -> None:
    body = json.dumps({"question": QUESTION, "passages": [{"text": PARIS.text}]}).encode()
    body += b" " * (LIMIT - len(body))
    assert len(body) == LIMIT
    response = client.post("/v1/answer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found", "GET /v1/nothing")
    assert_error(client.get("/v1/answer"), 405, "method_not_allowed", "GET", "POST")


def test_openapi_describes_the_api(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/readyz", "/v1/answer"} <= set(schema["paths"])
    assert "AnswerRequest" in schema["components"]["schemas"]


def test_the_server_keeps_serving_after_bad_requests(client: httpx.Client) -> None:
    json_headers = {"content-type": "application/json"}
    for _ in range(2):
        assert client.post("/v1/answer", content=b"{", headers=json_headers).status_code == 400
        assert client.post("/v1/answer", json={"question": ""}).status_code == 422
        assert client.post("/v1/answer", json={"question": 1}).status_code == 422
        big = b'{"question": "' + b"x" * 2 * LIMIT + b'"}'
        assert client.post("/v1/answer", content=big, headers=json_headers).status_code == 413
        chunked = iter([b'{"question": "', b"x" * 2 * LIMIT, b'"}'])
        assert client.post("/v1/answer", content=chunked, headers=json_headers).status_code == 413
        assert client.get("/healthz").status_code == 200
    answered = client.post("/v1/answer", json={"question": QUESTION})
    assert answered.status_code == 200
    assert answered.json()["answer"] == "Paris"


# ---------------------------------------------------------------- pipeline errors


def test_a_failing_model_is_503_with_its_message(tmp_path: Path, policy: Policy) -> None:
    error = BackendError("generation failed: the model folder /m is unreadable")
    with serve_guard(tmp_path, policy, RaisingBackend(error)) as base:
        response = httpx.post(f"{base}/v1/answer", json={"question": QUESTION}, timeout=30)
        assert_error(response, 503, "backend_error", "the model folder /m is unreadable")
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def test_an_unexpected_error_is_a_generic_500_logged_without_the_body(
    tmp_path: Path, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "What does the private memo 7f3a say?"
    with (
        caplog.at_level(logging.ERROR),
        serve_guard(tmp_path, policy, RaisingBackend(RuntimeError("tensor exploded"))) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        response = client.post("/v1/answer", json={"question": secret})
        message = assert_error(response, 500, "internal_error", "unexpected error")
        assert "exploded" not in message  # no internals in the response
        assert client.get("/healthz").status_code == 200
        again = client.post("/v1/answer", json={"question": secret})
        assert again.status_code == 500
    logged = [r for r in caplog.records if r.name == "service.middleware"]
    assert len(logged) == 2
    assert logged[0].getMessage() == "unexpected error on POST /v1/answer"
    assert logged[0].exc_info is not None
    assert "tensor exploded" in caplog.text  # the traceback is logged...
    assert "7f3a" not in caplog.text  # ...the request is not


# ---------------------------------------------------------------- settings and the CLI


def test_settings_come_from_guardrail_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GUARDRAIL_POLICY", "strict")
    monkeypatch.setenv("GUARDRAIL_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("GUARDRAIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GUARDRAIL_PORT", "9001")
    monkeypatch.setenv("GUARDRAIL_MAX_BODY_BYTES", "1000")
    loaded = ServiceSettings()
    assert isinstance(loaded, GuardrailConfig)  # Guardrail.from_config takes it as it is
    assert loaded.policy == "strict"
    assert loaded.resolved_index_dir() == tmp_path / "index"
    assert loaded.cache_dir == tmp_path / "cache"
    assert (loaded.port, loaded.max_body_bytes, loaded.host) == (9001, 1000, "127.0.0.1")


Run = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    """Run ``guardrail`` in-process with a clean environment; return (status, stderr)."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--policy", "no-such-policy"), "no bundled policy named 'no-such-policy'"),
        (("--index", "{tmp}/missing"), "no index at {tmp}/missing"),
        (("--port", "70000"), "port: Input should be less than or equal to 65535"),
    ],
    ids=["unknown-policy", "missing-index", "bad-port"],
)
def test_serve_refuses_bad_settings_before_serving(
    cli: Run, tmp_path: Path, argv: tuple[str, ...], fragment: str
) -> None:
    code, err = cli("serve", *(arg.format(tmp=tmp_path) for arg in argv))
    assert code == 2
    assert err.startswith("guardrail: error: ")
    assert fragment.format(tmp=tmp_path) in err
    assert len(err.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_guardrail_serve_process(tmp_path: Path) -> None:
    # An index built with another embedder: `serve` starts, then reports why it is not ready.
    index_dir = tmp_path / "index"
    PassageIndex.build([PARIS, ROME], HashingEmbedder(), progress=False).save(index_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    env["GUARDRAIL_CACHE_DIR"] = str(tmp_path / "cache")
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--index", str(index_dir)]
    process = subprocess.Popen(
        [sys.executable, "-m", "guardrail.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "guardrail serve did not start"
            try:
                ready = httpx.get(f"{base}/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if ready.json()["status"] != "starting":
                break
            time.sleep(0.2)
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert "built with embedder 'hashing-256'" in ready.json()["error"]["message"]
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert "building the pipeline failed: index at" in err


# ---------------------------------------------------------------- the real pipeline


@pytest.mark.slow
def test_real_pipeline_from_settings_flags_a_contradicting_passage(tmp_path: Path) -> None:
    passages = [
        Passage("oil", "The 1973 oil crisis began in October 1973.", "t", title="Oil"),
        Passage("kenya", "Nairobi is the capital of Kenya.", "t", title="Kenya"),
        Passage("bowl", "Super Bowl 50 was played in February 2016.", "t", title="Bowl"),
    ]
    PassageIndex.build(passages, SentenceTransformerEmbedder(), progress=False).save(
        tmp_path / "index"
    )
    # Models come from the user's cache (converted once, as the CLI does); the index is ours.
    config = ServiceSettings(index_dir=tmp_path / "index", escalation_targets={}, policy="balanced")
    with serve(create_app(config)) as base, httpx.Client(base_url=base, timeout=300) as client:
        deadline = time.monotonic() + 600
        while (ready := client.get("/readyz")).json()["status"] == "starting":
            assert time.monotonic() < deadline, "the pipeline was not built in 10 minutes"
            time.sleep(0.5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["index_passages"] == 3
        assert ready.json()["model"] == "gemma-3-270m"
        response = client.post(
            "/v1/answer",
            json={"question": QUESTION, "passages": [{"text": "The capital of France is Lyon."}]},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["action"] != "answer"
    assert "knowledge_conflict" in body["flags"]
    assert body["model"] == "gemma-3-270m"
