"""Proxy mode against a real OpenAI-compatible server: this project's own
``guardrail serve --mode model`` serving the embedded model, started as a separate process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from redis_server import free_port
from test_service import serve, settings

from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.backends.openai_compat import OpenAICompatibleBackend, ScoringUnavailable
from guardrail.config import GuardrailConfig
from guardrail.pipeline import Guardrail, local_backend
from guardrail.policy_runtime import PolicyRuntime
from guardrail.prompts import FewShotPrompt
from retrievers import HashingEmbedder, Passage, PassageIndex
from service import create_app

MODEL = "gemma-3-270m"
LYON = Passage("lyon", "The capital of France is Lyon.", "forged.txt", title="Forged")
KENYA = Passage(
    "kenya",
    "Kibaki and Odinga signed an agreement on the formation of a coalition government on "
    "28 February 2008.",
    "news.txt",
    title="Kenya",
)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``guardrail serve --mode model`` in its own process; yields its /v1 URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "guardrail.cli",
                "serve",
                "--mode",
                "model",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the model server did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_model_server_speaks_openai(model_server: str) -> None:
    client = openai.OpenAI(base_url=model_server, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    completion = client.completions.create(
        model=MODEL,
        prompt="Question: What is the capital of France?\nAnswer:",
        max_tokens=5,
        temperature=0,
        logprobs=3,
        stop=["\n"],
    )
    choice = completion.choices[0]
    assert choice.text.strip() == "Paris"
    assert choice.logprobs is not None
    assert choice.logprobs.tokens == [" Paris"]
    assert len(choice.logprobs.top_logprobs[0]) == 3
    assert max(choice.logprobs.top_logprobs[0].values()) == pytest.approx(
        choice.logprobs.token_logprobs[0]
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert chat.choices[0].logprobs is not None
    content = chat.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 2
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)


@pytest.mark.slow
def test_echo_scores_a_continuation_like_the_embedded_model(model_server: str) -> None:
    remote = OpenAICompatibleBackend(model_server, MODEL)
    local = local_backend(GuardrailConfig(), MODEL)
    prompt = "Question: What is the capital of France?\nAnswer:"
    by_server = remote.score(prompt, " Lyon")
    by_hand = local.score(prompt, " Lyon")
    assert by_server.logprobs == pytest.approx(by_hand.logprobs, abs=1e-3)
    assert not by_server.full_vocab


@pytest.mark.slow
def test_proxy_mode_end_to_end_through_the_chat_api(model_server: str, tmp_path: Path) -> None:
    """The service in proxy mode: the model server answers, guardrail measures and decides."""
    index = PassageIndex.build([LYON, KENYA], HashingEmbedder(), progress=False)
    guard = Guardrail(
        backend=OpenAICompatibleBackend(model_server, MODEL),
        policy=PolicyRuntime.from_setting("balanced"),
        index=index,
    )
    with serve(create_app(settings(tmp_path), guard=guard)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        completion = client.chat.completions.create(
            model="guardrail",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    decision = completion.model_extra["guardrail"]
    assert decision["model"] == MODEL
    # The answer came from the upstream model, with the forged passage in its prompt.
    signals = decision["signals"]
    assert signals["mean_logprob"] is not None
    assert signals["cg_mean"] is not None  # the no-passage pass ran through echo
    assert signals["parametric_agreement"] is not None
    assert decision["citations"]
    assert "Lyon" in completion.choices[0].message.content or decision["action"] == "defer"


@pytest.mark.slow
def test_the_guard_model_reads_the_chat_upstreams_answer(model_server: str) -> None:
    """The chat route answers; the local guard model (the same weights, in this process)
    teacher-forces that answer with and without the passages."""
    local = local_backend(GuardrailConfig(), MODEL)
    upstream = OpenAIChatBackend(model_server, MODEL)
    pipeline = Guardrail(
        backend=upstream, policy=PolicyRuntime.from_setting("balanced"), guard=local
    )
    response = pipeline.ask("Who signed the coalition agreement?", passages=[KENYA])
    assert response.answer
    sources = response.signal_sources
    assert sources["cg_mean"] == sources["parametric_agreement"] == "guard"
    assert sources["mean_logprob"] == "generator"  # the chat route returned logprobs
    # The guard's no-passage reading of the upstream's answer, by hand:
    prompts = FewShotPrompt(GuardrailConfig().max_passage_words)
    by_hand = local.score(prompts.parametric(response.question), " " + response.answer)
    assert response.signals["parametric_logprob"] == pytest.approx(
        sum(by_hand.logprobs) / len(by_hand.logprobs), abs=1e-4
    )
    # Without the upstream's logprobs the token signals are the guard's reading too.
    quiet = Guardrail(
        backend=OpenAIChatBackend(model_server, MODEL, logprobs=False),
        policy=PolicyRuntime.from_setting("balanced"),
        guard=local,
    )
    again = quiet.ask("Who signed the coalition agreement?", passages=[KENYA])
    assert again.answer == response.answer
    assert again.signal_sources["mean_logprob"] == "guard"
    assert again.signals["cg_mean"] == pytest.approx(response.signals["cg_mean"], abs=1e-4)


def test_a_server_without_echo_leaves_the_confidence_gain_unavailable() -> None:
    """A genuine (scripted) OpenAI-compatible server that refuses echo, over httpx's
    transport: generation works, the parametric pass is reported as unavailable."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("echo"):
            return httpx.Response(400, json={"error": {"message": "echo is not supported"}})
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "text": " Lyon",
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": [" Lyon"],
                            "token_logprobs": [-0.1],
                            "top_logprobs": [{" Lyon": -0.1, " Paris": -2.5}],
                            "text_offset": [0],
                        },
                    }
                ]
            },
        )

    backend = OpenAICompatibleBackend(
        "http://upstream.invalid/v1", "m", transport=httpx.MockTransport(handler)
    )
    with pytest.raises(ScoringUnavailable, match="echo is not supported"):
        backend.score("prompt", " Lyon")
    guard = Guardrail(backend=backend, policy=PolicyRuntime.from_setting("balanced"))
    response = guard.ask("What is the capital of France?", passages=[LYON])
    assert response.answer == "Lyon"
    assert response.signals["mean_logprob"] == pytest.approx(-0.1)
    assert response.signals["cg_mean"] is None
    assert response.signals["parametric_agreement"] is None
    assert response.action in ("answer", "hedge", "defer", "escalate")


