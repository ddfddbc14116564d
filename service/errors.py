"""Error responses of the HTTP service.

Every error response has the body ``{"error": {"type": ..., "message": ...}}``; the status
says whose fault it is::

    400 invalid_json             the body is not valid JSON
    400 invalid_unicode          a string in the JSON body is not valid Unicode (an unpaired
                                 surrogate), or the body is not UTF-8
    404 not_found                no such route
    405 method_not_allowed       the route exists, the method does not
    413 body_too_large           the body exceeds max_body_bytes
    415 unsupported_media_type   the body is not sent as application/json
    422 invalid_request          a field is missing, unknown, of the wrong type or invalid
    422 invalid_question         the question is empty or too long (guardrail.QuestionError)
    503 not_ready                the pipeline is still being built, or building it failed
    503 config_error, policy_error, retrieval_error, model_unavailable, backend_error,
        pipeline_error           the server's own set-up failed on this request
    500 internal_error           anything else: logged with its traceback, never with the body

``ApiError`` is what the service raises itself; ``install_error_handlers`` turns it, FastAPI's
validation errors and the errors of the layers below into that body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from guardrail.errors import (
    BackendError,
    ConfigError,
    GuardrailError,
    ModelUnavailableError,
    QuestionError,
)
from guardrail.text import printable
from policies import PolicyError
from retrievers import RetrieverError
from service.schemas import usage_for

PIPELINE_ERRORS = (GuardrailError, RetrieverError, PolicyError)
"""The error roots of the layers below; their messages are written for users."""

_SERVER_SIDE: tuple[tuple[type[Exception], str], ...] = (
    (ModelUnavailableError, "model_unavailable"),
    (BackendError, "backend_error"),
    (ConfigError, "config_error"),
    (PolicyError, "policy_error"),
    (RetrieverError, "retrieval_error"),
    (GuardrailError, "pipeline_error"),
)

_MAX_SHOWN = 60


class ApiError(HTTPException):
    """An error response the service raises on purpose: status, type and message."""

    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.error_type = error_type
        self.message = message


OPENAI_PATHS = ("/v1/chat/", "/v1/completions", "/v1/models")
"""Routes of the OpenAI-compatible API: their errors also carry ``param`` and ``code``, as
OpenAI's do, so that OpenAI clients read them."""


def is_openai_path(path: str) -> bool:
    """Whether ``path`` belongs to the OpenAI-compatible API."""
    return path.startswith(OPENAI_PATHS)


def error_body(error_type: str, message: str, *, openai: bool = False) -> dict[str, Any]:
    """The JSON body of every error response (OpenAI's shape on the OpenAI routes)."""
    if openai:
        return {
            "error": {"type": error_type, "message": message, "param": None, "code": error_type}
        }
    return {"error": {"type": error_type, "message": message}}


def count_error(app: Any, error_type: str) -> None:
    """Count an error response in the app's metrics (``guardrail_errors_total{type}``)."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.errors.labels(error_type).inc()


def error_response(
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
    app: Any = None,
) -> JSONResponse:
    """A JSON error response for a request to ``path`` (counted in ``app``'s metrics)."""
    count_error(app, error_type)
    # A message may echo what the caller sent: make sure it can be encoded.
    body = error_body(error_type, printable(message), openai=is_openai_path(path))
    return JSONResponse(body, status_code=status, headers=headers)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (several policy problems are joined with "; ")."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def classify(exc: BaseException) -> tuple[int, str]:
    """Status and error type of an error raised by the pipeline while answering.

    Only the question is the caller's to fix; any other pipeline error comes from the
    server's configuration, index or models, so it is a 503 with the pipeline's message.
    """
    if isinstance(exc, QuestionError):
        return 422, "invalid_question"
    for kind, name in _SERVER_SIDE:
        if isinstance(exc, kind):
            return 503, name
    return 500, "internal_error"


def _shown(value: Any) -> str:
    """A received value as JSON (it came as JSON), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def field_name(loc: Sequence[int | str]) -> str:
    """A field's place in the body as a path (``messages[0].content``; ``body`` for the
    whole body), from a validation error's ``loc`` (its leading ``body`` dropped)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _problem(error: dict[str, Any]) -> str:
    where = field_name(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "too_long" and "max_length" in ctx:
        return f"{where}: {ctx.get('actual_length')} items given; at most {ctx['max_length']}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "value_error":
        return message if where == "body" else f"{where}: {message}"
    return f"{where}: {message} (got {_shown(error.get('input'))})"


def validation_error(request: Request, exc: RequestValidationError) -> ApiError:
    """The 400, 415 or 422 that a FastAPI validation error stands for, with a clear message."""
    errors = list(exc.errors())
    usage = usage_for(request.url.path)
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            loc = error.get("loc", ())
            at = f" (character {loc[1]})" if len(loc) > 1 else ""
            return ApiError(
                400, "invalid_json", f"the request body is not valid JSON: {reason}{at}; {usage}"
            )
    whole = next((e for e in errors if tuple(e.get("loc", ())) == ("body",)), None)
    if whole is not None and whole.get("type") == "missing":
        return ApiError(422, "invalid_request", f"the request has no body; {usage}")
    if whole is not None and isinstance(whole.get("input"), bytes):
        # FastAPI passes a body that is not declared as JSON on as bytes.
        content_type = request.headers.get("content-type") or "no Content-Type"
        return ApiError(
            415,
            "unsupported_media_type",
            f"the body must be JSON sent with Content-Type: application/json "
            f"(got {content_type}); {usage}",
        )
    problems = "; ".join(_problem(dict(error)) for error in errors)
    return ApiError(422, "invalid_request", f"invalid request: {problems}; {usage}")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status_code,
        exc.error_type,
        exc.message,
        exc.headers,
        path=request.url.path,
        app=request.app,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}; the API is described at /docs"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    else:
        message = str(exc.detail)
    error_type = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return error_response(
        status, error_type, message, exc.headers, path=request.url.path, app=request.app
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _api_error(request, validation_error(request, exc))


async def _pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    status, error_type = classify(exc)
    return error_response(status, error_type, one_line(exc), path=request.url.path, app=request.app)


def install_error_handlers(app: FastAPI) -> None:
    """Make every handled error answer with the JSON error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for root in PIPELINE_ERRORS:
        app.add_exception_handler(root, _pipeline_error)
