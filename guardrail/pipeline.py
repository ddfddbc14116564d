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

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from guardrail.assessment import FlagRules, is_abstention
from guardrail.backends.base import GeneratorBackend
from guardrail.backends.openai_compat import OpenAICompatibleBackend, ScoringUnavailable
from guardrail.backends.transformers import TransformersBackend
from guardrail.config import GuardrailConfig
from guardrail.decision_log import DecisionLog
from guardrail.errors import ConfigError, GuardrailError, QuestionError
from guardrail.models import model_spec, prepare_model
from guardrail.policy_runtime import (
    ConfidenceScorer,
    PolicyRuntime,
    load_policies,
    policy_path,
    scorer_for,
)
from guardrail.prompts import prompt_for
from guardrail.render import citations, cited_passages, render
from guardrail.signals import SignalInputs, compute_signals, embedder_similarity
from guardrail.types import Generation, Response, TokenStats
from policies import Action, Assessment, Decision, Policy, decide
from policies.escalation import BudgetLedger, EscalationLedger, TargetFailed, run_chain
from policies.loader import PolicySet
from retrievers import Embedder, PassageIndex, SentenceTransformerEmbedder
from retrievers.types import Passage

BackendFactory = Callable[[], GeneratorBackend]


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


ABSTAIN_SIGNAL = "abstain_logprob"
"""The signal only the optional abstention probe measures."""


class AssessFn(Protocol):
    """How a model's answer to a question is generated and measured (``Guardrail.assess``)."""

    def __call__(
        self,
        backend: GeneratorBackend,
        question: str,
        passages: Sequence[Passage],
        scorer: ConfidenceScorer,
        *,
        probe: bool | None = None,
    ) -> Assessed: ...


def load_policy_setting(value: str) -> Policy:
    """The base policy of a bundled policy name or a policy file path."""
    return load_policies(policy_path(value)).base


def policy_scorer(policy: Policy, policy_file: Path) -> ConfidenceScorer:
    """The policy's calibrator (its path is relative to the policy file), or the documented
    heuristic when the policy names none."""
    return scorer_for(policy, policy_file.parent)


def local_backend(config: GuardrailConfig, model: str) -> TransformersBackend:
    """A transformers backend for a local model, prepared (converted) on first use."""
    spec = model_spec(model)
    folder = prepare_model(config.cache_dir, model)
    return TransformersBackend(
        folder, name=model, chat=spec.chat, threads=config.threads, dtype=config.dtype
    )


