"""The OpenAI-compatible API with the official ``openai`` client, API keys mapped to tenants,
feedback, the decision store, metrics, the response cache and rate limits, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes import ScriptedBackend, peaked
from test_service import serve, settings

from guardrail.pipeline import Guardrail
from guardrail.policy_runtime import PolicyRuntime
from retrievers import HashingEmbedder, Passage, PassageIndex
from service import create_app

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable", "Berlin")
PARIS = Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France")
ROME = Passage("rome", "Rome is the capital of Italy.", "atlas.txt", title="Italy")
QUESTION = "What is the capital of France?"
KEYS = {"sk-acme-123": "acme-bank", "sk-base-456": "", "sk-trial-789": "trial"}
ADMIN = "sk-admin-000"


def says_paris(p: float) -> ScriptedBackend:
    return ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", p)], parametric=[peaked(VOCAB, "Paris", p)]
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """support-bot policies; a model that says Paris at confidence 0.7 (the base policy
    answers, acme-bank hedges); keys for three tenants; a 60 s response cache."""
    folder = tmp_path_factory.mktemp("openai")
    index = PassageIndex.build([PARIS, ROME], HashingEmbedder(), progress=False)
    guard = Guardrail(
        backend=says_paris(0.7), policy=PolicyRuntime.from_setting("support-bot"), index=index
    )
    config = settings(
        folder, api_keys=KEYS, admin_key=ADMIN, cache_ttl_seconds=60, max_body_bytes=8192
    )
    with serve(create_app(config, guard=guard)) as url:
        yield url


def client(url: str, key: str = "sk-base-456") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def ask(url: str, key: str, question: str = QUESTION, **kwargs: Any) -> Any:
    return client(url, key).chat.completions.create(
        model="guardrail", messages=[{"role": "user", "content": question}], **kwargs
    )


def test_chat_completion_with_the_openai_client(server: str) -> None:
    completion = ask(server, "sk-base-456", question="Capital of France, please?")
    assert completion.object == "chat.completion"
    assert completion.model == "guardrail"
    message = completion.choices[0].message
    assert message.role == "assistant"
    assert message.content.startswith("Paris")
    assert completion.choices[0].finish_reason == "stop"
    decision = completion.model_extra["guardrail"]
    assert decision["action"] == "answer"
    assert decision["policy_name"] == "support-bot" and decision["tenant"] is None
    assert decision["decision_id"].startswith("dec_")
    assert completion.id == "chatcmpl-" + decision["decision_id"].removeprefix("dec_")
    assert decision["citations"][0]["id"] == "paris"
    assert decision["recorded"] is True


def test_the_api_key_picks_the_tenant_policy(server: str) -> None:
    hedged = ask(server, "sk-acme-123", question="Which city is the capital of France?")
    decision = hedged.model_extra["guardrail"]
    assert decision["tenant"] == "acme-bank"
    assert decision["policy_name"] == "support-bot.acme-bank"
    assert decision["action"] == "hedge"  # acme-bank answers only at >= 0.75
    assert "Caveat" in hedged.choices[0].message.content


def test_streaming_gives_the_same_text_and_the_decision_last(server: str) -> None:
    question = "Tell me the capital of France"
    plain = ask(server, "sk-acme-123", question=question)
    chunks = list(ask(server, "sk-acme-123", question=question, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.choices[0].message.content
    assert len(chunks) > 3  # the text arrives in pieces
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["guardrail"]["action"] == "hedge"
    assert all(c.model_extra.get("guardrail") is None for c in chunks[:-1])


def test_raw_stream_is_server_sent_events_ending_in_done(server: str) -> None:
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        headers={"Authorization": "Bearer sk-base-456"},
        json={
            "model": "guardrail",
            "stream": True,
            "messages": [{"role": "user", "content": "Paris?"}],
        },
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_models_list(server: str) -> None:
    assert [m.id for m in client(server).models.list()] == ["guardrail"]


def test_bad_keys_are_401(server: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(server, "sk-wrong")
    assert caught.value.code == "invalid_api_key"
    missing = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "guardrail", "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            "this server serves 'guardrail'",
        ),
        (
            {"model": "guardrail", "messages": []},
            422,
            "invalid_request",
            "the conversation is empty",
        ),
        (
            {"model": "guardrail", "messages": [{"role": "system", "content": "be nice"}]},
            400,
            "no_user_message",
            "no user message",
        ),
        (
            {
                "model": "guardrail",
                "messages": [
                    {"role": "user", "content": "When did the oil crisis begin?"},
                    {"role": "assistant", "content": "October 1973"},
                ],
            },
            400,
            "last_message_not_user",
            "messages[1] (role assistant) comes after the last user message",
        ),
        (
            {
                "model": "guardrail",
                "messages": [
                    {"role": "user", "content": "What is the weather?"},
                    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                    {"role": "system", "content": "be brief"},
                ],
            },
            400,
            "last_message_not_user",
            "messages[1] (role tool)",
        ),
        (
            {"model": "guardrail", "messages": [{"role": "user", "content": "   "}]},
            422,
            "invalid_question",
            "the question is empty",
        ),
        (
            {"model": "guardrail", "messages": [{"role": "user", "content": 5}]},
            422,
            "invalid_request",
            "messages[0].content",
        ),
        (
            {"model": "guardrail", "messages": [{"role": "wizard", "content": "x"}]},
            422,
            "invalid_request",
            "messages[0].role",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            422,
            "invalid_request",
            "model: required",
        ),
        (
            {"model": "guardrail", "n": 2, "messages": [{"role": "user", "content": "x"}]},
            400,
            "unsupported_n",
            "only n=1",
        ),
        (
            {
                "model": "guardrail",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            400,
            "unsupported_content",
            "image_url",
        ),
        (
            {"model": "guardrail", "messages": [{"role": "user", "content": "x" * 9000}]},
            413,
            "body_too_large",
            "max_body_bytes",
        ),
    ],
)
def test_bad_requests_get_openai_style_errors(
    server: str, body: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    response = httpx.post(
        f"{server}/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-base-456"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["code"] == code and fragment in error["message"], error


def test_malformed_json_is_a_400(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/chat/completions",
        content=b'{"model": "guardrail", "messages": [',
        headers={"Authorization": "Bearer sk-base-456", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_feedback_is_kept_with_the_decision_and_scoped_to_the_tenant(server: str) -> None:
    decision_id = ask(server, "sk-acme-123", question="France's capital?").model_extra["guardrail"][
        "decision_id"
    ]
    acme = {"Authorization": "Bearer sk-acme-123"}
    other = {"Authorization": "Bearer sk-trial-789"}
    body = {"decision_id": decision_id, "correct": True, "label": "ok"}
    assert httpx.post(f"{server}/v1/feedback", json=body, headers=other).status_code == 404
    response = httpx.post(f"{server}/v1/feedback", json=body, headers=acme)
    assert response.status_code == 200, response.text
    record = httpx.get(f"{server}/v1/decisions/{decision_id}", headers=acme).json()
    assert record["question"] == "France's capital?"
    assert [f["correct"] for f in record["feedback"]] == [True]
    missing = httpx.post(
        f"{server}/v1/feedback", json={**body, "decision_id": "dec_nope"}, headers=acme
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "unknown_decision"
    bad = httpx.post(f"{server}/v1/feedback", json={"decision_id": decision_id}, headers=acme)
    assert bad.status_code == 422 and "correct: required" in bad.json()["error"]["message"]


def test_repeated_question_comes_from_the_cache(server: str) -> None:
    first = ask(server, "sk-trial-789", question="What is the capital of   FRANCE")
    second = ask(server, "sk-trial-789", question="what is the capital of France?")
    one, two = first.model_extra["guardrail"], second.model_extra["guardrail"]
    assert (one["cached"], two["cached"]) == (False, True)
    assert one["decision_id"] != two["decision_id"]  # each serving is its own decision
    assert second.choices[0].message.content == first.choices[0].message.content
    # Another tenant's policy differs: no cache hit across tenants.
    third = ask(server, "sk-acme-123", question="what is the capital of France?")
    assert third.model_extra["guardrail"]["cached"] is False


def test_metrics_count_decisions_by_tenant_policy_and_action(server: str) -> None:
    ask(server, "sk-acme-123", question="Capital city of France?")
    text = httpx.get(f"{server}/metrics").text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("guardrail_requests_total{")
        and 'tenant="acme-bank"' in line
        and 'action="hedge"' in line
        and 'endpoint="chat"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert "guardrail_confidence_bucket{" in text
    assert 'guardrail_stage_seconds_count{stage="generate"}' in text
    assert "guardrail_store_up 1.0" in text
    assert "sk-acme-123" not in text


def test_readyz_reports_the_store(server: str) -> None:
    assert httpx.get(f"{server}/readyz").json()["store"] == {"kind": "sqlite", "status": "ok"}


def test_rate_limit_per_key(tmp_path: Path) -> None:
    guard = Guardrail(backend=says_paris(0.9), policy=PolicyRuntime.from_setting("balanced"))
    config = settings(tmp_path, api_keys={"sk-a": "a", "sk-b": "b"}, rate_limit_per_minute=2)
    with serve(create_app(config, guard=guard)) as url:
        body = {"question": QUESTION, "passages": [{"text": PARIS.text}]}
        codes = [
            httpx.post(
                f"{url}/v1/answer", json=body, headers={"Authorization": "Bearer sk-a"}
            ).status_code
            for _ in range(3)
        ]
        other = httpx.post(f"{url}/v1/answer", json=body, headers={"Authorization": "Bearer sk-b"})
        limited = httpx.post(
            f"{url}/v1/answer", json=body, headers={"Authorization": "Bearer sk-a"}
        )
    assert codes == [200, 200, 429]
    assert other.status_code == 200
    assert limited.headers["retry-after"] == "60"
    assert limited.json()["error"]["type"] == "rate_limited"


def test_decisions_survive_a_restart(tmp_path: Path) -> None:
    config = settings(tmp_path)
    body = {"question": QUESTION, "passages": [{"text": PARIS.text}]}

    def app() -> Any:
        guard = Guardrail(backend=says_paris(0.9), policy=PolicyRuntime.from_setting("balanced"))
        return create_app(config, guard=guard)

    with serve(app()) as url:
        decision_id = httpx.post(f"{url}/v1/answer", json=body).json()["id"]
    with serve(app()) as url:
        again = httpx.get(f"{url}/v1/decisions/{decision_id}")
    assert again.status_code == 200 and again.json()["question"] == QUESTION


def test_keys_never_reach_the_logs(server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    ask(server, "sk-acme-123", question="Is Paris the capital of France?")
    with pytest.raises(openai.AuthenticationError):
        ask(server, "sk-wrong-secret")
    httpx.post(f"{server}/v1/policies/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert caplog.records  # the service did log
    for secret in ("sk-acme-123", "sk-wrong-secret", ADMIN):
        assert secret not in caplog.text


def test_error_responses_are_counted(server: str) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": "Bearer sk-base-456"}
    assert (
        httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers).status_code == 404
    )
    text = httpx.get(f"{server}/metrics").text
    prefix = 'guardrail_errors_total{type="model_not_found"}'
    line = next(row for row in text.splitlines() if row.startswith(prefix))
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_chat_openai_in_an_lcel_chain_talks_to_the_service(server: str) -> None:
    """LangChain's ChatOpenAI pointed at guardrail itself: a chain that used to call a model
    now gets guarded answers, with no other change."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key="sk-acme-123", model="guardrail")
    chain = llm | StrOutputParser()
    text = chain.invoke("What's the capital of France, please?")
    assert text.startswith("Paris") and "Caveat" in text  # acme-bank's policy hedges at 0.7