def test_null_or_infinite_completion_logprobs_are_not_read() -> None:
    """A completions server that writes a log-probability as null (generation) or -Infinity
    (echo): the answer is judged without those token signals, and the echo score is
    unavailable rather than infinite."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("echo"):
            prompt = body["prompt"]
            head = prompt[: -len(" Lyon")]
            logprobs = {
                "tokens": [head, " Lyon"],
                "token_logprobs": [None, -math.inf],
                "top_logprobs": [None, {" Lyon": -math.inf}],
                "text_offset": [0, len(head)],
            }
            reply = {"choices": [{"text": prompt, "logprobs": logprobs}]}
        else:
            logprobs = {
                "tokens": [" Lyon"],
                "token_logprobs": [None],
                "top_logprobs": [{" Lyon": -0.1}],
                "text_offset": [0],
            }
            reply = {"choices": [{"text": " Lyon", "finish_reason": "stop", "logprobs": logprobs}]}
        return httpx.Response(
            200, content=json.dumps(reply), headers={"content-type": "application/json"}
        )

    backend = OpenAICompatibleBackend(
        "http://upstream.invalid/v1", "m", transport=httpx.MockTransport(handler)
    )
    generation = backend.generate("prompt")
    assert generation.text == "Lyon" and not generation.stats.token_ids
    with pytest.raises(ScoringUnavailable, match="not finite"):
        backend.score("prompt", " Lyon")
    guard = Guardrail(backend=backend, policy=PolicyRuntime.from_setting("balanced"))
    response = guard.ask("What is the capital of France?", passages=[LYON])
    assert response.answer == "Lyon" and response.signals["mean_logprob"] is None
    json.dumps(response.to_dict(), allow_nan=False)


@pytest.mark.slow
def test_guarded_chat_openai_against_the_model_server(model_server: str) -> None:
    """LangChain's ChatOpenAI over real HTTP, wrapped: its log-probabilities feed the token
    signals and the local guard model gives Confidence Gain; with ``guard: none`` and no
    log-probabilities those signals are unavailable."""
    from langchain_openai import ChatOpenAI

    from guardrail.langchain import GuardedChatModel
    from retrievers.langchain import IndexRetriever

    index = PassageIndex.build([LYON, KENYA], HashingEmbedder(), progress=False)
    common = {"base_url": model_server, "api_key": "unused", "model": MODEL, "temperature": 0}
    with_logprobs = ChatOpenAI(**common, logprobs=True, top_logprobs=5, max_tokens=24)
    guarded = GuardedChatModel(model=with_logprobs, retriever=IndexRetriever(index=index, k=1))
    record = guarded.invoke("What is the capital of France?").response_metadata["guardrail"]
    assert record["model"] == MODEL
    assert record["answer"]
    assert record["signals"]["mean_logprob"] is not None
    assert record["signal_sources"]["mean_logprob"] == "generator"
    # The local guard model read the answer: Confidence Gain is measured.
    assert record["signals"]["cg_mean"] is not None
    assert record["signal_sources"]["cg_mean"] == "guard"
    assert record["citations"][0]["id"] == "lyon"

    plain = GuardedChatModel(
        model=ChatOpenAI(**common, max_tokens=24),
        retriever=IndexRetriever(index=index, k=1),
        config=GuardrailConfig(guard="none"),
    )
    record = plain.invoke("What is the capital of France?").response_metadata["guardrail"]
    assert record["signals"]["mean_logprob"] is None
    assert record["signals"]["cg_mean"] is None


def scripted_server(tokens: list[str], echo_tokens: list[str] | None) -> httpx.MockTransport:
    """An OpenAI-compatible server (scripted) that generates ``tokens`` and, for echo,
    tokenises the answer as ``echo_tokens``."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("echo"):
            prompt = body["prompt"]
            answer = "".join(echo_tokens or [])
            head = prompt[: len(prompt) - len(answer)]
            pieces, offsets, at = [head, *(echo_tokens or [])], [], 0
            for piece in pieces:
                offsets.append(at)
                at += len(piece)
            return httpx.Response(
                200,
                json={
                    "choices": [
                        {
                            "text": prompt,
                            "logprobs": {
                                "tokens": pieces,
                                "token_logprobs": [None, *[-1.0] * (len(pieces) - 1)],
                                "top_logprobs": [None, *[{p: -1.0} for p in pieces[1:]]],
                                "text_offset": offsets,
                            },
                        }
                    ]
                },
            )
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "text": "".join(tokens),
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": tokens,
                            "token_logprobs": [-0.2] * len(tokens),
                            "top_logprobs": [{t: -0.2} for t in tokens],
                            "text_offset": list(range(len(tokens))),
                        },
                    }
                ]
            },
        )

    return httpx.MockTransport(handler)


