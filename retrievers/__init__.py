"""Retrieval for guardrail: ingest documents, embed them, search them with FAISS.

    passages = load_documents(["docs/"])
    index = PassageIndex.build(passages, SentenceTransformerEmbedder())
    index.save("artifacts/index")
    hits = PassageIndex.load("artifacts/index", SentenceTransformerEmbedder()).search("...")

``IndexRetriever`` wraps an index as a LangChain retriever. This package imports nothing
else of the project; importing it loads no model and touches no file.
"""

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
from .langchain import IndexRetriever
from .types import Passage

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
