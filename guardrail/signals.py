"""Confidence signals: each computes one number from a generation record.

Notation (DESIGN.md): for answer token t, ``p_ctx,t`` is the next-token distribution with the
passages in the prompt and ``p_par,t`` the one at the same position without them (the same
answer prefix teacher-forced in ONE ``score`` pass). ``H`` is Shannon entropy in nats.

Each signal is declared once, by ``_signal`` on the function that computes it: the function's
docstring is its definition, the decorator gives its direction, group and needs (``Signal``).
``REGISTRY`` holds them in order; ``SIGNALS``, ``TEXT_SIGNALS``, the calibrator's features, the
report's directions and the README's table (``signal_table_markdown``) are all read from it.

A signal that cannot be computed (no answer tokens, no parametric pass, no passages) is
``None``; policies treat a missing value as not matching any comparison.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING

from guardrail.text import (
    STOP_WORDS,
    contains_phrase,
    content_words,
    fold_quotes,
    negated,
    normalize_answer,
    split_sentences,
    split_words,
    squad_tokens,
)
from guardrail.types import TokenStats

if TYPE_CHECKING:
    from guardrail.verifier import VerifierScore
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
    verify: Verify | None = None
    tokens: TokenStats | None = None
    """The answering model's own token record when ``contextual`` is another model's reading
    of the answer (a guard model teacher-forced it); None: ``contextual`` is the answering
    model's own."""

    @property
    def own_tokens(self) -> TokenStats:
        """The token record the token signals read (``tokens``, else ``contextual``)."""
        return self.tokens if self.tokens is not None else self.contextual

    @cached_property
    def verification(self) -> VerifierScore | None:
        """The verifier's scores of this question, passages and answer (None without one)."""
        if self.verify is None or not self.passages:
            return None
        return self.verify(self.question, [p.text for p in self.passages], self.answer)

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
        """The words of each sentence (``split_words``), as sets."""
        return [set(split_words(s)) for s in self.sentences]

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
        pairs = [(s, set(split_words(s))) for s in self.answer_sentences]
        return sorted(pairs, key=lambda pair: -self.overlap(pair[1]))


Similarity = Callable[[str, Sequence[str]], Sequence[float]]
"""Cosine similarity of a question to each of some sentences."""

Verify = Callable[[str, Sequence[str], str], "VerifierScore"]
"""The answerability verifier (``guardrail.verifier.Verifier.score``): question, passage
texts, answer."""


def embedder_similarity(embedder: Embedder) -> Similarity:
    """A ``Similarity`` from an embedder (its ``embed`` returns L2-normalised rows): one batch
    of the question and the sentences."""

    def similarity(question: str, sentences: Sequence[str]) -> list[float]:
        vectors = embedder.embed([question, *sentences])
        return [float(v) for v in vectors[1:] @ vectors[0]]

    return similarity


SignalFn = Callable[[SignalInputs], float | None]


class Needs(Enum):
    """What computing a signal takes beyond the question, the answer and the passages."""

    TOKENS = "generator tokens"
    """The contextual generation's token record."""
    PARAMETRIC = "no-passage pass"
    """The second, teacher-forced pass without the passages."""
    PROBE = "abstention probe"
    """The extra pass that scores the abstention answer (setting ``abstain_probe``)."""
    TEXT = "text only"
    """The text and the retrieval scores alone: no model output but the answer."""
    EMBEDDER = "text + embedder"
    """Text, as ``TEXT``, and the sentence embedder."""
    VERIFIER = "verifier"
    """The trained answerability verifier (``guardrail.verifier``): text only, read by a
    small encoder independent of the generator."""


