"""Every input path survives every string: a JSON body that spells an unpaired UTF-16
surrogate is refused with 400 ``invalid_unicode`` naming the field, before any model runs and
before anything is recorded; error messages that echo input can always be encoded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_service import PARIS, QUESTION, confident, serve, settings

from guardrail.errors import QuestionError
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.text import printable, surrogate_at
from service import create_app

LONE = "\\ud800"  # as it is spelled inside a JSON string
PAIR = "\\ud83d\\ude00"  # a valid pair: one emoji


def body_with(template: str) -> bytes:
    """A JSON body written by hand, so that escapes reach the server as sent."""
    return template.replace("<S>", LONE).replace("<P>", PAIR).encode("utf-8")


CASES: list[tuple[str, str, str]] = [
    ("/v1/answer", '{"question": "When did it begin? <S>"}', "question"),
    (
        "/v1/answer",
        '{"question": "q?", "passages": [{"text": "Paris.", "id": "p<S>"}]}',
        "passages[0].id",
    ),
    ("/v1/answer", '{"question": "q?", "passages": [{"text": "Pa<S>ris"}]}', "passages[0].text"),
    (
        "/v1/answer",
        '{"question": "q?", "passages": [{"text": "Paris.", "title": "<S>"}]}',
        "passages[0].title",
    ),
    (
        "/v1/answer",
        '{"question": "q?", "passages": [{"text": "Paris.", "source": "s<S>"}]}',
        "passages[0].source",
    ),
    (
        "/v1/answer",
        '{"question": "q?", "history": [{"role": "user", "content": "<S>"}]}',
        "history[0].content",
    ),
    (
        "/v1/chat/completions",
        '{"model": "guardrail", "messages": [{"role": "user", "content": "hi <S>"}]}',
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        '{"model": "guardrail", "messages": [{"role": "us<S>er", "content": "hi"}]}',
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        '{"model": "g<S>", "messages": [{"role": "user", "content": "hi"}]}',
        "model",
    ),
    ("/v1/feedback", '{"decision_id": "dec_<S>", "correct": true}', "decision_id"),
    ("/v1/feedback", '{"decision_id": "dec_1", "correct": true, "label": "<S>"}', "label"),
    ("/v1/feedback", '{"decision_id": "dec_1", "correct": true, "comment": "x<S>"}', "comment"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("unicode")
    guard = Guardrail(backend=confident(), policy=load_policy_setting("balanced"))
    with serve(create_app(settings(tmp), guard=guard)) as url:
        yield url


def count_decisions(url: str) -> int:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("guardrail_decisions_total{")
    )


@pytest.mark.parametrize(("path", "template", "field"), CASES)
def test_an_unpaired_surrogate_is_refused_naming_the_field(
    server: str, path: str, template: str, field: str
) -> None:
    before = count_decisions(server)
    response = httpx.post(
        f"{server}{path}",
        content=body_with(template),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_unicode"
    assert f"the field {field} holds an unpaired UTF-16 surrogate" in error["message"]
    assert "\\ud800" in error["message"]  # shown as its escape
    assert count_decisions(server) == before  # refused before the pipeline ran


def test_valid_pairs_and_plain_text_pass(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/answer",
        content=body_with('{"question": "What is the capital of France? <P>"}'),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["question"].endswith("\U0001f600")


def test_a_body_that_is_not_utf8_is_refused(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/answer",
        content=b'{"question": "caf\xe9?"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_unicode"
    assert "not valid UTF-8 (byte 17)" in response.json()["error"]["message"]


def test_bad_json_and_oversized_bodies_still_get_their_own_errors(server: str) -> None:
    bad = httpx.post(
        f"{server}/v1/answer",
        content=b'{"question": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_json"

    def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: counted as it arrives

    big = httpx.post(
        f"{server}/v1/answer",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert big.status_code == 413 and big.json()["error"]["type"] == "body_too_large"


def test_an_echoed_path_with_invalid_bytes_is_a_404_not_a_crash(server: str) -> None:
    response = httpx.get(f"{server}/v1/nothing%ED%A0%80", timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_the_python_api_refuses_such_a_question(tmp_path: Path) -> None:
    guard = Guardrail(backend=confident(), policy=load_policy_setting("balanced"))
    with pytest.raises(QuestionError, match=r"unpaired UTF-16 surrogate \(\\ud800\) at character"):
        guard.ask(QUESTION + " \ud800", passages=[PARIS])
    assert surrogate_at("ok \U0001f600") is None and surrogate_at("a\udfffb") == 1
    assert printable("a\ud800b") == "a\\ud800b"


def test_an_upstream_reply_with_a_lone_surrogate_is_recorded(tmp_path: Path) -> None:
    """What comes back from a model server is made encodable (U+FFFD), so the decision is
    recorded and served."""
    from guardrail.backends.openai_chat import OpenAIChatBackend

    def reply(request: httpx.Request) -> httpx.Response:
        # json.dumps escapes the surrogate ("\\ud800"), as a server written in Python would.
        body = {"choices": [{"message": {"role": "assistant", "content": "Ly\ud800on"}}]}
        return httpx.Response(200, content=json.dumps(body).encode("ascii"))

    upstream = OpenAIChatBackend(
        "http://upstream.invalid/v1", "bot", transport=httpx.MockTransport(reply)
    )
    guard = Guardrail(backend=upstream, policy=load_policy_setting("balanced"))
    with serve(create_app(settings(tmp_path), guard=guard)) as url:
        response = httpx.post(
            f"{url}/v1/answer",
            json={"question": QUESTION, "passages": [{"text": PARIS.text}]},
            timeout=30,
        )
        record = response.json()
        stored = httpx.get(f"{url}/v1/decisions/{record['id']}", timeout=30)
    assert response.status_code == 200 and record["recorded"] is True
    assert record["answer"] == "Ly\ufffdon"
    assert stored.status_code == 200 and stored.json()["answer"] == "Ly\ufffdon"
