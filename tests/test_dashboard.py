"""The dashboard in a real headless Chromium (Debian's package): the page loads its numbers
from the store over HTTP and shows them; a screenshot is saved to ``artifacts/``."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedBackend, peaked
from test_service import serve, settings

from guardrail.pipeline import Guardrail
from guardrail.policy_runtime import PolicyRuntime
from service import create_app

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable", "Berlin")
ADMIN = "sk-admin-dash"
KEYS = {"sk-acme": "acme-bank", "sk-base": ""}
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSAGE = [{"text": "Paris is the capital of France.", "title": "France"}]
EVIL = '<img src=x onerror="document.body.dataset.pwned=1">What is the capital of France?'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", 0.7)], parametric=[peaked(VOCAB, "Paris", 0.7)]
    )
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting("support-bot"))
    config = settings(tmp_path_factory.mktemp("dash"), api_keys=KEYS, admin_key=ADMIN)
    with serve(create_app(config, guard=guard)) as url:
        ask = [
            ("sk-base", "What is the capital of France?", PASSAGE),  # answer
            ("sk-base", "Which city is France's capital?", PASSAGE),  # answer
            ("sk-acme", "Capital of France?", PASSAGE),  # hedge (acme-bank needs 0.75)
            ("sk-acme", "Where is the Eiffel Tower?", []),  # defer: no passages
            ("sk-base", EVIL, PASSAGE),  # answer; the question is shown as text
        ]
        for key, question, passages in ask:
            response = httpx.post(
                f"{url}/v1/answer",
                json={"question": question, "passages": passages},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
        yield url


def chromium(*args: str, profile: Path) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (Debian's chromium package)")
    result = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def data(url: str) -> dict[str, Any]:
    response = httpx.get(
        f"{url}/v1/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_data_matches_the_store(server: str) -> None:
    numbers = data(server)
    assert numbers["totals"]["total"] == 5
    assert (numbers["totals"]["answer"], numbers["totals"]["hedge"]) == (3, 1)
    assert numbers["totals"]["defer"] == 1
    assert numbers["totals"]["refusal_rate"] == pytest.approx(0.2)
    by_tenant = {s["tenant"]: s["totals"] for s in numbers["series"]}
    assert by_tenant["acme-bank"]["refusal_rate"] == pytest.approx(0.5)
    assert by_tenant[None]["total"] == 3
    assert sum(sum(h["bins"]) for h in numbers["confidence"]["histograms"]) == 5
    assert [d["question"] for d in numbers["latest"]][-1] == "What is the capital of France?"


def test_the_data_needs_the_admin_key(server: str) -> None:
    assert httpx.get(f"{server}/v1/dashboard/data").status_code == 401
    tenant = httpx.get(f"{server}/v1/dashboard/data", headers={"Authorization": "Bearer sk-acme"})
    assert tenant.status_code == 403


def test_the_page_in_headless_chromium(server: str, tmp_path: Path) -> None:
    numbers = data(server)
    page = f"{server}/dashboard#key={ADMIN}"
    dom = chromium("--dump-dom", page, profile=tmp_path / "profile")
    assert 'data-loaded="true"' in dom, dom[-3000:]

    def element(element_id: str) -> str:
        found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
        assert found, element_id
        return html.unescape(found.group(1))

    assert element("total-decisions") == str(numbers["totals"]["total"])
    assert element("refusal-rate") == "20.0%"
    assert element("hedge-rate") == "20.0%"
    assert element("store") == "sqlite"
    # One row per tenant and policy, and the latest decisions with their questions.
    assert dom.count('data-policy="support-bot') == len(numbers["series"]) == 2
    assert dom.count("<tr data-id=") == 5
    assert "Where is the Eiffel Tower?" in dom
    assert "no-passages: " in dom  # the rule and its reasons
    # Two charts per series kind; bars carry the counts the store holds.
    assert dom.count('class="histogram"') == len(numbers["confidence"]["histograms"])
    bars = [int(n) for n in re.findall(r'data-count="(\d+)"', dom)]
    assert sum(bars) == 5
    # A question is data: shown as text, never run as markup.
    assert "&lt;img src=x" in dom
    assert "data-pwned" not in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1280,1700", page, profile=tmp_path / "profile2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


def test_without_the_key_the_page_asks_for_it(server: str, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", f"{server}/dashboard", profile=tmp_path / "profile")
    assert 'id="login" hidden' not in dom
    assert "needs the admin key" in dom
    assert 'data-loaded="true"' not in dom
