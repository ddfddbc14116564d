"""A JSON Lines file of decision records: one line per question, appended, never rewritten.

Each line is a ``Response.to_dict()`` record: the policy name and content hash, the rule that
fired, the reasons, the signals and the confidence, which is what a decision needs to be
replayed (``guardrail policy explain``) or compared with a shadow policy
(``guardrail policy compare``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.jsonl import iter_objects


class DecisionLog:
    """Appends decision records to a file; safe to share between threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._folder_made = False

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line and flush it to the operating system."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            if not self._folder_made:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._folder_made = True
            # One write call per line in append mode: lines from processes sharing the file
            # do not interleave within a line.
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a decision log, in order; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no decision log at {path}")
    yield from iter_objects(path, ConfigError)
