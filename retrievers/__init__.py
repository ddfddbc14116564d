"""Retrieval for guardrail: ingest documents, embed them, search them with FAISS.

    passages = load_documents(["docs/"])
    index = PassageIndex.build(passages, SentenceTransformerEmbedder())
    index.save("artifacts/index")
    hits = PassageIndex.load("artifacts/index", SentenceTransformerEmbedder()).search("...")

``IndexRetriever`` wraps an index as a LangChain retriever (imported on first access, so
that importing this package does not import LangChain). This package imports nothing else of
the project; importing it loads no model and touches no file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .embedding import Embedder, HashingEmbedder, SentenceTransformerEmbedder
from .errors import (
    EmbedderUnavailableError,
    IndexMismatchError,
    IndexNotFoundError,
    IngestError,
    RetrieverError,
)
from .index import PassageIndex
from .ingest import demo_corpus_path, load_documents
from .types import Passage

if TYPE_CHECKING:
    from .langchain import IndexRetriever

__all__ = [
    "Embedder",
    "EmbedderUnavailableError",
    "HashingEmbedder",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexRetriever",
    "IngestError",
    "Passage",
    "PassageIndex",
    "RetrieverError",
    "SentenceTransformerEmbedder",
    "demo_corpus_path",
    "load_documents",
]


def __getattr__(name: str) -> Any:
    if name == "IndexRetriever":
        from .langchain import IndexRetriever

        return IndexRetriever
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
