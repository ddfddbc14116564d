"""The pipeline with a scripted backend and the bundled default policy.

The default policy answers at confidence >= 0.55, hedges at >= 0.30 and escalates below; its
rules defer on an abstention or on no passages and hedge on a knowledge conflict. The
heuristic confidence is the geometric-mean answer-token probability, halved when the answer
is not in a passage, so each scenario below sets its confidence through the script.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from fakes import ScriptedBackend, peaked, uniform

from guardrail.config import GuardrailConfig
from guardrail.errors import ModelUnavailableError, QuestionError
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.types import Citation, Response
from policies import Policy
from retrievers import HashingEmbedder, Passage, PassageIndex

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable", "Berlin", "Oslo", "Nice", "Madrid")

ROME = Passage("rome", "Rome is the capital of Italy.", "atlas.txt", title="Italy", score=0.6)
PARIS = Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France", score=0.7)
LYON = Passage("lyon", "The capital of France is Lyon.", "forged.txt", title="Forged", score=0.8)
STAGES = {"retrieve", "generate", "score", "signals", "total"}
"""The timed steps of one answer, as ``Response.timings`` names them."""
MADRID = Passage("madrid", "Madrid is the capital of Spain.", "atlas.txt", title="Spain", score=0.5)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_setting("balanced")


def backend(
    contextual: Sequence[Sequence[float]],
    parametric: Sequence[Sequence[float]] | None = None,
    *,
    name: str = "scripted",
) -> ScriptedBackend:
    return ScriptedBackend(
        VOCAB,
        contextual=contextual,
        parametric=parametric if parametric is not None else contextual,
        name=name,
    )


def confident(token: str, p: float = 0.95) -> ScriptedBackend:
    """A model that says ``token`` with probability ``p`` with and without passages."""
    return backend([peaked(VOCAB, token, p)], name=f"confident-{token}")


def flat(name: str = "flat") -> ScriptedBackend:
    """A model with no idea: every token equally likely; greedy picks 'Paris'."""
    return backend([uniform(VOCAB)], name=name)


# ---------------------------------------------------------------- the four outcomes


def test_confident_supported_answer_is_answered_with_its_citation(policy: Policy) -> None:
    model = confident("Paris")
    response = Guardrail(backend=model, policy=policy).ask(
        "What is the capital of France?", passages=[ROME, PARIS]
    )
    assert response.action == "answer"
    assert response.rule == "threshold:answer"
    assert response.answer == "Paris"
    assert response.confidence == pytest.approx(0.95, rel=1e-5)
    assert response.citations == (Citation("paris", "atlas.txt", "France", 0.7),)
    assert response.text == "Paris\n\nSources: [1] France (paris)"
    assert response.flags == ()
    assert response.escalated is False
    assert response.parametric_answer is None
    assert response.model == "confident-Paris"
    assert response.policy_name == "balanced"
    assert response.signals["answer_in_passages"] == 1.0
    assert set(response.timings) == STAGES
    # No conflict: the closed-book answer is never generated.
    assert model.calls == [("generate", "contextual"), ("score", "parametric")]


def test_flat_unsupported_answer_is_not_answered(policy: Policy) -> None:
    response = Guardrail(backend=flat(), policy=policy).ask(
        "What is the capital of Italy?", passages=[ROME]
    )
    assert response.answer == "Paris"
    assert response.confidence == pytest.approx(0.5 / len(VOCAB), rel=1e-5)
    assert response.action == "defer"
    # Below the hedge threshold the policy escalates; with no target configured it defers.
    assert response.rule == "escalation:exhausted"
    assert any("'larger' is not configured" in r for r in response.reasons)
    assert response.text.startswith("I don't know")
    assert "Italy" in response.text  # the closest document is named
    assert response.escalated is False


def test_moderate_confidence_is_hedged_with_a_caveat(policy: Policy) -> None:
    model = confident("Paris", 0.8)
    response = Guardrail(backend=model, policy=policy).ask("Capital?", passages=[ROME])
    # 0.8, halved because "Paris" is in no passage.
    assert response.confidence == pytest.approx(0.4, rel=1e-5)
    assert response.action == "hedge"
    assert response.rule == "threshold:hedge"
    assert response.text.startswith("Paris\n\n(Caveat: ")
    assert "0.4" in response.text
    # No passage holds the answer: the best passage is cited.
    assert [c.id for c in response.citations] == ["rome"]
    assert response.parametric_answer is None


def test_model_abstention_defers(policy: Policy) -> None:
    model = confident("unanswerable", 0.9)
    response = Guardrail(backend=model, policy=policy).ask(
        "How many bridges cross the Tiber?", passages=[ROME]
    )
    assert response.action == "defer"
    assert response.rule == "model-abstained"
    assert response.answer == "unanswerable"
    assert response.flags == ("model_abstained",)
    assert response.confidence == 0.0
    assert response.text.startswith("I don't know")


def test_empty_answer_is_an_abstention(policy: Policy) -> None:
    model = backend([], [peaked(VOCAB, "Paris", 0.9)])
    response = Guardrail(backend=model, policy=policy).ask("Anything?", passages=[ROME])
    assert response.answer == ""
    assert response.rule == "model-abstained"
    assert response.action == "defer"
    # Nothing to score without answer tokens.
    assert model.calls == [("generate", "contextual")]
    assert response.signals["mean_logprob"] is None


def test_knowledge_conflict_is_hedged_naming_both_answers(policy: Policy) -> None:
    # The passage says Lyon and the model copies it confidently; without the passage the
    # model is just as sure of Paris.
    model = backend([peaked(VOCAB, "Lyon", 0.9)], [peaked(VOCAB, "Paris", 0.9)])
    response = Guardrail(backend=model, policy=policy).ask(
        "What is the capital of France?", passages=[LYON]
    )
    assert response.answer == "Lyon"
    assert response.flags == ("knowledge_conflict",)
    assert "parametric agreement 0.00" in response.flag_details["knowledge_conflict"]
    assert response.action == "hedge"
    assert response.rule == "knowledge-conflict"
    assert response.parametric_answer == "Paris"
    assert response.text.startswith(
        "The documents say: Lyon. Without them I would have said: Paris."
    )
    # The conflict template quotes the supporting passage.
    assert '"The capital of France is Lyon."' in response.text
    assert [c.id for c in response.citations] == ["lyon"]
    # The closed-book answer comes from a generation on the parametric prompt.
    assert model.calls == [
        ("generate", "contextual"),
        ("score", "parametric"),
        ("generate", "parametric"),
    ]


def test_weak_retrieval_defers(policy: Policy) -> None:
    far = ROME.with_score(0.1)
    response = Guardrail(backend=confident("Paris"), policy=policy).ask(
        "Capital of France?", passages=[far]
    )
    assert response.action == "defer"
    assert response.rule == "weak-retrieval"
    assert response.signals["retrieval_top_score"] == pytest.approx(0.1)


def test_no_passages_defers(policy: Policy) -> None:
    model = confident("Paris")
    response = Guardrail(backend=model, policy=policy).ask("Capital of France?", passages=[])
    assert response.action == "defer"
    assert response.rule == "no-passages"
    assert "no_passages" in response.flags
    assert response.citations == ()
    assert model.calls[0] == ("generate", "no_documents")


def test_retrieval_from_an_index(policy: Policy) -> None:
    index = PassageIndex.build(
        [
            ROME.with_score(None),
            PARIS.with_score(None),
            MADRID.with_score(None),
            LYON.with_score(None),
        ],
        HashingEmbedder(dim=256),
        progress=False,
    )
    guard = Guardrail(
        backend=confident("Madrid"),
        policy=policy,
        index=index,
        config=GuardrailConfig(top_k=2),
    )
    response = guard.ask("Madrid is the capital of which country, Spain?")
    assert response.answer == "Madrid"
    assert response.signals["retrieval_top_score"] is not None
    assert response.signals["retrieval_margin"] is not None
    assert response.action == "answer"
    assert [c.id for c in response.citations] == ["madrid"]
    assert response.citations[0].score is not None


# ---------------------------------------------------------------- escalation


def test_escalation_to_a_confident_target(policy: Policy) -> None:
    built: list[ScriptedBackend] = []

    def larger() -> ScriptedBackend:
        built.append(confident("Madrid"))
        return built[-1]

    small = flat("small")
    guard = Guardrail(backend=small, policy=policy, escalation={"larger": larger})
    response = guard.ask("What is the capital of Spain?", passages=[ROME, MADRID])
    assert response.escalated is True
    assert response.action == "answer"
    assert response.model == "confident-Madrid"
    assert response.answer == "Madrid"
    assert response.confidence == pytest.approx(0.95, rel=1e-5)
    assert [c.id for c in response.citations] == ["madrid"]
    # The small model ran first; the target was built once and reused for a second question.
    assert small.calls[0] == ("generate", "contextual")
    guard.ask("And again?", passages=[MADRID])
    assert len(built) == 1
    assert len(built[0].calls) == 4


def test_escalation_target_that_cannot_load_defers(policy: Policy) -> None:
    def unavailable() -> ScriptedBackend:
        raise ModelUnavailableError("the escalation model is not installed")

    guard = Guardrail(backend=flat("small"), policy=policy, escalation={"larger": unavailable})
    response = guard.ask("What is the capital of Spain?", passages=[ROME])
    assert response.action == "defer"
    assert response.rule == "escalation:exhausted"
    assert response.escalated is False
    assert response.model == "small"
    assert (
        "escalation target 'larger' failed: the escalation model is not installed "
        "(its budget was not spent)" in response.reasons
    )
    assert response.reasons[-1] == "no escalation target produced an answer the policy accepts"


def test_escalation_target_that_is_not_confident_defers(policy: Policy) -> None:
    target = flat("also-flat")
    guard = Guardrail(backend=flat("small"), policy=policy, escalation={"larger": lambda: target})
    response = guard.ask("What is the capital of Spain?", passages=[ROME])
    assert response.action == "defer"
    assert response.rule == "escalation:exhausted"
    assert response.escalated is False
    assert any("'larger' was not confident either" in r for r in response.reasons)
    assert target.calls[:2] == [("generate", "contextual"), ("score", "parametric")]


# ---------------------------------------------------------------- bad questions


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (None, "the question must be text, got NoneType"),
        (42, "the question must be text, got int"),
        ("", "the question is empty"),
        ("   \n\t ", "the question is empty"),
        ("x" * 1001, "the question has 1001 characters; the limit is 1000"),
        ("\x00" * 10, "no letter or digit \\(10 characters"),
        ("?!? ... ???", "no letter or digit"),
    ],
)
def test_bad_questions_are_refused_before_any_model_call(
    policy: Policy, question: object, message: str
) -> None:
    model = confident("Paris")
    guard = Guardrail(backend=model, policy=policy)
    with pytest.raises(QuestionError, match=message):
        guard.ask(question, passages=[PARIS])  # type: ignore[arg-type]
    assert model.calls == []


@pytest.mark.parametrize("question", ["¿Qué es?", "東京は?", "1973?", "x"])
def test_a_question_in_any_script_or_a_number_is_asked(policy: Policy, question: str) -> None:
    guard = Guardrail(backend=confident("Paris"), policy=policy)
    assert guard.ask(question, passages=[PARIS]).question == question


def test_question_limit_counts_the_stripped_question(policy: Policy) -> None:
    guard = Guardrail(
        backend=confident("Paris"), policy=policy, config=GuardrailConfig(max_question_chars=10)
    )
    assert guard.ask("   capital?   ", passages=[PARIS]).question == "capital?"
    with pytest.raises(QuestionError, match="11 characters; the limit is 10"):
        guard.ask("capital of?", passages=[PARIS])


# ---------------------------------------------------------------- the record


def test_response_to_dict_is_json_serialisable(policy: Policy) -> None:
    model = backend([peaked(VOCAB, "Lyon", 0.9)], [peaked(VOCAB, "Paris", 0.9)])
    response = Guardrail(backend=model, policy=policy).ask(
        "What is the capital of France?", passages=[LYON, ROME]
    )
    assert isinstance(response, Response)
    data = json.loads(json.dumps(response.to_dict()))
    assert data["action"] == "hedge"
    assert data["answer"] == "Lyon"
    assert data["parametric_answer"] == "Paris"
    assert data["flags"] == ["knowledge_conflict"]
    assert data["citations"] == [
        {"id": "lyon", "source": "forged.txt", "title": "Forged", "score": 0.8}
    ]
    assert data["signals"]["answer_in_passages"] == 1.0
    assert data["signals"]["parametric_agreement"] == 0.0
    assert data["policy_hash"] == response.policy_hash
    assert set(data["timings"]) == STAGES


# ---------------------------------------------------------------- calibrated policies


def calibrated_guard(folder: Path, signal: str) -> Guardrail:
    """A pipeline whose policy's calibrator reads one signal: the higher, the more likely
    right (fitted on 30 rows)."""
    from guardrail.calibration import ABSTAINED, LogisticCalibrator
    from guardrail.policy_runtime import scorer_for

    rows = [{signal: -3.0 + 0.1 * i, ABSTAINED: 0.0} for i in range(30)]
    LogisticCalibrator((signal,)).fit(rows, [i >= 12 for i in range(30)]).save(folder / "cal.json")
    policy_file = folder / "calibrated.yaml"
    policy_file.write_text(
        "version: 1\nname: calibrated\n"
        "thresholds: {answer: 0.9, hedge: 0.5, otherwise: defer}\n"
        "calibration: {calibrator: cal.json, target_error: 0.1, delta: 0.1}\n"
    )
    policy = load_policy_setting(str(policy_file))
    scorer = scorer_for(policy, policy_file.parent)
    return Guardrail(backend=confident("Paris"), policy=policy, confidence=scorer)


def test_a_calibrated_policy_scores_with_its_calibrator(tmp_path: Path) -> None:
    guard = calibrated_guard(tmp_path, "mean_logprob")
    scorer = guard.scorer
    response = guard.ask("What is the capital of France?", passages=[PARIS])
    assert response.confidence_method == "calibrated:logistic"
    expected = scorer.confidence(response.signals, abstained=False)
    assert response.confidence == pytest.approx(expected)
    assert response.confidence > 0.9 and response.action == "answer"


def test_a_calibrated_policy_with_a_missing_or_foreign_calibrator(tmp_path: Path) -> None:
    from guardrail.calibration import ABSTAINED, LogisticCalibrator
    from guardrail.errors import ConfigError
    from guardrail.policy_runtime import scorer_for

    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(
        "version: 1\nname: p\nthresholds: {answer: 0.9, hedge: 0.5, otherwise: defer}\n"
        "calibration: {calibrator: gone.json, target_error: 0.1, delta: 0.1}\n"
    )
    policy = load_policy_setting(str(policy_file))
    with pytest.raises(ConfigError, match=r"gone\.json does not exist"):
        scorer_for(policy, policy_file.parent)
    rows = [{"telepathy": float(i), ABSTAINED: 0.0} for i in range(20)]
    LogisticCalibrator(("telepathy",)).fit(rows, [i > 9 for i in range(20)]).save(
        tmp_path / "gone.json"
    )
    with pytest.raises(ConfigError, match="does not measure: telepathy"):
        scorer_for(policy, policy_file.parent)


# ---------------------------------------------------------------- the optional abstention probe


def test_the_abstention_probe_runs_only_when_something_needs_it(
    policy: Policy, tmp_path: Path
) -> None:
    question, passages = "What is the capital of France?", [PARIS]
    # The balanced policy's heuristic confidence and rules do not read abstain_logprob.
    plain = Guardrail(backend=confident("Paris"), policy=policy)
    response = plain.ask(question, passages=passages)
    assert response.signals["abstain_logprob"] is None
    assert "abstain_probe" not in response.timings
    # The setting forces it on ...
    forced = Guardrail(
        backend=confident("Paris"), policy=policy, config=GuardrailConfig(abstain_probe=True)
    )
    response = forced.ask(question, passages=passages)
    assert response.signals["abstain_logprob"] is not None
    assert response.timings["abstain_probe"] >= 0.0
    # ... and a policy whose rules compare it switches it on by itself.
    file = tmp_path / "probe.yaml"
    file.write_text(
        "version: 1\nname: probing\nextends: balanced\nrules:\n"
        "  - name: considered-abstaining\n"
        "    when: {signal: abstain_logprob, gt: -0.5}\n"
        "    action: defer\n"
        "    reason: the model nearly said it cannot answer\n"
    )
    probing = Guardrail(backend=confident("Paris"), policy=load_policy_setting(str(file)))
    assert probing.judge().probe
    assert probing.ask(question, passages=passages).signals["abstain_logprob"] is not None
    off = Guardrail(
        backend=confident("Paris"),
        policy=load_policy_setting(str(file)),
        config=GuardrailConfig(abstain_probe=False),
    )
    assert not off.judge().probe


def test_a_policy_whose_calibrator_reads_the_probe_wants_it(tmp_path: Path) -> None:
    guard = calibrated_guard(tmp_path, "abstain_logprob")
    # The judge holds the policy's own calibrator, which reads abstain_logprob.
    assert guard.judge().probe
    response = guard.ask("What is the capital of France?", passages=[PARIS])
    assert response.signals["abstain_logprob"] is not None
