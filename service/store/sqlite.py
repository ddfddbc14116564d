"""The embedded decision store: one SQLite file (WAL mode) that survives restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    tenant TEXT,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,
    confidence REAL NOT NULL,
    escalated INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL REFERENCES decisions (id),
    at REAL NOT NULL,
    correct INTEGER,
    label TEXT,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_decision ON feedback (decision_id);
CREATE TABLE IF NOT EXISTS response_cache (
    key TEXT PRIMARY KEY,
    expires REAL NOT NULL,
    record TEXT NOT NULL
);
"""


class SqliteStore:
    """Decisions and everything else in one SQLite file; safe to share between threads."""

    kind = "sqlite"
    rate_limit_in_memory = True
    """The per-minute request counts live in this process's memory, not in the file: a
    SQLite store serves one process, and a count costs no disk write and no thread hop."""

    def __init__(self, path: str | Path, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._rate_minute = -1
        self._rate_counts: dict[str, int] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the decision store {self.path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"decision store {self.path}: {exc}") from exc

    def record(self, record: Mapping[str, Any]) -> str:
        fields = summary_fields(record)
        self._run(
            "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fields["id"],
                fields["at"],
                fields["tenant"],
                fields["policy"],
                fields["action"],
                fields["confidence"],
                int(fields["escalated"]),
                json.dumps(dict(record), ensure_ascii=False, sort_keys=True),
            ),
        )
        return str(fields["id"])

    def get(self, decision_id: str) -> dict[str, Any]:
        rows = self._run("SELECT record FROM decisions WHERE id = ?", (decision_id,))
        if not rows:
            raise UnknownDecisionError(decision_id)
        record: dict[str, Any] = json.loads(rows[0][0])
        return record

    def add_feedback(self, feedback: Feedback) -> None:
        self.get(feedback.decision_id)
        correct = None if feedback.correct is None else int(feedback.correct)
        self._run(
            "INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?, ?)",
            (
                feedback.feedback_id,
                feedback.decision_id,
                feedback.at,
                correct,
                feedback.label,
                feedback.comment,
            ),
        )

    def feedback(self, decision_id: str) -> list[Feedback]:
        rows = self._run(
            "SELECT decision_id, correct, label, comment, at, id FROM feedback "
            "WHERE decision_id = ? ORDER BY at, rowid",
            (decision_id,),
        )
        return [
            Feedback(d, None if c is None else bool(c), label, comment, at, fid)
            for d, c, label, comment, at, fid in rows
        ]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._run(
            "SELECT record FROM decisions ORDER BY at DESC, rowid DESC LIMIT ?", (limit,)
        )
        return [json.loads(row[0]) for row in rows]

    def labelled(self, since: float = 0.0) -> list[Labelled]:
        rows = self._run(
            "SELECT d.record, f.decision_id, f.correct, f.label, f.comment, f.at, f.id "
            "FROM feedback f JOIN decisions d ON d.id = f.decision_id "
            "WHERE d.at >= ? AND f.correct IS NOT NULL ORDER BY f.at, f.rowid",
            (since,),
        )
        return latest_labels(
            [
                (json.loads(record), Feedback(d, bool(c), label, comment, at, fid))
                for record, d, c, label, comment, at, fid in rows
            ]
        )

    def action_counts(self, since: float, bucket_seconds: int) -> list[Bucket]:
        rows = self._run(
            "SELECT CAST(at / ? AS INTEGER) * ?, tenant, policy, action, COUNT(*) "
            "FROM decisions WHERE at >= ? GROUP BY 1, 2, 3, 4 "
            "UNION ALL "
            "SELECT CAST(at / ? AS INTEGER) * ?, tenant, policy, ?, COUNT(*) "
            "FROM decisions WHERE at >= ? AND escalated GROUP BY 1, 2, 3",
            (
                bucket_seconds,
                bucket_seconds,
                since,
                bucket_seconds,
                bucket_seconds,
                ESCALATED,
                since,
            ),
        )
        return merge_buckets([Bucket(float(s), t, p, a, int(n)) for s, t, p, a, n in rows])

    def confidence_histogram(self, since: float) -> dict[tuple[str | None, str], list[int]]:
        rows = self._run("SELECT tenant, policy, confidence FROM decisions WHERE at >= ?", (since,))
        histogram: dict[tuple[str | None, str], list[int]] = {}
        for tenant, policy, confidence in rows:
            bins = histogram.setdefault((tenant, policy), [0] * CONFIDENCE_BINS)
            bins[confidence_bin(confidence)] += 1
        return histogram

    def cache_get(self, key: str) -> dict[str, Any] | None:
        rows = self._run(
            "SELECT record FROM response_cache WHERE key = ? AND expires > ?",
            (key, self._clock()),
        )
        return json.loads(rows[0][0]) if rows else None

    def cache_put(self, key: str, record: Mapping[str, Any], ttl_seconds: int) -> None:
        now = self._clock()
        self._run("DELETE FROM response_cache WHERE expires <= ?", (now,))
        self._run(
            "INSERT OR REPLACE INTO response_cache VALUES (?, ?, ?)",
            (key, now + ttl_seconds, json.dumps(dict(record), ensure_ascii=False)),
        )

    def hit_rate_limit(self, key: str, per_minute: int) -> bool:
        """Counted in memory (see ``rate_limit_in_memory``): exact for the one process that
        serves from this file, no disk write per request, forgotten on a restart."""
        minute = int(self._clock() // 60)
        with self._rate_lock:
            if minute != self._rate_minute:
                self._rate_counts = {}
                self._rate_minute = minute
            count = self._rate_counts.get(key, 0) + 1
            self._rate_counts[key] = count
        return count > per_minute

    def ping(self) -> None:
        self._run("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def is_empty(self) -> bool:
        """Whether no decision is stored (a cheap check; the spool asks it often)."""
        return not self._run("SELECT 1 FROM decisions LIMIT 1")

    def all_records(self) -> list[dict[str, Any]]:
        """Every record, oldest first (the spool of :class:`ResilientStore` is drained so)."""
        rows = self._run("SELECT record FROM decisions ORDER BY at, rowid")
        return [json.loads(row[0]) for row in rows]

    def delete(self, decision_id: str) -> None:
        """Forget one record (and its feedback)."""
        self._run("DELETE FROM feedback WHERE decision_id = ?", (decision_id,))
        self._run("DELETE FROM decisions WHERE id = ?", (decision_id,))
