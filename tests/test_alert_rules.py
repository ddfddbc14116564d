"""The Prometheus rules in deploy/prometheus/rules.yml: valid (``promtool check rules``), firing
on a synthetic drift and quiet without one (``promtool test rules`` with
tests/fixtures/prometheus/rules_test.yml), and naming only metrics and labels the service
exports. scripts/setup.sh installs promtool (Debian's ``prometheus`` package)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "tests" / "fixtures" / "prometheus" / "rules_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh (Debian's prometheus package)")
    return found


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS: 14 rules found" in run("check", "rules", str(RULES), cwd=ROOT)


def test_the_drift_alerts_fire_on_a_shift_and_stay_quiet_without_one() -> None:
    assert "SUCCESS" in run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_a_broken_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The rule tests can fail: expecting the steady tenant to fire too is refused."""
    broken = RULE_TESTS.read_text().replace("tenant: shifted", "tenant: steady", 1)
    broken = broken.replace("../../../deploy/prometheus/rules.yml", str(RULES))
    (tmp_path / "broken_test.yml").write_text(broken)
    done = subprocess.run(
        [promtool(), "test", "rules", "broken_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exports, with its label names, read from /metrics' own
    registry after one escalated decision was counted (so that labelled series exist)."""
    metrics = Metrics()
    metrics.observe(
        "answer",
        {
            "tenant": "t",
            "policy_name": "p",
            "action": "defer",
            "confidence": 0.4,
            "timings": {"total": 1.0},
            "escalated": True,
        },
    )
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_the_rules_name_only_exported_metrics_and_labels() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    exported = exported_series()
    for rule in rules:
        expr = rule["expr"]
        names = set(re.findall(r"\b(guardrail[:_][a-z0-9_:]+)", expr))
        assert names <= recorded | set(exported), (names - recorded - set(exported), expr)
        raw = [exported[name] for name in names if name in exported]
        # Every label a raw series is grouped or selected by is one that series carries.
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in group.split(",")):
                assert all(label in labels for labels in raw), (label, expr)
        for label in re.findall(r"\{([a-z_]+)=", expr):
            assert all(label in labels for labels in raw), (label, expr)
    alerts = [r for r in rules if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "GuardrailRefusalRateDrift",
        "GuardrailHedgeRateDrift",
        "GuardrailEscalationRateDrift",
        "GuardrailConfidenceDrop",
    }
    assert all(a["for"] == "30m" and a["labels"]["severity"] == "warning" for a in alerts)
