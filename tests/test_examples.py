"""The LangChain example bots run offline, as a user would run them (CI runs them too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def answers(output: str) -> dict[str, str]:
    """Question -> the answer's first line, from the bots' "Q: ... / A: ..." output."""
    pairs: dict[str, str] = {}
    question = None
    for line in output.splitlines():
        if line.startswith("Q: "):
            question = line[3:]
        elif line.startswith("A: ") and question is not None:
            pairs[question] = line[3:]
    return pairs


@pytest.mark.slow
def test_the_plain_and_the_guarded_bot_side_by_side() -> None:
    plain = answers(run("plain_rag_bot.py"))
    guarded_output = run("guarded_rag_bot.py")
    guarded = answers(guarded_output)
    assert set(plain) == set(guarded) and len(plain) == 3
    world_cup = "Who won the 2022 FIFA World Cup?"
    # The plain bot guesses; the guarded one says it does not know.
    assert plain[world_cup] and not plain[world_cup].startswith("I don't know")
    assert guarded[world_cup].startswith("I don't know")
    assert "1973" in guarded["When did the 1973 oil crisis begin?"]
    assert "decision: defer" in guarded_output
