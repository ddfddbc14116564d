"""Operating policies: tenants and shadow mode in the pipeline, the decision log, reload
(from disk and over HTTP), and the ``guardrail policy`` commands."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fakes import ScriptedBackend, peaked
from test_service import serve, settings

from guardrail.cli import main
from guardrail.decision_log import DecisionLog, read_records
from guardrail.errors import ConfigError
from guardrail.pipeline import Guardrail
from guardrail.policy_commands import compare
from guardrail.policy_runtime import PolicyRuntime, load_policies
from policies import PolicyError, bundled_policy_path
from retrievers import Passage
from service import create_app

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable", "Berlin")
PARIS = Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France", score=0.7)
QUESTION = "What is the capital of France?"


def says_paris(p: float) -> ScriptedBackend:
    """Answers 'Paris' with probability ``p`` (the heuristic confidence is then ``p``)."""
    return ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", p)], parametric=[peaked(VOCAB, "Paris", p)]
    )


@pytest.fixture(scope="module")
def support_bot() -> PolicyRuntime:
    return PolicyRuntime.from_setting("support-bot")


# --------------------------------------------------------------------------- tenants, shadow


@pytest.mark.parametrize(
    ("tenant", "p", "action", "policy_action", "policy_name"),
    [
        (None, 0.7, "answer", "answer", "support-bot"),
        ("acme-bank", 0.7, "hedge", "hedge", "support-bot.acme-bank"),
        ("acme-bank", 0.4, "defer", "defer", "support-bot.acme-bank"),
        ("unknown-tenant", 0.7, "answer", "answer", "support-bot"),
        ("trial", 0.7, "answer", "answer", "support-bot.trial"),
        ("trial", 0.25, "answer", "escalate", "support-bot.trial"),
    ],
)
def test_tenants_and_shadow_mode_in_the_pipeline(
    support_bot: PolicyRuntime,
    tenant: str | None,
    p: float,
    action: str,
    policy_action: str,
    policy_name: str,
) -> None:
    model = says_paris(p)
    guard = Guardrail(backend=model, policy=support_bot)
    response = guard.ask(QUESTION, passages=[PARIS], tenant=tenant)
    assert (response.action, response.policy_action) == (action, policy_action)
    assert response.policy_name == policy_name
    assert response.policy_hash == support_bot.current.policy_for(tenant).content_hash
    assert response.tenant == tenant
    if tenant == "trial":
        # Shadow: the model's answer passes through unchanged, nothing is escalated.
        assert response.mode == "shadow"
        assert response.text == "Paris" and response.escalated is False
        assert [kind for _, kind in model.calls] == ["contextual", "parametric"]


def test_shadow_policy_is_recorded_next_to_the_enforced_one(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "decisions.jsonl")
    guard = Guardrail(
        backend=says_paris(0.65),
        policy=load_policies(bundled_policy_path("balanced")),
        shadow=load_policies(bundled_policy_path("strict")),
        decision_log=log,
    )
    response = guard.ask(QUESTION, passages=[PARIS])
    assert response.action == "answer"  # balanced answers at 0.55
    assert response.shadow is not None
    assert response.shadow["action"] == "hedge"  # strict hedges between 0.60 and 0.75
    assert response.shadow["policy_name"] == "strict"
    records = list(read_records(log.path))
    assert len(records) == 1 and records[0]["shadow"]["action"] == "hedge"
    summary = compare(records)
    assert summary["decisions"] == 1
    assert summary["table"] == {"answer -> hedge": 1}
    assert summary["agreement"] == 0.0


def test_decision_log_keeps_every_decision_and_compare_reads_shadow_mode(
    tmp_path: Path, support_bot: PolicyRuntime
) -> None:
    log = DecisionLog(tmp_path / "log" / "decisions.jsonl")
    for p in (0.7, 0.25, 0.25):
        guard = Guardrail(backend=says_paris(p), policy=support_bot, decision_log=log)
        guard.ask(QUESTION, passages=[PARIS], tenant="trial")
    Guardrail(backend=says_paris(0.7), policy=support_bot, decision_log=log).ask(
        QUESTION, passages=[PARIS]
    )
    records = list(read_records(log.path))
    assert len(records) == 4
    assert {r["policy_hash"] for r in records[:3]} == {
        support_bot.current.policy_for("trial").content_hash
    }
    summary = compare(records)
    assert summary["decisions"] == 3  # the enforced base decision has nothing to compare
    assert summary["table"] == {"answer -> answer": 1, "answer -> escalate": 2}
    assert summary["shadow_escalation_rate"] == pytest.approx(2 / 3)


def test_a_malformed_log_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"action": "answer"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not valid JSON"):
        list(read_records(path))


# --------------------------------------------------------------------------- reload


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    shutil.copy(bundled_policy_path("balanced"), path)
    return path


def test_reload_validates_before_replacing(policy_file: Path) -> None:
    runtime = PolicyRuntime.from_setting(str(policy_file))
    guard = Guardrail(backend=says_paris(0.5), policy=runtime)
    first = runtime.current
    assert guard.ask(QUESTION, passages=[PARIS]).action == "hedge"  # 0.30 <= 0.5 < 0.55

    good_text = policy_file.read_text(encoding="utf-8")
    policy_file.write_text(good_text.replace("answer: 0.55", "answer: 0.45x"), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"policy.yaml:\d+:\d+: thresholds.answer"):
        runtime.reload()
    assert runtime.current is first
    assert guard.ask(QUESTION, passages=[PARIS]).action == "hedge"

    policy_file.write_text(good_text.replace("answer: 0.55", "answer: 0.45"), encoding="utf-8")
    fresh = runtime.reload()
    assert fresh.policies.base.content_hash != first.policies.base.content_hash
    response = guard.ask(QUESTION, passages=[PARIS])
    assert response.action == "answer" and response.policy_hash == fresh.policies.base.content_hash


def test_policies_given_in_memory_cannot_be_reloaded() -> None:
    runtime = PolicyRuntime.from_policy(load_policies(bundled_policy_path("strict")))
    with pytest.raises(ConfigError, match="no file to reload"):
        runtime.reload()


@pytest.fixture
def admin_server(tmp_path: Path, policy_file: Path) -> Iterator[tuple[str, Path]]:
    guard = Guardrail(backend=says_paris(0.9), policy=PolicyRuntime.from_setting(str(policy_file)))
    app = create_app(settings(tmp_path, admin_key="s3cret-admin"), guard=guard)
    with serve(app) as url:
        yield url, policy_file


def test_policies_endpoint_and_admin_reload(admin_server: tuple[str, Path]) -> None:
    url, policy_file = admin_server
    with httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/v1/policies").json()
        assert [(p["tenant"], p["name"]) for p in listed["policies"]] == [(None, "balanced")]
        old_hash = listed["policies"][0]["hash"]

        missing = client.post("/v1/policies/reload")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/v1/policies/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
        admin = {"Authorization": "Bearer s3cret-admin"}

        text = policy_file.read_text(encoding="utf-8")
        policy_file.write_text(text.replace("otherwise: escalate", "otherwise: answr"))
        bad = client.post("/v1/policies/reload", headers=admin)
        assert bad.status_code == 422
        body = bad.json()
        assert body["error"]["type"] == "policy_error"
        assert re.search(r"policy.yaml:\d+:\d+: unknown action", body["error"]["problems"][0])
        assert "unknown action 'answr'" in body["error"]["message"]
        assert body["in_force"]["policies"][0]["hash"] == old_hash
        assert client.get("/v1/policies").json()["policies"][0]["hash"] == old_hash

        policy_file.write_text(text + "tenants:\n  acme: {mode: shadow}\n")
        good = client.post("/v1/policies/reload", headers=admin)
        assert good.status_code == 200 and good.json()["reloaded"] is True
        listed = client.get("/v1/policies").json()["policies"]
        assert [(p["tenant"], p["mode"]) for p in listed] == [(None, "enforce"), ("acme", "shadow")]
        assert "s3cret-admin" not in json.dumps(listed)


def test_reload_is_refused_when_no_admin_key_is_configured(tmp_path: Path) -> None:
    guard = Guardrail(backend=says_paris(0.9), policy=PolicyRuntime.from_setting("balanced"))
    with serve(create_app(settings(tmp_path), guard=guard)) as url:
        response = httpx.post(
            f"{url}/v1/policies/reload", headers={"Authorization": "Bearer x"}, timeout=30
        )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "admin_disabled"
    assert "GUARDRAIL_ADMIN_KEY" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- the CLI


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_check_prints_the_merged_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "check", "support-bot", "--tenant", "acme-premium")
    assert code == 0, err
    merged = yaml.safe_load(out)
    assert merged["name"] == "support-bot.acme-premium"
    assert (
        merged["thresholds"]["answer"] == 0.75 and merged["thresholds"]["otherwise"] == "escalate"
    )
    expected = load_policies(bundled_policy_path("support-bot")).tenants["acme-premium"]
    assert f"content hash {expected.content_hash}" in out
    assert "tenants: acme-bank" in out


def test_policy_check_reports_every_problem_with_its_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nname: p\nthresholds: {answer: 0.5, hedge: 0.7, otherwise: defer}\n"
        "rules:\n  - name: r\n    when: {flag: no_pasages}\n    action: defer\n"
    )
    code, out, err = run(capsys, "policy", "check", str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    # The form linters print, with no prefix, so that editors jump to each problem.
    assert lines[0].startswith(f"{path}:3:34: the hedge threshold")
    assert lines[1].startswith(f"{path}:6:18: unknown flag 'no_pasages' (did you mean 'no_")


def test_policy_explain_reports_a_broken_policy_where_it_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nname: p\nthresholds: {answer: 0.5, hedge: 0.2, otherwise: nah}\n")
    code, out, err = run(capsys, "policy", "explain", str(path), "--signals", "{}")
    assert (code, out) == (2, "")
    [line] = err.strip().splitlines()
    assert line.startswith(f"{path}:3:50: unknown action 'nah' for thresholds.otherwise")


def test_policy_check_unknown_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "check", "support-bot", "--tenant", "acme-bnk")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("guardrail: error: ")
    assert "no tenant 'acme-bnk' (did you mean 'acme-bank'?)" in line


def test_policy_explain_shows_each_rule(capsys: pytest.CaptureFixture[str]) -> None:
    signals = json.dumps({"confidence": 0.5, "signals": {"retrieval_top_score": 0.2}, "flags": []})
    code, out, err = run(capsys, "policy", "explain", "balanced", "--signals", signals)
    assert code == 0, err
    assert "no    rule model-abstained: flag model_abstained is not set" in out
    assert "MATCH rule weak-retrieval: retrieval_top_score 0.2 < 0.35" in out
    assert "Decision: defer (rule weak-retrieval)" in out
    assert "knowledge-conflict" not in out  # first match wins: later rules are not checked


def test_policy_explain_replays_a_logged_decision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    guard = Guardrail(
        backend=says_paris(0.4),
        policy=load_policies(bundled_policy_path("balanced")),
        decision_log=log,
    )
    recorded = guard.ask(QUESTION, passages=[PARIS])
    line = (tmp_path / "d.jsonl").read_text().splitlines()[0]
    (tmp_path / "record.json").write_text(line)
    code, out, err = run(
        capsys,
        "policy",
        "explain",
        "balanced",
        "--signals",
        f"@{tmp_path / 'record.json'}",
        "--json",
    )
    assert code == 0, err
    explained = json.loads(out)
    assert explained["decision"]["action"] == recorded.policy_action == "hedge"
    assert explained["policy_hash"] == recorded.policy_hash
    code, out, _ = run(capsys, "policy", "explain", "strict", "--signals", line)
    assert "Note: the record was decided under policy hash" in out
    assert "Decision: defer" in out


@pytest.mark.parametrize(
    ("signals", "fragment"),
    [
        ("{not json", "--signals is not valid JSON"),
        ("[1, 2]", "--signals must be a JSON object"),
        ('{"signals": {"cg_mena": 1}}', "unknown signals: cg_mena (did you mean 'cg_mean'?)"),
        ('{"signals": {"cg_mean": "high"}}', "signal cg_mean must be a number or null"),
        ('{"confidence": 2}', "confidence must be in [0, 1]"),
        ('{"flags": ["knowledge_conflit"]}', "unknown flags: knowledge_conflit"),
    ],
)
def test_policy_explain_bad_input(
    capsys: pytest.CaptureFixture[str], signals: str, fragment: str
) -> None:
    code, out, err = run(capsys, "policy", "explain", "balanced", "--signals", signals)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_policy_schema_is_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run(capsys, "policy", "schema", "--out", str(tmp_path / "schema.json"))
    assert code == 0
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert "cg_mean" in schema["$defs"]["SignalCondition"]["properties"]["signal"]["enum"]
    code, out, _ = run(capsys, "policy", "schema")
    assert json.loads(out) == schema


def test_policy_compare_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    runtime = PolicyRuntime.from_setting("support-bot")
    for p in (0.7, 0.25):
        Guardrail(backend=says_paris(p), policy=runtime, decision_log=log).ask(
            QUESTION, passages=[PARIS], tenant="trial"
        )
    code, out, err = run(capsys, "policy", "compare", str(log.path))
    assert code == 0, err
    assert "2 decisions with a shadow decision" in out
    assert "answer -> escalate: 1" in out
    assert "support-bot.trial (shadow mode): 2" in out


def test_explain_replays_an_escalated_decision_as_agreeing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    guard = Guardrail(
        backend=says_paris(0.25),  # below the hedge threshold: escalate, nothing configured
        policy=load_policies(bundled_policy_path("balanced")),
        decision_log=log,
    )
    recorded = guard.ask(QUESTION, passages=[PARIS])
    assert recorded.rule == "escalation:exhausted" and recorded.action == "defer"
    line = (tmp_path / "d.jsonl").read_text().splitlines()[0]
    code, out, _ = run(capsys, "policy", "explain", "balanced", "--signals", line)
    assert code == 0
    assert "Decision: escalate" in out
    assert "the replay agrees" in out
    record = {**json.loads(line), "tenant": "someone"}
    code, out, _ = run(capsys, "policy", "explain", "balanced", "--signals", json.dumps(record))
    assert code == 0 and "has no overrides in this file: the base policy" in out
