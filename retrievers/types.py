"""The passage type shared by ingestion, indexing and retrieval."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import RetrieverError

__all__ = ["Passage"]


@dataclass(frozen=True)
class Passage:
    """A retrievable piece of text.

    ``source`` names the file or data set the passage came from; ``score`` is the cosine
    similarity to the query, set by retrieval (None on stored passages).
    """

    id: str
    text: str
    source: str
    title: str = ""
    score: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Copy so that a caller mutating its dict cannot change a frozen passage.
        object.__setattr__(self, "metadata", dict(self.metadata))

    def with_score(self, score: float | None) -> Passage:
        """Return a copy of this passage with ``score`` set."""
        return dataclasses.replace(self, score=score)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict; ``Passage.from_dict`` reverses it."""
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "title": self.title,
            "score": self.score,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Passage:
        """Build a passage from ``to_dict`` output; raise RetrieverError on a malformed dict."""
        missing = [key for key in ("id", "text", "source") if key not in data]
        if missing:
            raise RetrieverError(
                f"passage record lacks {', '.join(missing)}; got keys {sorted(data)}; "
                "expected id, text, source and optionally title, score, metadata"
            )
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise RetrieverError(
                f"passage {data['id']!r}: metadata must be an object, got {type(metadata).__name__}"
            )
        score = data.get("score")
        return cls(
            id=str(data["id"]),
            text=str(data["text"]),
            source=str(data["source"]),
            title=str(data.get("title") or ""),
            score=float(score) if score is not None else None,
            metadata={str(key): str(value) for key, value in metadata.items()},
        )
