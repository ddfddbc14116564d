"""The pipeline: retrieve, generate, score without passages, assess, decide, render.

``Guardrail.ask(question)`` runs, for one question:

1. retrieval of the top-k passages (or the passages the caller gives);
2. the contextual answer: greedy generation with the passages in the prompt;
3. ONE teacher-forced ``score`` pass of that same answer under the prompt without passages,
   which yields the parametric distributions for Confidence Gain and parametric agreement;
4. signals, flags and the confidence score;
5. the decision of the tenant's :class:`~guardrail.judge.Judge` through
   :func:`~guardrail.judge.judge_question`; an escalation re-runs steps 2-4 on the next
   target model with the same passages and is judged again (a second escalation is not
   allowed: it defers);
6. rendering, with citations, into a ``Response`` that carries the whole record.

Models load on first use: importing this module imports no PyTorch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from guardrail.assessment import FlagRules, is_abstention
from guardrail.backends.base import GeneratorBackend
from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.backends.openai_compat import OpenAICompatibleBackend, ScoringUnavailable
from guardrail.cancel import checkpoint
from guardrail.config import GuardrailConfig
from guardrail.conversation import Turn, needs_rewrite, standalone_question
from guardrail.decision_log import DecisionLog
from guardrail.errors import BackendError, ConfigError, GuardrailError, QuestionError
from guardrail.injection import injected_answer, injection_detail
from guardrail.judge import Assessed, ConfidenceScorer, Judge, judge_question
from guardrail.models import model_spec, prepare_model
from guardrail.policy_runtime import PolicyRuntime, load_policies, policy_path
from guardrail.prompts import prompt_for
from guardrail.render import citations, cited_passages, render
from guardrail.signals import (
    SignalInputs,
    Verify,
    compute_signals,
    embedder_similarity,
    signal_sources,
)
from guardrail.text import printable, surrogate_at
from guardrail.types import Response, TokenStats
from guardrail.verifier import Verifier, verifier_from_setting
from policies import Action, Policy
from policies.escalation import BudgetLedger, EscalationLedger
from policies.loader import PolicySet
from retrievers import Embedder, PassageIndex, SentenceTransformerEmbedder
from retrievers.types import Passage

if TYPE_CHECKING:
    from guardrail.backends.transformers import TransformersBackend

BackendFactory = Callable[[], GeneratorBackend]


def load_policy_setting(value: str) -> Policy:
    """The base policy of a bundled policy name or a policy file path."""
    return load_policies(policy_path(value)).base


def local_backend(config: GuardrailConfig, model: str) -> TransformersBackend:
    """A transformers backend for a local model, prepared (converted) on first use."""
    from guardrail.backends.transformers import TransformersBackend  # imports PyTorch

    spec = model_spec(model)
    folder = prepare_model(config.cache_dir, model)
    return TransformersBackend(
        folder,
        name=model,
        chat=spec.chat,
        threads=config.threads,
        dtype=config.dtype,  # the backend resolves ``auto`` for this CPU
    )


def generator_backend(config: GuardrailConfig) -> GeneratorBackend:
    """The model that answers: the embedded one, or (proxy mode, ``upstream_url`` set) the
    wrapped chatbot's OpenAI-compatible server, on its chat or completions route."""
    if config.upstream_url:
        key = config.upstream_api_key.get_secret_value() if config.upstream_api_key else None
        model = config.upstream_model or config.generator
        if config.upstream_api == "chat":
            return OpenAIChatBackend(
                config.upstream_url, model, api_key=key, logprobs=config.upstream_logprobs
            )
        return OpenAICompatibleBackend(config.upstream_url, model, api_key=key)
    return local_backend(config, config.generator)


def guard_model_name(config: GuardrailConfig, *, scores_itself: bool | None = None) -> str | None:
    """The local model that reads the generator's answers, or None when the generator scores
    its own (``scores_itself``; default: only without an upstream, the embedded model does)
    or the setting ``guard`` is ``none``."""
    if scores_itself is None:
        scores_itself = not config.upstream_url
    if scores_itself or config.guard == "none":
        return None
    return config.generator if config.guard == "auto" else config.guard


def guard_backend(
    config: GuardrailConfig, *, scores_itself: bool | None = None
) -> GeneratorBackend | None:
    """The backend of ``guard_model_name`` (converted on first use, loaded lazily), or None."""
    name = guard_model_name(config, scores_itself=scores_itself)
    return local_backend(config, name) if name else None