class Group(Enum):
    """Families of signals. The declaration order is the column order of the default
    calibrator (``calibration.DEFAULT_FEATURES``): group by group, registry order within a
    group. A refit reproduces an earlier calibrator only in the same column order, so a new
    group goes at the end."""

    CONFIDENCE_GAIN = "confidence_gain"
    """Confidence Gain and the other comparisons with the no-passage pass."""
    TOKEN = "token"
    """Statistics of the contextual answer's tokens."""
    GROUNDING = "grounding"
    """Whether and where the passages hold the answer and the question's words."""
    SENTENCE = "sentence"
    """A closer look at the answer's sentence, since a small model picks a plausible span
    from a sentence that *almost* answers the question (a different year, a negated
    relation, the question's own entity)."""
    RETRIEVAL = "retrieval"
    """The retriever's scores."""
    PROBE = "probe"
    """The abstention probe."""
    VERIFIER = "verifier"
    """The trained answerability verifier: whether the passages answer the question, and
    whether the answer's own sentence does, whoever wrote the answer."""


@dataclass(frozen=True)
class Signal:
    """One registered signal: how it is computed, what it means and what it takes."""

    name: str
    compute: SignalFn
    direction: int
    """+1 when a higher value should mean a more likely right answer, -1 when a lower one
    should: fixed a priori, never fitted (the report scores single signals with it)."""
    group: Group
    needs: Needs
    description: str
    """The definition, its first paragraph a one-line summary."""
    feature: bool = True
    """Whether the default calibrator reads it."""

    @property
    def summary(self) -> str:
        """The description's first paragraph, on one line."""
        return " ".join(self.description.split("\n\n", 1)[0].split())


_REGISTERED: list[Signal] = []


def _signal(
    direction: int, group: Group, needs: Needs, *, feature: bool = True
) -> Callable[[SignalFn], SignalFn]:
    """Register the decorated function as the signal named after it (without its leading
    underscore), its docstring as the definition. Registration order is ``SIGNALS`` order."""

    def register(compute: SignalFn) -> SignalFn:
        name = compute.__name__.removeprefix("_")
        description = inspect.getdoc(compute) or ""
        _REGISTERED.append(Signal(name, compute, direction, group, needs, description, feature))
        return compute

    return register


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