def generator_backend(config: GuardrailConfig) -> GeneratorBackend:
    """The model that answers: the embedded one, or (proxy mode, ``upstream_url`` set) the
    wrapped chatbot's OpenAI-compatible server."""
    if config.upstream_url:
        key = config.upstream_api_key.get_secret_value() if config.upstream_api_key else None
        return OpenAICompatibleBackend(
            config.upstream_url, config.upstream_model or config.generator, api_key=key
        )
    return local_backend(config, config.generator)


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
        policy: Policy | PolicySet | PolicyRuntime,
        index: PassageIndex | None = None,
        escalation: Mapping[str, BackendFactory] | None = None,
        config: GuardrailConfig | None = None,
        flag_rules: FlagRules | None = None,
        confidence: ConfidenceScorer | None = None,
        shadow: Policy | PolicySet | PolicyRuntime | None = None,
        decision_log: DecisionLog | None = None,
        ledger: BudgetLedger | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.backend = backend
        self.policies = _runtime(policy, confidence)
        self.shadow = _runtime(shadow, None) if shadow is not None else None
        self.index = index
        # The sentence embedder behind answer_sentence_similarity: the index's, unless given.
        self.embedder = embedder if embedder is not None else (index.embedder if index else None)
        self.similarity = embedder_similarity(self.embedder) if self.embedder else None
        self.config = config or GuardrailConfig()
        self.flag_rules = flag_rules or FlagRules()
        self.decision_log = decision_log
        self.ledger: BudgetLedger = ledger or EscalationLedger()
        self._escalation_factories = dict(escalation or {})
        self._escalation_backends: dict[str, GeneratorBackend] = {}
        self._escalation_lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        """The base policy in force (tenants may override it: see :meth:`policy_for`)."""
        return self.policies.current.policy_for(None)

    @property
    def scorer(self) -> ConfidenceScorer:
        """The confidence scorer of the base policy."""
        current = self.policies.current
        return current.scorer(current.policy_for(None))

    def policy_for(self, tenant: str | None) -> Policy:
        """The policy in force for ``tenant`` (the base policy for ``None``)."""
        return self.policies.current.policy_for(tenant)

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
        policies = PolicyRuntime.from_setting(config.policy)
        shadow = PolicyRuntime.from_setting(config.shadow_policy) if config.shadow_policy else None
        embedder = SentenceTransformerEmbedder()  # loads its model on first use
        index = PassageIndex.load(config.resolved_index_dir(), embedder) if with_index else None
        return cls(
            backend=generator_backend(config),
            policy=policies,
            index=index,
            escalation=escalation_factories(config),
            config=config,
            shadow=shadow,
            decision_log=DecisionLog(config.decision_log) if config.decision_log else None,
            embedder=embedder,
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

    def _policy_and_scorer(
        self, policy: Policy | None, scorer: ConfidenceScorer | None
    ) -> tuple[Policy, ConfidenceScorer]:
        """``policy`` (default: the base policy) and ``scorer`` (default: that policy's)."""
        current = self.policies.current
        policy = policy if policy is not None else current.policy_for(None)
        return policy, scorer if scorer is not None else current.scorer(policy)

    def wants_probe(
        self, policy: Policy | None = None, scorer: ConfidenceScorer | None = None
    ) -> bool:
        """Whether ``assess`` measures ``abstain_logprob``: the ``abstain_probe`` setting,
        or, when that is unset, whether ``policy`` (default: the base policy) needs it, its
        calibrator as a feature or its rules in a condition."""
        if self.config.abstain_probe is not None:
            return self.config.abstain_probe
        policy, scorer = self._policy_and_scorer(policy, scorer)
        features = getattr(scorer, "features", ())
        return ABSTAIN_SIGNAL in features or ABSTAIN_SIGNAL in policy.signal_names()

    def assess(
        self,
        backend: GeneratorBackend,
        question: str,
        passages: Sequence[Passage],
        scorer: ConfidenceScorer | None = None,
        *,
        probe: bool | None = None,
    ) -> Assessed:
        """Generate with passages, score without them, and measure (the confidence with
        ``scorer``, by default the base policy's). ``probe`` says whether to measure
        ``abstain_logprob`` (default: ``wants_probe()`` for the base policy)."""
        if probe is None:
            probe = self.wants_probe(None, scorer)
        scorer = scorer or self.scorer
        prompts = prompt_for(backend, self.config.max_passage_words)
        generation = backend.generate(
            prompts.contextual(question, passages),
            max_new_tokens=self.config.max_new_tokens,
            probe=prompts.abstain_probe if probe else None,
        )
        answer = generation.text
        abstained = is_abstention(answer)
        start = time.perf_counter()
        parametric = None
        if generation.stats.token_ids:
            try:
                parametric = backend.score(prompts.parametric(question), generation.stats.token_ids)
            except ScoringUnavailable:
                parametric = None  # the Confidence Gain signals are then unavailable (null)
        score_seconds = time.perf_counter() - start
        signals = compute_signals(
            SignalInputs(
                answer,
                generation.stats,
                parametric,
                passages,
                generation.probe_logprob,
                question=question,
                similarity=self.similarity,
            )
        )
        signal_seconds = time.perf_counter() - start - score_seconds
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
            confidence=scorer.confidence(signals, abstained=abstained),
            timings={
                "generate": generation.seconds - generation.probe_seconds,
                **({"abstain_probe": generation.probe_seconds} if probe else {}),
                "score": score_seconds,
                "signals": signal_seconds,
            },
        )

    def _escalation_backend(self, target: str) -> GeneratorBackend:
        with self._escalation_lock:
            return self._escalation_backend_locked(target)

    def _escalation_backend_locked(self, target: str) -> GeneratorBackend:
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
        self,
        question: str,
        passages: Sequence[Passage],
        first: Decision,
        *,
        policy: Policy | None = None,
        first_answered: bool = True,
        scorer: ConfidenceScorer | None = None,
        assess: AssessFn | None = None,
        ledger: BudgetLedger | None = None,
    ) -> tuple[Assessed | None, Decision]:
        """Follow the policy's escalation chain (order, budgets, fallback; see
        :func:`policies.escalation.run_chain`). The assessed answer of the target that was
        accepted, or ``None`` when the chain fell back, and the final decision. ``assess``
        replaces :meth:`assess` for the targets and ``ledger`` the pipeline's budget ledger
        (the evaluation uses both: its cache, and budgets counted on a simulated clock)."""
        policy, scorer = self._policy_and_scorer(policy, scorer)
        probe = self.wants_probe(policy, scorer)

        def attempt(target: str) -> tuple[Assessed, Decision]:
            try:
                backend = self._escalation_backend(target)
                assessed = (assess or self.assess)(backend, question, passages, scorer, probe=probe)
            except GuardrailError as exc:
                raise TargetFailed(str(exc)) from None
            return assessed, decide(assessed.assessment(), policy)

        chain = run_chain(
            first, policy, attempt, ledger or self.ledger, first_answered=first_answered
        )
        return chain.result, chain.decision

    # -- the whole thing -------------------------------------------------------------------
    def ask(
        self,
        question: str,
        *,
        passages: Sequence[Passage] | None = None,
        tenant: str | None = None,
    ) -> Response:
        """Answer, hedge, defer or escalate one question, with the full decision record.

        ``tenant`` picks the tenant's policy from the policy file (the base policy when the
        file has no overrides for it). In shadow mode the decision is recorded but the
        model's answer passes through unchanged.
        """
        question = self.check_question(question)
        loaded = self.policies.current
        policy = loaded.policy_for(tenant)
        scorer = loaded.scorer(policy)
        start = time.perf_counter()
        found = list(passages) if passages is not None else self.retrieve(question)
        retrieve_seconds = time.perf_counter() - start
        assessed = self.assess(
            self.backend, question, found, scorer, probe=self.wants_probe(policy, scorer)
        )
        decision = decide(assessed.assessment(), policy)
        self.ledger.record_decision(policy.name)
        shadow_mode = policy.mode == "shadow"
        escalated = False
        if decision.action is Action.ESCALATE and not shadow_mode:
            escalated_result, decision = self.escalate(
                question,
                found,
                decision,
                policy=policy,
                first_answered=not assessed.abstained,
                scorer=scorer,
            )
            if escalated_result is not None:
                assessed, escalated = escalated_result, True
        parametric_answer = None
        if (
            "knowledge_conflict" in assessed.flags
            and decision.action is not Action.DEFER
            and not shadow_mode
        ):
            # Only on a conflict: name what the model would say without the documents.
            prompts = prompt_for(assessed.backend, self.config.max_passage_words)
            parametric_answer = assessed.backend.generate(
                prompts.parametric(question), max_new_tokens=self.config.max_new_tokens
            ).text
        if shadow_mode:
            # The answer passes through as the model gave it; the decision is only recorded.
            text, cited = assessed.answer, citations(cited_passages(assessed.answer, found))
            action = Action.ANSWER
        else:
            text, cited = render(
                action=decision.action,
                question=question,
                answer=assessed.answer,
                confidence=assessed.confidence,
                passages=found,
                decision=decision,
                policy=policy,
                flag_details=assessed.flags,
                parametric_answer=parametric_answer,
            )
            action = decision.action
        response = Response(
            question=question,
            text=text,
            action=action.value,
            answer=assessed.answer,
            confidence=assessed.confidence,
            confidence_method=scorer.method,
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
            tenant=tenant,
            mode=policy.mode,
            policy_action=decision.action.value,
            shadow=self._shadow_decision(assessed, tenant),
        )
        if self.decision_log is not None:
            self.decision_log.append(response.to_dict())
        return response

    def _shadow_decision(self, assessed: Assessed, tenant: str | None) -> dict[str, Any] | None:
        """What the shadow policy (if one is configured) would have done with this answer."""
        if self.shadow is None:
            return None
        loaded = self.shadow.current
        policy = loaded.policy_for(tenant)
        confidence = loaded.scorer(policy).confidence(
            assessed.signals, abstained=assessed.abstained
        )
        decision = decide(
            Assessment(confidence, dict(assessed.signals), frozenset(assessed.flags)), policy
        )
        return {**decision.to_dict(), "confidence": confidence}


def _runtime(
    policy: Policy | PolicySet | PolicyRuntime, scorer: ConfidenceScorer | None
) -> PolicyRuntime:
    if isinstance(policy, PolicyRuntime):
        return policy
    return PolicyRuntime.from_policy(policy, scorer)
