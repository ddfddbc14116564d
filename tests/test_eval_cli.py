"""``guardrail eval`` and ``guardrail calibrate`` on the command line: argument errors (no
model needed) and a small end-to-end run with the real embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from guardrail.cli import main
from guardrail.errors import ConfigError
from guardrail.evaluation.calibrate import fit_and_certify_parts
from guardrail.evaluation.cli import _print_summary
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import Record
from guardrail.pipeline import load_policy_setting
from guardrail.policy_runtime import scorer_for

SMALL = Path(__file__).parent / "fixtures" / "eval_small.jsonl"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--dataset", "squad3"], "unknown dataset 'squad3'"),
        (["eval", "--dataset", str(SMALL), "--fit-split", "test"], "never fit on the test data"),
        (["eval", "--dataset", str(SMALL), "--n", "0"], "--n must be at least 1"),
        (["eval", "--dataset", str(SMALL), "--delta", "1.5"], "--delta must be between 0 and 1"),
        (["eval", "--dataset", str(SMALL), "--samples", "-1"], "--samples must be 0"),
        (["eval", "--dataset", "squad2", "--data-dir", "/nowhere"], "does not exist"),
        (
            ["calibrate", "--dataset", str(SMALL), "--out", "x", "--target-error", "0"],
            "--target-error must be between 0 and 1",
        ),
        (["eval", "--dataset", str(SMALL), "--n", "50"], "cannot draw 50 balanced"),
        (
            ["eval", "--dataset", str(SMALL), "--fit-split", "calibrate", "--fit-share", "0"],
            "--fit-share must be between",
        ),
        (
            ["calibrate", "--dataset", str(SMALL), "--out", "x", "--fit-share", "1"],
            "--fit-share must be between 0 and 1",
        ),
        (["eval", "--dataset", str(SMALL), "--fit-share", "0.7"], "give --fit-split too"),
        # Refused from the items alone, before any model runs: two paragraphs at 0.2.
        (
            ["calibrate", "--dataset", str(SMALL), "--n", "2", "--out", "x", "--fit-share", "0.2"],
            "cannot be cut into a part to fit on and a part to certify on at a fit share of 0.2",
        ),
    ],
)
def test_argument_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("guardrail: error: ") and message in err
    assert "\n" not in err


@pytest.mark.parametrize("value", ["0.1,x", "1.5", ""])
def test_bad_sweep_targets_are_refused_by_argparse(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--dataset", str(SMALL), "--sweep-targets", value])
    assert caught.value.code == 2
    assert "--sweep-targets" in capsys.readouterr().err


def _items_and_records(groups: int) -> tuple[list[EvalItem], list[Record]]:
    items, records = [], []
    for g in range(groups):
        for q in range(2):  # two questions per paragraph
            qid = f"p{g}-q{q}"
            items.append(EvalItem(qid, "Why?", ("because",), False, group=f"p{g}"))
            records.append(
                Record(
                    key=qid,
                    item_id=qid,
                    question="Why?",
                    answers=("because",),
                    unanswerable=False,
                    answer="because",
                    abstained=False,
                    signals={},
                    timings={},
                    passage_ids=(),
                    passage_scores=(),
                )
            )
    return items, records


def test_the_fit_share_cuts_the_calibration_split_by_paragraph() -> None:
    items, records = _items_and_records(20)

    def groups(part: list[Record]) -> set[str]:
        return {r.item_id.split("-")[0] for r in part}

    fit, certify = fit_and_certify_parts(items, records, seed=0)
    assert len(fit) == len(certify) == 20  # the default halves the paragraphs
    assert not groups(fit) & groups(certify)
    fit75, certify75 = fit_and_certify_parts(items, records, seed=0, fit_share=0.75)
    assert (len(groups(fit75)), len(groups(certify75))) == (15, 5)
    assert not groups(fit75) & groups(certify75)
    # Seeded: the same seed cuts the same way, another seed differently.
    assert fit_and_certify_parts(items, records, seed=0, fit_share=0.75)[0] == fit75
    assert groups(fit_and_certify_parts(items, records, seed=1)[0]) != groups(fit)
    # An odd number of paragraphs: the fitting part gets the smaller half, as it always did.
    odd_items, odd_records = _items_and_records(21)
    assert len(groups(fit_and_certify_parts(odd_items, odd_records, seed=0)[0])) == 10
    # Float error does not cut one short: 100 * 0.29 is 28.999... in floating point.
    many_items, many_records = _items_and_records(100)
    fit29 = fit_and_certify_parts(many_items, many_records, seed=0, fit_share=0.29)[0]
    assert len(groups(fit29)) == 29
    with pytest.raises(ConfigError, match="fit_share must be between 0 and 1"):
        fit_and_certify_parts(items, records, seed=0, fit_share=1.0)
    # Three paragraphs can be cut at 0.5 (one to fit on) but not at 0.2 (none).
    assert len(groups(fit_and_certify_parts(items[:6], records[:6], seed=0)[0])) == 1
    with pytest.raises(ConfigError, match=r"use a larger --n or a --fit-share nearer 0\.5"):
        fit_and_certify_parts(items[:6], records[:6], seed=0, fit_share=0.2)


@pytest.mark.slow
def test_calibrate_then_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "records"
    common = ["--dataset", str(SMALL), "--n", "2", "--records", str(records), "--no-progress"]
    # Two calibration questions cannot certify a 10% error: calibrate says so, writes a
    # policy that defers everything, and exits 3.
    status = main(["calibrate", *common, "--out", str(tmp_path / "pol")])
    out = capsys.readouterr().out
    assert status == 3
    assert "no threshold keeps the error" in out
    policy_file = tmp_path / "pol.yaml"
    data = yaml.safe_load(policy_file.read_text())
    # The thresholds are the risk target; loading certifies them: infeasible here.
    assert data["thresholds"]["max_error_rate"] == 0.1 and data["thresholds"]["delta"] == 0.1
    assert data["calibration"]["calibrator"] == "pol.calibrator.json"
    assert "seed=0 n=2" in data["calibration"]["fitted_on"]
    policy = load_policy_setting(str(policy_file))
    assert policy.thresholds.certified is not None
    assert not policy.thresholds.certified.answer_feasible
    scorer = scorer_for(policy, policy_file.parent)
    assert scorer.method.startswith("calibrated:")
    assert len((records / "records.jsonl").read_text().splitlines()) == 2

    report = tmp_path / "report"
    status = main(
        [
            "eval",
            *common,
            "--fit-split",
            "calibrate",
            "--policy",
            str(policy_file),
            "--out",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "response accuracy" in out
    # The calibration split came from the cache: only the two test questions were run.
    assert len((records / "records.jsonl").read_text().splitlines()) == 4
    result = json.loads((report / "report.json").read_text())
    assert result["setting"]["n"] == 2 and result["setting"]["seed"] == 0
    assert result["setting"]["retrieval"] == "passages given with each question"
    assert set(result["calibrated"]) == {
        "logistic",
        "isotonic",
        "logistic without CG",
        "policy pol",
    }
    assert result["policy"]["action_mix"] == {"defer": 1.0}  # the infeasible policy defers all
    assert result["summary"]["n"] == 2
    assert "cg_mean" in result["signals"]
    sweep = result["risk_sweep"]
    assert [row["target_error"] for row in sweep] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
    assert all(row["calibrator"] == "logistic" for row in sweep)
    assert (
        "fitted on 1 questions (fit share 0.5), thresholds certified on the other 1"
        in (result["setting"]["fit_split"])
    )
    for name in ("report.md", "risk_coverage.png", "reliability.png"):
        assert (report / name).stat().st_size > 0
    assert (report / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_summary_says_when_no_signal_can_be_scored(capsys: pytest.CaptureFixture[str]) -> None:
    nan = float("nan")
    result = {
        "setting": {"dataset": "x", "setting": "open", "split": "test"},
        "summary": {"n": 4, "response_accuracy": 0.0},
        "signals": {"cg_mean": {"auroc": nan}, "mean_logprob": {"auroc": nan}},
    }
    _print_summary(result)
    out = capsys.readouterr().out
    assert "best single signal: n/a (AUROC needs right and wrong responses" in out
    result["signals"]["mean_logprob"] = {"auroc": 0.7}
    _print_summary(result)
    assert "best single signal: mean_logprob AUROC 0.700" in capsys.readouterr().out
