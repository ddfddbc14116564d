"""The OpenAI-compatible API: point a chatbot's ``base_url`` at ``http://host:8000/v1``.

``POST /v1/chat/completions`` takes the last user message as the question, runs the whole
guardrail pipeline (retrieval, answer, signals, policy) and replies in OpenAI's format, with
and without ``stream: true`` (server-sent events of ``chat.completion.chunk`` objects). The
reply's text is the rendered answer, hedge or defer message; a ``guardrail`` object next to
``choices`` carries the decision (action, confidence, signals, citations, policy, rule,
reasons, decision id). The decision is made before the first byte is streamed, so a stream
never carries unguarded text. ``GET /v1/models`` lists the one model name it serves.

Earlier turns count: the last user message is the question, and the user and assistant
messages before it are the conversation, from which a follow-up ("and when did it end?") is
rewritten into a standalone question before retrieval and judgement (setting ``rewriter``);
the decision keeps both (``question`` and ``original_question``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from guardrail.render import text_pieces
from service.deps import AnswererDep, CallerDep, GuardDep, SettingsDep
from service.errors import ApiError

router = APIRouter()

_ERROR = {"description": 'An OpenAI-style error: {"error": {"type", "message", "param", "code"}}'}

GUARDRAIL_FIELDS = (
    "id",
    "action",
    "policy_action",
    "confidence",
    "confidence_method",
    "signals",
    "signal_sources",
    "question",
    "original_question",
    "flags",
    "citations",
    "policy_name",
    "policy_hash",
    "rule",
    "reasons",
    "tenant",
    "mode",
    "model",
    "escalated",
    "cached",
    "recorded",
)
"""The decision fields a chat completion carries under ``guardrail`` (``id`` as
``decision_id``)."""


class TextPart(BaseModel):
    """One part of a message's content; only text parts are understood."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text (text parts joined; other parts are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        kinds = sorted({part.type for part in self.content if part.type != "text"})
        if kinds:
            raise ApiError(
                400,
                "unsupported_content",
                f"only text content is supported; the message has parts of type {', '.join(kinds)}",
            )
        return "".join(part.text or "" for part in self.content)


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (OpenAI's fields that matter here; other
    OpenAI parameters are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    n: int = Field(default=1, ge=1)

    @field_validator("messages", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # Before the schema's own minItems check, for a message that says what to do.
        if isinstance(value, list) and not value:
            raise ValueError("the conversation is empty; give at least one user message")
        return value

    def question(self) -> str:
        """The last user message's text."""
        return self.messages[self._last_user()].text()

    def history(self) -> list[tuple[str, str]]:
        """The user and assistant messages before the last user message, as
        ``(role, content)`` (system, developer and tool messages are not part of it)."""
        return [
            (m.role, m.text())
            for m in self.messages[: self._last_user()]
            if m.role in ("user", "assistant")
        ]

    def _last_user(self) -> int:
        for position in range(len(self.messages) - 1, -1, -1):
            if self.messages[position].role == "user":
                later = [
                    (i, m.role)
                    for i, m in enumerate(self.messages[position + 1 :], start=position + 1)
                    if m.role in ("assistant", "tool", "function")
                ]
                if later:
                    at, role = later[0]
                    raise ApiError(
                        400,
                        "last_message_not_user",
                        f"messages[{at}] (role {role}) comes after the last user message; "
                        "guardrail answers the last user message, so the conversation must "
                        "end with it (tool results and assistant prefills are not supported)",
                    )
                return position
        raise ApiError(
            400,
            "no_user_message",
            "the conversation has no user message; the last user message is the question",
        )


def _check_model(body: ChatRequest, served: str) -> None:
    if body.model != served:
        raise ApiError(
            404,
            "model_not_found",
            f"the model {body.model!r} does not exist here; this server serves {served!r} "
            "(GET /v1/models)",
        )
    if body.n != 1:
        raise ApiError(400, "unsupported_n", f"n={body.n} is not supported; only n=1")


def guardrail_object(record: dict[str, Any]) -> dict[str, Any]:
    """The decision as the ``guardrail`` object of a completion."""
    selected = {key: record.get(key) for key in GUARDRAIL_FIELDS}
    selected["decision_id"] = selected.pop("id")
    return selected


@router.get("/v1/models", responses={401: _ERROR})
async def models(settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """The model name this server answers to."""
    return {
        "object": "list",
        "data": [
            {"id": settings.served_model, "object": "model", "created": 0, "owned_by": "guardrail"}
        ],
    }


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        400: _ERROR,
        401: _ERROR,
        404: _ERROR,
        413: _ERROR,
        422: _ERROR,
        429: _ERROR,
        503: _ERROR,
    },
)
async def chat_completions(
    body: ChatRequest,
    guard: GuardDep,
    caller: CallerDep,
    answerer: AnswererDep,
    settings: SettingsDep,
    request: Request,
) -> dict[str, Any] | StreamingResponse:
    """An OpenAI chat completion whose content is guardrail's decision, rendered."""
    _check_model(body, settings.served_model)
    record = await answerer.answer(
        guard,
        body.question(),
        None,
        caller,
        endpoint="chat",
        history=body.history(),
        disconnected=request.is_disconnected,
    )
    completion_id = "chatcmpl-" + str(record["id"]).removeprefix("dec_")
    created = int(time.time())
    extra = guardrail_object(record)
    if not body.stream:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": settings.served_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": record["text"]},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": None,
            "guardrail": extra,
        }
    return StreamingResponse(
        _chunks(completion_id, created, settings.served_model, record["text"], extra),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _chunks(
    completion_id: str, created: int, model: str, text: str, extra: dict[str, Any]
) -> AsyncIterator[str]:
    """Server-sent events: the role, the text a few words at a time, then the finish chunk
    with the decision, then ``[DONE]``."""

    def event(delta: dict[str, Any], finish: str | None, **more: Any) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **more,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    for piece in text_pieces(text):
        yield event({"content": piece}, None)
    yield event({}, "stop", guardrail=extra)
    yield "data: [DONE]\n\n"
