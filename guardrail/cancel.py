"""Cancelling a question's work when nobody waits for the answer any more.

The service runs each question in a worker thread under a :class:`CancelToken`; when the
client disconnects, the service cancels the token, and the next checkpoint in that thread
(before a model call, between decoding steps, between pipeline steps) raises
:class:`Cancelled`, so the model stops spending time on an answer nobody will read. Outside
a token (the CLI, the Python API) the checkpoints cost one context-variable read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from guardrail.errors import GuardrailError

T = TypeVar("T")


class Cancelled(GuardrailError):
    """The work was cancelled (its caller went away) before it finished."""


class CancelToken:
    """A flag set once, from any thread, read at checkpoints."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "the client disconnected") -> None:
        """Ask the work under this token to stop at its next checkpoint."""
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


_current: ContextVar[CancelToken | None] = ContextVar("guardrail_cancel_token", default=None)


@contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    """Run the block under ``token`` (checkpoints inside it read this token)."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def current_token() -> CancelToken | None:
    """The token of the work running in this context, if any."""
    return _current.get()


def checkpoint() -> None:
    """Raise :class:`Cancelled` when the current work has been cancelled."""
    token = _current.get()
    if token is not None and token.cancelled:
        raise Cancelled(f"cancelled: {token.reason}")


def run_cancellable(token: CancelToken, func: Callable[[], T]) -> T:
    """``func()`` under ``token``: the form a worker thread runs (context variables are not
    inherited by threads, so the token is set inside the thread)."""
    with cancellable(token):
        checkpoint()
        return func()
