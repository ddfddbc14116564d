"""An OpenAI-compatible model server over the embedded model: ``guardrail serve --mode model``.

It is what proxy mode talks to in tests (and a small stand-in for vLLM on a laptop): plain
generation, no retrieval, no policy.

    GET  /v1/models
    POST /v1/completions        prompt, max_tokens, temperature, stop, logprobs (top-k), echo
    POST /v1/chat/completions   messages, max_tokens, temperature, logprobs, top_logprobs

``logprobs`` follow OpenAI's formats (the legacy completions format with ``tokens``,
``token_logprobs``, ``top_logprobs`` and ``text_offset``; the chat format with ``content``).
``echo: true`` with ``logprobs`` returns the prompt's tokens with their log-probabilities,
which is how a client scores a given continuation (teacher forcing) without generating it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from guardrail.backends.transformers import TransformersBackend
from service.errors import ApiError, install_error_handlers
from service.middleware import BodyLimitMiddleware, InternalErrorMiddleware, UnicodeMiddleware

router = APIRouter()
MAX_TOP = 20


class CompletionRequest(BaseModel):
    """OpenAI's legacy completion request (the fields that matter here)."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str
    max_tokens: int = Field(default=16, ge=0, le=512)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    echo: bool = False
    stop: str | list[str] | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """OpenAI's chat completion request (the fields that matter here)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=512)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=512)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)


def _backend(request: Request, model: str) -> TransformersBackend:
    backend: TransformersBackend = request.app.state.backend
    if model != backend.name:
        raise ApiError(
            404,
            "model_not_found",
            f"the model {model!r} does not exist here; this server serves {backend.name!r}",
        )
    return backend


def _reply(
    prefix: str, kind: str, backend: TransformersBackend, choice: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's envelope around one choice."""
    return {
        "id": prefix + uuid.uuid4().hex,
        "object": kind,
        "created": int(time.time()),
        "model": backend.name,
        "choices": [choice],
    }


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence, and whether one was found."""
    positions = [text.find(s) for s in stops if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The one model this server serves."""
    name = request.app.state.backend.name
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "guardrail"}]}


def _complete(backend: TransformersBackend, body: CompletionRequest) -> dict[str, Any]:
    stops = _stops(body.stop)
    top = body.logprobs or 0
    generated_text = ""
    tokens: list[str] = []
    logprobs: list[float] = []
    alternatives: list[list[tuple[str, float]]] = []
    finish = "length"
    if body.max_tokens:
        # Generation stops at a newline only when the caller asks for it.
        generation, alts = backend.completion(
            body.prompt,
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=top,
            stop_at_newline="\n" in stops,
        )
        pieces = [backend.decode_token(t) for t in generation.stats.tokens]
        generated_text, stopped = _cut("".join(pieces), stops)
        finish = "stop" if stopped or generation.finish_reason != "length" else "length"
        # Only the tokens of the text that is returned (up to the stop sequence).
        keep, length = 0, 0
        while keep < len(pieces) and length + len(pieces[keep]) <= len(generated_text):
            length += len(pieces[keep])
            keep += 1
        tokens, logprobs = pieces[:keep], list(generation.stats.logprobs[:keep])
        alternatives = alts[:keep]
    text = generated_text
    result: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if body.logprobs is not None:
        entries: list[tuple[str, float | None, list[tuple[str, float]]]] = []
        offsets: list[int] = []
        base = 0
        if body.echo:
            for piece, offset, logprob, options in backend.prompt_logprobs(body.prompt, top):
                entries.append((piece, logprob, options))
                offsets.append(offset)
            base = len(body.prompt)
        position = base
        for i, piece in enumerate(tokens):
            entries.append((piece, logprobs[i], alternatives[i] if alternatives else []))
            offsets.append(position)
            position += len(piece)
        result["logprobs"] = {
            "tokens": [e[0] for e in entries],
            "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [
                {backend.decode_token(t): lp for t, lp in e[2]} if top else None for e in entries
            ],
            "text_offset": offsets,
        }
    result["text"] = (body.prompt if body.echo else "") + text
    return result


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any]:
    """A completion of ``prompt`` (greedy at temperature 0), with OpenAI-style logprobs."""
    backend = _backend(request, body.model)
    return _reply(
        "cmpl-", "text_completion", backend, await run_in_threadpool(_complete, backend, body)
    )


def _chat(backend: TransformersBackend, body: ChatRequest) -> dict[str, Any]:
    if backend.chat:
        prompt = backend.render_chat([(m.role, m.content) for m in body.messages])
    else:  # a base model: the conversation as plain text, the assistant's turn opened
        lines = [f"{m.role.capitalize()}: {m.content}" for m in body.messages]
        prompt = "\n".join(lines) + "\nAssistant:"
    top = body.top_logprobs or 0 if body.logprobs else 0
    generation, alternatives = backend.completion(
        prompt,
        max_new_tokens=body.max_completion_tokens or body.max_tokens or 128,
        temperature=body.temperature,
        top_k=top,
        stop_at_newline=not backend.chat,
    )
    pieces = [backend.decode_token(t) for t in generation.stats.tokens]
    logprobs = None
    if body.logprobs:
        logprobs = {
            "content": [
                {
                    "token": piece,
                    "logprob": generation.stats.logprobs[i],
                    "bytes": list(piece.encode("utf-8")),
                    "top_logprobs": [
                        {
                            "token": backend.decode_token(t),
                            "logprob": lp,
                            "bytes": list(backend.decode_token(t).encode("utf-8")),
                        }
                        for t, lp in (alternatives[i] if alternatives else [])
                    ],
                }
                for i, piece in enumerate(pieces)
            ]
        }
    return {
        "index": 0,
        "message": {"role": "assistant", "content": generation.text},
        "finish_reason": "length" if generation.finish_reason == "length" else "stop",
        "logprobs": logprobs,
    }


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> dict[str, Any]:
    """A chat completion from the embedded model, with OpenAI-style logprobs."""
    backend = _backend(request, body.model)
    return _reply(
        "chatcmpl-", "chat.completion", backend, await run_in_threadpool(_chat, backend, body)
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The model server is up (the model loads before it starts listening)."""
    return {"status": "ok"}


def create_model_app(backend: TransformersBackend, *, max_body_bytes: int = 65536) -> FastAPI:
    """The model server's app over a local backend (loaded when the server starts)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(backend.load)
        yield

    app = FastAPI(title="guardrail model server", lifespan=lifespan)
    app.state.backend = backend
    app.include_router(router)
    app.add_middleware(UnicodeMiddleware)  # inside the body limit: it reads the whole body
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(InternalErrorMiddleware)
    install_error_handlers(app)
    return app
