"""Recalibration from the service's own labels (``guardrail calibrate --from-store``).

The store is filled with synthetic labelled decisions whose chance of being right is known:
each answer is right with probability ``s``, and the signal ``cg_mean`` reads ``s`` with
noise. The certified threshold must hold the error among answered below the target on fresh
decisions of the same kind; tenants never mix; too few labels are refused with the count
needed; and the written policy is served to a tenant after a reload over HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import ScriptedBackend, peaked
from redis_server import RedisServer
from test_service import serve, settings

from guardrail.calibration import load_calibrator
from guardrail.cli import main
from guardrail.pipeline import Guardrail
from guardrail.policy_runtime import PolicyRuntime, load_policies
from policies import PolicyError
from retrievers import Passage
from service import create_app
from service.recalibrate import (
    RecalibrationError,
    needs,
    recalibrate,
    select,
    summary,
)
from service.store import Feedback, RedisStore, SqliteStore
from service.store.base import DecisionStore, Labelled

T0 = 1_800_000_000.0
MODEL = "gemma-3-270m-it"


@dataclass(frozen=True)
class Synthetic:
    record: dict[str, Any]
    chance: float
    """The true probability that the answer is right."""
    correct: bool


def synthetic(
    n: int,
    *,
    tenant: str | None,
    seed: int,
    direction: float = 1.0,
    model: str = MODEL,
    escalated_share: float = 0.0,
) -> list[Synthetic]:
    """``n`` decisions whose answers are right with probability ``s`` ~ Beta(0.6, 0.3) (about
    67% right, most near 0 or 1); ``cg_mean`` reads ``s`` (``direction`` -1 inverts it),
    ``retrieval_top_score`` is noise; 10% are the model's own abstentions (right when the
    question had no answer). The recorded confidence and action are an uninformed policy's."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.betavariate(0.6, 0.3)
        abstained = rng.random() < 0.1
        correct = rng.random() < s
        recorded = rng.random()
        out.append(
            Synthetic(
                {
                    "id": f"dec_{tenant}_{seed}_{i}",
                    "recorded_at": T0 + i,
                    "tenant": tenant,
                    "policy_name": "balanced",
                    "action": "answer" if recorded >= 0.5 else "defer",
                    "policy_action": "answer" if recorded >= 0.5 else "defer",
                    "confidence": recorded,
                    "question": f"Question {i} of {tenant} (seed {seed})?",
                    "answer": f"answer {i}",
                    "signals": {
                        "cg_mean": direction * 4 * (s - 0.5) + rng.gauss(0, 0.2),
                        "retrieval_top_score": rng.random(),
                        "answer_in_passages": None,
                    },
                    "flags": ["model_abstained"] if abstained else [],
                    "model": model,
                    "escalated": rng.random() < escalated_share,
                },
                s,
                correct,
            )
        )
    return out


def fill(store: DecisionStore, decisions: list[Synthetic]) -> None:
    for d in decisions:
        store.record(d.record)
        store.add_feedback(Feedback(d.record["id"], d.correct, at=d.record["recorded_at"] + 60))


def as_labelled(decisions: list[Synthetic]) -> list[Labelled]:
    return [Labelled(d.record, Feedback(d.record["id"], d.correct)) for d in decisions]


ACME = synthetic(1000, tenant="acme", seed=1)
OTHER = synthetic(1000, tenant="other", seed=2, direction=-1.0)


def true_error(calibrator_path: Path, threshold: float) -> tuple[float, float]:
    """Coverage and expected error among answered of the written calibrator at
    ``threshold`` on 20,000 fresh decisions of acme's kind (the true chances, not labels)."""
    calibrator = load_calibrator(calibrator_path)
    fresh = synthetic(20_000, tenant="acme", seed=99)
    rows = [{**d.record["signals"], "abstained": 0.0} for d in fresh]
    probs = calibrator.predict_proba(rows)
    eligible = np.array(["model_abstained" not in d.record["flags"] for d in fresh])
    answered = eligible & (probs >= threshold)
    chances = np.array([d.chance for d in fresh])
    return float(answered.mean()), float((1 - chances[answered]).mean())


# --------------------------------------------------------------------------- the method


