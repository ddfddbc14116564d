"""Escalation budgets shared by every replica, in Redis.

The policy's budgets (``per_minute``, ``max_share`` of the decisions in a window; per target
and for the whole chain; see :mod:`policies.escalation`) are counted in sorted sets of
timestamps, and one Lua script checks and counts an escalation atomically, so two replicas
cannot both take the last unit of a budget. When Redis cannot be reached, the replica falls
back to its own in-process ledger (the budget then holds per replica) and says so in the log.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import redis

from policies.escalation import EscalationLedger
from policies.schema import Budget, Target
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

_MINUTE = 60.0

# KEYS: decisions, target escalations, chain escalations (sorted sets scored by time)
# ARGV: now, member, horizon, then for the target and the chain: per_minute, share, window
# (-1 when unset). Returns {0} when allowed (and counted), else {which, count, seen} where
# which is 1/2 (target per minute / share) or 3/4 (chain per minute / share).
_ACQUIRE = """
local now = tonumber(ARGV[1])
local horizon = tonumber(ARGV[3])
-- Only the escalation sets are trimmed here; decisions are trimmed when they are recorded,
-- to the longest window the scope uses, so a short window never hides a long one's data.
for i = 2, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - horizon)
end
local checks = {
  {KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), 1},
  {KEYS[3], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), 3},
}
for _, c in ipairs(checks) do
  local key, per_minute, share, window, code = c[1], c[2], c[3], c[4], c[5]
  if per_minute >= 0 then
    local last = redis.call('ZCOUNT', key, now - 60, '+inf')
    if last + 1 > per_minute then return {code, last, 0} end
  end
  if share >= 0 then
    local done = redis.call('ZCOUNT', key, now - window, '+inf')
    local seen = redis.call('ZCOUNT', KEYS[1], now - window, '+inf')
    local allowed = math.ceil(share * math.max(seen, 1))
    if done + 1 > allowed then return {code + 1, done, seen} end
  end
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[2])
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], math.ceil(horizon) + 60) end
return {0}
"""


def _limits(budget: Budget | None) -> list[float]:
    if budget is None:
        return [-1, -1, 0]
    return [
        budget.per_minute if budget.per_minute is not None else -1,
        budget.max_share if budget.max_share is not None else -1,
        budget.window_seconds,
    ]


class RedisLedger:
    """An escalation ledger in Redis, with an in-process fallback."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "guardrail:ledger:",
        clock: Any = time.time,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.prefix = prefix
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self.fallback = EscalationLedger(clock)
        self.degraded = False
        self._horizon: dict[str, float] = {}

    def _failed(self, exc: redis.RedisError) -> None:
        if not self.degraded:
            logger.warning("escalation budgets fall back to this replica's own count: %s", exc)
        self.degraded = True

    def record_decision(self, scope: str) -> None:
        """Count one decision of ``scope`` (a policy name)."""
        self.fallback.record_decision(scope)
        now = self._clock()
        key = f"{self.prefix}{scope}:decisions"
        try:
            pipe = self._redis.pipeline(transaction=False)
            horizon = self._horizon.get(scope, 3600.0)
            pipe.zadd(key, {uuid.uuid4().hex: now})
            pipe.zremrangebyscore(key, "-inf", now - horizon)
            pipe.expire(key, int(horizon) + 60)
            pipe.execute()
            self.degraded = False
        except redis.RedisError as exc:
            self._failed(exc)

    def release(self, scope: str, target: Target) -> None:
        """Give back the escalation to ``target`` counted last (the newest entry of the
        target's and the chain's sets: budgets count escalations, not which one)."""
        base = f"{self.prefix}{scope}"
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zpopmax(f"{base}:target:{target.name}")
            pipe.zpopmax(f"{base}:chain")
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            self.fallback.release(scope, target)  # where it was counted while Redis was down

    def acquire(self, scope: str, target: Target, chain: Budget | None) -> str | None:
        """Count an escalation and return ``None``, or say which budget is spent."""
        windows = [b.window_seconds for b in (target.budget, chain) if b is not None]
        horizon = max([_MINUTE, *windows])
        self._horizon[scope] = max(self._horizon.get(scope, 3600.0), horizon)
        base = f"{self.prefix}{scope}"
        try:
            result = self._acquire(
                keys=[f"{base}:decisions", f"{base}:target:{target.name}", f"{base}:chain"],
                args=[
                    self._clock(),
                    uuid.uuid4().hex,
                    horizon,
                    *_limits(target.budget),
                    *_limits(chain),
                ],
            )
        except redis.RedisError as exc:
            self._failed(exc)
            return self.fallback.acquire(scope, target, chain)
        self.degraded = False
        code = int(result[0])
        if code == 0:
            return None
        what = f"target {target.name!r}" if code in (1, 2) else "the escalation chain"
        budget = target.budget if code in (1, 2) else chain
        assert budget is not None
        count, seen = int(result[1]), int(result[2])
        if code in (1, 3):
            return (
                f"{what} is over its budget: {count} escalations in the last minute "
                f"(limit {budget.per_minute} per minute, across replicas)"
            )
        share = budget.max_share if budget.max_share is not None else math.nan
        return (
            f"{what} is over its budget: {count} escalations among {seen} decisions in the "
            f"last {budget.window_seconds:g} s (limit {share:.0%} of decisions, across replicas)"
        )


def shared_ledger(settings: ServiceSettings) -> RedisLedger | None:
    """The Redis ledger when the replicas share Redis (``store: redis``), else ``None`` (the
    pipeline keeps its in-process ledger)."""
    if settings.store == "redis" and settings.redis_url:
        return RedisLedger(settings.redis_url)
    return None
