"""What both example bots share: a small index over part of the bundled demo corpus.

Three Wikipedia articles of the demo corpus (SQuAD 1.1 dev paragraphs, CC BY-SA 4.0), embedded
with the bundled all-MiniLM-L6-v2 model: a few seconds, offline.
"""

from __future__ import annotations

from retrievers import PassageIndex, SentenceTransformerEmbedder, demo_corpus_path, load_documents
from retrievers.langchain import IndexRetriever

TITLES = {"1973 oil crisis", "Kenya", "Super Bowl 50"}
QUESTIONS = (
    "When did the 1973 oil crisis begin?",
    "Which team won Super Bowl 50?",
    "Who won the 2022 FIFA World Cup?",  # not in the documents
)


def demo_retriever(k: int = 2) -> IndexRetriever:
    """A LangChain retriever over three articles of the demo corpus."""
    passages = [p for p in load_documents(demo_corpus_path()) if p.title in TITLES]
    index = PassageIndex.build(passages, SentenceTransformerEmbedder(), progress=False)
    return IndexRetriever(index=index, k=k)
