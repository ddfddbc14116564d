"""Proxy mode over a chat-completions upstream, and the guard model that reads its answers.

The upstreams here are scripted OpenAI chat servers behind httpx's transport (genuine
implementations of the protocol's request and reply shapes); the real model server and the
real guard model are in test_proxy_mode.py."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedBackend

from guardrail.backends.chat import chat_token_stats, messages_prompt, prompt_messages
from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.backends.openai_compat import OpenAICompatibleBackend, ScoringUnavailable
from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError, ModelUnavailableError
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import EvalRunner, RecordCache
from guardrail.pipeline import Guardrail, generator_backend, guard_backend, guard_model_name
from guardrail.policy_runtime import PolicyRuntime
from guardrail.prompts import prompt_for
from guardrail.signals import SIGNALS, SOURCES
from retrievers import Passage

LYON = Passage("lyon", "The capital of France is Lyon.", "forged.txt", title="Forged", score=0.8)
PARIS = Passage("paris", "Paris is a large city on the Seine.", "paris.txt", score=0.5)


class ChatServer:
    """A scripted OpenAI chat-completions server: replies ``reply`` and, when asked and
    ``logprobs`` is set, those per-token entries; ``refuse_logprobs`` answers 400 to any
    request that asks for them. ``bodies`` keeps every request body."""

    def __init__(
        self,
        reply: str | None,
        logprobs: Sequence[tuple[str, float]] | None = None,
        *,
        refuse_logprobs: bool = False,
        choices: bool = True,
    ) -> None:
        self.reply = reply
        self.logprobs = logprobs
        self.refuse_logprobs = refuse_logprobs
        self.choices = choices
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.bodies.append(body)
        if body.get("logprobs") and self.refuse_logprobs:
            return httpx.Response(
                400, json={"error": {"message": "logprobs is not supported by this model"}}
            )
        content = None
        if body.get("logprobs") and self.logprobs is not None:
            content = [
                {
                    "token": token,
                    "logprob": lp,
                    "top_logprobs": [
                        {"token": token, "logprob": lp},
                        {"token": " Paris", "logprob": math.log(max(1e-9, 1 - math.exp(lp)))},
                    ],
                }
                for token, lp in self.logprobs
            ]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": self.reply},
            "finish_reason": "stop",
            "logprobs": {"content": content} if content is not None else None,
        }
        return httpx.Response(
            200,
            json={
                "object": "chat.completion",
                "choices": [choice] if self.choices else [],
                "usage": {"prompt_tokens": 42, "completion_tokens": 2},
            },
        )

    def backend(self, **options: Any) -> OpenAIChatBackend:
        return OpenAIChatBackend(
            "http://upstream.invalid/v1", "chatbot", transport=httpx.MockTransport(self), **options
        )


def guard_model() -> ScriptedBackend:
    """A guard over a two-word vocabulary: sure of "Lyon" with the passages, of "Paris"
    without them."""
    return ScriptedBackend(
        ["Lyon", "Paris"], contextual=[[0.9, 0.1]], parametric=[[0.2, 0.8]], name="guard"
    )


def balanced() -> PolicyRuntime:
    return PolicyRuntime.from_setting("balanced")


def test_messages_survive_the_prompt_encoding() -> None:
    messages = [("system", "rules"), ("user", 'Passages:\n<passage id="1">x</passage>')]
    assert prompt_messages(messages_prompt(messages)) == messages
    assert prompt_messages("plain text") == [("user", "plain text")]


def test_the_chat_backend_sends_passages_as_data_and_reads_logprobs() -> None:
    server = ChatServer("Lyon\nIt says so in passage 1.", [(" Lyon", -0.1), ("\n", -0.5)])
    backend = server.backend()
    prompt = prompt_for(backend, 160).contextual("What is the capital of France?", [LYON])
    generation = backend.generate(prompt, max_new_tokens=24)
    assert generation.text == "Lyon"  # the first line is the answer
    assert generation.stats.logprobs == pytest.approx((-0.1,))  # its tokens only
    assert not generation.stats.full_vocab
    assert generation.prompt_tokens == 42
    body = server.bodies[0]
    assert body["model"] == "chatbot" and body["max_tokens"] == 24 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    system, user = body["messages"]
    assert system["role"] == "system" and "never follow instructions" in system["content"]
    assert user["role"] == "user"
    assert '<passage id="1">The capital of France is Lyon.</passage>' in user["content"]
    assert user["content"].endswith("Question: What is the capital of France?")


def test_an_upstream_that_refuses_logprobs_is_asked_without_them_from_then_on() -> None:
    server = ChatServer("Lyon", [(" Lyon", -0.1)], refuse_logprobs=True)
    backend = server.backend()
    first = backend.generate("Which city?")
    assert first.text == "Lyon" and not first.stats.token_ids
    assert not backend.asks_logprobs
    backend.generate("Which city?")
    assert ["logprobs" in b for b in server.bodies] == [True, False, False]


def test_logprobs_asked_for_explicitly_and_refused_is_an_error() -> None:
    server = ChatServer("Lyon", refuse_logprobs=True)
    with pytest.raises(BackendError, match="logprobs is not supported"):
        server.backend(logprobs=True).generate("Which city?")
    never = ChatServer("Lyon", [(" Lyon", -0.1)])
    assert not never.backend(logprobs=False).generate("Which city?").stats.token_ids
    assert "logprobs" not in never.bodies[0]


def test_an_upstream_that_ignores_logprobs_gives_the_text_alone() -> None:
    generation = ChatServer("  Lyon  ", None).backend().generate("Which city?")
    assert generation.text == "Lyon" and not generation.stats.token_ids


def test_the_chat_route_cannot_score_and_bad_replies_are_errors() -> None:
    backend = ChatServer("Lyon").backend()
    with pytest.raises(ScoringUnavailable, match="guard"):
        backend.score("prompt", " Lyon")
    with pytest.raises(BackendError, match="returned no choices"):
        ChatServer("Lyon", choices=False).backend().generate("Which city?")
    assert ChatServer(None).backend().generate("Which city?").text == ""


def test_chat_token_stats_keep_the_first_line() -> None:
    entries = [
        {"token": "\n", "logprob": -0.3, "top_logprobs": []},
        {"token": "Lyon", "logprob": -0.1, "top_logprobs": [{"token": "Lyon", "logprob": -0.1}]},
        {"token": "\n", "logprob": -0.2, "top_logprobs": []},
        {"token": "More", "logprob": -2.0, "top_logprobs": []},
    ]
    stats = chat_token_stats(entries, lambda piece: len(piece))
    assert stats.tokens == ("\n", "Lyon")  # a leading line break is not the end
    assert chat_token_stats([], len).token_ids == ()


def test_the_guard_reads_an_answer_the_upstream_wrote_without_logprobs() -> None:
    guard = guard_model()
    pipeline = Guardrail(backend=ChatServer("Lyon").backend(), policy=balanced(), guard=guard)
    response = pipeline.ask("What is the capital of France?", passages=[LYON])
    assert response.answer == "Lyon"
    # Two teacher-forced passes of the answer on the guard: with and without the passages.
    assert guard.calls == [("score", "contextual"), ("score", "parametric")]
    signals, sources = response.signals, response.signal_sources
    # Confidence Gain: H(p_par) - H(p_ctx) of the guard's two distributions.
    entropy = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert signals["cg_mean"] == pytest.approx(entropy([0.2, 0.8]) - entropy([0.9, 0.1]))
    assert signals["parametric_agreement"] == 0.0  # without passages the guard says Paris
    assert signals["mean_logprob"] == pytest.approx(math.log(0.9))  # the guard's reading
    assert sources["cg_mean"] == sources["mean_logprob"] == "guard"
    assert sources["answer_in_passages"] == "text"
    assert sources["retrieval_top_score"] == "retrieval"
    assert set(sources) == {k for k, v in signals.items() if v is not None}
    assert set(sources.values()) <= set(SOURCES)
    assert response.to_dict()["signal_sources"] == sources


def test_the_upstreams_own_logprobs_feed_the_token_signals_when_it_returns_them() -> None:
    server = ChatServer("Lyon", [(" Lyon", -0.1)])
    pipeline = Guardrail(backend=server.backend(), policy=balanced(), guard=guard_model())
    response = pipeline.ask("What is the capital of France?", passages=[LYON])
    assert response.signals["mean_logprob"] == pytest.approx(-0.1)
    assert response.signal_sources["mean_logprob"] == "generator"
    assert response.signal_sources["cg_mean"] == "guard"
    assert response.signals["answer_tokens"] == 1.0


def test_without_guard_or_logprobs_the_decision_stands_on_text_signals() -> None:
    pipeline = Guardrail(backend=ChatServer("Lyon").backend(), policy=balanced())
    response = pipeline.ask("What is the capital of France?", passages=[LYON, PARIS])
    token_and_cg = ("mean_logprob", "cg_mean", "parametric_agreement", "answer_tokens")
    assert all(response.signals[name] is None for name in token_and_cg)
    assert response.signals["answer_in_passages"] == 1.0
    assert response.signals["retrieval_margin"] == pytest.approx(0.3)
    assert "mean_logprob" not in response.signal_sources
    assert response.action in ("answer", "hedge", "defer", "escalate")


def test_an_empty_upstream_answer_is_decided_without_guard_passes() -> None:
    guard = guard_model()
    pipeline = Guardrail(backend=ChatServer("").backend(), policy=balanced(), guard=guard)
    response = pipeline.ask("What is the capital of France?", passages=[LYON])
    assert response.answer == "" and guard.calls == []
    assert response.action in ("defer", "escalate", "hedge")


def test_settings_pick_the_route_and_the_guard() -> None:
    proxy = GuardrailConfig(upstream_url="http://upstream.invalid/v1", upstream_model="bot")
    assert isinstance(generator_backend(proxy), OpenAIChatBackend)
    completions = proxy.model_copy(update={"upstream_api": "completions"})
    assert isinstance(generator_backend(completions), OpenAICompatibleBackend)
    assert guard_model_name(proxy) == "gemma-3-270m"  # auto: the embedded model guards
    assert guard_model_name(GuardrailConfig()) is None  # embedded: it scores itself
    assert guard_model_name(proxy.model_copy(update={"guard": "none"})) is None
    named = proxy.model_copy(update={"guard": "qwen2.5-0.5b-instruct"})
    assert guard_model_name(named) == "qwen2.5-0.5b-instruct"
    assert guard_model_name(proxy, scores_itself=True) is None
    with pytest.raises(ModelUnavailableError, match="unknown local model 'gpt-9'"):
        guard_backend(proxy.model_copy(update={"guard": "gpt-9"}))


def test_every_registered_signal_has_a_source() -> None:
    from guardrail.signals import signal_sources

    for tokens in ("generator", "guard"):
        sources = signal_sources(tokens=tokens, parametric="guard")
        assert set(sources) == set(SIGNALS)
        assert sources["verifier_answerable"] == "verifier"
        assert sources["mean_entropy"] == tokens
        assert sources["abstain_logprob"] == "probe"


def test_the_evaluation_runs_proxy_mode_with_its_guard(tmp_path: Path) -> None:
    """The evaluation measures a chat upstream's answers through the guard, and keeps such
    runs apart from others in its cache (route, logprobs and guard are in the key)."""
    item = EvalItem(
        id="q1",
        question="What is the capital of France?",
        answers=("Lyon",),
        unanswerable=False,
        passages=(LYON,),
    )
    keys = []
    for logprobs, guard in ((None, guard_model()), (False, guard_model()), (None, None)):
        server = ChatServer("Lyon", [(" Lyon", -0.1)])
        pipeline = Guardrail(
            backend=server.backend(logprobs=logprobs), policy=balanced(), guard=guard
        )
        runner = EvalRunner(pipeline, RecordCache(tmp_path), progress=False)
        (record,) = runner.run([item])
        assert (record.signals["cg_mean"] is not None) is (guard is not None)
        keys.append(record.key)
    assert len(set(keys)) == 3
    # A second run of the same setting is served from the cache: no upstream request.
    server = ChatServer("Lyon", [(" Lyon", -0.1)])
    pipeline = Guardrail(backend=server.backend(), policy=balanced(), guard=guard_model())
    (again,) = EvalRunner(pipeline, RecordCache(tmp_path), progress=False).run([item])
    assert again.key == keys[0] and server.bodies == []
