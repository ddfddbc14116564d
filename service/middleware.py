"""ASGI middleware: a request body limit, and a JSON 500 for unexpected errors."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_response

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
