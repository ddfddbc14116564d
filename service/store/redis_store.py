"""The shared decision store: Redis, for several service replicas.

Keys (all under a prefix, default ``guardrail:``):

- ``decisions`` a stream of decision summaries (id, time, tenant, policy, action,
  confidence), trimmed to about ``max_stream`` entries; ``record:<id>`` the full record
  (a string, kept ``record_ttl_days``);
- ``counts:<minute>`` a hash of ``tenant|policy|action`` -> count per minute, and
  ``confidence:<hour>`` a hash of ``tenant|policy|bin`` -> count: the rolling refusal,
  hedge and escalation rates and the confidence distribution, kept ``counter_ttl_days``;
- ``feedback:<id>`` a hash of labels, and ``labelled`` a sorted set of the decisions that
  carry a right-or-wrong label (scored by when they were made); ``cache:<key>`` cached
  responses with a TTL; ``rate:<key>:<minute>`` per-minute request counts.

With ``appendonly yes`` Redis itself persists everything across restarts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from guardrail.redact import without_credentials
from service.store.base import (
    CONFIDENCE_BINS,
    ESCALATED,
    Bucket,
    Feedback,
    Labelled,
    StoreError,
    UnknownDecisionError,
    confidence_bin,
    latest_labels,
    merge_buckets,
    summary_fields,
)

_NONE = "-"  # how a missing tenant is written in counter fields

# KEYS: record, stream, minute counters, hour confidence histogram.
# ARGV: record json, record ttl, stream max length, counter ttl, confidence field,
# n, n counter fields, then the summary as field/value pairs for the stream.
_RECORD_ONCE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
local n = tonumber(ARGV[6])
local summary = {}
for i = 7 + n, #ARGV do summary[#summary + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(summary))
for i = 7, 6 + n do redis.call('HINCRBY', KEYS[3], ARGV[i], 1) end
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
"""


def _tenant_out(value: str) -> str | None:
    return None if value == _NONE else value


