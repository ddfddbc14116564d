"""The dashboard's drift mark and its labels panel: the rules on their own, the numbers the
data route serves from a real store, and the page in a real headless Chromium.

The store holds a day of synthetic decisions of two tenants: ``steady`` refuses 20% all
day; ``shifted`` refused 20% until the last hour and 70% in it, with its confidence falling
from 0.8 to 0.3. Labels: 60 answers of the calibrated ``squad2-gold`` policy (target 10%),
12 of them wrong; 30 of ``steady``'s decisions (24 answers, 1 wrong; fixed thresholds: no
target).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedBackend, peaked
from test_dashboard import ADMIN, chromium, data
from test_service import serve, settings

from guardrail.pipeline import Guardrail
from guardrail.policy_runtime import PolicyRuntime
from guardrail.risk import binomial_interval
from service import ServiceSettings, create_app
from service.dashboard import drift_marks, label_status
from service.settings import DriftSettings
from service.store import Feedback, SqliteStore
from service.store.base import DecisionStore

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ("Paris", "Lyon", "unanswerable")
CALIBRATED = ROOT / "policies" / "calibrated" / "squad2-gold.yaml"
ARTIFACTS = ROOT / "artifacts"


# --------------------------------------------------------------------------- the rules


def rates(total: int, refusal: float, confidence: float = 0.8) -> dict[str, Any]:
    return {
        "total": total,
        "refusal_rate": refusal,
        "hedge_rate": 0.1,
        "escalation_rate": 0.0,
        "confidence_mean": confidence,
    }


def test_a_moved_share_or_a_fallen_confidence_is_a_drift() -> None:
    rules = DriftSettings()
    assert drift_marks(rates(40, 0.2), rates(200, 0.2), rules) == []
    (mark,) = drift_marks(rates(40, 0.5), rates(200, 0.3), rules)
    assert mark["measure"] == "refusal_rate" and mark["change"] == pytest.approx(0.2)
    # Either way for a share; a fall only for the confidence.
    assert [m["measure"] for m in drift_marks(rates(40, 0.1), rates(200, 0.3), rules)] == [
        "refusal_rate"
    ]
    assert drift_marks(rates(40, 0.2, 0.95), rates(200, 0.2, 0.7), rules) == []
    marks = drift_marks(rates(40, 0.2, 0.5), rates(200, 0.2, 0.7), rules)
    assert [m["measure"] for m in marks] == ["confidence_mean"]
    # At the threshold nothing; too few recent decisions, nothing at all.
    assert drift_marks(rates(40, 0.35), rates(200, 0.2), rules) == []
    assert drift_marks(rates(29, 0.9, 0.1), rates(200, 0.2), rules) == []
    looser = DriftSettings(share_change=0.3, min_decisions=10)
    assert drift_marks(rates(40, 0.45), rates(200, 0.2), looser) == []
    assert len(drift_marks(rates(10, 0.55), rates(200, 0.2), looser)) == 1


def test_drift_settings_come_from_the_environment_and_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDRAIL_DRIFT", '{"share_change": 0.2, "recent_hours": 2}')
    drift = ServiceSettings().drift
    assert (drift.share_change, drift.recent_hours, drift.reference_hours) == (0.2, 2.0, 24.0)
    with pytest.raises(ValueError, match=r"reference_hours .* must be longer than recent_hours"):
        DriftSettings(recent_hours=24, reference_hours=24)


def test_the_measured_error_is_judged_by_its_exact_interval() -> None:
    lower, upper = binomial_interval(12, 60)
    # scipy.stats.beta.ppf(0.025, 12, 49), beta.ppf(0.975, 13, 48)
    assert lower == pytest.approx(0.1078, abs=1e-4) and upper == pytest.approx(0.3233, abs=1e-4)
    assert binomial_interval(0, 20)[1] == pytest.approx(1 - 0.025 ** (1 / 20))
    assert binomial_interval(0, 0) == (0.0, 1.0)
    assert label_status(12, 60, 0.1) == "above_target"  # even the lower end is above
    assert label_status(0, 60, 0.1) == "within_target"  # upper end 0.060
    assert label_status(3, 60, 0.1) == "inconclusive"  # 5%, but up to 13.9%
    assert label_status(1, 30, None) == "no_target"
    assert label_status(0, 0, 0.1) == "no_labels"


# --------------------------------------------------------------------------- served


def day_of_decisions(store: DecisionStore, now: float) -> None:
    """The two tenants' day (see the module docstring) and the labels."""
    n = 0

    def add(tenant: str | None, policy: str, hours_ago: float, action: str, c: float) -> str:
        nonlocal n
        n += 1
        decision_id = f"dec_{n}"
        store.record(
            {
                "id": decision_id,
                "recorded_at": now - hours_ago * 3600,
                "tenant": tenant,
                "policy_name": policy,
                "action": action,
                "policy_action": action,
                "confidence": c,
                "question": f"question {n}?",
                "rule": "thresholds",
                "reasons": [],
            }
        )
        return decision_id

    for tenant in ("steady", "shifted"):
        policy = f"support-bot.{tenant}"
        for i in range(160):  # 23 hours before the last one: 20% refused
            add(tenant, policy, 1.5 + 22 * i / 160, "defer" if i % 5 == 0 else "answer", 0.8)
        for i in range(40):  # the last hour
            refuse = i % 10 < 7 if tenant == "shifted" else i % 5 == 0
            c = 0.3 if tenant == "shifted" else 0.8
            decision_id = add(tenant, policy, 0.9 * i / 40, "defer" if refuse else "answer", c)
            if tenant == "steady" and i < 30:
                store.add_feedback(Feedback(decision_id, i != 1))  # 1 answer of 24 wrong
    for i in range(60):
        decision_id = add(None, "squad2-gold", 3 + i / 10, "answer", 0.9)
        store.add_feedback(Feedback(decision_id, i % 5 != 0))  # 12 of 60 wrong


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("drift")
    config = settings(folder, admin_key=ADMIN)
    store = SqliteStore(config.resolved_store_path())
    day_of_decisions(store, time.time())
    store.close()
    model = ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", 0.7)], parametric=[peaked(VOCAB, "Paris", 0.7)]
    )
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting(str(CALIBRATED)))
    with serve(create_app(config, guard=guard)) as url:
        yield url


