"""The evaluation's cache: the answers of escalation targets are cached like its own records
(a rerun replays the chain without running the larger model), and a record serves runs with
and without the optional abstention probe as far as it can."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import ScriptedBackend, peaked, uniform

from guardrail.config import GuardrailConfig
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.replay import policy_actions
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
    actions, scored = policy_actions(runner, [ITEM], records, guard.judge())
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


def probe_run(folder: Path, probe: bool | None) -> tuple[dict[str, float | None], dict[str, float]]:
    guard = Guardrail(
        backend=flat(),
        policy=load_policy_setting("balanced"),
        config=GuardrailConfig(abstain_probe=probe),
    )
    (record,) = EvalRunner(guard, RecordCache(folder), progress=False).run([ITEM])
    return record.signals, record.timings


def lines(folder: Path) -> int:
    return len((folder / "records.jsonl").read_text().splitlines())


def test_a_record_made_with_the_probe_serves_a_run_without_it(tmp_path: Path) -> None:
    signals, timings = probe_run(tmp_path, True)
    assert signals["abstain_logprob"] is not None and "abstain_probe" in timings
    signals, timings = probe_run(tmp_path, None)  # the balanced policy does not need it
    assert signals["abstain_logprob"] is None and "abstain_probe" not in timings
    assert lines(tmp_path) == 1  # from the cache


def test_a_record_made_without_the_probe_is_measured_again_for_a_run_with_it(
    tmp_path: Path,
) -> None:
    signals, _ = probe_run(tmp_path, False)
    assert signals["abstain_logprob"] is None
    signals, timings = probe_run(tmp_path, True)
    assert signals["abstain_logprob"] is not None and "abstain_probe" in timings
    assert lines(tmp_path) == 2


def test_a_cached_target_answer_gets_its_text_signals_and_flags_recomputed(
    tmp_path: Path,
) -> None:
    def big() -> ScriptedBackend:
        confident = [peaked(VOCAB, "Madrid", 0.95)]
        return ScriptedBackend(VOCAB, contextual=confident, parametric=confident, name="big")

    run(tmp_path, big)
    path = tmp_path / "escalations.jsonl"
    stored = json.loads(path.read_text())
    # As if cached before a text signal existed, or with flags from older rules.
    stored["signals"]["answer_in_passages"] = None
    stored["flags"] = {"knowledge_conflict": "stale"}
    path.write_text(json.dumps(stored) + "\n")
    guard = Guardrail(backend=flat(), policy=load_policy_setting("balanced"))
    runner = EvalRunner(guard, RecordCache(tmp_path), progress=False)
    target = big()
    assessed = runner.assess_target(target, ITEM.question, list(ITEM.passages or ()), guard.judge())
    assert target.calls == []  # served from the cache
    assert assessed.answer == "Madrid"
    assert assessed.signals["answer_in_passages"] == 1.0
    assert "knowledge_conflict" not in assessed.flags


def test_budgets_see_every_decision_at_the_pace_the_records_were_measured(
    tmp_path: Path,
) -> None:
    # At most half of the decisions may escalate: with every question escalating, the chain
    # is allowed for the 1st and 3rd (escalations + 1 <= ceil(0.5 x decisions)) and refused
    # for the 2nd and 4th, in the first run and, identically, in a cached rerun.
    file = tmp_path / "half.yaml"
    file.write_text(
        "version: 1\nname: half\nextends: balanced\nactions:\n  escalate:\n"
        "    targets: [{name: larger}]\n    budget: {max_share: 0.5}\n    on_failure: defer\n"
    )
    policy = load_policy_setting(str(file))
    items = [
        EvalItem(
            id=f"q{i}",
            question=f"What is the capital of Spain, question {i}?",
            answers=("Madrid",),
            unanswerable=False,
            passages=(ROME, MADRID),
        )
        for i in range(4)
    ]

    def big() -> ScriptedBackend:
        confident = [peaked(VOCAB, "Madrid", 0.95)]
        return ScriptedBackend(VOCAB, contextual=confident, parametric=confident, name="big")

    for _ in range(2):
        guard = Guardrail(backend=flat(), policy=policy, escalation={"larger": big})
        runner = EvalRunner(guard, RecordCache(tmp_path / "cache"), progress=False)
        records = runner.run(items)
        actions, scored = policy_actions(runner, items, records, guard.judge())
        assert actions == ["answer", "defer", "answer", "defer"]
        assert [r.answer for r in scored] == ["Madrid", "Paris", "Madrid", "Paris"]
