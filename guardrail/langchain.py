"""LangChain drop-in: wrap an existing chat model (and retriever) so that it answers, hedges,
defers or escalates under a guardrail policy.

    from guardrail.langchain import GuardedChatModel

    llm = GuardedChatModel(model=llm, retriever=retriever, policy="balanced")

``GuardedChatModel`` is itself a LangChain chat model (``invoke``, ``stream``, ``batch``,
async): the last human message is the question, the retriever finds the passages, the wrapped
model answers, guardrail measures and decides, and the reply is an ``AIMessage`` whose content
is the rendered answer and whose ``response_metadata["guardrail"]`` is the decision record.
Where the wrapped model returns token log-probabilities (``ChatOpenAI(logprobs=True)``, or
:class:`LocalChatModel`), they feed the signals; where it does not, those signals are
``None`` (unavailable) and the policy decides on the rest. The no-passage pass of Confidence
Gain needs teacher forcing: a model that exposes a local backend (:class:`LocalChatModel`)
scores its own answers; any other model's answer is read by the local guard model (the
embedded model, setting ``guard``), which gives the Confidence Gain signals (and the token
signals, where the wrapped model returned no log-probabilities). ``guard: none`` leaves them
unavailable.

``guard_rag(retriever, model)`` turns the two parts of an existing RAG chain into a runnable
with the chain's usual types (a question string in, the answer string out), and
``GuardedChatModel.as_decision_runnable()`` maps ``{"question": ...}`` to the decision record,
for LCEL pipelines that route on the action.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import ConfigDict, Field, PrivateAttr

from guardrail.backends.base import GeneratorBackend
from guardrail.backends.chat import (
    MESSAGES_MARK,
    chat_token_stats,
    content_text,
    first_line,
    messages_prompt,
    prompt_messages,
)
from guardrail.backends.openai_compat import ScoringUnavailable
from guardrail.backends.transformers import TransformersBackend
from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError
from guardrail.policy_runtime import PolicyRuntime
from guardrail.render import text_pieces
from guardrail.text import valid_unicode
from guardrail.types import Generation, Response, TokenStats
from guardrail.verifier import verifier_from_setting
from policies import Policy
from policies.loader import PolicySet
from retrievers.embedding import SentenceTransformerEmbedder
from retrievers.types import Passage

_ROLES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def _text(content: Any) -> str:
    """A message's content as text (the text parts of a list content)."""
    return content_text(content) or ""


def logprob_entries(message: BaseMessage) -> list[dict[str, Any]] | None:
    """The OpenAI-style ``logprobs.content`` list of a chat model's reply, if it has one."""
    logprobs = message.response_metadata.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        return list(logprobs["content"])
    return None


