"""Confidence signals: each computes one number from a generation record.

Notation (DESIGN.md): for answer token t, ``p_ctx,t`` is the next-token distribution with the
passages in the prompt and ``p_par,t`` the one at the same position without them (the same
answer prefix teacher-forced in ONE ``score`` pass). ``H`` is Shannon entropy in nats.

- ``cg_mean`` / ``cg_min`` / ``cg_first``: Confidence Gain ``CG_t = H(p_par,t) - H(p_ctx,t)``
  (CK-PLUG, Bi et al. 2025) averaged, minimum, and at the first answer token. Positive: the
  passages made the model more certain; negative: less certain (a knowledge conflict).
- ``cg_negative_share``: share of answer tokens with ``CG_t < 0`` (the paper's condition).
- ``parametric_agreement``: share of answer tokens that the model would have chosen without
  the passages (argmax of ``p_par,t`` equals the answer token).
- ``parametric_logprob``: mean log-probability of the answer tokens without the passages.
- ``mean_logprob``, ``mean_entropy``, ``min_token_prob``, ``first_token_margin``,
  ``self_certainty``: token statistics of the contextual answer (self-certainty is the mean
  KL divergence of the uniform distribution from each next-token distribution).
- ``retrieval_top_score``, ``retrieval_margin``: cosine score of the best passage and its gap
  to the second; ``answer_in_passages``: 1.0 when the normalised answer occurs in a passage.
- ``abstain_logprob``: log-probability, under the contextual prompt, of the abstention answer
  ("unanswerable") as a whole continuation: how strongly the model considered saying it has
  no answer, whatever it then said (read from the generation's prompt cache). Measured only
  when something needs it (setting ``abstain_probe``): it costs about 13% of a generation and
  added nothing measurable to the calibrated confidence.
- ``answer_tokens``: the number of answer tokens.
- ``question_overlap``: the share of the question's content words (lower case, stop words
  removed, a plural "s" ignored) that occur anywhere in the passages: does the document talk
  about exactly what was asked? A question about an entity the passages never name scores low.
- ``answer_sentence_overlap``: the same share measured on the passage sentence that holds the
  answer (the best one if several do): is the answer drawn from the sentence that addresses
  the question, or from an unrelated one? None when the answer is not found in a passage.
  Sentences end at ".", "!" or "?" but not after an initial or a common abbreviation ("U.S.",
  "Dr."); an answer that spans a sentence end is looked for in pairs of adjacent sentences.
  Matching folds typographic quotes into ASCII ones.

The answer's sentence gets a closer look, since a small model picks a plausible span from a
sentence that *almost* answers the question (a different year, a negated relation, the
question's own entity). Each of these is None when the answer is not found in a passage:

- ``answer_sentence_gap``: ``answer_sentence_overlap`` minus the highest overlap of any passage
  sentence: 0 when the answer comes from the sentence that matches the question best,
  negative when a better-matching sentence was passed over.
- ``answer_sentence_weighted_overlap``: like ``answer_sentence_overlap`` with each question
  word weighted by how rare it is among the passages' sentences (``log((n + 1) / (df + 0.5))``
  for ``n`` sentences, ``df`` of them holding the word): the topic word every sentence repeats
  counts little, the one detail that pins the answer down counts much.
- ``answer_occurrences``: how many passage sentences hold the answer, counted up to 5 (a
  string the passages repeat everywhere is often the topic rather than the answer).
- ``answer_proximity``: how many words stand between the answer and the nearest question
  word outside it, in the answer's best sentence, both cut by the SQuAD normalisation (None
  also when that sentence holds no question word outside the answer).
- ``answer_sentence_similarity``: cosine similarity of the question and the answer's sentence
  (the best of up to three that hold it) under the sentence embedder (all-MiniLM-L6-v2 by
  default): the lexical overlaps above miss paraphrases. None also without an embedder.
- ``negation_mismatch``: 1.0 when the question is negated ("not", "never", "n't", "no" but
  not "No. 1", ...) and no sentence holding the answer is, else 0.0.
- ``question_negated``: 1.0 when the question holds a negation (a relation a small extractive
  reader tends to ignore), else 0.0.

The signals from ``answer_in_passages`` on, ``question_overlap`` and the retrieval signals read
only text, scores and (for the similarity) the embedder (``TEXT_SIGNALS``): they cost little
next to the model and can be recomputed from a stored answer at any time.

A signal that cannot be computed (no answer tokens, no parametric pass, no passages) is
``None``; policies treat a missing value as not matching any comparison.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from guardrail.types import TokenStats
from retrievers import Embedder, Passage


@dataclass(frozen=True)
class SignalInputs:
    """Everything a signal may read: the two token records, the answer and the passages."""

    answer: str
    contextual: TokenStats
    parametric: TokenStats | None
    passages: Sequence[Passage]
    abstain_logprob: float | None = None
    question: str = ""
    similarity: Similarity | None = None

    @cached_property
    def question_words(self) -> list[str]:
        """The question's content words (see ``content_words``)."""
        return content_words(self.question)

    @cached_property
    def sentences(self) -> list[str]:
        """The passages cut into sentences, in order (see ``split_sentences``)."""
        return [sentence for p in self.passages for sentence in split_sentences(p.text)]

    @cached_property
    def sentence_words(self) -> list[set[str]]:
        """The words of each sentence (``_words``), as sets."""
        return [set(_words(s)) for s in self.sentences]

    @cached_property
    def answer_sentences(self) -> list[str]:
        """The sentences that hold the normalised answer; when none does (the answer spans
        a sentence end), the pairs of adjacent sentences of one passage that do. Empty for
        an empty answer or one the passages do not hold."""
        answer = normalize_answer(fold_quotes(self.answer))
        if not answer:
            return []
        found = [s for s in self.sentences if contains_phrase(s, answer)]
        if found:
            return found
        pairs = (
            f"{a} {b}"
            for p in self.passages
            for a, b in itertools.pairwise(split_sentences(p.text))
        )
        return [pair for pair in pairs if contains_phrase(pair, answer)]

    def overlap(self, words: set[str]) -> float:
        """Share of the question's content words that are among ``words``."""
        return sum(w in words for w in self.question_words) / len(self.question_words)

    @cached_property
    def ranked_answer_sentences(self) -> list[tuple[str, set[str]]]:
        """The answer's sentences with their words, the best match to the question first
        (empty without question words or without a sentence holding the answer)."""
        if not self.question_words:
            return []
        pairs = [(s, set(_words(s))) for s in self.answer_sentences]
        return sorted(pairs, key=lambda pair: -self.overlap(pair[1]))


