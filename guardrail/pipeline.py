"""The pipeline: retrieve, generate, score without passages, assess, decide, render.

``Guardrail.ask(question)`` runs, for one question:

1. retrieval of the top-k passages (or the passages the caller gives);
2. the contextual answer: greedy generation with the passages in the prompt;
3. ONE teacher-forced ``score`` pass of that same answer under the prompt without passages,
   which yields the parametric distributions for Confidence Gain and parametric agreement;
4. signals, flags and the confidence score;
5. the policy's decision; an escalation re-runs steps 2-4 on the next target model with the
   same passages and is decided again (a second escalation is not allowed: it defers);
6. rendering, with citations, into a ``Response`` that carries the whole record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from guardrail.assessment import FLAG_NAMES, FlagRules, HeuristicConfidence, is_abstention
from guardrail.backends.base import GeneratorBackend
from guardrail.backends.transformers import TransformersBackend
from guardrail.config import GuardrailConfig
from guardrail.errors import ConfigError, GuardrailError, QuestionError
from guardrail.models import model_spec, prepare_model
from guardrail.prompts import prompt_for
from guardrail.render import render
from guardrail.signals import SIGNAL_NAMES, SignalInputs, compute_signals
from guardrail.types import Generation, Response, TokenStats
from policies import Action, Assessment, Decision, Policy, bundled_policy_path, decide, load_policy
from retrievers import PassageIndex, SentenceTransformerEmbedder
from retrievers.types import Passage

BackendFactory = Callable[[], GeneratorBackend]


class ConfidenceScorer(Protocol):
    """Turns one response's signals into its confidence (a heuristic or a calibrator)."""

    @property
    def method(self) -> str:
        """How the confidence is computed, recorded with each response."""
        ...

    def confidence(self, signals: Mapping[str, float | None], *, abstained: bool) -> float:
        """The confidence in [0, 1]."""
        ...


@dataclass(frozen=True)
class Assessed:
    """One model's answer to one question, with everything measured about it."""

    backend: GeneratorBackend
    generation: Generation
    parametric: TokenStats | None
    answer: str
    abstained: bool
    signals: Mapping[str, float | None]
    flags: Mapping[str, str]
    confidence: float
    timings: Mapping[str, float]

    def assessment(self) -> Assessment:
        """What the policy decides on."""
        return Assessment(self.confidence, dict(self.signals), frozenset(self.flags))


def policy_path(value: str) -> Path:
    """The file of a bundled policy name or of a policy path."""
    path = Path(value)
    if value.endswith((".yaml", ".yml")) or path.exists():
        if not path.exists():
            raise ConfigError(f"policy file {value} does not exist")
        return path
    return Path(str(bundled_policy_path(value)))


def load_policy_setting(value: str) -> Policy:
    """A bundled policy by name, or a policy file by path."""
    return load_policy(policy_path(value), signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)


def policy_scorer(policy: Policy, policy_file: Path) -> ConfidenceScorer:
    """The policy's calibrator (its path is relative to the policy file), or the documented
    heuristic when the policy names none."""
    if policy.calibration is None:
        return HeuristicConfidence()
    from guardrail.calibration import load_calibrator

    path = Path(policy.calibration.calibrator)
    if not path.is_absolute():
        path = policy_file.parent / path
    calibrator = load_calibrator(path)
    unknown = sorted(set(calibrator.features) - SIGNAL_NAMES)
    if unknown:
        raise ConfigError(
            f"calibrator {path} reads signals this version does not measure: {', '.join(unknown)}"
        )
    return calibrator


def local_backend(config: GuardrailConfig, model: str) -> GeneratorBackend:
    """A transformers backend for a local model, prepared (converted) on first use."""
    spec = model_spec(model)
    folder = prepare_model(config.cache_dir, model)
    return TransformersBackend(
        folder, name=model, chat=spec.chat, threads=config.threads, dtype=config.dtype
    )


