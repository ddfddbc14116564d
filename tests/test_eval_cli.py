"""``guardrail eval`` and ``guardrail calibrate`` on the command line: argument errors (no
model needed) and a small end-to-end run with the real embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from guardrail.cli import main
from guardrail.pipeline import load_policy_setting, policy_path, policy_scorer

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
    scorer = policy_scorer(policy, policy_path(str(policy_file)))
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
    assert [row["target_error"] for row in sweep] == [0.1, 0.2, 0.3, 0.5, 0.7]
    assert all(row["calibrator"] == "logistic" for row in sweep)
    assert (
        "fitted on 1 questions, thresholds certified on the other 1"
        in (result["setting"]["fit_split"])
    )
    for name in ("report.md", "risk_coverage.png", "reliability.png"):
        assert (report / name).stat().st_size > 0
    assert (report / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