Similarity = Callable[[str, Sequence[str]], Sequence[float]]
"""Cosine similarity of a question to each of some sentences."""


def embedder_similarity(embedder: Embedder) -> Similarity:
    """A ``Similarity`` from an embedder (its ``embed`` returns L2-normalised rows): one batch
    of the question and the sentences."""

    def similarity(question: str, sentences: Sequence[str]) -> list[float]:
        vectors = embedder.embed([question, *sentences])
        return [float(v) for v in vectors[1:] @ vectors[0]]

    return similarity


SignalFn = Callable[[SignalInputs], float | None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def confidence_gains(inputs: SignalInputs) -> list[float]:
    """Per-token Confidence Gain ``H(p_par,t) - H(p_ctx,t)``; empty without a parametric pass."""
    if inputs.parametric is None:
        return []
    return [
        hp - hc
        for hp, hc in zip(inputs.parametric.entropies, inputs.contextual.entropies, strict=True)
    ]


def _cg_mean(x: SignalInputs) -> float | None:
    return _mean(confidence_gains(x))


def _cg_min(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return min(gains) if gains else None


def _cg_first(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return gains[0] if gains else None


def _cg_negative_share(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return sum(g < 0 for g in gains) / len(gains) if gains else None


def _parametric_agreement(x: SignalInputs) -> float | None:
    if x.parametric is None or not x.contextual.token_ids:
        return None
    pairs = zip(x.parametric.top_ids, x.contextual.token_ids, strict=True)
    return sum(top == tok for top, tok in pairs) / len(x.contextual.token_ids)


def _parametric_logprob(x: SignalInputs) -> float | None:
    return _mean(x.parametric.logprobs) if x.parametric is not None else None


def _mean_logprob(x: SignalInputs) -> float | None:
    return _mean(x.contextual.logprobs)


def _mean_entropy(x: SignalInputs) -> float | None:
    return _mean(x.contextual.entropies)


def _min_token_prob(x: SignalInputs) -> float | None:
    lps = x.contextual.logprobs
    return math.exp(min(lps)) if lps else None


def _first_token_margin(x: SignalInputs) -> float | None:
    return x.contextual.margins[0] if x.contextual.margins else None


def _self_certainty(x: SignalInputs) -> float | None:
    return _mean(x.contextual.kl_uniform)


def _retrieval_top_score(x: SignalInputs) -> float | None:
    scores = [p.score for p in x.passages if p.score is not None]
    return max(scores) if scores else None


def _retrieval_margin(x: SignalInputs) -> float | None:
    scores = sorted((p.score for p in x.passages if p.score is not None), reverse=True)
    return scores[0] - scores[1] if len(scores) >= 2 else None


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def fold_quotes(text: str) -> str:
    """Typographic quotes and apostrophes as ASCII ones, so that "Smith\u2019s" reads as
    "Smith's" (the SQuAD normalisation strips only ASCII punctuation)."""
    return text.translate(_QUOTES)


def contains_phrase(text: str, normalized_phrase: str) -> bool:
    """Whether the normalised phrase occurs in ``text`` as whole words ("art" is not in
    "heart"); a trailing "s" is allowed, since normalisation turns "Eiffel's" into "eiffels"."""
    padded = f" {normalize_answer(fold_quotes(text))} "
    return f" {normalized_phrase} " in padded or f" {normalized_phrase}s " in padded


def _answer_in_passages(x: SignalInputs) -> float | None:
    answer = normalize_answer(fold_quotes(x.answer))
    if not answer or not x.passages:
        return None
    return float(any(contains_phrase(p.text, answer) for p in x.passages))


def _abstain_logprob(x: SignalInputs) -> float | None:
    return x.abstain_logprob


def _answer_tokens(x: SignalInputs) -> float | None:
    return float(len(x.contextual))


_STOP_TEXT = """
    a an the of in on at to for from by with and or is are was were be been being do does did
    what which who whom whose when where why how that this these those it its as into than
    then there their they he she his her him i you we our your not no can could would should
    may might will shall has have had about after before during over under between through
    more most other some such only own same so too very just if while also many much any each
    few both all up down out off again further once here name named called
    don doesn didn isn wasn weren aren won couldn wouldn shouldn hasn haven hadn"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATION = re.compile(
    r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|No|Nos|Vol|vs|Prof|Gen|Col|Lt|Sgt|Capt|Mt|Ft|Co|"
    r"Corp|Inc|Ltd|Bros|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|approx|ca|cf|etc|e\.g|"
    r"i\.e|a\.m|p\.m))\.$"
)


def split_sentences(text: str) -> list[str]:
    """``text`` cut after ".", "!" or "?" and white space, except after an initial ("U.",
    "J.") or a common abbreviation ("Dr.", "St.", "No.", "e.g."): "the U.S. Army" stays in
    one sentence."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in sentences if s.strip()]


def _plural(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _words(text: str) -> list[str]:
    return [_plural(w) for w in _WORD.findall(fold_quotes(text).lower())]


def _tokens(text: str) -> list[str]:
    """The words of ``text`` after the SQuAD normalisation (so that answer and sentence are
    cut alike: "$1.5 million" is "15 million" in both)."""
    return [_plural(w) for w in normalize_answer(fold_quotes(text)).split()]


def content_words(text: str) -> list[str]:
    """Lower-case content words of ``text`` (stop words and one-letter words removed)."""
    return [w for w in _words(text) if w not in _STOP_WORDS and len(w) > 1]


def _question_overlap(x: SignalInputs) -> float | None:
    if not x.question_words or not x.passages:
        return None
    return x.overlap(set(_words(" ".join(p.text for p in x.passages))))


def _answer_sentence_overlap(x: SignalInputs) -> float | None:
    ranked = x.ranked_answer_sentences
    return x.overlap(ranked[0][1]) if ranked else None


def _answer_sentence_gap(x: SignalInputs) -> float | None:
    best = _answer_sentence_overlap(x)
    if best is None:
        return None
    return min(0.0, best - max(x.overlap(words) for words in x.sentence_words))


def _answer_sentence_weighted_overlap(x: SignalInputs) -> float | None:
    words = x.question_words
    if not x.ranked_answer_sentences:
        return None
    n = len(x.sentences)
    weight = {
        w: math.log((n + 1) / (sum(w in sw for sw in x.sentence_words) + 0.5)) for w in set(words)
    }
    total = sum(weight[w] for w in words)
    return max(
        sum(weight[w] for w in words if w in present) / total
        for _, present in x.ranked_answer_sentences
    )


MAX_OCCURRENCES = 5
"""``answer_occurrences`` counts up to this many sentences."""


def _answer_occurrences(x: SignalInputs) -> float | None:
    return float(min(len(x.answer_sentences), MAX_OCCURRENCES)) if x.answer_sentences else None


def _answer_proximity(x: SignalInputs) -> float | None:
    if not x.ranked_answer_sentences:
        return None
    tokens = _tokens(x.ranked_answer_sentences[0][0])
    answer = _tokens(x.answer)
    asked = {t for t in _tokens(x.question) if t not in _STOP_WORDS and len(t) > 1}
    spans = [
        (i, i + len(answer) - 1)
        for i in range(len(tokens) - len(answer) + 1)
        if tokens[i : i + len(answer)] == answer
    ]
    gaps = [
        start - i - 1 if i < start else i - end - 1
        for start, end in spans
        for i, token in enumerate(tokens)
        if token in asked and not start <= i <= end
    ]
    return float(min(gaps)) if gaps else None


MAX_SIMILARITY_SENTENCES = 3
"""``answer_sentence_similarity`` embeds at most this many of the answer's sentences (those
that match the question best), whatever the passages repeat."""


def _answer_sentence_similarity(x: SignalInputs) -> float | None:
    ranked = x.ranked_answer_sentences
    if x.similarity is None or not ranked:
        return None
    return max(x.similarity(x.question, [s for s, _ in ranked[:MAX_SIMILARITY_SENTENCES]]))


_NEGATION = re.compile(
    r"\b(?:not|never|none|nor|neither|without|cannot)\b|\bno\b(?!\.?\s*\d)|n['\u2019]t\b"
)
"""Negation words; "no" only when not a number sign ("No. 1")."""


def negated(text: str) -> bool:
    """Whether ``text`` holds a negation word (``_NEGATION``)."""
    return bool(_NEGATION.search(text.lower()))


def _negation_mismatch(x: SignalInputs) -> float | None:
    if not x.answer_sentences:
        return None
    if not negated(x.question):
        return 0.0
    return float(not any(negated(s) for s in x.answer_sentences))


def _question_negated(x: SignalInputs) -> float | None:
    return float(negated(x.question)) if x.question.strip() else None


SIGNALS: Mapping[str, SignalFn] = {
    "cg_mean": _cg_mean,
    "cg_min": _cg_min,
    "cg_first": _cg_first,
    "cg_negative_share": _cg_negative_share,
    "parametric_agreement": _parametric_agreement,
    "parametric_logprob": _parametric_logprob,
    "mean_logprob": _mean_logprob,
    "mean_entropy": _mean_entropy,
    "min_token_prob": _min_token_prob,
    "first_token_margin": _first_token_margin,
    "self_certainty": _self_certainty,
    "retrieval_top_score": _retrieval_top_score,
    "retrieval_margin": _retrieval_margin,
    "answer_in_passages": _answer_in_passages,
    "abstain_logprob": _abstain_logprob,
    "answer_tokens": _answer_tokens,
    "question_overlap": _question_overlap,
    "answer_sentence_overlap": _answer_sentence_overlap,
    "answer_sentence_gap": _answer_sentence_gap,
    "answer_sentence_weighted_overlap": _answer_sentence_weighted_overlap,
    "answer_occurrences": _answer_occurrences,
    "answer_proximity": _answer_proximity,
    "answer_sentence_similarity": _answer_sentence_similarity,
    "negation_mismatch": _negation_mismatch,
    "question_negated": _question_negated,
}
"""The registered signals, by name. Policies may reference exactly these names."""

SIGNAL_NAMES: frozenset[str] = frozenset(SIGNALS)


SENTENCE_SIGNALS: tuple[str, ...] = (
    "answer_sentence_gap",
    "answer_sentence_weighted_overlap",
    "answer_occurrences",
    "answer_proximity",
    "answer_sentence_similarity",
    "negation_mismatch",
    "question_negated",
)
"""The signals that take a closer look at the answer's sentence (see the module docstring)."""

TEXT_SIGNALS: frozenset[str] = frozenset(
    {
        "question_overlap",
        "answer_sentence_overlap",
        *SENTENCE_SIGNALS,
        "answer_in_passages",
        "retrieval_top_score",
        "retrieval_margin",
    }
)
"""Signals computed from text, retrieval scores and the sentence embedder alone (no model
output but the answer)."""


def compute_signals(inputs: SignalInputs) -> dict[str, float | None]:
    """Every registered signal for one answer."""
    return {name: fn(inputs) for name, fn in SIGNALS.items()}


def compute_text_signals(
    question: str,
    answer: str,
    passages: Sequence[Passage],
    similarity: Similarity | None = None,
) -> dict[str, float | None]:
    """The ``TEXT_SIGNALS`` of a stored answer, without the generator model."""
    inputs = SignalInputs(
        answer, TokenStats.empty(), None, passages, question=question, similarity=similarity
    )
    return {name: SIGNALS[name](inputs) for name in sorted(TEXT_SIGNALS)}
