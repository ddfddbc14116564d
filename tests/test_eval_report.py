"""The evaluation report's single-signal baselines, on hand-made records (no model)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from guardrail.evaluation.report import EvalReport, best_single, markdown, score_block
from guardrail.evaluation.runner import Record


def record(i: int, right: bool, **signals: float | None) -> Record:
    return Record(
        key=f"k{i}",
        item_id=f"q{i}",
        question="When was the tower finished?",
        answers=("1889",),
        unanswerable=False,
        answer="1889" if right else "1920",
        abstained=False,
        signals=dict(signals),
        timings={"generate": 1.0, "score": 0.1, "abstain_probe": 0.05, "signals": 0.01},
        passage_ids=("t",),
        passage_scores=(None,),
    )


def records() -> list[Record]:
    # mean_entropy separates perfectly once oriented (lower entropy: right);
    # cg_mean separates half-way; min_token_prob is missing for every answer.
    rows = []
    for i, right in enumerate([True, True, False, False, True, False]):
        rows.append(
            record(
                i,
                right,
                mean_entropy=0.1 * i if right else 1.0 + 0.1 * i,
                cg_mean=float(i % 2),
                min_token_prob=None,
            )
        )
    return rows


def test_best_single_orients_each_signal_by_its_direction() -> None:
    name, value = best_single(records()) or ("", 0.0)
    assert name == "mean_entropy"
    assert value == pytest.approx(1.0)


def test_best_single_is_none_with_one_class_only() -> None:
    assert best_single([r for r in records() if r.answer == "1889"]) is None


def test_the_report_names_the_single_signal_chosen_on_calibration_data() -> None:
    report = EvalReport(
        setting={"dataset": "x", "setting": "gold", "split": "test", "n": 6},
        records=records(),
        single_choice=("cg_mean", 0.9),
    )
    result = report.compute()
    chosen = result["single_chosen_on_calibration"]
    assert chosen["signal"] == "cg_mean" and chosen["calibration_auroc"] == 0.9
    assert chosen["auroc"] == pytest.approx(result["signals"]["cg_mean"]["auroc"])
    text = markdown(result, [])
    assert "Best single signal on this split: mean_entropy (1.000)" in text
    assert "the best on the calibration split: cg_mean (0.900 there" in text
    # The cost ratio counts every step the signals take, text signals included.
    assert result["cost"]["signals_over_generation_median"] == pytest.approx(1.16)


def test_the_answered_auroc_is_split_into_reading_and_answerability() -> None:
    rows = [record(0, True), record(1, False), record(2, True), record(3, False), record(4, False)]
    rows[3] = replace(rows[3], unanswerable=True, answers=())
    rows[4] = replace(rows[4], unanswerable=True, answers=())
    rows.append(replace(record(5, False), unanswerable=True, answers=(), abstained=True))
    scores = np.array([0.9, 0.2, 0.8, 0.85, 0.1, 0.5])
    block = score_block(scores, rows)
    # Reading: answers to answerable questions, right (0.9, 0.8) above wrong (0.2).
    assert block["auroc_reading"] == pytest.approx(1.0)
    # Answerability: answers only; answerable (0.9, 0.2, 0.8) over unanswerable (0.85, 0.1)
    # in 4 of the 6 pairs. The abstention (0.5) is in neither.
    assert block["auroc_answerability"] == pytest.approx(4 / 6)
    text = markdown(
        {
            "setting": {"dataset": "x", "setting": "gold", "split": "test", "n": 6},
            "summary": {},
            "signals": {"s": block},
            "cost": {"median_seconds": {}},
        },
        [],
    )
    assert "| s | " in text and "| 1.000 | 0.667 |" in text


def test_answerability_is_undefined_without_unanswerable_questions() -> None:
    block = score_block(
        np.array([0.9, 0.2, 0.8]), [record(0, True), record(1, False), record(2, True)]
    )
    assert block["auroc_reading"] == pytest.approx(1.0)
    assert np.isnan(block["auroc_answerability"])
