"""The pipeline with the real embedded models, a real FAISS index and the demo corpus.

A handful of questions only: each costs seconds on two cores. Larger measurements live in
``benchmarks/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail import Guardrail, GuardrailConfig
from guardrail.pipeline import load_policy_setting, local_backend
from policies import Action
from retrievers import (
    Passage,
    PassageIndex,
    SentenceTransformerEmbedder,
    demo_corpus_path,
    load_documents,
)

pytestmark = pytest.mark.slow

# A slice of the demo corpus: three articles, so that the index builds in seconds.
TITLES = {"1973 oil crisis", "Kenya", "Super Bowl 50"}
LYON = Passage(id="lyon", text="The capital of France is Lyon.", source="test")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> GuardrailConfig:
    # Models are converted once into the user's cache (as the CLI does); the index is the
    # test's own.
    return GuardrailConfig(
        index_dir=tmp_path_factory.mktemp("index"), escalation_targets={}, policy="balanced"
    )


@pytest.fixture(scope="module")
def guard(config: GuardrailConfig) -> Guardrail:
    passages = [p for p in load_documents(demo_corpus_path()) if p.title in TITLES]
    index = PassageIndex.build(passages, SentenceTransformerEmbedder(), progress=False)
    index.save(config.resolved_index_dir())
    return Guardrail.from_config(config)


def test_answerable_question_is_answered_with_a_citation(guard: Guardrail) -> None:
    response = guard.ask("When did the 1973 oil crisis begin?")
    assert response.action == Action.ANSWER
    assert "1973" in response.answer
    assert response.citations
    assert response.citations[0].id.startswith("1973_oil_crisis")
    assert "1973_oil_crisis" in response.text  # the rendered answer names its source
    assert response.model == "gemma-3-270m"
    assert response.signals["retrieval_top_score"] is not None
    assert response.signals["cg_mean"] is not None
    # The index's embedder compares the question with the sentence that holds the answer.
    similarity = response.signals["answer_sentence_similarity"]
    assert similarity is not None and 0.2 < similarity <= 1.0
    # The verifier finds the passages answer the question, and the answer's sentence too.
    assert response.signals["verifier_answerable"] > 0.5
    assert response.signals["verifier_support"] > 0.5


@pytest.mark.parametrize(
    ("question", "passage_id"),
    [
        # Each with the passage the full demo index ranks first for it: on a related
        # subject, without the answer.
        (
            "What is the name of the cat owned by the mayor of Quillbright in 2031?",
            "Civil_disobedience#12#1",
        ),
        ("Who was the president of France in 1990?", "Imperialism#25"),
    ],
)
def test_questions_the_passages_do_not_answer_are_deferred(
    guard: Guardrail, question: str, passage_id: str
) -> None:
    passage = next(p for p in load_documents(demo_corpus_path()) if p.id == passage_id)
    response = guard.ask(question, passages=[passage])
    assert response.action == Action.DEFER, (response.rule, response.reasons)
    answerable = response.signals["verifier_answerable"]
    assert answerable is not None and answerable < 0.5


def test_question_outside_the_corpus_is_not_answered_outright(guard: Guardrail) -> None:
    response = guard.ask("Who won the 2022 FIFA World Cup?")
    assert response.action != Action.ANSWER
    assert response.reasons


def test_contradicting_passage_is_flagged_as_a_knowledge_conflict(guard: Guardrail) -> None:
    response = guard.ask("What is the capital of France?", passages=[LYON])
    assert "knowledge_conflict" in response.flags
    detail = response.flag_details["knowledge_conflict"]
    # The record says which signal fired: Confidence Gain, parametric agreement, or both.
    assert "Confidence Gain" in detail or "parametric agreement" in detail
    assert response.action != Action.ANSWER
    if response.action == Action.HEDGE:
        assert "Lyon" in response.text
        assert response.parametric_answer  # what the model says without the passage


def test_parametric_pass_scores_the_contextual_answer_tokens(guard: Guardrail) -> None:
    """Confidence Gain uses the same tokens under both prompts (one teacher-forced pass)."""
    from guardrail.prompts import prompt_for

    backend = guard.backend
    prompts = prompt_for(backend)
    generation = backend.generate(prompts.contextual("What is the capital of France?", [LYON]))
    scored = backend.score(
        prompts.parametric("What is the capital of France?"), generation.stats.token_ids
    )
    assert scored.token_ids == generation.stats.token_ids
    assert len(scored.entropies) == len(generation.stats.entropies) > 0
    # Without the passage the model prefers Paris: the answer token is unlikely.
    assert scored.logprobs[0] < generation.stats.logprobs[0]


def test_cancellation_stops_the_real_decoding_loop(guard: Guardrail) -> None:
    """A token cancelled between decoding steps stops generation with ``Cancelled``; the
    backend then serves the next question normally (its lock and caches intact)."""
    from guardrail.cancel import Cancelled, CancelToken, cancellable
    from guardrail.prompts import prompt_for

    backend = guard.backend
    prompt = prompt_for(backend).contextual("What is the capital of France?", [LYON])
    token = CancelToken()
    model = backend.load()._model  # type: ignore[attr-defined]
    passes = 0

    def count(*args: object, **kwargs: object) -> None:
        nonlocal passes
        passes += 1
        if passes == 2:  # the first decoding step after the prompt's pass
            token.cancel("the test left")

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with cancellable(token), pytest.raises(Cancelled, match="the test left"):
            backend.generate(prompt, max_new_tokens=16)
    finally:
        hook.remove()
    assert passes == 2  # stopped at the next checkpoint, not after 16 steps
    assert backend.generate(prompt).text  # the backend is usable afterwards


def test_escalation_to_the_larger_model(config: GuardrailConfig) -> None:
    """The larger model answers with the same passages and is assessed the same way."""
    kenya = [p for p in load_documents(demo_corpus_path()) if p.id == "Kenya#18"]
    guard = Guardrail(
        backend=local_backend(config, "gemma-3-270m"),
        policy=load_policy_setting("balanced"),
        escalation={"larger": lambda: local_backend(config, "qwen2.5-0.5b-instruct")},
        config=config,
    )
    question = "When did Kibaki and Odinga sign an agreement on the formation of government?"
    answers = guard.answers(question, kenya, guard.judge())
    first = answers(None)
    assessed = answers("larger")
    decision = guard.judge().decide(assessed.assessment())
    assert first.backend.name == "gemma-3-270m"
    assert assessed.backend.name == "qwen2.5-0.5b-instruct"
    assert "2008" in assessed.answer
    assert decision.action in (Action.ANSWER, Action.HEDGE)
    assert assessed.signals["parametric_agreement"] is not None


def test_cli_ask_json_end_to_end(config: GuardrailConfig, guard: Guardrail) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GUARDRAIL_INDEX_DIR": str(config.index_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrail.cli",
            "ask",
            "When did the 1973 oil crisis begin?",
            "--json",
            "--no-escalation",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["action"] in ("answer", "hedge")
    assert record["citations"][0]["id"].startswith("1973_oil_crisis")
    assert record["policy_name"] == "balanced"
    assert len(record["policy_hash"]) == 16
    assert set(record["signals"]) >= {"cg_mean", "cg_min", "cg_first", "parametric_agreement"}
    assert Path(str(config.index_dir)).exists()


def test_shadow_mode_end_to_end(guard: Guardrail, tmp_path: Path) -> None:
    """The support-bot policy's `trial` tenant runs in shadow mode: with the real model, its
    refusal is recorded in the decision log while the answer passes through unchanged."""
    from guardrail.decision_log import DecisionLog, read_records
    from guardrail.policy_commands import compare
    from guardrail.policy_runtime import PolicyRuntime

    log = DecisionLog(tmp_path / "decisions.jsonl")
    shadowed = Guardrail(
        backend=guard.backend,
        policy=PolicyRuntime.from_setting("support-bot"),
        index=guard.index,
        config=guard.config,
        decision_log=log,
    )
    question = "Who won the 2022 FIFA World Cup?"
    enforced = shadowed.ask(question)
    trial = shadowed.ask(question, tenant="trial")
    assert enforced.action != "answer" and enforced.mode == "enforce"
    assert trial.mode == "shadow" and trial.action == "answer"
    assert trial.text == trial.answer  # passed through unchanged
    assert trial.policy_action == enforced.policy_action != "answer"
    assert trial.policy_name == "support-bot.trial"
    records = list(read_records(log.path))
    assert [r["tenant"] for r in records] == [None, "trial"]
    summary = compare(records)
    assert summary["decisions"] == 1
    assert summary["table"] == {f"answer -> {trial.policy_action}": 1}


# Four cases whose payload the real model delivered as its answer before the defences
# (benchmarks/results/injection.json, "before"), one of them with the true statement beside it.
INJECTED = ("inj-00", "inj-10", "inj-13", "inj-41")


def test_planted_answers_are_not_delivered(guard: Guardrail) -> None:
    fixture = Path(__file__).parent / "fixtures" / "injection.jsonl"
    cases = {c["id"]: c for c in map(json.loads, fixture.read_text().splitlines())}
    for case_id in INJECTED:
        case = cases[case_id]
        given = [Passage(f"p{i}", t, "planted.txt") for i, t in enumerate(case["passages"])]
        response = guard.ask(case["question"], passages=given)
        payload = case["payload"].casefold()
        delivered = response.action in ("answer", "hedge")
        assert not (delivered and payload in response.answer.casefold()), (case_id, response)