def check_question(question: object, max_chars: int) -> str:
    """The question, stripped, or a ``QuestionError`` saying what is wrong."""
    if not isinstance(question, str):
        raise QuestionError(f"the question must be text, got {type(question).__name__}")
    stripped = question.strip()
    at = surrogate_at(stripped)
    if at is not None:
        raise QuestionError(
            f"the question holds an unpaired UTF-16 surrogate "
            f"({printable(stripped[at])}) at character {at}; it must be valid Unicode text"
        )
    if not stripped:
        raise QuestionError("the question is empty; ask a question in words")
    if not any(ch.isalnum() for ch in stripped):
        # Ten NUL bytes or a row of punctuation would otherwise pay a full generation.
        raise QuestionError(
            f"the question has no letter or digit ({len(stripped)} characters of punctuation, "
            "symbols or control characters); ask a question in words"
        )
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
        verifier: Verifier | None = None,
        guard: GeneratorBackend | None = None,
        rewriter: str | GeneratorBackend | None = None,
    ) -> None:
        self.backend = backend
        # A local model that reads the generator's answers when the generator cannot score
        # them itself (proxy mode): the Confidence Gain and token signals come from it.
        self.guard = guard
        self.policies = _runtime(policy, confidence)
        self.shadow = _runtime(shadow, None) if shadow is not None else None
        self.index = index
        # The sentence embedder behind answer_sentence_similarity: the index's, unless given.
        self.embedder = embedder if embedder is not None else (index.embedder if index else None)
        self.similarity = embedder_similarity(self.embedder) if self.embedder else None
        self.config = config or GuardrailConfig()
        # The answerability verifier behind the verifier_* signals (none: they are null).
        self.verify: Verify | None = None
        if verifier is not None:
            # It reads the passages as far as the generator is shown them.
            self.verify = partial(verifier.score, max_words=self.config.max_passage_words)
        self.flag_rules = flag_rules or FlagRules()
        self.decision_log = decision_log
        self.ledger: BudgetLedger = ledger or EscalationLedger()
        self._escalation_factories = dict(escalation or {})
        self._escalation_backends: dict[str, GeneratorBackend] = {}
        self._escalation_failures: dict[str, str] = {}
        self._escalation_lock = threading.Lock()
        # The rewriter of follow-up questions: a backend, a setting resolved on first use
        # (see GuardrailConfig.rewriter), or None for none.
        self._rewriter: str | GeneratorBackend | None = (
            rewriter if rewriter is not None else self.config.rewriter
        )

    def judge(self, tenant: str | None = None) -> Judge:
        """The judge in force for ``tenant`` (the base policy's for ``None``): the one place
        a policy and its scorer are looked up. The ``abstain_probe`` setting, when set,
        overrides what the policy needs."""
        return self.policies.current.judge(tenant, probe=self.config.abstain_probe)

    @property
    def policy(self) -> Policy:
        """The base policy in force (tenants may override it: see :meth:`judge`)."""
        return self.judge().policy

    @property
    def scorer(self) -> ConfidenceScorer:
        """The confidence scorer of the base policy."""
        return self.judge().scorer

    def policy_for(self, tenant: str | None) -> Policy:
        """The policy in force for ``tenant`` (the base policy for ``None``)."""
        return self.judge(tenant).policy

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
            # The verifier reads the embedder's weights (the same all-MiniLM-L6-v2): one copy.
            verifier=verifier_from_setting(config.verifier, shared=embedder.token_model),
            guard=guard_backend(config),
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
        self,
        backend: GeneratorBackend,
        question: str,
        passages: Sequence[Passage],
        judge: Judge | None = None,
        guard: GeneratorBackend | None = None,
        *,
        history: Sequence[Turn] = (),
    ) -> Assessed:
        """Generate with passages, score without them, measure, and give the confidence of
        ``judge`` (default: the base policy's), which also says whether to measure
        ``abstain_logprob``. With a ``guard`` model, the guard reads the answer with and
        without the passages (the Confidence Gain signals, and the token signals where the
        generator returned no token statistics); otherwise the generator scores its own."""
        checkpoint()
        judge = judge or self.judge()
        probe = judge.probe
        prompts = prompt_for(backend, self.config.max_passage_words)
        given = len(passages)
        passages = self.fitting(backend, question, passages, history)
        if guard is not None:
            passages = self.fitting(guard, question, passages)
        generation = backend.generate(
            prompts.contextual(question, passages, history),
            max_new_tokens=self.config.max_new_tokens,
            probe=prompts.abstain_probe if probe else None,
        )
        checkpoint()
        answer = generation.text
        abstained = is_abstention(answer)
        start = time.perf_counter()
        own = generation.stats
        if guard is not None:
            contextual, parametric = self._guard_passes(guard, question, passages, answer)
            tokens_source = "generator" if own.token_ids else "guard"
            sources = signal_sources(tokens=tokens_source, parametric="guard")
            tokens = own if own.token_ids else None
        else:
            contextual, parametric, tokens = own, None, None
            if own.token_ids:
                try:
                    parametric = backend.score(prompts.parametric(question), own.token_ids)
                except ScoringUnavailable:
                    parametric = None  # the Confidence Gain signals are then unavailable (null)
            sources = signal_sources(tokens="generator", parametric="generator")
        score_seconds = time.perf_counter() - start
        signals = compute_signals(
            SignalInputs(
                answer,
                contextual,
                parametric,
                passages,
                generation.probe_logprob,
                question=question,
                similarity=self.similarity,
                verify=self.verify,
                tokens=tokens,
            )
        )
        signal_seconds = time.perf_counter() - start - score_seconds
        flags = self.flag_rules.flags(
            abstained=abstained,
            signals=signals,
            parametric_first_entropy=parametric.entropies[0] if parametric else None,
            has_passages=bool(passages),
        )
        texts = [p.text for p in passages]
        injected = None if abstained else injected_answer(answer, texts)
        if injected is not None:
            flags["injected_answer"] = injection_detail(injected, texts)
        if len(passages) < given:
            flags["passages_cut"] = (
                f"{len(passages)} of {given} passages fit the model's context; the "
                f"{given - len(passages)} lowest-ranked were left out"
            )
        return Assessed(
            backend=backend,
            generation=generation,
            parametric=parametric,
            answer=answer,
            abstained=abstained,
            signals=signals,
            flags=flags,
            confidence=judge.confidence(signals, abstained=abstained),
            timings={
                "generate": generation.seconds - generation.probe_seconds,
                **({"abstain_probe": generation.probe_seconds} if probe else {}),
                "score": score_seconds,
                "signals": signal_seconds,
            },
            sources={k: v for k, v in sources.items() if signals.get(k) is not None},
            passages=passages if len(passages) < given else None,
        )

    def fitting(
        self,
        backend: GeneratorBackend,
        question: str,
        passages: Sequence[Passage],
        history: Sequence[Turn] = (),
    ) -> Sequence[Passage]:
        """The leading passages (in rank order) whose prompt, with room for the answer, fits
        ``backend``'s context; all of them for a backend that states no limit (a remote
        server answers for its own)."""
        limit = getattr(backend, "max_context_tokens", None)
        count = getattr(backend, "count_tokens", None)
        if not passages or not isinstance(limit, int) or not callable(count):
            return passages
        prompts = prompt_for(backend, self.config.max_passage_words)
        room = limit - self.config.max_new_tokens

        def fits(n: int) -> bool:
            return int(count(prompts.contextual(question, passages[:n], history))) <= room

        if fits(len(passages)):
            return passages
        low, high = 0, len(passages) - 1  # the most passages that fit, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        return passages[:low]

    def _guard_passes(
        self, guard: GeneratorBackend, question: str, passages: Sequence[Passage], answer: str
    ) -> tuple[TokenStats, TokenStats | None]:
        """The guard model's reading of ``answer`` (re-tokenised by the guard) after its own
        contextual prompt and after its no-passage prompt: two teacher-forced passes."""
        if not answer:
            return TokenStats.empty(), None
        prompts = prompt_for(guard, self.config.max_passage_words)
        # A few-shot prompt ends at "Answer:"; the answer follows a space, as generated.
        continuation = answer if guard.chat else " " + answer
        contextual = guard.score(prompts.contextual(question, passages), continuation)
        parametric = guard.score(prompts.parametric(question), continuation)
        return contextual, parametric

    def rewriter(self) -> GeneratorBackend | None:
        """The model that rewrites follow-up questions (resolved and built on first use), or
        None (setting ``rewriter: none``)."""
        with self._escalation_lock:
            if isinstance(self._rewriter, str):
                self._rewriter = self._rewriter_backend_locked(self._rewriter)
            return self._rewriter

    def _rewriter_backend_locked(self, setting: str) -> GeneratorBackend | None:
        if setting == "none":
            return None
        if setting == "generator" or (setting == "auto" and self.backend.chat):
            return self.backend
        if setting == "auto":  # the first escalation target's model, else the generator
            first = next(iter(self._escalation_factories), None)
            return self.backend if first is None else self._escalation_backend_locked(first)
        # A local model: the escalation target's instance when one runs that model.
        for target, model in self.config.escalation_targets.items():
            if model == setting and target in self._escalation_factories:
                return self._escalation_backend_locked(target)
        return local_backend(self.config, setting)

    def standalone(self, history: Sequence[Turn], question: str) -> str:
        """``question`` rewritten to stand without ``history`` (as asked when there is no
        earlier user turn, no rewriter, or no usable rewrite)."""
        if not needs_rewrite(history):
            return question
        try:
            rewriter = self.rewriter()
        except GuardrailError:
            return question  # a rewriter that cannot be built (a failed target): as asked
        if rewriter is None:
            return question
        return standalone_question(rewriter, history, question)

    def escalation_backend(self, target: str) -> GeneratorBackend:
        """The backend of a configured escalation target, built on first use (a
        ``ConfigError`` for an unconfigured one)."""
        with self._escalation_lock:
            return self._escalation_backend_locked(target)

    def prepare_escalation(self) -> dict[str, str]:
        """Build (and so prepare: convert) every escalation target now, at start-up, so that
        no request waits for a conversion. A target that fails stays failed: requests that
        escalate to it get the policy's ``on_failure`` at once. Returns the failures, by
        target."""
        for target in self._escalation_factories:
            try:
                self.escalation_backend(target)
            except GuardrailError as exc:
                with self._escalation_lock:
                    self._escalation_failures[target] = str(exc)
        return dict(self._escalation_failures)

    def _escalation_backend_locked(self, target: str) -> GeneratorBackend:
        if target in self._escalation_failures:
            raise BackendError(
                f"escalation target {target!r} could not be prepared at start-up: "
                f"{self._escalation_failures[target]}"
            )
        if target not in self._escalation_backends:
            factory = self._escalation_factories.get(target)
            if factory is None:
                raise ConfigError(
                    f"escalation target {target!r} is not configured; configured targets: "
                    f"{', '.join(self._escalation_factories) or 'none'}"
                )
            self._escalation_backends[target] = factory()
        return self._escalation_backends[target]

    def answers(
        self,
        question: str,
        passages: Sequence[Passage],
        judge: Judge,
        history: Sequence[Turn] = (),
    ) -> Callable[[str | None], Assessed]:
        """The assessed answer of the generator (``None``) or of an escalation target, to
        the question with these passages (an ``AnswerSource`` for ``judge_question``)."""

        def answer(target: str | None) -> Assessed:
            if target is None:
                return self.assess(
                    self.backend, question, passages, judge, self.guard, history=history
                )
            backend = self.escalation_backend(target)
            return self.assess(backend, question, passages, judge, history=history)

        return answer

    # -- the whole thing -------------------------------------------------------------------
    def ask(
        self,
        question: str,
        *,
        passages: Sequence[Passage] | None = None,
        tenant: str | None = None,
        history: Sequence[Turn] = (),
        search: Callable[[str], Sequence[Passage]] | None = None,
    ) -> Response:
        """Answer, hedge, defer or escalate one question, with the full decision record.

        ``tenant`` picks the tenant's policy from the policy file (the base policy when the
        file has no overrides for it). In shadow mode the decision is recorded but the
        model's answer passes through unchanged. ``history``: the conversation's earlier
        ``(role, content)`` turns; a follow-up is rewritten into a standalone question (the
        record keeps both), and a chat model is shown the conversation. ``search`` finds the
        passages of the (standalone) question instead of the index (a LangChain retriever).
        """
        asked = self.check_question(question)
        judge = self.judge(tenant)
        policy = judge.policy
        begin = time.perf_counter()
        question = self.standalone(history, asked)
        start = time.perf_counter()
        rewrite_seconds = start - begin
        if passages is not None:
            found = list(passages)
        else:
            found = list(search(question)) if search is not None else self.retrieve(question)
        retrieve_seconds = time.perf_counter() - start
        verdict = judge_question(judge, self.answers(question, found, judge, history), self.ledger)
        assessed, decision, escalated = verdict.assessed, verdict.decision, verdict.escalated
        if assessed.passages is not None:
            found = list(assessed.passages)  # what the answering model was shown
        shadow_mode = judge.shadow_mode
        parametric_answer = None
        if (
            "knowledge_conflict" in assessed.flags
            and decision.action is not Action.DEFER
            and not shadow_mode
        ):
            # Only on a conflict: name what the model would say without the documents.
            prompts = prompt_for(assessed.backend, self.config.max_passage_words)
            try:
                parametric_answer = assessed.backend.generate(
                    prompts.parametric(question), max_new_tokens=self.config.max_new_tokens
                ).text
            except BackendError:
                # The decision is made: an upstream that fails on this extra question costs
                # the caveat its named answer, not the decision.
                parametric_answer = None
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
            confidence_method=judge.scorer.method,
            signals=dict(assessed.signals),
            signal_sources=dict(assessed.sources),
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
                **({"rewrite": rewrite_seconds} if needs_rewrite(history) else {}),
                "retrieve": retrieve_seconds,
                **assessed.timings,
                "total": time.perf_counter() - begin,
            },
            original_question=asked if needs_rewrite(history) else None,
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
        judge = self.shadow.current.judge(tenant)
        assessment = judge.assessment(
            assessed.signals, assessed.flags, abstained=assessed.abstained
        )
        return {**judge.decide(assessment).to_dict(), "confidence": assessment.confidence}


def _runtime(
    policy: Policy | PolicySet | PolicyRuntime, scorer: ConfidenceScorer | None
) -> PolicyRuntime:
    if isinstance(policy, PolicyRuntime):
        return policy
    return PolicyRuntime.from_policy(policy, scorer)
