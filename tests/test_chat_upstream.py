"""Proxy mode over a chat-completions upstream, and the guard model that reads its answers.

The upstreams here are scripted OpenAI chat servers behind httpx's transport (genuine
implementations of the protocol's request and reply shapes); the real model server and the
real guard model are in test_proxy_mode.py."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedBackend, peaked
from test_service import serve, settings

from guardrail.backends.chat import chat_token_stats, messages_prompt, prompt_messages
from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.backends.openai_compat import OpenAICompatibleBackend, ScoringUnavailable
from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError, ConfigError, ModelUnavailableError
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import EvalRunner, RecordCache
from guardrail.pipeline import Guardrail, generator_backend, guard_backend, guard_model_name
from guardrail.policy_runtime import PolicyRuntime
from guardrail.prompts import prompt_for
from guardrail.signals import SIGNALS, SOURCES
from retrievers import HashingEmbedder, Passage, PassageIndex
from service import create_app

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
        entries: Any = None,
        failures: Mapping[int, int] | None = None,
        message: Any = None,
    ) -> None:
        self.reply = reply
        self.logprobs = logprobs
        self.refuse_logprobs = refuse_logprobs
        self.choices = choices
        self.entries = entries  # logprobs.content exactly as given, when not None
        self.failures = dict(failures or {})  # request number (from 0) -> error status
        self.message = message  # the reply's message exactly as given, when not None
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        if len(self.bodies) - 1 in self.failures:
            return httpx.Response(
                self.failures[len(self.bodies) - 1], json={"error": {"message": "try again later"}}
            )
        if body.get("logprobs") and self.refuse_logprobs:
            return httpx.Response(
                400, json={"error": {"message": "logprobs is not supported by this model"}}
            )
        content = None
        if body.get("logprobs") and self.entries is not None:
            content = self.entries
        elif body.get("logprobs") and self.logprobs is not None:
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
            "message": self.message or {"role": "assistant", "content": self.reply},
            "finish_reason": "stop",
            "logprobs": {"content": content} if content is not None else None,
        }
        return httpx.Response(
            200,
            # Python's json writes an infinity as -Infinity, as some servers do.
            content=json.dumps(
                {
                    "object": "chat.completion",
                    "choices": [choice] if self.choices else [],
                    "usage": {"prompt_tokens": 42, "completion_tokens": 2},
                }
            ),
            headers={"content-type": "application/json"},
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


def lyon_index() -> PassageIndex:
    return PassageIndex.build([LYON], HashingEmbedder(), progress=False)


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


def test_a_failing_upstream_is_an_error_and_logprobs_stay_asked_for() -> None:
    """A 503 or 429 is a failure, not a refusal of the parameter: it is not retried without
    logprobs, and the next request asks for them again."""
    for status in (503, 429, 401):
        server = ChatServer("Lyon", [(" Lyon", -0.1)], failures={0: status})
        backend = server.backend()
        with pytest.raises(BackendError, match=f"answered {status}: try again later"):
            backend.generate("Which city?")
        assert backend.asks_logprobs
        assert backend.generate("Which city?").stats.logprobs == pytest.approx((-0.1,))
        assert ["logprobs" in b for b in server.bodies] == [True, True]
    # A 422 rejects the parameters, as a 400 does: asked again without, and from then on.
    server = ChatServer("Lyon", [(" Lyon", -0.1)], failures={0: 422})
    backend = server.backend()
    assert backend.generate("Which city?").text == "Lyon" and not backend.asks_logprobs


GOOD = {"token": "Lyon", "logprob": -0.1, "top_logprobs": [{"token": "Lyon", "logprob": -0.1}]}
MALFORMED_ENTRIES = {
    "null logprob": [{**GOOD, "logprob": None}],
    "infinite logprob": [{**GOOD, "logprob": -math.inf}],
    "text logprob": [{**GOOD, "logprob": "-0.1"}],
    "token not text": [{**GOOD, "token": 7}],
    "entry not an object": ["Lyon"],
    "alternative without a token": [{**GOOD, "top_logprobs": [{"logprob": -0.1}]}],
    "alternatives not a list": [{**GOOD, "top_logprobs": "Lyon"}],
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ENTRIES))
def test_malformed_or_infinite_logprobs_leave_the_token_signals_to_the_guard(case: str) -> None:
    """Log-probabilities that are not finite numbers in OpenAI's shape are not read (the
    token signals would be wrong, or not JSON): the guard model reads the answer instead."""
    server = ChatServer("Lyon", entries=MALFORMED_ENTRIES[case])
    assert not server.backend().generate("Which city?").stats.token_ids
    pipeline = Guardrail(backend=server.backend(), policy=balanced(), guard=guard_model())
    response = pipeline.ask("What is the capital of France?", passages=[LYON])
    assert response.answer == "Lyon"
    assert response.signal_sources["mean_logprob"] == "guard"
    assert response.signals["mean_logprob"] == pytest.approx(math.log(0.9))
    json.dumps(response.to_dict(), allow_nan=False)  # a record any JSON reader takes


def test_token_stats_read_both_alternative_shapes_and_skip_impossible_alternatives() -> None:
    listed = [{**GOOD, "top_logprobs": [GOOD, {"token": "Paris", "logprob": -math.inf}]}]
    mapped = [{**GOOD, "top_logprobs": {"Lyon": -0.1}}]
    for entries in (listed, mapped):
        stats = chat_token_stats(entries, len)
        assert stats.tokens == ("Lyon",) and stats.logprobs == pytest.approx((-0.1,))
        assert stats.margins == pytest.approx((1.0,))  # one alternative with any weight


def test_the_answer_is_read_from_content_parts_and_a_tool_call_is_an_error() -> None:
    parts = {
        "role": "assistant",
        "content": [
            {"type": "reasoning", "text": "The passage says Lyon."},
            {"type": "text", "text": "March "},
            {"type": "text", "text": "1974\nbecause..."},
        ],
    }
    assert ChatServer(None, message=parts).backend().generate("When?").text == "March 1974"
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert ChatServer(None, message=refusal).backend().generate("When?").text == ""
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search"}}],
    }
    with pytest.raises(BackendError, match="tool call instead of text"):
        ChatServer(None, message=call).backend().generate("When?")


def test_a_reply_that_is_not_an_object_or_has_an_odd_usage_is_handled() -> None:
    def array(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"choices": []}])

    backend = OpenAIChatBackend("http://u.invalid/v1", "m", transport=httpx.MockTransport(array))
    with pytest.raises(BackendError, match="JSON that is not an object"):
        backend.generate("Which city?")

    def odd_usage(request: httpx.Request) -> httpx.Response:
        choice = {"message": {"role": "assistant", "content": "Lyon"}, "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": "n/a"}})

    backend = OpenAIChatBackend(
        "http://u.invalid/v1", "m", transport=httpx.MockTransport(odd_usage)
    )
    generation = backend.generate("Which city?")
    assert generation.text == "Lyon" and generation.prompt_tokens == 0


def test_the_api_key_is_sent_trimmed_and_never_shown_in_errors() -> None:
    server = ChatServer("Lyon")
    server.backend(api_key="sk-live-SECRET42\n").generate("Which city?")
    assert server.headers[0]["authorization"] == "Bearer sk-live-SECRET42"
    with pytest.raises(ConfigError, match="control or non-ASCII character") as caught:
        server.backend(api_key="sk-live\x00SECRET42")
    assert "SECRET42" not in str(caught.value)

    def quoting(request: httpx.Request) -> httpx.Response:
        # A transport error that quotes the header it could not send (as h11's does).
        raise httpx.LocalProtocolError(f"Illegal header value {request.headers['authorization']}")

    backend = OpenAIChatBackend(
        "http://u.invalid/v1",
        "m",
        api_key="sk-live-SECRET42",
        transport=httpx.MockTransport(quoting),
    )
    with pytest.raises(BackendError, match=r"Bearer \[redacted\]") as failed:
        backend.generate("Which city?")
    assert "SECRET42" not in str(failed.value)


def test_the_service_decides_and_records_an_upstream_reply_with_infinite_logprobs(
    tmp_path: Path,
) -> None:
    """Over HTTP: an upstream whose log-probabilities hold -Infinity gets a decision (the
    guard's reading), recorded and served as JSON, instead of a 500."""
    server = ChatServer("Lyon", entries=MALFORMED_ENTRIES["infinite logprob"])
    pipeline = Guardrail(
        backend=server.backend(), policy=balanced(), guard=guard_model(), index=lyon_index()
    )
    with serve(create_app(settings(tmp_path), guard=pipeline)) as url:
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "guardrail", "messages": [{"role": "user", "content": "Capital?"}]},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        decision = reply.json()["guardrail"]
        assert decision["signal_sources"]["mean_logprob"] == "guard"
        stored = httpx.get(f"{url}/v1/decisions/{decision['decision_id']}", timeout=60)
    assert stored.status_code == 200
    assert stored.json()["signals"]["mean_logprob"] == decision["signals"]["mean_logprob"]


def test_an_upstream_failing_on_the_conflict_caveat_keeps_the_decision() -> None:
    """On a knowledge conflict the upstream is asked once more, without the passages, for the
    answer it would give; when that extra call fails the decision stands, with the caveat
    that does not name it."""
    vocab = ["Lyon", "Paris", "Rome", "Nice", "Metz", "Lille", "Brest", "Dijon"]
    guard = ScriptedBackend(
        vocab,
        contextual=[[1 / len(vocab)] * len(vocab)],  # unsure with the passages
        parametric=[peaked(vocab, "Paris", 0.99)],  # sure of another answer without them
        name="guard",
    )
    # Sure of its answer; the second request (the extra question) fails.
    server = ChatServer("Lyon", [("Lyon", -0.01)], failures={1: 503})
    pipeline = Guardrail(backend=server.backend(), policy=balanced(), guard=guard)
    response = pipeline.ask("What is the capital of France?", passages=[LYON])
    assert "knowledge_conflict" in response.flags
    assert len(server.bodies) == 2  # the extra question was asked, and failed
    assert response.action == "hedge" and response.answer == "Lyon"
    assert "the documents conflict with what the model otherwise believes" in response.text


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