@_signal(+1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _cg_mean(x: SignalInputs) -> float | None:
    """Confidence Gain ``CG_t = H(p_par,t) - H(p_ctx,t)`` averaged over the answer tokens.

    CK-PLUG (Bi et al. 2025). Positive: the passages made the model more certain; negative:
    less certain (a knowledge conflict)."""
    return _mean(confidence_gains(x))


@_signal(+1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _cg_min(x: SignalInputs) -> float | None:
    """The lowest Confidence Gain of any answer token."""
    gains = confidence_gains(x)
    return min(gains) if gains else None


@_signal(+1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _cg_first(x: SignalInputs) -> float | None:
    """Confidence Gain at the first answer token."""
    gains = confidence_gains(x)
    return gains[0] if gains else None


@_signal(-1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _cg_negative_share(x: SignalInputs) -> float | None:
    """Share of answer tokens with ``CG_t < 0`` (the paper's condition)."""
    gains = confidence_gains(x)
    return sum(g < 0 for g in gains) / len(gains) if gains else None


@_signal(+1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _parametric_agreement(x: SignalInputs) -> float | None:
    """Share of answer tokens the model would have chosen without the passages.

    That is, the argmax of ``p_par,t`` equals the answer token."""
    if x.parametric is None or not x.contextual.token_ids:
        return None
    pairs = zip(x.parametric.top_ids, x.contextual.token_ids, strict=True)
    return sum(top == tok for top, tok in pairs) / len(x.contextual.token_ids)


@_signal(+1, Group.CONFIDENCE_GAIN, Needs.PARAMETRIC)
def _parametric_logprob(x: SignalInputs) -> float | None:
    """Mean log-probability of the answer tokens without the passages."""
    return _mean(x.parametric.logprobs) if x.parametric is not None else None


@_signal(+1, Group.TOKEN, Needs.TOKENS)
def _mean_logprob(x: SignalInputs) -> float | None:
    """Mean log-probability of the answer tokens with the passages."""
    return _mean(x.own_tokens.logprobs)


@_signal(-1, Group.TOKEN, Needs.TOKENS)
def _mean_entropy(x: SignalInputs) -> float | None:
    """Mean entropy ``H(p_ctx,t)`` of the answer's next-token distributions."""
    return _mean(x.own_tokens.entropies)


@_signal(+1, Group.TOKEN, Needs.TOKENS)
def _min_token_prob(x: SignalInputs) -> float | None:
    """Probability of the least likely answer token."""
    lps = x.own_tokens.logprobs
    return math.exp(min(lps)) if lps else None


@_signal(+1, Group.TOKEN, Needs.TOKENS)
def _first_token_margin(x: SignalInputs) -> float | None:
    """Probability gap between the two most likely tokens at the first answer position."""
    return x.own_tokens.margins[0] if x.own_tokens.margins else None


@_signal(+1, Group.TOKEN, Needs.TOKENS)
def _self_certainty(x: SignalInputs) -> float | None:
    """Self-certainty: the mean KL divergence of uniform from each next-token distribution."""
    return _mean(x.own_tokens.kl_uniform)


@_signal(+1, Group.RETRIEVAL, Needs.TEXT)
def _retrieval_top_score(x: SignalInputs) -> float | None:
    """Cosine score of the best passage."""
    scores = [p.score for p in x.passages if p.score is not None]
    return max(scores) if scores else None


@_signal(+1, Group.RETRIEVAL, Needs.TEXT)
def _retrieval_margin(x: SignalInputs) -> float | None:
    """Gap between the cosine scores of the best passage and the second."""
    scores = sorted((p.score for p in x.passages if p.score is not None), reverse=True)
    return scores[0] - scores[1] if len(scores) >= 2 else None


@_signal(+1, Group.GROUNDING, Needs.TEXT)
def _answer_in_passages(x: SignalInputs) -> float | None:
    """1.0 when the normalised answer occurs in a passage, else 0.0."""
    answer = normalize_answer(fold_quotes(x.answer))
    if not answer or not x.passages:
        return None
    return float(any(contains_phrase(p.text, answer) for p in x.passages))


@_signal(-1, Group.PROBE, Needs.PROBE, feature=False)
def _abstain_logprob(x: SignalInputs) -> float | None:
    """Log-probability of the abstention answer ("unanswerable") under the contextual prompt.

    Scored as a whole continuation: how strongly the model considered saying it has no
    answer, whatever it then said (read from the generation's prompt cache). Measured only
    when something needs it (setting ``abstain_probe``): it costs about 13% of a generation
    and added nothing measurable to the calibrated confidence, so the default calibrator
    does not read it."""
    return x.abstain_logprob


@_signal(-1, Group.TOKEN, Needs.TOKENS)
def _answer_tokens(x: SignalInputs) -> float | None:
    """The number of answer tokens."""
    tokens = x.own_tokens
    if not tokens.token_ids and x.answer:
        return None  # an answer whose tokens nobody returned
    return float(len(tokens))


@_signal(+1, Group.GROUNDING, Needs.TEXT)
def _question_overlap(x: SignalInputs) -> float | None:
    """Share of the question's content words that occur anywhere in the passages.

    Content words are lower case, stop words removed, a plural "s" ignored. Does the
    document talk about exactly what was asked? A question about an entity the passages
    never name scores low."""
    if not x.question_words or not x.passages:
        return None
    return x.overlap(set(split_words(" ".join(p.text for p in x.passages))))


@_signal(+1, Group.GROUNDING, Needs.TEXT)
def _answer_sentence_overlap(x: SignalInputs) -> float | None:
    """Share of the question's content words in the passage sentence that holds the answer.

    The best such sentence if several do: is the answer drawn from the sentence that
    addresses the question, or from an unrelated one? None when the answer is not found in a
    passage. Sentences end at ".", "!" or "?" but not after an initial or a common
    abbreviation ("U.S.", "Dr."); an answer that spans a sentence end is looked for in pairs
    of adjacent sentences. Matching folds typographic quotes into ASCII ones."""
    ranked = x.ranked_answer_sentences
    return x.overlap(ranked[0][1]) if ranked else None


@_signal(+1, Group.SENTENCE, Needs.TEXT)
def _answer_sentence_gap(x: SignalInputs) -> float | None:
    """``answer_sentence_overlap`` minus the highest overlap of any passage sentence.

    0 when the answer comes from the sentence that matches the question best, negative when
    a better-matching sentence was passed over. None when the answer is not found in a
    passage."""
    best = _answer_sentence_overlap(x)
    if best is None:
        return None
    return min(0.0, best - max(x.overlap(words) for words in x.sentence_words))


@_signal(+1, Group.SENTENCE, Needs.TEXT)
def _answer_sentence_weighted_overlap(x: SignalInputs) -> float | None:
    """``answer_sentence_overlap`` with each question word weighted by its rarity.

    A word weighs ``log((n + 1) / (df + 0.5))`` for ``n`` passage sentences, ``df`` of them
    holding it: the topic word every sentence repeats counts little, the one detail that
    pins the answer down counts much. None when the answer is not found in a passage."""
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


@_signal(-1, Group.SENTENCE, Needs.TEXT)
def _answer_occurrences(x: SignalInputs) -> float | None:
    """How many passage sentences hold the answer, counted up to 5.

    A string the passages repeat everywhere is often the topic rather than the answer. None
    when the answer is not found in a passage."""
    return float(min(len(x.answer_sentences), MAX_OCCURRENCES)) if x.answer_sentences else None


@_signal(-1, Group.SENTENCE, Needs.TEXT)
def _answer_proximity(x: SignalInputs) -> float | None:
    """Words between the answer and the nearest question word outside it, in its sentence.

    Counted in the answer's best sentence, both cut by the SQuAD normalisation. None when
    the answer is not found in a passage, and when that sentence holds no question word
    outside the answer."""
    if not x.ranked_answer_sentences:
        return None
    tokens = squad_tokens(x.ranked_answer_sentences[0][0])
    answer = squad_tokens(x.answer)
    asked = {t for t in squad_tokens(x.question) if t not in STOP_WORDS and len(t) > 1}
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


@_signal(+1, Group.SENTENCE, Needs.EMBEDDER)
def _answer_sentence_similarity(x: SignalInputs) -> float | None:
    """Cosine similarity of the question and the answer's sentence under the embedder.

    The best of up to three sentences that hold the answer, under the sentence embedder
    (all-MiniLM-L6-v2 by default): the lexical overlaps above miss paraphrases. None when
    the answer is not found in a passage, and without an embedder."""
    ranked = x.ranked_answer_sentences
    if x.similarity is None or not ranked:
        return None
    return max(x.similarity(x.question, [s for s, _ in ranked[:MAX_SIMILARITY_SENTENCES]]))


@_signal(-1, Group.SENTENCE, Needs.TEXT)
def _negation_mismatch(x: SignalInputs) -> float | None:
    """1.0 when the question is negated and no sentence holding the answer is, else 0.0.

    Negations: "not", "never", "n't", "no" but not "No. 1", ... None when the answer is not
    found in a passage."""
    if not x.answer_sentences:
        return None
    if not negated(x.question):
        return 0.0
    return float(not any(negated(s) for s in x.answer_sentences))


@_signal(-1, Group.SENTENCE, Needs.TEXT)
def _question_negated(x: SignalInputs) -> float | None:
    """1.0 when the question holds a negation, else 0.0.

    A negated relation is one a small extractive reader tends to ignore. None for an empty
    question."""
    return float(negated(x.question)) if x.question.strip() else None


@_signal(+1, Group.VERIFIER, Needs.VERIFIER)
def _verifier_answerable(x: SignalInputs) -> float | None:
    """The verifier's probability that the best passage answers the question.

    A logistic head on late-interaction features (how well each question word is covered by
    the passage's tokens under all-MiniLM-L6-v2, the words and names the passage lacks,
    question-window cosines), trained on labelled (question, passage) pairs
    (``guardrail verifier train``); the highest over the passages. It reads neither the answer
    nor the generator. None without passages or without a verifier."""
    v = x.verification
    return v.answerable if v is not None else None


@_signal(+1, Group.VERIFIER, Needs.VERIFIER)
def _verifier_support(x: SignalInputs) -> float | None:
    """The verifier's probability that the answer's sentence answers the question.

    The same features on the first sentence holding the answer with its neighbours, under a
    head trained to tell the gold answer's sentence from the best-matching sentence of a
    passage that lacks the answer and from other sentences of the right passage. None when
    no passage holds the answer, and without a verifier."""
    v = x.verification
    return v.support if v is not None else None


REGISTRY: tuple[Signal, ...] = tuple(_REGISTERED)
"""Every signal, in the order records and reports list them."""

SIGNALS: Mapping[str, SignalFn] = {s.name: s.compute for s in REGISTRY}
"""The registered signals, by name. Policies may reference exactly these names."""

SIGNAL_NAMES: frozenset[str] = frozenset(SIGNALS)

TEXT_SIGNALS: frozenset[str] = frozenset(
    s.name for s in REGISTRY if s.needs in (Needs.TEXT, Needs.EMBEDDER, Needs.VERIFIER)
)
"""Signals computed from text, retrieval scores, the sentence embedder and the verifier alone
(no model output but the answer): they cost little next to the model and can be recomputed from a
stored answer at any time."""


def compute_signals(inputs: SignalInputs) -> dict[str, float | None]:
    """Every registered signal for one answer."""
    return {name: fn(inputs) for name, fn in SIGNALS.items()}


SOURCES = ("generator", "guard", "probe", "retrieval", "text", "embedder", "verifier")
"""Where a signal's value comes from: the answering model's own tokens (``generator``: the
embedded model, an escalation target, or the upstream's ``logprobs``), a local ``guard`` model
that teacher-forced the answer, the generator's abstention ``probe``, the retrieval scores,
the text alone, the sentence ``embedder``, the answerability ``verifier``."""


def signal_sources(*, tokens: str, parametric: str) -> dict[str, str]:
    """The source of every registered signal (one of ``SOURCES``), given who produced the token
    record the token signals read (``tokens``) and the two passes of Confidence Gain
    (``parametric``): ``generator`` or ``guard``."""
    by_needs = {
        Needs.TOKENS: tokens,
        Needs.PARAMETRIC: parametric,
        Needs.PROBE: "probe",
        Needs.TEXT: "text",
        Needs.EMBEDDER: "embedder",
        Needs.VERIFIER: "verifier",
    }
    return {
        s.name: "retrieval" if s.group is Group.RETRIEVAL else by_needs[s.needs] for s in REGISTRY
    }


def compute_text_signals(
    question: str,
    answer: str,
    passages: Sequence[Passage],
    similarity: Similarity | None = None,
    verify: Verify | None = None,
) -> dict[str, float | None]:
    """The ``TEXT_SIGNALS`` of a stored answer, without the generator model."""
    inputs = SignalInputs(
        answer,
        TokenStats.empty(),
        None,
        passages,
        question=question,
        similarity=similarity,
        verify=verify,
    )
    return {name: SIGNALS[name](inputs) for name in sorted(TEXT_SIGNALS)}


def signal_table_markdown() -> str:
    """The registry as a Markdown table: name, one-line summary, direction and needs."""
    rows = [
        "| Signal | Measures | Direction | Needs |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{s.name}` | {_markdown_cell(s.summary)} | {s.direction:+d} | {s.needs.value} |"
            for s in REGISTRY
        ),
    ]
    return "\n".join(rows) + "\n"


def _markdown_cell(text: str) -> str:
    """reStructuredText literals as Markdown ones; a "|" escaped."""
    return text.replace("``", "`").replace("|", "\\|")
