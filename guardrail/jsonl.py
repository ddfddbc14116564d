"""Reading JSON Lines files: one JSON object per line, errors naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_objects(path: Path, error: type[Exception]) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file, blank lines skipped; a malformed line raises
    ``error`` with ``path:line`` and what is wrong."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{path}:{number}: expected a JSON object per line")
            yield record
