"""LangChain adapter: a ``BaseRetriever`` over a ``PassageIndex``."""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from .index import PassageIndex

__all__ = ["IndexRetriever"]


class IndexRetriever(BaseRetriever):
    """Returns the ``k`` best passages of ``index`` as LangChain Documents.

    Each Document's ``id`` is the passage id; its metadata holds the passage metadata plus
    ``id``, ``source``, ``title`` and ``score`` (cosine similarity).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: PassageIndex
    k: int = Field(default=4, ge=1)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        """The ``k`` best passages (``k`` given to ``invoke`` overrides the field)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a whole number of at least 1, got {k!r}")
        return [
            Document(
                page_content=passage.text,
                metadata={
                    **passage.metadata,
                    "id": passage.id,
                    "source": passage.source,
                    "title": passage.title,
                    "score": passage.score,
                },
                id=passage.id,
            )
            for passage in self.index.search(query, k or self.k)
        ]