def test_policies_need_a_key_and_show_a_tenant_only_its_own(server: str) -> None:
    assert httpx.get(f"{server}/v1/policies").status_code == 401
    mine = httpx.get(f"{server}/v1/policies", headers={"Authorization": "Bearer sk-acme-123"})
    listed = mine.json()
    assert [p["tenant"] for p in listed["policies"]] == [None, "acme-bank"]
    assert listed["source"] is None  # no server paths for tenants
    admin = httpx.get(f"{server}/v1/policies", headers={"Authorization": f"Bearer {ADMIN}"})
    assert {p["tenant"] for p in admin.json()["policies"]} >= {"acme-bank", "trial"}
    assert admin.json()["source"]


def test_the_schema_says_what_the_server_enforces(server: str) -> None:
    """A string "yes" is not a boolean; the published schema says that the question and the
    conversation must not be empty, as the server does."""
    headers = {"Authorization": "Bearer sk-base-456"}
    body = {"model": "guardrail", "messages": [{"role": "user", "content": QUESTION}]}
    yes = httpx.post(
        f"{server}/v1/chat/completions", json={**body, "stream": "yes"}, headers=headers
    )
    assert yes.status_code == 422 and "stream" in yes.json()["error"]["message"]
    schema = httpx.get(f"{server}/openapi.json").json()["components"]["schemas"]
    assert schema["ChatRequest"]["properties"]["messages"]["minItems"] == 1
    assert schema["ChatRequest"]["properties"]["stream"]["type"] == "boolean"
    assert schema["AnswerRequest"]["properties"]["question"]["minLength"] == 1