def test_the_data_marks_the_shifted_tenant_only(server: str) -> None:
    numbers = data(server)
    assert numbers["drift"]["recent_hours"] == 1 and numbers["drift"]["share_change"] == 0.15
    series = {s["tenant"]: s["drift"] for s in numbers["series"]}
    assert series["steady"]["marks"] == []
    shifted = {m["measure"]: m for m in series["shifted"]["marks"]}
    assert set(shifted) == {"refusal_rate", "confidence_mean"}
    assert shifted["refusal_rate"]["recent"] == pytest.approx(0.7)
    assert shifted["refusal_rate"]["reference"] == pytest.approx(0.3)  # (32 + 28) / 200
    assert shifted["confidence_mean"]["recent"] == pytest.approx(0.35)  # the 0.3-0.4 bin
    assert series["shifted"]["recent"]["total"] == 40


def test_the_data_counts_labels_and_the_error_against_the_target(server: str) -> None:
    rows = {(r["tenant"], r["policy"]): r for r in data(server)["labels"]["rows"]}
    gold = rows[(None, "squad2-gold")]
    assert (gold["decisions"], gold["labelled"], gold["labelled_answers"]) == (60, 60, 60)
    assert gold["wrong"] == 12 and gold["error"] == pytest.approx(0.2)
    assert gold["target"] == 0.1 and gold["status"] == "above_target"
    steady = rows[("steady", "support-bot.steady")]
    assert (steady["decisions"], steady["labelled"], steady["labelled_answers"]) == (200, 30, 24)
    assert steady["wrong"] == 1
    assert steady["target"] is None and steady["status"] == "no_target"
    shifted = rows[("shifted", "support-bot.shifted")]
    assert shifted["labelled"] == 0 and shifted["status"] == "no_labels"


def test_the_page_marks_the_drift_in_headless_chromium(server: str, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", f"{server}/dashboard#key={ADMIN}", profile=tmp_path / "p")
    assert 'data-loaded="true"' in dom, dom[-3000:]
    banner = re.search(r'<div id="drift"([^>]*)>(.*?)</div>', dom, re.S)
    assert banner is not None and "hidden" not in banner.group(1)
    items = [html.unescape(i) for i in re.findall(r"<li>([^<]*)</li>", banner.group(2))]
    assert items == [
        "shifted / support-bot.shifted: refusal 70.0% (reference 30.0%); "
        "mean confidence 0.35 (reference 0.75)"
    ]
    assert "in the last 1 h against the last 24 h" in banner.group(2)
    rows = dict(
        re.findall(r'<tr data-tenant="(\w*)" data-policy="[^"]*" data-drift="([^"]*)"', dom)
    )
    assert rows == {"": "", "steady": "", "shifted": "refusal_rate,confidence_mean"}
    assert re.search(r'<tr data-tenant="shifted"[^>]*class="drifting"', dom)
    assert dom.count('class="drifting"') == 2  # the row and its chart
    assert "\u26a0 drift" in dom
    # The labels panel: counts, the measured error with its interval, the verdict.
    gold = re.search(r'<tr data-tenant="" data-status="above_target">(.*?)</tr>', dom, re.S)
    assert gold is not None
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", gold.group(1))]
    assert cells == [
        "(none)",
        "squad2-gold",
        "60",
        "60",
        "60",
        "12",
        "20.0% (10.8% to 32.3%)",
        "10.0%",
        "above target",
    ]
    assert 'data-tenant="steady" data-status="no_target"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-drift.png"
    shot.unlink(missing_ok=True)
    page = f"{server}/dashboard#key={ADMIN}"
    chromium(f"--screenshot={shot}", "--window-size=1280,1500", page, profile=tmp_path / "p2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_drift_the_banner_stays_hidden(tmp_path: Path) -> None:
    config = settings(tmp_path, admin_key=ADMIN)
    store = SqliteStore(config.resolved_store_path())
    now = time.time()
    for i in range(300):  # every 2 minutes for 10 hours, a quarter refused throughout
        store.record(
            {
                "id": f"dec_{i}",
                "recorded_at": now - 60 - i * 120,
                "tenant": "calm",
                "policy_name": "balanced.calm",
                "action": "defer" if i % 4 == 0 else "answer",
                "confidence": 0.7,
                "question": f"q {i}?",
                "rule": "thresholds",
                "reasons": [],
            }
        )
    store.close()
    model = ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", 0.7)], parametric=[peaked(VOCAB, "Paris", 0.7)]
    )
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting("balanced"))
    with serve(create_app(config, guard=guard)) as url:
        dom = chromium("--dump-dom", f"{url}/dashboard#key={ADMIN}", profile=tmp_path / "p")
    assert 'data-loaded="true"' in dom
    assert re.search(r'<div id="drift"[^>]*hidden', dom)
    assert 'class="drifting"' not in dom
