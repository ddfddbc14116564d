"""Confidence signals: exact values on hand-built next-token distributions.

Every expected value is computed here, independently, from the probability vectors with
``math``; the code under test goes through ``token_stats_from_logits`` (torch) and
``compute_signals``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from fakes import EPSILON, ScriptedBackend, logits_of, peaked, uniform

from guardrail.backends.base import GeneratorBackend
from guardrail.backends.transformers import token_stats_from_logits
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.signals import (
    SIGNAL_NAMES,
    TEXT_SIGNALS,
    SignalInputs,
    compute_signals,
    compute_text_signals,
    confidence_gains,
    embedder_similarity,
)
from guardrail.text import normalize_answer
from guardrail.types import TokenStats
from retrievers import HashingEmbedder, Passage

VOCAB = ("Paris", "Lyon", "Rome", "Nice", "Berlin", "Oslo")
LN2, LN4 = math.log(2), math.log(4)


def stats(rows: Sequence[Sequence[float]], ids: Sequence[int]) -> TokenStats:
    """TokenStats of probability rows through the real reduction."""
    logits = torch.tensor([logits_of(r) for r in rows], dtype=torch.float64)
    return token_stats_from_logits(logits, ids, [VOCAB[i] for i in ids])


def smoothed(probs: Sequence[float]) -> list[float]:
    """The distribution the logits really encode: zeros replaced by EPSILON, renormalised."""
    raw = [max(p, EPSILON) for p in probs]
    return [p / sum(raw) for p in raw]


def entropy(probs: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in smoothed(probs))


def kl_from_uniform(probs: Sequence[float]) -> float:
    """KL(U || p) = sum_j (1/V) log((1/V) / p_j), written out term by term."""
    q = smoothed(probs)
    v = len(q)
    return sum((1 / v) * math.log((1 / v) / qj) for qj in q)


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-5, abs=1e-5)


# Contextual answer "Paris Lyon": step 0 is split between two tokens (entropy ln 2), step 1
# is split four ways (ln 4). Without passages it is the other way round.
CTX_ROWS = [
    [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
    [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
]
PAR_ROWS = [
    [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
]
ANSWER_IDS = [0, 1]


def inputs(
    answer: str = "Paris Lyon",
    *,
    contextual: TokenStats | None = None,
    parametric: TokenStats | None = None,
    passages: Sequence[Passage] = (),
) -> SignalInputs:
    return SignalInputs(
        answer=answer,
        contextual=contextual if contextual is not None else stats(CTX_ROWS, ANSWER_IDS),
        parametric=parametric,
        passages=passages,
    )


# ---------------------------------------------------------------- token_stats_from_logits


def test_token_stats_from_logits_reduces_each_row() -> None:
    rows = [[0.7, 0.2, 0.1, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]]
    got = stats(rows, [1, 5])
    assert got.token_ids == (1, 5)
    assert got.tokens == ("Lyon", "Oslo")
    assert got.logprobs == approx([math.log(0.2), math.log(0.5)])
    assert got.entropies == approx([entropy(rows[0]), entropy(rows[1])])
    assert got.top_ids == (0, 5)
    assert got.margins == approx([0.5, 0.4])
    assert got.kl_uniform == approx([kl_from_uniform(rows[0]), kl_from_uniform(rows[1])])
    assert got.full_vocab is True
    assert len(got) == 2


def test_token_stats_from_logits_uses_the_full_formula_for_self_certainty() -> None:
    # KL(U||p) = -log V - mean_j log p_j: both sides computed independently.
    row = [0.6, 0.3, 0.1, 0.0, 0.0, 0.0]
    expected = -math.log(6) - sum(math.log(p) for p in smoothed(row)) / 6
    assert expected == approx(kl_from_uniform(row))
    assert stats([row], [0]).kl_uniform[0] == approx(expected)
    # The uniform distribution is at zero distance from itself.
    assert stats([uniform(VOCAB)], [0]).kl_uniform[0] == approx(0.0)


def test_token_stats_from_logits_rejects_a_row_count_mismatch() -> None:
    with pytest.raises(ValueError, match="2 logit rows for 1 tokens"):
        token_stats_from_logits(torch.zeros(2, 6), [0], ["Paris"])


def test_token_stats_from_logits_of_no_tokens_is_empty() -> None:
    assert token_stats_from_logits(torch.zeros(0, 6), [], []) == TokenStats.empty()


def test_token_stats_rejects_fields_of_unequal_length() -> None:
    with pytest.raises(ValueError, match="must all have length 2"):
        TokenStats((1, 2), ("a", "b"), (-0.1, -0.2), (0.5,), (1, 2), (0.1, 0.2), (0.0, 0.0))
    with pytest.raises(ValueError, match="must all have length 1"):
        TokenStats((1,), (), (-0.1,), (0.5,), (1,), (0.1,), (0.0,))


# ---------------------------------------------------------------- Confidence Gain


def test_confidence_gain_is_parametric_minus_contextual_entropy() -> None:
    x = inputs(parametric=stats(PAR_ROWS, ANSWER_IDS))
    # CG_0 = ln 4 - ln 2 = ln 2; CG_1 = ln 2 - ln 4 = -ln 2.
    assert confidence_gains(x) == approx([LN2, -LN2])
    signals = compute_signals(x)
    assert signals["cg_first"] == approx(LN2)
    assert signals["cg_min"] == approx(-LN2)
    assert signals["cg_mean"] == approx(0.0)
    assert signals["cg_negative_share"] == 0.5


def test_confidence_gain_single_token_answer_is_ln2() -> None:
    x = inputs(
        "Paris",
        contextual=stats(CTX_ROWS[:1], [0]),
        parametric=stats(PAR_ROWS[:1], [0]),
    )
    signals = compute_signals(x)
    for name in ("cg_mean", "cg_min", "cg_first"):
        assert signals[name] == approx(LN2)
    assert signals["cg_negative_share"] == 0.0


def test_all_negative_gains_give_a_negative_share_of_one() -> None:
    x = inputs(
        contextual=stats(PAR_ROWS[:1] * 2, [0, 1]), parametric=stats(CTX_ROWS[:1] * 2, [0, 1])
    )
    signals = compute_signals(x)
    assert signals["cg_mean"] == approx(-LN2)
    assert signals["cg_negative_share"] == 1.0


# ---------------------------------------------------------------- parametric agreement


def test_parametric_agreement_is_the_share_of_tokens_the_model_would_choose_anyway() -> None:
    contextual = stats([peaked(VOCAB, "Lyon", 0.9), peaked(VOCAB, "Rome", 0.9)], [1, 2])
    # Without passages the model prefers Lyon at step 0 (agrees) and Paris at step 1 (does not).
    par_rows = [peaked(VOCAB, "Lyon", 0.6), peaked(VOCAB, "Paris", 0.4)]
    parametric = stats(par_rows, [1, 2])
    signals = compute_signals(inputs("Lyon Rome", contextual=contextual, parametric=parametric))
    assert signals["parametric_agreement"] == 0.5
    assert signals["parametric_logprob"] == approx(
        (math.log(0.6) + math.log(0.6 / 5)) / 2  # P(Lyon)=0.6, P(Rome)=(1-0.4)/5
    )


def test_parametric_agreement_zero_and_one() -> None:
    contextual = stats([peaked(VOCAB, "Lyon", 0.9)], [1])
    agree = stats([peaked(VOCAB, "Lyon", 0.3)], [1])
    disagree = stats([peaked(VOCAB, "Paris", 0.3)], [1])
    assert (
        compute_signals(inputs("Lyon", contextual=contextual, parametric=agree))[
            "parametric_agreement"
        ]
        == 1.0
    )
    assert (
        compute_signals(inputs("Lyon", contextual=contextual, parametric=disagree))[
            "parametric_agreement"
        ]
        == 0.0
    )


# ---------------------------------------------------------------- contextual token signals


def test_contextual_token_signals() -> None:
    rows = [[0.7, 0.2, 0.1, 0.0, 0.0, 0.0], [0.05, 0.05, 0.1, 0.1, 0.3, 0.4]]
    ids = [0, 4]  # the answer takes the top token, then the second-best one
    signals = compute_signals(inputs("Paris Berlin", contextual=stats(rows, ids)))
    assert signals["mean_logprob"] == approx((math.log(0.7) + math.log(0.3)) / 2)
    assert signals["mean_entropy"] == approx((entropy(rows[0]) + entropy(rows[1])) / 2)
    assert signals["min_token_prob"] == approx(0.3)
    assert signals["first_token_margin"] == approx(0.5)
    assert signals["self_certainty"] == approx(
        (kl_from_uniform(rows[0]) + kl_from_uniform(rows[1])) / 2
    )
    # No parametric pass: every signal that needs one is missing, not zero.
    for name in ("cg_mean", "cg_min", "cg_first", "cg_negative_share"):
        assert signals[name] is None
    assert signals["parametric_agreement"] is None
    assert signals["parametric_logprob"] is None


def test_a_peaked_distribution_is_more_self_certain_than_a_flat_one() -> None:
    sharp = compute_signals(inputs("Paris", contextual=stats([peaked(VOCAB, "Paris", 0.95)], [0])))
    flat = compute_signals(inputs("Paris", contextual=stats([uniform(VOCAB)], [0])))
    assert sharp["self_certainty"] is not None and flat["self_certainty"] is not None
    assert sharp["self_certainty"] > flat["self_certainty"]
    assert flat["self_certainty"] == approx(0.0)
    assert flat["mean_entropy"] == approx(math.log(6))
    assert flat["first_token_margin"] == approx(0.0)


# ---------------------------------------------------------------- retrieval signals


def passage(pid: str, text: str, score: float | None = None) -> Passage:
    return Passage(id=pid, text=text, source="test", score=score)


def test_retrieval_top_score_and_margin() -> None:
    found = [passage("a", "x", 0.5), passage("b", "y", 0.8), passage("c", "z", 0.3)]
    signals = compute_signals(inputs(passages=found))
    assert signals["retrieval_top_score"] == approx(0.8)
    assert signals["retrieval_margin"] == approx(0.3)


def test_retrieval_signals_ignore_unscored_passages() -> None:
    one_scored = [passage("a", "x", 0.6), passage("b", "y")]
    signals = compute_signals(inputs(passages=one_scored))
    assert signals["retrieval_top_score"] == approx(0.6)
    assert signals["retrieval_margin"] is None
    unscored = compute_signals(inputs(passages=[passage("b", "y")]))
    assert unscored["retrieval_top_score"] is None
    assert unscored["retrieval_margin"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A cat,  an   apple.  ", "cat apple"),
        ("THEATRE and Anthem", "theatre and anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "texts", "expected"),
    [
        ("Gustave Eiffel", ["It was designed by gustave eiffel's company."], 1.0),
        ("the Eiffel Tower.", ["Tourists visit Eiffel tower daily."], 1.0),
        ("1889", ["No dates here.", "Completed in 1889, it ..."], 1.0),
        ("Lyon", ["The capital of France is Paris."], 0.0),
        ("art", ["Take heart."], 0.0),  # whole words only
        ("", ["anything"], None),
        ("...", ["anything"], None),  # nothing left after normalisation
        ("Paris", [], None),
    ],
)
def test_answer_in_passages(answer: str, texts: list[str], expected: float | None) -> None:
    found = [passage(f"p{i}", t) for i, t in enumerate(texts)]
    assert compute_signals(inputs(answer, passages=found))["answer_in_passages"] == expected


# ---------------------------------------------------------------- missing inputs


def test_every_signal_but_the_length_is_none_for_an_empty_answer_without_passages() -> None:
    empty = TokenStats.empty()
    signals = compute_signals(
        SignalInputs(answer="", contextual=empty, parametric=empty, passages=[])
    )
    assert set(signals) == SIGNAL_NAMES
    assert signals == {**dict.fromkeys(SIGNAL_NAMES), "answer_tokens": 0.0}


def test_abstain_logprob_passes_the_probe_through() -> None:
    empty = TokenStats.empty()
    signals = compute_signals(SignalInputs("", empty, None, [], abstain_logprob=-2.5))
    assert signals["abstain_logprob"] == -2.5


def test_every_signal_but_the_length_is_none_without_parametric_pass_or_answer() -> None:
    signals = compute_signals(
        SignalInputs(answer="", contextual=TokenStats.empty(), parametric=None, passages=[])
    )
    assert signals.pop("answer_tokens") == 0.0
    assert all(value is None for value in signals.values())


# ---------------------------------------------------------------- end to end


def test_scripted_backend_implements_the_protocol() -> None:
    backend = ScriptedBackend(VOCAB, contextual=CTX_ROWS, parametric=PAR_ROWS)
    assert isinstance(backend, GeneratorBackend)


# Distinct greedy tokens with the same entropies as above: "Paris" (ln 2), then "Lyon" (ln 4).
E2E_CTX = [[0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.25, 0.25, 0.25, 0.25, 0.0]]
E2E_PAR = [[0.25, 0.25, 0.25, 0.25, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]]


def test_signals_end_to_end_through_guardrail_assess() -> None:
    backend = ScriptedBackend(VOCAB, contextual=E2E_CTX, parametric=E2E_PAR)
    guard = Guardrail(backend=backend, policy=load_policy_setting("balanced"))
    found = [
        passage("p1", "The Paris Lyon night train leaves at ten.", 0.7),
        passage("p2", "Rome is in Italy.", 0.4),
    ]
    assessed = guard.assess(backend, "Which train?", found)
    # Greedy decoding takes the first of the tied top tokens.
    assert assessed.answer == "Paris Lyon"
    assert assessed.generation.stats.token_ids == (0, 1)
    # One generation with the passages, then one teacher-forced pass without them.
    assert backend.calls == [("generate", "contextual"), ("score", "parametric")]
    s = assessed.signals
    assert s["cg_first"] == approx(LN2)
    assert s["cg_min"] == approx(-LN2)
    assert s["cg_mean"] == approx(0.0)
    assert s["cg_negative_share"] == 0.5
    # The parametric rows have tied top tokens, so agreement is left to other tests.
    assert s["parametric_logprob"] == approx((math.log(0.25) + math.log(0.5)) / 2)
    assert s["mean_logprob"] == approx((math.log(0.5) + math.log(0.25)) / 2)
    assert s["min_token_prob"] == approx(0.25)
    assert s["first_token_margin"] == approx(0.0)
    assert s["retrieval_top_score"] == approx(0.7)
    assert s["retrieval_margin"] == approx(0.3)
    assert s["answer_in_passages"] == 1.0
    assert assessed.confidence == approx(math.sqrt(0.5 * 0.25))
    assert assessed.flags == {}
    assert not assessed.abstained


# ---------------------------------------------------------------- grounding signals

TOWER = passage(
    "t",
    "The tower was finished in 1889. The bridges of Paris were built in 1920 by engineers.",
)


def test_question_overlap_counts_the_question_words_the_passages_hold() -> None:
    # Content words: "when", "was", "the" and "in" are stop words; left: tower, finished, lyon.
    x = SignalInputs(
        "1889", TokenStats.empty(), None, [TOWER], question="When was the tower finished in Lyon?"
    )
    assert compute_signals(x)["question_overlap"] == approx(2 / 3)
    plural = SignalInputs("x", TokenStats.empty(), None, [TOWER], question="Which towers?")
    assert compute_signals(plural)["question_overlap"] == 1.0  # "towers" matches "tower"


def test_answer_sentence_overlap_reads_the_sentence_that_holds_the_answer() -> None:
    question = "When was the tower finished?"
    right = SignalInputs("1889", TokenStats.empty(), None, [TOWER], question=question)
    wrong = SignalInputs("1920", TokenStats.empty(), None, [TOWER], question=question)
    absent = SignalInputs("1750", TokenStats.empty(), None, [TOWER], question=question)
    assert compute_signals(right)["answer_sentence_overlap"] == 1.0
    assert compute_signals(wrong)["answer_sentence_overlap"] == 0.0
    assert compute_signals(absent)["answer_sentence_overlap"] is None


def test_text_signals_need_no_model() -> None:
    values = compute_text_signals("When was the tower finished?", "1889", [TOWER])
    assert set(values) == TEXT_SIGNALS
    assert values["answer_in_passages"] == 1.0
    assert values["answer_sentence_overlap"] == 1.0
    assert values["retrieval_top_score"] is None  # the passage has no score


# ---------------------------------------------------------------- the answer's sentence

BRIDGES = passage(
    "b",
    "The tower stands by the river. The tower was finished in 1889. "
    "The tower was painted in 1889 and in 1920.",
)


def text(question: str, answer: str, *found: Passage, **kw: object) -> dict[str, float | None]:
    return compute_text_signals(question, answer, list(found or [TOWER]), **kw)  # type: ignore[arg-type]


def test_answer_sentence_gap_is_zero_for_the_best_matching_sentence() -> None:
    question = "When was the tower finished?"
    assert text(question, "1889")["answer_sentence_gap"] == 0.0
    # "1920" sits in a sentence holding neither "tower" nor "finished"; another holds both.
    assert text(question, "1920")["answer_sentence_gap"] == -1.0
    assert text(question, "1750")["answer_sentence_gap"] is None


def test_weighted_overlap_counts_rare_question_words_more() -> None:
    # Three sentences: "tower" is in all of them, "finished" in one.
    tower, finished = math.log(4 / 3.5), math.log(4 / 1.5)
    values = text("When was the tower finished?", "1920", BRIDGES)
    assert values["answer_sentence_weighted_overlap"] == approx(tower / (tower + finished))
    assert values["answer_sentence_overlap"] == 0.5  # the unweighted share
    best = text("When was the tower finished?", "1889", BRIDGES)
    assert best["answer_sentence_weighted_overlap"] == approx(1.0)  # the best of two sentences


def test_answer_occurrences_counts_the_sentences_holding_the_answer() -> None:
    assert text("When?", "1889", BRIDGES)["answer_occurrences"] == 2.0
    assert text("When?", "1920", BRIDGES)["answer_occurrences"] == 1.0
    assert text("When?", "1750", BRIDGES)["answer_occurrences"] is None


def test_answer_proximity_counts_the_words_between_answer_and_question_word() -> None:
    # "the tower was finished in 1889": one word ("in") between "finished" and 1889.
    assert text("When was the tower finished?", "1889")["answer_proximity"] == 1.0
    # The sentence of "1920" holds no question word.
    assert text("When was the tower finished?", "1920")["answer_proximity"] is None
    # Answer and sentence are cut alike ("$1.5 million" is "15 million" in both): found,
    # right after "cost".
    money = passage("m", "The bridge cost $1.5 million in total.")
    assert text("What did the bridge cost?", "$1.5 million", money)["answer_proximity"] == 0.0
    # The distance runs from the answer's nearer end: "is where" (the article is normalised
    # away) before "treaty".
    lake = passage("l", "Lake Geneva is where the treaty was signed.")
    assert text("Where was the treaty signed?", "Lake Geneva", lake)["answer_proximity"] == 2.0
    # A question word inside the answer does not count: "city" repeats the question.
    city = passage("c", "Paris is the city of light.")
    assert text("Which city is the capital?", "city", city)["answer_proximity"] is None


def test_sentences_do_not_end_at_initials_or_abbreviations() -> None:
    army = passage("a", "In 1944 the U.S. Army landed in Normandy. Dr. Smith was not there.")
    values = text("Who landed in Normandy in 1944?", "U.S. Army", army)
    assert values["answer_sentence_overlap"] == 1.0
    assert values["answer_occurrences"] == 1.0


def test_an_answer_spanning_a_sentence_end_is_found_in_a_pair_of_sentences() -> None:
    spans = passage("s", "The first prize went to Paris. He accepted it.")
    values = text("Who got the first prize?", "Paris. He", spans)
    assert values["answer_in_passages"] == 1.0
    assert values["answer_sentence_overlap"] == approx(2 / 3)  # "first", "prize" of 3 words


def test_typographic_quotes_match_ascii_ones() -> None:
    house = passage("h", "Smith\u2019s house burned in 1850.")
    values = text("When did Smith's house burn?", "Smith", house)
    assert values["answer_in_passages"] == 1.0
    assert values["answer_sentence_overlap"] is not None


def test_answer_occurrences_are_capped() -> None:
    many = passage("r", " ".join(f"Rome was sacked in year {i}." for i in range(12)))
    assert text("Which city?", "Rome", many)["answer_occurrences"] == 5.0


def test_negation_mismatch_and_question_negated() -> None:
    negated = text("When was the tower not finished?", "1889")
    assert negated["question_negated"] == 1.0
    assert negated["negation_mismatch"] == 1.0  # the sentence says it *was* finished
    agreeing = passage("n", "The tower was not finished in 1889.")
    assert text("When was the tower not finished?", "1889", agreeing)["negation_mismatch"] == 0.0
    plain = text("When was the tower finished?", "1889")
    assert plain["question_negated"] == 0.0 and plain["negation_mismatch"] == 0.0
    assert text("Why didn’t it open?", "1889")["question_negated"] == 1.0
    assert text("Who is notable?", "1889")["question_negated"] == 0.0  # "not" as a word only
    assert text("Who was No. 1 in 1889?", "1889")["question_negated"] == 0.0  # a number sign
    assert text("Why was there no tower?", "1889")["question_negated"] == 1.0
    assert text("When was it never finished?", "1750")["negation_mismatch"] is None


def test_answer_sentence_similarity_uses_the_embedder() -> None:
    embedder = HashingEmbedder()
    question = "When was the tower finished?"
    values = text(question, "1889", similarity=embedder_similarity(embedder))
    q, sentence = embedder.embed([question, "The tower was finished in 1889."])
    assert values["answer_sentence_similarity"] == approx(float(q @ sentence))
    assert 0.0 < values["answer_sentence_similarity"] < 1.0  # type: ignore[operator]
    assert text(question, "1889")["answer_sentence_similarity"] is None  # no embedder
    missing = text(question, "1750", similarity=embedder_similarity(embedder))
    assert missing["answer_sentence_similarity"] is None  # the answer is in no sentence


def test_guardrail_scores_similarity_with_its_index_embedder() -> None:
    backend = ScriptedBackend(VOCAB, contextual=E2E_CTX, parametric=E2E_PAR)
    found = [passage("p1", "The Paris Lyon night train leaves at ten.", 0.7)]
    plain = Guardrail(backend=backend, policy=load_policy_setting("balanced"))
    signals = plain.assess(backend, "Which train?", found).signals
    assert signals["answer_sentence_similarity"] is None
    embedded = Guardrail(
        backend=backend, policy=load_policy_setting("balanced"), embedder=HashingEmbedder()
    )
    signals = embedded.assess(backend, "Which train?", found).signals
    assert signals["answer_sentence_similarity"] == approx(
        embedder_similarity(HashingEmbedder())("Which train?", [found[0].text])[0]
    )
