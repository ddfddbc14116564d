"""ASGI middleware: a request body limit, valid Unicode in JSON bodies, and a JSON 500 for
unexpected errors."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.text import printable, surrogate_at
from service.errors import ApiError, error_response, field_name

logger = logging.getLogger(__name__)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server rejects a malformed header itself
    return None


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body
    without one (chunked) is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared size, then count the bytes the app reads."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(
                413,
                "body_too_large",
                f"the request body has {declared} bytes; the limit is {self.max_bytes} bytes "
                "(setting max_body_bytes)",
                path=scope["path"],
                app=scope.get("app"),
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI passes it on from body parsing untouched.
                    raise ApiError(
                        413,
                        "body_too_large",
                        f"the request body exceeds the limit of {self.max_bytes} bytes "
                        "(setting max_body_bytes)",
                    )
            return message

        await self.app(scope, limited_receive, send)


def unpaired_surrogate(value: Any, path: list[str | int] | None = None) -> str | None:
    """Where in a parsed JSON value a string (or a key) holds an unpaired surrogate, as a
    message naming the field; None when every string is valid Unicode."""
    path = path or []
    if isinstance(value, str):
        at = surrogate_at(value)
        if at is None:
            return None
        return (
            f"the field {field_name(path)} holds an unpaired UTF-16 surrogate "
            f"({printable(value[at])}) at character {at}"
        )
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = unpaired_surrogate(item, [*path, index])
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            if surrogate_at(key) is not None:
                return f"a field name in {field_name(path)} holds an unpaired UTF-16 surrogate"
            found = unpaired_surrogate(item, [*path, key])
            if found:
                return found
    return None


class UnicodeMiddleware:
    """Refuse a JSON request body that is not valid Unicode with 400 ``invalid_unicode``,
    naming the field, before any route runs.

    JSON may spell an unpaired UTF-16 surrogate (``"\\ud800"``); Python decodes it into a
    string that no UTF-8 encoder, store or log can take, so it is refused at the door rather
    than met halfway through a request (after the model ran, at the store's write). A body that
    is not JSON at all passes on, for the route to say so.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read a JSON body whole, check its strings, then hand it on unchanged."""
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except ApiError as exc:  # the body limit, counted as the body arrived
            response = error_response(
                exc.status_code,
                exc.error_type,
                exc.message,
                path=scope["path"],
                app=scope.get("app"),
            )
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        problem = None
        try:
            problem = unpaired_surrogate(json.loads(body)) if body else None
        except UnicodeDecodeError as exc:
            problem = f"the body is not valid UTF-8 (byte {exc.start}); send JSON as UTF-8"
        except ValueError:
            problem = None  # not JSON: the route reports it
        except RecursionError:
            problem = None  # nested too deep to check here: the route's parser decides
        if problem:
            if "surrogate" in problem:
                problem += "; text must be valid Unicode (UTF-16 escapes in JSON come in pairs)"
            response = error_response(
                400,
                "invalid_unicode",
                problem,
                path=scope["path"],
                app=scope.get("app"),
            )
            await response(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InternalErrorMiddleware:
    """Answer an unexpected exception with a generic JSON 500 and log it.

    The log names the method and path and has the traceback, never the request body. Errors
    the app handles itself (``ApiError``, validation, pipeline errors) never get here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on an unexpected exception, log it and answer 500."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for an error response; the server closes the connection
            response = error_response(
                500,
                "internal_error",
                "an unexpected error occurred on the server; it has been logged",
                path=scope["path"],
                app=scope.get("app"),
            )
            await response(scope, receive, send)
