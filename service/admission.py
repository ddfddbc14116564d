"""Back-pressure: a bounded number of questions in work, a bounded queue, and a polite "later".

A question past the rate limit and the response cache enters the :class:`AdmissionGate`:
at most ``max_active`` run at once (the local model runs one forward pass at a time, so more
would only wait inside it, holding a thread each); up to ``max_queued`` more wait their turn
in arrival order; a question beyond that is refused at once with 503 ``overloaded`` and a
``Retry-After`` estimated from how long questions take here. A waiting or running question
whose client disconnects is cancelled (:mod:`guardrail.cancel`): it leaves the queue, or its
model work stops at the next checkpoint.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from guardrail.cancel import CancelToken

Disconnected = Callable[[], Awaitable[bool]]
"""Whether the client has gone away (``starlette.requests.Request.is_disconnected``)."""

POLL_SECONDS = 0.25
"""How often a waiting or running question checks its client's connection."""


class Overloaded(Exception):
    """The queue is full: come back after ``retry_after`` seconds."""

    def __init__(self, active: int, queued: int, retry_after: int) -> None:
        super().__init__(
            f"the service is at capacity ({active} questions in work, {queued} waiting, the "
            f"most it queues); retry in about {retry_after} s"
        )
        self.active = active
        self.queued = queued
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected while its question waited for a turn."""


class AdmissionGate:
    """A fair (first come, first served) bounded gate with a service-time estimate."""

    def __init__(self, max_active: int, max_queued: int, *, initial_seconds: float = 5.0) -> None:
        if max_active < 1 or max_queued < 0:
            raise ValueError("max_active must be at least 1 and max_queued at least 0")
        self.max_active = max_active
        self.max_queued = max_queued
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.seconds_per_question = initial_seconds
        """Moving average of a question's time in work (seconds), for ``Retry-After``."""

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead drained at the running pace."""
        ahead = self.queued + 1
        return max(1, math.ceil(self.seconds_per_question * ahead / self.max_active))

    def observe(self, seconds: float) -> None:
        """Fold one question's time in work into the estimate."""
        self.seconds_per_question = 0.8 * self.seconds_per_question + 0.2 * max(0.0, seconds)

    @asynccontextmanager
    async def admitted(self, disconnected: Disconnected | None = None) -> AsyncIterator[None]:
        """Hold a place in work for the block; wait in the queue for one if need be.

        Raises :class:`Overloaded` at once when the queue is full, :class:`ClientGone` when
        the client leaves while waiting.
        """
        if self.active >= self.max_active or self._waiters:
            if self.queued >= self.max_queued:
                raise Overloaded(self.active, self.queued, self.retry_after())
            await self._wait(disconnected)
        else:
            self.active += 1
        try:
            yield
        finally:
            self._leave()

    async def _wait(self, disconnected: Disconnected | None) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(turn), timeout=POLL_SECONDS)
                    return  # ``_leave`` handed its place over (``active`` unchanged)
                except TimeoutError:
                    if disconnected is not None and await disconnected():
                        raise ClientGone("the client disconnected while queued") from None
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._leave()  # given a place just as it left: pass it on
            else:
                turn.cancel()
                if turn in self._waiters:
                    self._waiters.remove(turn)
            raise

    def _leave(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the place passes straight to the next in line
                return
        self.active -= 1


async def watch(token: CancelToken, disconnected: Disconnected | None) -> None:
    """Cancel ``token`` when the client disconnects (run as a task beside the work)."""
    if disconnected is None:
        return
    while not token.cancelled:
        await asyncio.sleep(POLL_SECONDS)
        if await disconnected():
            token.cancel("the client disconnected")
            return
