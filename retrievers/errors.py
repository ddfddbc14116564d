"""Errors raised by the retrievers package.

Every error derives from one root, so callers can catch the package with one clause::

    RetrieverError                 bad argument, corrupt index, FAISS missing, ...
     ├── IngestError               a document file cannot be turned into passages
     ├── IndexNotFoundError        no (complete) saved index in a directory
     ├── IndexMismatchError        saved index built with another embedder
     └── EmbedderUnavailableError  the embedding model package is not installed

Messages say what was received, what is valid, and what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "EmbedderUnavailableError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IngestError",
    "RetrieverError",
]

INGEST_HINT = "build one with `guardrail ingest PATH...`"


class RetrieverError(Exception):
    """Root of every error raised by the retrievers package."""


class IngestError(RetrieverError):
    """A document file (or path) cannot be turned into passages.

    ``path`` is the offending file or directory (None when no path was given at all) and
    ``line`` the 1-based line number where known.
    """

    def __init__(self, message: str, *, path: str | Path | None, line: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = message
        location = str(path) if path is not None else "ingest"
        if line is not None:
            location = f"{location} line {line}"
        super().__init__(f"{location}: {message}")


class IndexNotFoundError(RetrieverError):
    """A directory holds no saved index, or only part of one."""

    def __init__(self, directory: str | Path, *, missing: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.missing = tuple(missing)
        detail = f" (missing {', '.join(self.missing)})" if self.missing else ""
        super().__init__(f"no index at {directory}{detail}; {INGEST_HINT}")


class IndexMismatchError(RetrieverError):
    """A saved index was built with another embedder than the one given to load it."""

    def __init__(
        self,
        directory: str | Path,
        *,
        index_embedder: str,
        index_dim: int,
        given_embedder: str,
        given_dim: int,
    ) -> None:
        self.directory = Path(directory)
        self.index_embedder = index_embedder
        self.index_dim = index_dim
        self.given_embedder = given_embedder
        self.given_dim = given_dim
        super().__init__(
            f"index at {directory} was built with embedder {index_embedder!r} "
            f"({index_dim} dims) but was loaded with {given_embedder!r} ({given_dim} dims); "
            f"load it with the embedder it was built with, or rebuild it with "
            f"`guardrail ingest PATH...` using {given_embedder!r}"
        )


class EmbedderUnavailableError(RetrieverError):
    """The package that provides an embedding model (or its runtime) is not installed."""