class LangChainChatBackend:
    """A guardrail ``GeneratorBackend`` over any LangChain chat model."""

    def __init__(self, model: BaseChatModel, *, name: str | None = None) -> None:
        self.model = model
        self.name = name or str(
            getattr(model, "model_name", None) or getattr(model, "model", None) or model._llm_type
        )
        # A model over a base (completion) LM takes guardrail's few-shot prompt as one message.
        self.chat = not getattr(model, "prefers_completion_prompts", False)
        self._vocab: dict[str, int] = {}
        self._lock = threading.Lock()

    def _id(self, piece: str) -> int:
        with self._lock:
            return self._vocab.setdefault(piece, len(self._vocab))

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The messages, kept as messages (``generate`` sends them as LangChain messages)."""
        return messages_prompt(messages)

    def _messages(self, prompt: str) -> list[BaseMessage]:
        return [_ROLES[role](content) for role, content in prompt_messages(prompt)]

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """Ask the wrapped model; its log-probabilities, if it returns any, become the stats."""
        start = time.perf_counter()
        try:
            reply = self.model.invoke(self._messages(prompt))
        except Exception as exc:  # any provider error: the pipeline reports it as a backend error
            raise BackendError(f"the wrapped chat model {self.name} failed: {exc}") from exc
        text = valid_unicode(_text(reply.content))
        ids = reply.response_metadata.get("token_ids")
        stats = chat_token_stats(
            logprob_entries(reply) or [], self._id, list(ids) if isinstance(ids, list) else None
        )
        return Generation(
            text=first_line(text),
            stats=stats,
            prompt_tokens=0,
            finish_reason="newline",
            seconds=time.perf_counter() - start,
        )

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """Teacher forcing, which only a model with a local backend offers."""
        local: TransformersBackend | None = getattr(self.model, "guardrail_backend", None)
        if local is None:
            raise ScoringUnavailable(
                f"{self.name} cannot score a given answer (no teacher forcing through "
                "LangChain); the Confidence Gain signals are unavailable"
            )
        if prompt.startswith(MESSAGES_MARK):
            prompt = local.render_chat(prompt_messages(prompt))
        return local.score(prompt, continuation)


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over the embedded local model (offline, with log-probabilities).

    Its replies carry OpenAI-style ``response_metadata["logprobs"]`` (top-k per token) and the
    local ``token_ids``, and it exposes its backend (``guardrail_backend``) so that a
    :class:`GuardedChatModel` around it can run the no-passage pass too.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = "gemma-3-270m"
    max_tokens: int = Field(default=64, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_logprobs: int = Field(default=5, ge=0, le=20)
    config: GuardrailConfig | None = None
    _backend: TransformersBackend | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "guardrail-local"

    @property
    def guardrail_backend(self) -> TransformersBackend:
        """The local backend (loaded on first use)."""
        if self._backend is None:
            from guardrail.pipeline import local_backend

            self._backend = local_backend(self.config or GuardrailConfig(), self.model_name)
        return self._backend

    @property
    def prefers_completion_prompts(self) -> bool:
        """A base model: a lone human message is the raw prompt (few-shot text)."""
        return not self.guardrail_backend.chat

    def _prompt(self, messages: Sequence[BaseMessage]) -> str:
        backend = self.guardrail_backend
        if backend.chat:
            roles = {"human": "user", "ai": "assistant", "system": "system"}
            return backend.render_chat([(roles[m.type], _text(m.content)) for m in messages])
        if len(messages) == 1 and isinstance(messages[0], HumanMessage):
            return _text(messages[0].content)
        lines = [f"{m.type.capitalize()}: {_text(m.content)}" for m in messages]
        return "\n".join(lines) + "\nAi:"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        backend = self.guardrail_backend
        generation, alternatives = backend.completion(
            self._prompt(messages),
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_logprobs,
            stop_at_newline=not backend.chat,
        )
        pieces = [backend.decode_token(t) for t in generation.stats.tokens]
        content = [
            {
                "token": piece,
                "logprob": generation.stats.logprobs[i],
                "top_logprobs": [
                    {"token": backend.decode_token(t), "logprob": lp}
                    for t, lp in (alternatives[i] if alternatives else [])
                ],
            }
            for i, piece in enumerate(pieces)
        ]
        message = AIMessage(
            content=generation.text,
            response_metadata={
                "model_name": self.model_name,
                "finish_reason": generation.finish_reason,
                "logprobs": {"content": content},
                "token_ids": list(generation.stats.token_ids),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _passages(documents: Sequence[Document]) -> list[Passage]:
    passages = []
    for i, doc in enumerate(documents, start=1):
        meta = doc.metadata or {}
        score = meta.get("score")
        passages.append(
            Passage(
                id=str(doc.id or meta.get("id") or f"doc-{i}"),
                text=doc.page_content,
                source=str(meta.get("source", "retriever")),
                title=str(meta.get("title", "") or ""),
                score=float(score) if isinstance(score, int | float) else None,
            )
        )
    return passages


class GuardedChatModel(BaseChatModel):
    """Any LangChain chat model, guarded: it answers only what its passages support.

    ``policy`` is a bundled policy name, a policy file path, or a loaded policy; ``tenant``
    picks a tenant's policy from the file. Without a ``retriever`` the model answers from no
    documents, which the bundled policies defer.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: BaseChatModel
    retriever: BaseRetriever | None = None
    policy: Any = "balanced"
    tenant: str | None = None
    config: GuardrailConfig | None = None
    _guard: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "guardrail-guarded"

    @property
    def guard(self) -> Any:
        """The guardrail pipeline around the wrapped model (built on first use)."""
        if self._guard is None:
            from guardrail.pipeline import Guardrail, guard_backend

            policy = self.policy
            if isinstance(policy, str):
                policy = PolicyRuntime.from_setting(policy)
            if not isinstance(policy, Policy | PolicySet | PolicyRuntime):
                raise TypeError(
                    "policy must be a bundled policy name, a policy file path, a Policy, a "
                    f"PolicySet or a PolicyRuntime; got {type(policy).__name__}"
                )
            backend: GeneratorBackend = LangChainChatBackend(self.model)
            # The sentence embedder of answer_sentence_similarity and the verifier (both
            # loaded on first use): a calibrator fitted with them would read their absence as
            # "answer not found".
            config = self.config or GuardrailConfig()
            # A model with a local backend scores its own answers; any other is read by the
            # local guard model (setting guard; ``none`` leaves Confidence Gain unavailable).
            scores_itself = getattr(self.model, "guardrail_backend", None) is not None
            embedder = SentenceTransformerEmbedder()
            self._guard = Guardrail(
                backend=backend,
                policy=policy,
                config=config,
                embedder=embedder,
                verifier=verifier_from_setting(config.verifier, shared=embedder.token_model),
                guard=guard_backend(config, scores_itself=scores_itself),
            )
        return self._guard

    def decide(self, question: str, history: Sequence[tuple[str, str]] = ()) -> Response:
        """The full guardrail response for one question (after ``history``, the earlier
        ``(role, content)`` turns: a follow-up is rewritten into a standalone question, and
        the retriever searches for that)."""

        def search(standalone: str) -> list[Passage]:
            if self.retriever is None:
                return []
            return _passages(self.retriever.invoke(standalone))

        response: Response = self.guard.ask(
            question, tenant=self.tenant, history=history, search=search
        )
        return response

    @staticmethod
    def _conversation(messages: Sequence[BaseMessage]) -> tuple[str, list[tuple[str, str]]]:
        """The last human message, and the human and AI messages before it; only system
        messages may follow it."""
        for position in range(len(messages) - 1, -1, -1):
            if isinstance(messages[position], HumanMessage):
                after = [
                    type(m).__name__
                    for m in messages[position + 1 :]
                    if not isinstance(m, SystemMessage)
                ]
                if after:
                    raise ValueError(
                        f"the conversation ends with {after[-1]} after the last human "
                        "message; guardrail answers the last human message, so the "
                        "conversation must end with it"
                    )
                history = [
                    ("user" if isinstance(m, HumanMessage) else "assistant", _text(m.content))
                    for m in messages[:position]
                    if isinstance(m, HumanMessage | AIMessage)
                ]
                return _text(messages[position].content), history
        raise ValueError("the conversation has no human message; the last one is the question")

    def _message(self, response: Response) -> AIMessage:
        return AIMessage(
            content=response.text,
            response_metadata={"guardrail": response.to_dict(), "model_name": response.model},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        response = self.decide(*self._conversation(messages))
        return ChatResult(generations=[ChatGeneration(message=self._message(response))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The decision is made first; then its text streams, and the record comes last."""
        response = self.decide(*self._conversation(messages))
        for piece in text_pieces(response.text):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata={"guardrail": response.to_dict(), "model_name": response.model},
            )
        )

    def as_decision_runnable(self) -> Runnable[dict[str, Any], dict[str, Any]]:
        """A runnable from ``{"question": ...}`` to the decision record (a dict)."""

        def run(inputs: dict[str, Any]) -> dict[str, Any]:
            if not isinstance(inputs, dict) or not isinstance(inputs.get("question"), str):
                raise ValueError('expected {"question": "..."}')
            return self.decide(inputs["question"]).to_dict()

        return RunnableLambda(run, name="guardrail_decision")


def guard_rag(
    retriever: BaseRetriever,
    model: BaseChatModel,
    *,
    policy: Any = "balanced",
    tenant: str | None = None,
    config: GuardrailConfig | None = None,
) -> Runnable[str, str]:
    """The guarded version of ``retriever``-then-``model`` RAG chains that map a question
    string to an answer string: same input and output types, answers only what the retrieved
    passages support."""
    guarded = GuardedChatModel(
        model=model, retriever=retriever, policy=policy, tenant=tenant, config=config
    )

    def answer(question: str) -> str:
        return guarded.decide(question).text

    return RunnableLambda(answer, name="guarded_rag")