def test_the_certified_threshold_holds_the_true_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "decisions.sqlite")
    fill(store, ACME)
    result = recalibrate(
        select(store.labelled(), "acme", None), target_error=0.1, hedge_target_error=None, delta=0.1
    )
    store.close()
    assert result.answer.feasible and result.answer.threshold is not None
    scores, correct, eligible = result.certification()
    assert len(scores) == len(result.certify) == len(correct) == len(eligible)
    path = tmp_path / "acme.calibrator.json"
    result.calibrator.save(path)
    coverage, error = true_error(path, result.answer.threshold)
    assert error <= 0.1, f"true error {error:.3f} above the 0.1 target"
    assert coverage > 0.15  # not a threshold that answers (almost) nothing
    # Before: the uninformed policy's recorded confidence; after: the learnt one.
    c = result.comparison
    assert c.n == len(result.held_back) >= 20
    assert c.before_auroc < 0.65 < c.after_auroc
    assert c.before_error > 0.2 and c.after_error < c.before_error
    # The parts are cut by question and cover every labelled decision once.
    ids = [e.decision_id for part in (result.fit, result.certify, result.held_back) for e in part]
    assert sorted(ids) == sorted(d.record["id"] for d in ACME)
    groups = [{e.group for e in part} for part in (result.fit, result.certify, result.held_back)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_tenants_are_never_mixed() -> None:
    alone = recalibrate(
        select(as_labelled(ACME), "acme", None),
        target_error=0.1,
        hedge_target_error=None,
        delta=0.1,
    )
    # Another tenant whose signal means the opposite is in the store: nothing changes.
    beside = recalibrate(
        select(as_labelled(ACME + OTHER), "acme", None),
        target_error=0.1,
        hedge_target_error=None,
        delta=0.1,
    )
    assert beside.answer == alone.answer
    assert beside.calibrator.to_dict() == alone.calibrator.to_dict()
    used = {e.decision_id for part in (beside.fit, beside.certify, beside.held_back) for e in part}
    assert all(i.startswith("dec_acme_") for i in used)
    # The other tenant's own calibration reads its signal the other way round.
    other = recalibrate(
        select(as_labelled(ACME + OTHER), "other", None),
        target_error=0.1,
        hedge_target_error=None,
        delta=0.1,
    )
    column = other.calibrator.features.index("cg_mean")
    assert other.calibrator.to_dict()["branches"]["answered"]["coef"][column] < 0
    assert alone.calibrator.to_dict()["branches"]["answered"]["coef"][column] > 0


def test_a_tenant_without_labels_is_told_which_tenants_have_them() -> None:
    with pytest.raises(RecalibrationError, match=r"no labelled decisions of tenant 'nobody'"):
        select(as_labelled(ACME + OTHER), "nobody", None)
    with pytest.raises(RecalibrationError, match=r"acme \(1000\), other \(1000\)"):
        select(as_labelled(ACME + OTHER), None, None)


def test_a_recalibration_that_ranks_worse_than_the_policy_in_force_says_so() -> None:
    # The recorded confidence is the true chance itself: nothing learnt can rank better.
    informed = [
        Labelled({**d.record, "confidence": d.chance}, Feedback(d.record["id"], d.correct))
        for d in ACME
    ]
    result = recalibrate(
        select(informed, "acme", None), target_error=0.1, hedge_target_error=None, delta=0.1
    )
    assert result.comparison.after_auroc < result.comparison.before_auroc
    (warning,) = [line for line in summary(result, "bot.acme") if line.startswith("warning")]
    assert "worse than the policy in force" in warning and "label more decisions" in warning


def test_too_few_labels_are_refused_with_how_many_are_needed_and_why() -> None:
    need = needs(0.1, 0.1, fit_share=0.5, holdout_share=0.2)
    assert need.certify == 22  # (1 - 0.1)^22 <= 0.1 < (1 - 0.1)^21
    assert need.total == 100  # the held-back part (20%) needs 20
    few = select(as_labelled(synthetic(80, tenant="small", seed=3)), "small", None)
    with pytest.raises(RecalibrationError) as caught:
        recalibrate(few, target_error=0.1, hedge_target_error=None, delta=0.1)
    message = str(caught.value)
    assert "too few labels" in message and "needs at least 100 labelled answers" in message
    assert "(1 - 0.1)^22 <= 0.1" in message
    # A looser target needs fewer in the certifying part, not fewer held back.
    assert needs(0.3, 0.1, fit_share=0.5, holdout_share=0.2).certify == 7


def test_escalated_decisions_and_other_models_are_left_out() -> None:
    mixed = synthetic(300, tenant="acme", seed=4, escalated_share=0.2) + synthetic(
        50, tenant="acme", seed=5, model="qwen2.5-0.5b-instruct"
    )
    with pytest.raises(RecalibrationError, match=r"several models: gemma-3-270m-it \(\d+\), qwen"):
        select(as_labelled(mixed), "acme", None)
    chosen = select(as_labelled(mixed), "acme", MODEL)
    escalated = sum(bool(d.record["escalated"]) for d in mixed)
    assert len(chosen.examples) == 300 - sum(bool(d.record["escalated"]) for d in mixed[:300])
    assert chosen.left_out["escalated (signals of another model's answer)"] == escalated
    assert chosen.left_out["other models"] == 50 - sum(
        bool(d.record["escalated"]) for d in mixed[300:]
    )


# --------------------------------------------------------------------------- the command


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def policy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "bot.yaml").write_text(
        "version: 1\nextends: balanced\nname: bot\ntenants:\n  acme: {}\n", encoding="utf-8"
    )
    return folder


