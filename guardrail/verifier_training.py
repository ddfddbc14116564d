"""Training the answerability verifier (``guardrail verifier train``).

The training data are labelled (question, passage) pairs in the JSON-lines form of
``../shared/data/answerability/`` (``{"id", "source", "split", "question", "passage",
"answerable", "answers"}``). The ``answerable`` head learns from the pairs as they are; the
``support`` head from the same pairs cut to one sentence and its neighbours: the gold
answer's sentence (supported), the sentence of an unanswerable pair that best matches the
question (what a reader would wrongly extract from), and a sentence of an answerable pair that
does not hold the answer (the right passage, the wrong place). Everything is seeded; the
artifact records the data's fingerprint, so a model can be traced to exactly what it saw.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.errors import GuardrailError
from guardrail.text import (
    contains_phrase,
    content_words,
    fold_quotes,
    normalize_answer,
    split_sentences,
    split_words,
)
from guardrail.verifier import FEATURES, Head, Rarity, TokenEncoder, Verifier, VerifierModel

SOURCES = ("squad", "nq", "musique")
"""The default training sources (RepliQA has no ``train`` split: it stays for validation)."""


class TrainingDataError(GuardrailError):
    """Training data that cannot be used."""


@dataclass(frozen=True)
class Pair:
    """One labelled (question, passage) pair."""

    id: str
    source: str
    split: str
    question: str
    passage: str
    answerable: bool
    answers: tuple[str, ...]


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of one JSON-lines file (``ValueError``-free: a bad line is a
    ``TrainingDataError`` naming the file and line)."""
    pairs = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TrainingDataError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            pairs.append(
                Pair(
                    str(r["id"]),
                    str(r["source"]),
                    str(r["split"]),
                    str(r["question"]),
                    str(r["passage"]),
                    bool(r["answerable"]),
                    tuple(str(a) for a in r.get("answers") or ()),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TrainingDataError(
                f"{path}:{number}: not a training pair ({exc}); each line needs id, source, "
                "split, question, passage, answerable"
            ) from None
    return pairs


def load_pairs(
    folder: Path, sources: Sequence[str], splits: Sequence[str], limit: int | None = None
) -> list[Pair]:
    """The pairs of ``folder/<source>.jsonl`` in the given splits; with ``limit``, a seeded
    (seed 0) draw of at most that many per source, balanced between the labels."""
    out: list[Pair] = []
    for source in sources:
        path = folder / f"{source}.jsonl"
        if not path.is_file():
            have = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
            raise TrainingDataError(
                f"no training file {path}; sources found in {folder}: {', '.join(have) or 'none'}"
            )
        pairs = [p for p in read_pairs(path) if p.split in splits]
        if not pairs:
            raise TrainingDataError(f"{path} has no pairs in split(s) {', '.join(splits)}")
        if limit is not None:
            pairs = balanced_draw(pairs, limit)
        out.extend(pairs)
    return out


def balanced_draw(pairs: Sequence[Pair], n: int, seed: int = 0) -> list[Pair]:
    """At most ``n`` pairs, half of each label where there are enough, seeded."""
    rng = random.Random(seed)
    pos = [p for p in pairs if p.answerable]
    neg = [p for p in pairs if not p.answerable]
    rng.shuffle(pos)
    rng.shuffle(neg)
    k = min(n // 2, len(pos), len(neg))
    return pos[:k] + neg[: min(n - k, len(neg))]


def fingerprint(pairs: Iterable[Pair]) -> str:
    """SHA-256 of the pairs' content, order-independent."""
    rows = sorted(
        json.dumps([p.id, p.source, p.split, p.question, p.passage, p.answerable]) for p in pairs
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _context(sentences: Sequence[str], i: int) -> str:
    return " ".join(sentences[max(0, i - 1) : i + 2])


def support_examples(pairs: Sequence[Pair]) -> list[tuple[str, str, bool]]:
    """(question, sentence with neighbours, supported) examples for the ``support`` head."""
    out = []
    for pair in pairs:
        sentences = split_sentences(pair.passage)
        if len(sentences) < 2:
            continue
        qwords = set(content_words(pair.question))
        overlap = [len(qwords & set(split_words(s))) for s in sentences]
        phrases = [normalize_answer(fold_quotes(a)) for a in pair.answers]
        phrases = [p for p in phrases if p]
        if pair.answerable:
            hits = [
                i for i, s in enumerate(sentences) if any(contains_phrase(s, p) for p in phrases)
            ]
            if not hits:
                continue
            out.append((pair.question, _context(sentences, hits[0]), True))
            away = [
                i
                for i in range(len(sentences))
                if not any(contains_phrase(_context(sentences, i), p) for p in phrases)
            ]
            if away:
                best = max(away, key=lambda i: overlap[i])
                out.append((pair.question, _context(sentences, best), False))
        else:
            best = max(range(len(sentences)), key=lambda i: overlap[i])
            out.append((pair.question, _context(sentences, best), False))
    return out


def fit_head(x: np.ndarray, y: np.ndarray, C: float = 1.0) -> Head:
    """A logistic head on standardised features (L2, ``C``)."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        raise TrainingDataError("the training pairs hold one label only; both are needed")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=C, max_iter=5000).fit((x - mean) / scale, y)
    return Head(mean, scale, model.coef_[0].astype(float), float(model.intercept_[0]))


def auroc(y: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (None with one class only)."""
    from sklearn.metrics import roc_auc_score

    labels = [bool(v) for v in y]
    if len(set(labels)) < 2:
        return None
    return round(float(roc_auc_score(labels, [float(v) for v in scores])), 4)


def train(
    pairs: Sequence[Pair],
    encoder: TokenEncoder,
    *,
    seed: int = 0,
    C: float = 1.0,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> VerifierModel:
    """Fit both heads on ``pairs`` (the rarity table from their passages) and return the
    model."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    rarity = Rarity.fit(sorted({p.passage for p in pairs}))
    support = support_examples(pairs)
    staging = Verifier(_blank(rarity), encoder, cache=0)
    all_pairs = [(p.question, p.passage) for p in pairs] + [(q, t) for q, t, _ in support]
    with tqdm(total=text_count(all_pairs), desc="encode", unit="text", disable=not progress) as bar:
        x = staging.features(all_pairs, progress=bar.update)
    n = len(pairs)
    y = np.array([p.answerable for p in pairs])
    ys = np.array([label for _, _, label in support])
    heads = {"answerable": fit_head(x[:n], y, C), "support": fit_head(x[n:], ys, C)}
    training = {
        "fingerprint": fingerprint(pairs),
        "pairs": n,
        "support_examples": len(support),
        "sources": dict(sorted(Counter(p.source for p in pairs).items())),
        "splits": sorted({p.split for p in pairs}),
        "seed": seed,
        "C": C,
        **(meta or {}),
    }
    return VerifierModel(heads, rarity, training)


def evaluate(
    model: VerifierModel,
    encoder: TokenEncoder,
    groups: Mapping[str, Sequence[Pair]],
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Answerability AUROC of the ``answerable`` head on each named group of pairs."""
    from tqdm.auto import tqdm

    scorer = Verifier(model, encoder, cache=0)
    out = {}
    for name, pairs in groups.items():
        texts = [(p.question, p.passage) for p in pairs]
        with tqdm(total=text_count(texts), desc=name, unit="text", disable=not progress) as bar:
            x = scorer.features(texts, progress=bar.update)
        p = model.heads["answerable"].proba(x)
        out[name] = {"n": len(pairs), "auroc": auroc([q.answerable for q in pairs], p)}
    return out


def text_count(pairs: Sequence[tuple[str, str]]) -> int:
    """How many distinct texts the verifier encodes for ``pairs`` (questions and passage
    windows): the total of a progress bar."""
    from guardrail.verifier import windows

    return len({q for q, _ in pairs} | {w for _, t in pairs for w in windows(t)})


def _blank(rarity: Rarity) -> VerifierModel:
    zero = np.zeros(len(FEATURES))
    head = Head(zero, np.ones(len(FEATURES)), zero, 0.0)
    return VerifierModel({"answerable": head, "support": head}, rarity)