def check_question(question: object, max_chars: int) -> str:
    """The question, stripped, or a ``QuestionError`` saying what is wrong."""
    if not isinstance(question, str):
        raise QuestionError(f"the question must be text, got {type(question).__name__}")
    stripped = question.strip()
    if not stripped:
        raise QuestionError("the question is empty; ask a question in words")
    if len(stripped) > max_chars:
        raise QuestionError(
            f"the question has {len(stripped)} characters; the limit is {max_chars} "
            "(setting max_question_chars)"
        )
    return stripped


def escalation_factories(config: GuardrailConfig) -> dict[str, BackendFactory]:
    """Lazy constructors of the configured escalation backends, by target name."""

    def factory(model: str) -> BackendFactory:
        return lambda: local_backend(config, model)

    return {target: factory(model) for target, model in config.escalation_targets.items()}


class Guardrail:
    """Selective answering over a passage index with one generator and escalation targets."""

    def __init__(
        self,
        *,
        backend: GeneratorBackend,
        policy: Policy,
        index: PassageIndex | None = None,
        escalation: Mapping[str, BackendFactory] | None = None,
        config: GuardrailConfig | None = None,
        flag_rules: FlagRules | None = None,
        confidence: ConfidenceScorer | None = None,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.index = index
        self.config = config or GuardrailConfig()
        self.flag_rules = flag_rules or FlagRules()
        self.scorer: ConfidenceScorer = confidence or HeuristicConfidence()
        self._escalation_factories = dict(escalation or {})
        self._escalation_backends: dict[str, GeneratorBackend] = {}

    @classmethod
    def from_config(
        cls, config: GuardrailConfig | None = None, *, with_index: bool = True
    ) -> Guardrail:
        """Build the pipeline from settings: policy, index, then models (loaded lazily).

        ``with_index=False`` builds a pipeline that answers only from passages given to
        ``ask``. The cheap, fallible parts (policy, index) come first so that their errors
        surface before any model is prepared.
        """
        config = config or GuardrailConfig()
        policy_file = policy_path(config.policy)
        policy = load_policy(policy_file, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)
        scorer = policy_scorer(policy, policy_file)
        index = (
            PassageIndex.load(config.resolved_index_dir(), SentenceTransformerEmbedder())
            if with_index
            else None
        )
        return cls(
            backend=local_backend(config, config.generator),
            policy=policy,
            index=index,
            escalation=escalation_factories(config),
            config=config,
            confidence=scorer,
        )

    # -- steps -----------------------------------------------------------------------------
    def check_question(self, question: object) -> str:
        """The question, stripped, or a ``QuestionError`` saying what is wrong."""
        return check_question(question, self.config.max_question_chars)

    def retrieve(self, question: str) -> list[Passage]:
        """The top-k passages for the question (none without an index)."""
        if self.index is None:
            return []
        return self.index.search(question, k=self.config.top_k)

    def assess(
        self, backend: GeneratorBackend, question: str, passages: Sequence[Passage]
    ) -> Assessed:
        """Generate with passages, score without them, and measure."""
        prompts = prompt_for(backend, self.config.max_passage_words)
        generation = backend.generate(
            prompts.contextual(question, passages),
            max_new_tokens=self.config.max_new_tokens,
            probe=prompts.abstain_probe,
        )
        answer = generation.text
        abstained = is_abstention(answer)
        start = time.perf_counter()
        parametric = (
            backend.score(prompts.parametric(question), generation.stats.token_ids)
            if generation.stats.token_ids
            else None
        )
        score_seconds = time.perf_counter() - start
        signals = compute_signals(
            SignalInputs(
                answer,
                generation.stats,
                parametric,
                passages,
                generation.probe_logprob,
                question=question,
            )
        )
        flags = self.flag_rules.flags(
            abstained=abstained,
            signals=signals,
            parametric_first_entropy=parametric.entropies[0] if parametric else None,
            has_passages=bool(passages),
        )
        return Assessed(
            backend=backend,
            generation=generation,
            parametric=parametric,
            answer=answer,
            abstained=abstained,
            signals=signals,
            flags=flags,
            confidence=self.scorer.confidence(signals, abstained=abstained),
            timings={
                "generate": generation.seconds - generation.probe_seconds,
                "abstain_probe": generation.probe_seconds,
                "score": score_seconds,
            },
        )

    def _escalation_backend(self, target: str) -> GeneratorBackend:
        if target not in self._escalation_backends:
            factory = self._escalation_factories.get(target)
            if factory is None:
                raise ConfigError(
                    f"escalation target {target!r} is not configured; configured targets: "
                    f"{', '.join(self._escalation_factories) or 'none'}"
                )
            self._escalation_backends[target] = factory()
        return self._escalation_backends[target]

    def escalate(
        self, question: str, passages: Sequence[Passage], first: Decision
    ) -> tuple[Assessed | None, Decision]:
        """Try the policy's escalation targets in order; defer when none gives an answer."""
        reasons = list(first.reasons)
        for target in self.policy.actions.escalate.targets:
            try:
                backend = self._escalation_backend(target)
                assessed = self.assess(backend, question, passages)
            except GuardrailError as exc:
                reasons.append(f"escalation target {target!r} failed: {exc}")
                continue
            decision = decide(assessed.assessment(), self.policy)
            if decision.action in (Action.ANSWER, Action.HEDGE):
                why = f"escalated to {backend.name}: " + "; ".join(reasons)
                return assessed, replace(decision, reasons=(why, *decision.reasons))
            reasons.append(
                f"escalation target {target!r} ({backend.name}) was not confident either "
                f"(confidence {assessed.confidence:.2f}; {'; '.join(decision.reasons)})"
            )
        fallback = Decision(
            action=Action.DEFER,
            rule="escalation:exhausted",
            reasons=(*reasons, "no escalation target produced an answer the policy accepts"),
            policy_name=first.policy_name,
            policy_hash=first.policy_hash,
        )
        return None, fallback

    # -- the whole thing -------------------------------------------------------------------
    def ask(self, question: str, *, passages: Sequence[Passage] | None = None) -> Response:
        """Answer, hedge, defer or escalate one question, with the full decision record."""
        question = self.check_question(question)
        start = time.perf_counter()
        found = list(passages) if passages is not None else self.retrieve(question)
        retrieve_seconds = time.perf_counter() - start
        assessed = self.assess(self.backend, question, found)
        decision = decide(assessed.assessment(), self.policy)
        escalated = False
        if decision.action is Action.ESCALATE:
            escalated_result, decision = self.escalate(question, found, decision)
            if escalated_result is not None:
                assessed, escalated = escalated_result, True
        parametric_answer = None
        if "knowledge_conflict" in assessed.flags and decision.action is not Action.DEFER:
            # Only on a conflict: name what the model would say without the documents.
            prompts = prompt_for(assessed.backend, self.config.max_passage_words)
            parametric_answer = assessed.backend.generate(
                prompts.parametric(question), max_new_tokens=self.config.max_new_tokens
            ).text
        text, cited = render(
            action=decision.action,
            question=question,
            answer=assessed.answer,
            confidence=assessed.confidence,
            passages=found,
            decision=decision,
            policy=self.policy,
            flag_details=assessed.flags,
            parametric_answer=parametric_answer,
        )
        return Response(
            question=question,
            text=text,
            action=decision.action.value,
            answer=assessed.answer,
            confidence=assessed.confidence,
            confidence_method=self.scorer.method,
            signals=dict(assessed.signals),
            flags=tuple(sorted(assessed.flags)),
            flag_details=dict(assessed.flags),
            citations=cited,
            rule=decision.rule,
            reasons=decision.reasons,
            policy_name=decision.policy_name,
            policy_hash=decision.policy_hash,
            model=assessed.backend.name,
            escalated=escalated,
            parametric_answer=parametric_answer,
            timings={
                "retrieve": retrieve_seconds,
                **assessed.timings,
                "total": time.perf_counter() - start,
            },
        )