def test_a_server_that_retokenises_the_answer_leaves_cg_unavailable() -> None:
    transport = scripted_server([" New", " York"], [" New York"])
    backend = OpenAICompatibleBackend("http://u.invalid/v1", "m", transport=transport)
    guard = Guardrail(backend=backend, policy=PolicyRuntime.from_setting("balanced"))
    response = guard.ask("Which city?", passages=[LYON])
    assert response.answer == "New York"
    assert response.signals["cg_mean"] is None
    assert response.signals["mean_logprob"] == pytest.approx(-0.2)


def test_an_empty_answer_is_decided_not_an_error() -> None:
    transport = scripted_server([], [])
    backend = OpenAICompatibleBackend("http://u.invalid/v1", "m", transport=transport)
    guard = Guardrail(backend=backend, policy=PolicyRuntime.from_setting("balanced"))
    response = guard.ask("Which city?", passages=[LYON])
    assert response.answer == "" and response.action in ("defer", "escalate", "hedge")


def test_upstream_credentials_never_appear_in_errors() -> None:
    from guardrail.errors import BackendError

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    backend = OpenAICompatibleBackend(
        "http://user:s3cret@u.invalid/v1", "m", transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(BackendError) as caught:
        backend.generate("prompt")
    assert "s3cret" not in str(caught.value) and "***@u.invalid" in str(caught.value)
