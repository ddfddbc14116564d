"""The evaluation caches the answers of escalation targets like its own records: a rerun
replays the chain without running the larger model."""

from __future__ import annotations

from pathlib import Path

from fakes import ScriptedBackend, peaked, uniform

from guardrail.evaluation.commands import policy_actions
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import EvalRunner, RecordCache
from guardrail.pipeline import Guardrail, load_policy_setting
from retrievers import Passage

VOCAB = ("Paris", "Madrid", "unanswerable")
ROME = Passage("rome", "Rome is the capital of Italy.", "atlas.txt", score=0.6)
MADRID = Passage("madrid", "Madrid is the capital of Spain.", "atlas.txt", score=0.5)
ITEM = EvalItem(
    id="q1",
    question="What is the capital of Spain?",
    answers=("Madrid",),
    unanswerable=False,
    passages=(ROME, MADRID),
)


def flat() -> ScriptedBackend:
    """No idea at all: the balanced policy escalates its answer ("Paris")."""
    return ScriptedBackend(VOCAB, contextual=[uniform(VOCAB)], parametric=[uniform(VOCAB)])


def run(folder: Path, larger: object) -> tuple[list[str], str]:
    policy = load_policy_setting("balanced")
    guard = Guardrail(backend=flat(), policy=policy, escalation={"larger": larger})  # type: ignore[dict-item]
    runner = EvalRunner(guard, RecordCache(folder), progress=False)
    records = runner.run([ITEM])
    actions, scored = policy_actions(runner, [ITEM], records, policy)
    return actions, scored[0].answer


def test_escalation_answers_are_cached_and_replayed(tmp_path: Path) -> None:
    built: list[ScriptedBackend] = []

    def larger() -> ScriptedBackend:
        confident = [peaked(VOCAB, "Madrid", 0.95)]
        built.append(ScriptedBackend(VOCAB, contextual=confident, parametric=confident, name="big"))
        return built[-1]

    actions, answer = run(tmp_path, larger)
    assert actions == ["answer"] and answer == "Madrid"  # scored on what the target returned
    assert len(built) == 1 and built[0].calls[0] == ("generate", "contextual")
    assert len((tmp_path / "escalations.jsonl").read_text().splitlines()) == 1

    # A second run: the record and the target's answer both come from the cache; the target
    # is built (a cheap constructor) but never asked to generate anything.
    actions, answer = run(tmp_path, larger)
    assert actions == ["answer"] and answer == "Madrid"
    assert len(built) == 2 and built[1].calls == []
    assert len((tmp_path / "escalations.jsonl").read_text().splitlines()) == 1


def test_a_different_target_model_is_not_served_from_the_cache(tmp_path: Path) -> None:
    def named(name: str) -> ScriptedBackend:
        confident = [peaked(VOCAB, "Madrid", 0.95)]
        return ScriptedBackend(VOCAB, contextual=confident, parametric=confident, name=name)

    run(tmp_path, lambda: named("big"))
    other = named("bigger")
    actions, _ = run(tmp_path, lambda: other)
    assert other.calls and other.calls[0] == ("generate", "contextual")
    assert len((tmp_path / "escalations.jsonl").read_text().splitlines()) == 2
    assert actions == ["answer"]
