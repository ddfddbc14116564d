"""A FAISS index over passages: build, search, save and load.

Vectors are L2-normalised, so the inner product of ``IndexFlatIP`` is the cosine similarity.
A saved index is a directory with ``index.faiss``, ``passages.jsonl`` and ``manifest.json``
(written last, so a directory with a manifest holds a complete index).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .embedding import Embedder
from .errors import IndexMismatchError, IndexNotFoundError, RetrieverError
from .types import Passage

__all__ = ["FORMAT_VERSION", "PassageIndex"]

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
MANIFEST_FILE = "manifest.json"
_REBUILD = "rebuild it with `guardrail ingest PATH...`"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise RetrieverError(
            "FAISS is not installed; install `pip install 'guardrail-rag[cpu]'` (faiss-cpu) "
            "or `pip install 'guardrail-rag[gpu]'` (faiss-gpu-cu12), not both"
        ) from exc
    return faiss


def _corpus_version(embedder_name: str, passages: Sequence[Passage]) -> str:
    digest = hashlib.sha256()
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    for part in (embedder_name, *(s for p in passages for s in (p.id, p.text))):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _write_atomic(path: Path, write: Callable[[str], object]) -> None:
    """Write through ``write(tmp_path)`` then rename, so readers never see a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class PassageIndex:
    """Exact cosine search over passages; build with ``build`` or ``load``."""

    def __init__(self, index: Any, passages: Sequence[Passage], embedder: Embedder) -> None:
        if index.ntotal != len(passages) or index.d != embedder.dim:
            raise RetrieverError(
                f"FAISS index holds {index.ntotal} vectors of {index.d} dims but there are "
                f"{len(passages)} passages and embedder {embedder.name!r} has {embedder.dim} dims"
            )
        self._index = index
        self._passages = tuple(p if p.score is None else p.with_score(None) for p in passages)
        self._embedder = embedder
        self._corpus_version = _corpus_version(embedder.name, self._passages)

    def __repr__(self) -> str:
        return (
            f"PassageIndex({len(self)} passages, embedder={self._embedder.name!r}, "
            f"corpus_version={self._corpus_version!r})"
        )

    def __len__(self) -> int:
        return len(self._passages)

    @property
    def embedder(self) -> Embedder:
        """The embedder that produced the vectors (and embeds queries)."""
        return self._embedder

    @property
    def passages(self) -> tuple[Passage, ...]:
        """The indexed passages, in index order, without scores."""
        return self._passages

    @property
    def corpus_version(self) -> str:
        """16 hex digits of SHA-256 over the embedder name, passage ids and texts."""
        return self._corpus_version

    @classmethod
    def build(
        cls,
        passages: Sequence[Passage],
        embedder: Embedder,
        *,
        batch_size: int = 64,
        progress: bool = True,
    ) -> PassageIndex:
        """Embed ``passages`` in batches and index them."""
        if not passages:
            raise RetrieverError(
                "cannot build an index from no passages; ingest at least one document"
            )
        if batch_size < 1:
            raise RetrieverError(f"batch_size must be at least 1, got {batch_size}")
        seen: set[str] = set()
        for passage in passages:
            if passage.id in seen:
                raise RetrieverError(f"duplicate passage id {passage.id!r}; ids must be unique")
            seen.add(passage.id)
        faiss = _faiss()
        from tqdm.auto import tqdm

        index = faiss.IndexFlatIP(embedder.dim)
        with tqdm(
            total=len(passages), desc="Embedding passages", unit="passage", disable=not progress
        ) as bar:
            for start in range(0, len(passages), batch_size):
                batch = [p.text for p in passages[start : start + batch_size]]
                index.add(cls._check_vectors(embedder, embedder.embed(batch), len(batch)))
                bar.update(len(batch))
        return cls(index, passages, embedder)

    @staticmethod
    def _check_vectors(embedder: Embedder, vectors: np.ndarray, count: int) -> np.ndarray:
        if vectors.shape != (count, embedder.dim):
            raise RetrieverError(
                f"embedder {embedder.name!r} returned an array of shape {vectors.shape}, "
                f"expected ({count}, {embedder.dim})"
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, query: str, k: int = 4) -> list[Passage]:
        """Return the ``k`` passages most similar to ``query``, best first, with scores."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 4) -> list[list[Passage]]:
        """Search several queries in one embedding batch; one result list per query."""
        if isinstance(queries, str):
            raise RetrieverError("search_many() takes a list of queries, got a single str")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise RetrieverError(f"k must be a positive int, got {k!r}")
        for position, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise RetrieverError(
                    f"query at position {position} is {query!r}; a query must be a non-empty string"
                )
        if not queries:
            return []
        vectors = self._check_vectors(
            self._embedder, self._embedder.embed(list(queries)), len(queries)
        )
        scores, labels = self._index.search(vectors, min(int(k), len(self)))
        return [
            [
                self._passages[label].with_score(float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0
            ]
            for row_scores, row_labels in zip(scores, labels, strict=True)
        ]

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` (created if needed), replacing any index there."""
        faiss = _faiss()
        target = Path(directory)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RetrieverError(f"cannot create index directory {target}: {exc}") from exc
        manifest = {
            "format": FORMAT_VERSION,
            "embedder": self._embedder.name,
            "dim": self._embedder.dim,
            "count": len(self),
            "corpus_version": self._corpus_version,
        }
        lines = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self._passages)
        # The manifest goes last and first out: its presence marks a complete index.
        (target / MANIFEST_FILE).unlink(missing_ok=True)
        _write_atomic(target / INDEX_FILE, lambda tmp: faiss.write_index(self._index, tmp))
        _write_text(target / PASSAGES_FILE, lines)
        _write_text(target / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder) -> PassageIndex:
        """Load an index saved by ``save``; ``embedder`` must be the one it was built with."""
        source = Path(directory)
        files = (MANIFEST_FILE, INDEX_FILE, PASSAGES_FILE)
        missing = [name for name in files if not (source / name).is_file()]
        if missing:
            raise IndexNotFoundError(source, missing=missing if source.is_dir() else ())
        try:
            manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError(f"expected a JSON object, got {type(manifest).__name__}")
            fmt, name, dim = manifest["format"], manifest["embedder"], manifest["dim"]
        except (OSError, ValueError, KeyError) as exc:
            raise RetrieverError(
                f"unreadable manifest {source / MANIFEST_FILE} ({exc!r}); {_REBUILD}"
            ) from exc
        if fmt != FORMAT_VERSION:
            raise RetrieverError(
                f"index at {source} has format {fmt!r}; this version reads format "
                f"{FORMAT_VERSION}; {_REBUILD}"
            )
        if name != embedder.name or dim != embedder.dim:
            raise IndexMismatchError(
                source,
                index_embedder=str(name),
                index_dim=int(dim),
                given_embedder=embedder.name,
                given_dim=embedder.dim,
            )
        try:
            with (source / PASSAGES_FILE).open(encoding="utf-8") as handle:
                passages = [Passage.from_dict(json.loads(line)) for line in handle if line.strip()]
        except (OSError, ValueError, RetrieverError) as exc:
            raise RetrieverError(
                f"unreadable {source / PASSAGES_FILE} ({exc}); {_REBUILD}"
            ) from exc
        try:
            index = _faiss().read_index(str(source / INDEX_FILE))
        except RuntimeError as exc:
            raise RetrieverError(f"unreadable {source / INDEX_FILE} ({exc}); {_REBUILD}") from exc
        loaded = cls(index, passages, embedder)
        expected = (manifest.get("count"), manifest.get("corpus_version"))
        if expected != (len(loaded), loaded.corpus_version):
            raise RetrieverError(
                f"index at {source} is inconsistent: manifest says {expected[0]} passages, "
                f"version {expected[1]}, files hold {len(loaded)}, version "
                f"{loaded.corpus_version}; {_REBUILD}"
            )
        return loaded