def test_the_command_writes_a_policy_a_tenant_extends(
    tmp_path: Path, policy_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "decisions.sqlite"
    store = SqliteStore(db)
    fill(store, ACME + OTHER)
    store.close()
    bot = policy_folder / "bot.yaml"
    code, out, err = run(
        capsys,
        "calibrate",
        "--from-store",
        "--store",
        str(db),
        "--tenant",
        "acme",
        "--policy",
        str(bot),
        "--out",
        str(policy_folder / "calibrated" / "acme"),
    )
    assert code == 0, err
    assert "tenant 'acme': 1000 labelled decisions of model gemma-3-270m-it" in out
    assert "before: bot.acme as recorded" in out and "after: recalibrated, target 0.1" in out
    assert "extends" in out and "/v1/policies/reload" in out
    assert "warning" not in out  # the learnt confidence ranks better than the recorded one
    written = policy_folder / "calibrated" / "acme.yaml"
    assert "Written by `guardrail calibrate --from-store`" in written.read_text(encoding="utf-8")

    bot.write_text(
        "version: 1\nextends: balanced\nname: bot\n"
        "tenants:\n  acme: {extends: calibrated/acme.yaml}\n",
        encoding="utf-8",
    )
    policies = load_policies(bot)
    acme = policies.policy_for("acme")
    assert acme.name == "bot.acme" and acme.calibration is not None
    certificate = acme.decision_thresholds().certified
    assert certificate is not None and certificate.answer_feasible
    threshold = acme.decision_thresholds().answer
    assert f"answer when confidence >= {threshold:.4f}" in out
    assert policies.policy_for(None).calibration is None  # the base policy is untouched
    _, error = true_error(policy_folder / "calibrated" / "acme.calibrator.json", threshold)
    assert error <= 0.1


def test_the_command_reads_a_redis_store(
    tmp_path: Path, policy_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisStore(server.url)  # the service's default key prefix
        fill(store, ACME + OTHER)
        store.close()
        code, out, err = run(
            capsys, "calibrate", "--from-store", "--store", server.url, "--tenant", "other",
            "--policy", str(policy_folder / "bot.yaml"), "--out", str(tmp_path / "other"),
        )  # fmt: skip
    finally:
        server.stop()
    assert code == 0, err
    assert "tenant 'other': 1000 labelled decisions" in out
    assert f"in {server.url}" in (tmp_path / "other.yaml").read_text(encoding="utf-8")
    # The same labels through SQLite give the same calibration: one method, two stores.
    sqlite = SqliteStore(tmp_path / "d.sqlite")
    fill(sqlite, OTHER)
    expected = recalibrate(
        select(sqlite.labelled(), "other", None),
        target_error=0.1,
        hedge_target_error=None,
        delta=0.1,
    )
    sqlite.close()
    assert f"answer when confidence >= {expected.answer.threshold:.4f}" in out


def test_the_command_refuses_too_few_labels_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "decisions.sqlite"
    store = SqliteStore(db)
    fill(store, synthetic(60, tenant="small", seed=6))
    store.close()
    out_stem = str(tmp_path / "small")
    code, _, err = run(
        capsys, "calibrate", "--from-store", "--store", str(db), "--tenant", "small",
        "--out", out_stem,
    )  # fmt: skip
    assert code == 2
    assert "too few labels: tenant 'small' has 60 usable labelled decisions" in err
    assert "needs at least 100" in err and "Traceback" not in err
    assert not (tmp_path / "small.yaml").exists()

    code, _, err = run(
        capsys, "calibrate", "--from-store", "--store", str(tmp_path / "none.sqlite"),
        "--out", out_stem,
    )  # fmt: skip
    assert code == 2 and "no decision store at" in err
    assert not (tmp_path / "none.sqlite").exists()  # never created by reading
    code, _, err = run(capsys, "calibrate", "--out", out_stem)
    assert code == 2 and "give --dataset" in err and "--from-store" in err
    code, _, err = run(
        capsys, "calibrate", "--dataset", "squad2", "--tenant", "x", "--out", out_stem
    )
    assert code == 2 and "--tenant applies to --from-store only" in err
    code, _, err = run(
        capsys, "calibrate", "--from-store", "--store", str(db), "--tenant", "small",
        "--holdout-share", "1.5", "--out", out_stem,
    )  # fmt: skip
    assert code == 2 and "--holdout-share must be between 0 and 1" in err


def test_a_tenant_cannot_extend_a_file_with_tenants_or_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "multi.yaml").write_text(
        "version: 1\nextends: balanced\nname: multi\ntenants:\n  x: {}\n", encoding="utf-8"
    )
    bot = tmp_path / "bot.yaml"
    bot.write_text(
        "version: 1\nextends: balanced\nname: bot\ntenants:\n"
        "  a: {extends: multi.yaml}\n  b: {extends: gone/missing.yaml}\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(bot)
    text = str(caught.value)
    assert "bot.yaml:5:" in text and "which has tenants of its own" in text
    assert "bot.yaml:6:" in text and "tenant 'b' extends: no policy file" in text


# --------------------------------------------------------------------------- served


VOCAB = ("Paris", "Lyon", "unanswerable")
PARIS = Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France", score=0.7)


@pytest.fixture
def served(tmp_path: Path, policy_folder: Path) -> Iterator[tuple[str, Path]]:
    model = ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", 0.9)], parametric=[peaked(VOCAB, "Paris", 0.9)]
    )
    guard = Guardrail(
        backend=model, policy=PolicyRuntime.from_setting(str(policy_folder / "bot.yaml"))
    )
    config = settings(tmp_path, api_keys={"sk-acme": "acme"}, admin_key="admin-key")
    with serve(create_app(config, guard=guard)) as url:
        yield url, config.resolved_store_path()


def test_the_service_serves_the_recalibrated_policy_after_a_reload(
    served: tuple[str, Path], policy_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, db = served
    acme = {"Authorization": "Bearer sk-acme"}
    question = {
        "question": "What is the capital of France?",
        "passages": [{"id": PARIS.id, "text": PARIS.text}],
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post("/v1/answer", json=question, headers=acme)
        assert reply.status_code == 200, reply.text
        before = reply.json()
        assert before["policy_name"] == "bot.acme" and before["confidence_method"].startswith(
            "heuristic"
        )
        # The team's labels: the service's own store, filled with labelled decisions.
        store = SqliteStore(db)
        fill(store, ACME)
        store.close()
        code, _, err = run(
            capsys, "calibrate", "--from-store", "--store", str(db), "--tenant", "acme",
            "--policy", str(policy_folder / "bot.yaml"),
            "--out", str(policy_folder / "acme-recalibrated"),
        )  # fmt: skip
        assert code == 0, err
        (policy_folder / "bot.yaml").write_text(
            "version: 1\nextends: balanced\nname: bot\n"
            "tenants:\n  acme: {extends: acme-recalibrated.yaml}\n",
            encoding="utf-8",
        )
        reload = client.post("/v1/policies/reload", headers={"Authorization": "Bearer admin-key"})
        assert reload.status_code == 200, reload.text
        after = client.post("/v1/answer", json=question, headers=acme).json()
        assert after["policy_name"] == "bot.acme"
        assert after["confidence_method"] == "calibrated:logistic"
        assert after["policy_hash"] != before["policy_hash"]
