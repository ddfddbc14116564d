"""The signal registry is the one source of every fact about a signal: the names policies
may use, the calibrator's columns, the report's directions and the README's table."""

from __future__ import annotations

from pathlib import Path

from guardrail.calibration import CG_FEATURES, DEFAULT_FEATURES
from guardrail.evaluation.report import DIRECTIONS
from guardrail.signals import (
    REGISTRY,
    SIGNAL_NAMES,
    SIGNALS,
    TEXT_SIGNALS,
    Needs,
    signal_table_markdown,
)

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- signals:start -->", "<!-- signals:end -->"

# Fitted calibrator artifacts and reports depend on these orders: pinned, not derived.
PINNED_FEATURES = (
    "cg_mean",
    "cg_min",
    "cg_first",
    "cg_negative_share",
    "parametric_agreement",
    "parametric_logprob",
    "mean_logprob",
    "mean_entropy",
    "min_token_prob",
    "first_token_margin",
    "self_certainty",
    "answer_tokens",
    "answer_in_passages",
    "question_overlap",
    "answer_sentence_overlap",
    "answer_sentence_gap",
    "answer_sentence_weighted_overlap",
    "answer_occurrences",
    "answer_proximity",
    "answer_sentence_similarity",
    "negation_mismatch",
    "question_negated",
    "retrieval_top_score",
    "retrieval_margin",
    "verifier_answerable",
    "verifier_support",
)
PINNED_DIRECTIONS = {
    "cg_mean": 1,
    "cg_min": 1,
    "cg_first": 1,
    "cg_negative_share": -1,
    "parametric_agreement": 1,
    "parametric_logprob": 1,
    "mean_logprob": 1,
    "mean_entropy": -1,
    "min_token_prob": 1,
    "first_token_margin": 1,
    "self_certainty": 1,
    "retrieval_top_score": 1,
    "retrieval_margin": 1,
    "answer_in_passages": 1,
    "abstain_logprob": -1,
    "answer_tokens": -1,
    "question_overlap": 1,
    "answer_sentence_overlap": 1,
    "answer_sentence_gap": 1,
    "answer_sentence_weighted_overlap": 1,
    "answer_occurrences": -1,
    "answer_proximity": -1,
    "answer_sentence_similarity": 1,
    "negation_mismatch": -1,
    "question_negated": -1,
    "verifier_answerable": 1,
    "verifier_support": 1,
}
PINNED_TEXT_SIGNALS = set(PINNED_FEATURES[PINNED_FEATURES.index("answer_in_passages") :])
"""The features from ``answer_in_passages`` on read only text, scores, the embedder and the
verifier."""


def test_every_signal_is_declared_once_with_a_direction_and_a_definition() -> None:
    names = [s.name for s in REGISTRY]
    assert len(names) == len(set(names)) == len(SIGNAL_NAMES)
    assert list(SIGNALS) == names
    assert all(s.direction in (-1, 1) for s in REGISTRY)
    assert all(s.summary and "\n" not in s.summary for s in REGISTRY)


def test_the_orders_that_artifacts_and_reports_depend_on_are_unchanged() -> None:
    assert DEFAULT_FEATURES == PINNED_FEATURES
    assert list(DIRECTIONS.items()) == list(PINNED_DIRECTIONS.items())
    assert PINNED_FEATURES[:6] == CG_FEATURES  # the Confidence Gain ablation drops these


def test_derived_sets_follow_the_registry() -> None:
    text_only = {
        s.name for s in REGISTRY if s.needs in (Needs.TEXT, Needs.EMBEDDER, Needs.VERIFIER)
    }
    assert TEXT_SIGNALS == text_only == PINNED_TEXT_SIGNALS
    assert set(DEFAULT_FEATURES) == {s.name for s in REGISTRY if s.feature}
    assert "abstain_logprob" not in DEFAULT_FEATURES
    assert set(CG_FEATURES) == {s.name for s in REGISTRY if s.needs is Needs.PARAMETRIC}


def test_the_readme_table_is_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == text.count(END) == 1
    table = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert table == signal_table_markdown(), (
        "README.md's signal table is out of date; replace the lines between the markers with "
        'the output of: python -c "from guardrail.signals import signal_table_markdown as t; '
        'print(t(), end=str())"'
    )
    assert all(f"| `{name}` |" in table for name in SIGNAL_NAMES)