class RedisStore:
    """Decisions, counters, feedback, the response cache and rate limits in Redis."""

    kind = "redis"
    rate_limit_in_memory = False
    """Counted in Redis, shared by every replica (a network call)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "guardrail:",
        max_stream: int = 100_000,
        record_ttl_days: int = 90,
        counter_ttl_days: int = 8,
        timeout_seconds: float = 2.0,
        clock: Any = time.time,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_stream = max_stream
        self.record_ttl = record_ttl_days * 86400
        self.counter_ttl = counter_ttl_days * 86400
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            decode_responses=True,
        )
        self._record_once = self._redis.register_script(_RECORD_ONCE)

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(
                f"Redis at {without_credentials(self.url)} failed to {what}: {exc}"
            ) from exc

    def record(self, record: Mapping[str, Any]) -> str:
        """Keep a record once: recording the same id again (a retried spool drain) changes
        nothing, so counters are never counted twice."""
        fields = summary_fields(record)
        tenant = fields["tenant"] or _NONE
        minute = int(fields["at"] // 60)
        hour = int(fields["at"] // 3600)
        counted = [f"{tenant}|{fields['policy']}|{fields['action']}"]
        if fields["escalated"]:
            counted.append(f"{tenant}|{fields['policy']}|{ESCALATED}")
        summary = [x for k, v in fields.items() for x in (k, "" if v is None else str(v))]
        self._call(
            "record a decision",
            self._record_once,
            keys=[
                self._key("record", fields["id"]),
                self._key("decisions"),
                self._key("counts", minute),
                self._key("confidence", hour),
            ],
            args=[
                json.dumps(dict(record), ensure_ascii=False, sort_keys=True),
                self.record_ttl,
                self.max_stream,
                self.counter_ttl,
                f"{tenant}|{fields['policy']}|{confidence_bin(fields['confidence'])}",
                len(counted),
                *counted,
                *summary,
            ],
        )
        return str(fields["id"])

    def get(self, decision_id: str) -> dict[str, Any]:
        raw = self._call("read a decision", self._redis.get, self._key("record", decision_id))
        if raw is None:
            raise UnknownDecisionError(decision_id)
        record: dict[str, Any] = json.loads(raw)
        return record

    def add_feedback(self, feedback: Feedback) -> None:
        record = self.get(feedback.decision_id)
        key = self._key("feedback", feedback.decision_id)
        made = summary_fields(record)["at"]
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(key, feedback.feedback_id, json.dumps(feedback.to_dict()))
        pipe.expire(key, self.record_ttl)
        if feedback.correct is not None:
            # The index of labelled decisions (by when they were made), trimmed like records.
            pipe.zadd(self._key("labelled"), {feedback.decision_id: made})
            pipe.zremrangebyscore(self._key("labelled"), "-inf", self._clock() - self.record_ttl)
        self._call("store feedback", pipe.execute)

    @staticmethod
    def _labels(raw: list[str]) -> list[Feedback]:
        labels = sorted((json.loads(item) for item in raw), key=lambda f: (f["at"], f["id"]))
        return [
            Feedback(f["decision_id"], f["correct"], f["label"], f["comment"], f["at"], f["id"])
            for f in labels
        ]

    def feedback(self, decision_id: str) -> list[Feedback]:
        raw = self._call("read feedback", self._redis.hvals, self._key("feedback", decision_id))
        return self._labels(raw)

    def labelled(self, since: float = 0.0) -> list[Labelled]:
        ids = self._call(
            "read the labelled decisions",
            self._redis.zrangebyscore,
            self._key("labelled"),
            since,
            "+inf",
        )
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for decision_id in ids:
            pipe.get(self._key("record", decision_id))
            pipe.hvals(self._key("feedback", decision_id))
        results = self._call("read labelled decisions", pipe.execute)
        pairs: list[tuple[dict[str, Any], Feedback]] = []
        for raw_record, raw_labels in zip(results[::2], results[1::2], strict=True):
            if raw_record is None:
                continue  # expired
            record = json.loads(raw_record)
            pairs.extend((record, label) for label in self._labels(raw_labels))
        return latest_labels(pairs)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        entries = self._call(
            "read the decision stream", self._redis.xrevrange, self._key("decisions"), count=limit
        )
        ids = [fields["id"] for _, fields in entries]
        if not ids:
            return []
        raw = self._call("read decisions", self._redis.mget, [self._key("record", i) for i in ids])
        return [json.loads(item) for item in raw if item is not None]

    def action_counts(self, since: float, bucket_seconds: int) -> list[Bucket]:
        first, last = int(since // 60), int(self._clock() // 60)
        minutes = list(range(first, last + 1))
        pipe = self._redis.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self._key("counts", minute))
        results = self._call("read counters", pipe.execute)
        rows: list[Bucket] = []
        for minute, counts in zip(minutes, results, strict=True):
            start = float((minute * 60) // bucket_seconds * bucket_seconds)
            for field, count in counts.items():
                tenant, policy, action = field.split("|", 2)
                rows.append(Bucket(start, _tenant_out(tenant), policy, action, int(count)))
        return merge_buckets(rows)

    def confidence_histogram(self, since: float) -> dict[tuple[str | None, str], list[int]]:
        hours = range(int(since // 3600), int(self._clock() // 3600) + 1)
        pipe = self._redis.pipeline(transaction=False)
        for hour in hours:
            pipe.hgetall(self._key("confidence", hour))
        histogram: dict[tuple[str | None, str], list[int]] = {}
        for counts in self._call("read the confidence histogram", pipe.execute):
            for field, count in counts.items():
                tenant, policy, index = field.rsplit("|", 2)
                bins = histogram.setdefault((_tenant_out(tenant), policy), [0] * CONFIDENCE_BINS)
                bins[int(index)] += int(count)
        return histogram

    def cache_get(self, key: str) -> dict[str, Any] | None:
        raw = self._call("read the response cache", self._redis.get, self._key("cache", key))
        return None if raw is None else json.loads(raw)

    def cache_put(self, key: str, record: Mapping[str, Any], ttl_seconds: int) -> None:
        self._call(
            "write the response cache",
            self._redis.set,
            self._key("cache", key),
            json.dumps(dict(record), ensure_ascii=False),
            ex=ttl_seconds,
        )

    def hit_rate_limit(self, key: str, per_minute: int) -> bool:
        counter = self._key("rate", key, int(self._clock() // 60))
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(counter)
        pipe.expire(counter, 120)
        count, _ = self._call("count a request", pipe.execute)
        return int(count) > per_minute

    def ping(self) -> None:
        self._call("answer a ping", self._redis.ping)

    def close(self) -> None:
        self._redis.close()
