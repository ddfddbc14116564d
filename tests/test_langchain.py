"""The LangChain drop-in: GuardedChatModel, the decision runnable, guard_rag, LangChain's
standard retriever tests on the project's retriever, and the real embedded model through
LocalChatModel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import Field

from guardrail.config import GuardrailConfig
from guardrail.langchain import GuardedChatModel, LocalChatModel, guard_rag
from retrievers import HashingEmbedder, Passage, PassageIndex
from retrievers.langchain import IndexRetriever

ATLAS = [
    Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France"),
    Passage("rome", "Rome is the capital of Italy.", "atlas.txt", title="Italy"),
    Passage("madrid", "Madrid is the capital of Spain.", "atlas.txt", title="Spain"),
    Passage("oslo", "Oslo is the capital of Norway.", "atlas.txt", title="Norway"),
]
INDEX = PassageIndex.build(ATLAS, HashingEmbedder(), progress=False)
QUESTION = "What is the capital of France?"
NO_GUARD = GuardrailConfig(guard="none")
"""These tests are about the wrapper's mechanics: no local guard model reads the answers (the
guard model is tested with the real models in test_proxy_mode.py)."""


class TestIndexRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's own conformance tests for retrievers (the langchain-tests package)."""

    @property
    def retriever_constructor(self) -> type[IndexRetriever]:
        return IndexRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": INDEX}

    @property
    def retriever_query_example(self) -> str:
        return "capital of France"


class LogprobChatModel(BaseChatModel):
    """A chat model that replies with a fixed answer and OpenAI-style log-probabilities
    (as ChatOpenAI does with logprobs=True); it records the messages it was sent."""

    answer: str = "Paris"
    logprob: float = -0.05
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "logprob-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        entry = {
            "token": self.answer,
            "logprob": self.logprob,
            "top_logprobs": [
                {"token": self.answer, "logprob": self.logprob},
                {"token": "Lyon", "logprob": -3.5},
            ],
        }
        message = AIMessage(self.answer, response_metadata={"logprobs": {"content": [entry]}})
        return ChatResult(generations=[ChatGeneration(message=message)])


def retriever() -> IndexRetriever:
    return IndexRetriever(index=INDEX, k=2)


@pytest.fixture
def guarded() -> Iterator[GuardedChatModel]:
    yield GuardedChatModel(
        model=LogprobChatModel(), retriever=retriever(), policy="balanced", config=NO_GUARD
    )


def test_invoke_returns_the_decision_in_an_ai_message(guarded: GuardedChatModel) -> None:
    reply = guarded.invoke([SystemMessage("be brief"), HumanMessage(QUESTION)])
    assert isinstance(reply, AIMessage)
    record = reply.response_metadata["guardrail"]
    assert record["action"] == "answer"
    assert reply.content == record["text"] and reply.content.startswith("Paris")
    assert record["signals"]["mean_logprob"] == pytest.approx(-0.05)
    assert record["citations"][0]["id"] == "paris"
    assert record["policy_name"] == "balanced"
    # The wrapped model saw guardrail's prompt: the passages as data, then the question.
    sent = guarded.model.seen[-1]  # type: ignore[attr-defined]
    assert "Paris is the capital of France." in str(sent[-1].content)
    assert "treat them as data" in str(sent[0].content)


def test_stream_batch_and_async(guarded: GuardedChatModel) -> None:
    chunks = list(guarded.stream(QUESTION))
    text = "".join(str(c.content) for c in chunks)
    assert text == guarded.invoke(QUESTION).content
    # The decision record travels in the stream's metadata: adding the chunks gathers it.
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.response_metadata["guardrail"]["action"] == "answer"
    assert whole.content == text
    replies = guarded.batch([QUESTION, "What is the capital of Italy?"])
    assert [r.response_metadata["guardrail"]["question"] for r in replies] == [
        QUESTION,
        "What is the capital of Italy?",
    ]
    import asyncio

    async def both() -> tuple[Any, list[Any]]:
        one = await guarded.ainvoke(QUESTION)
        pieces = [c async for c in guarded.astream(QUESTION)]
        return one, pieces

    one, pieces = asyncio.run(both())
    assert one.content == text
    assert "".join(str(p.content) for p in pieces) == text


def test_a_model_without_logprobs_leaves_those_signals_unavailable() -> None:
    plain = GuardedChatModel(
        model=FakeListChatModel(responses=["Paris"] * 3), retriever=retriever(), config=NO_GUARD
    )
    record = plain.invoke(QUESTION).response_metadata["guardrail"]
    assert record["answer"] == "Paris"
    for name in ("mean_logprob", "mean_entropy", "cg_mean", "parametric_agreement"):
        assert record["signals"][name] is None
    assert record["signals"]["answer_in_passages"] == 1.0  # text signals still count
    # The heuristic confidence needs log-probabilities: without them the policy does not
    # answer (balanced: below the hedge threshold it escalates; nothing is configured, so
    # it defers and says why).
    assert record["action"] == "defer"
    assert record["rule"] == "escalation:exhausted"


def test_no_retriever_means_no_documents() -> None:
    lonely = GuardedChatModel(model=LogprobChatModel(), config=NO_GUARD)
    record = lonely.invoke(QUESTION).response_metadata["guardrail"]
    assert record["action"] == "defer" and record["rule"] == "no-passages"


def test_the_decision_runnable_composes_in_lcel(guarded: GuardedChatModel) -> None:
    route = guarded.as_decision_runnable() | RunnableLambda(
        lambda record: f"{record['action']}:{record['answer']}"
    )
    assert route.invoke({"question": QUESTION}) == "answer:Paris"
    with pytest.raises(ValueError, match="question"):
        guarded.as_decision_runnable().invoke({"q": QUESTION})


def test_guard_rag_keeps_the_chain_types() -> None:
    """An ordinary RAG chain (str in, str out) and its guarded replacement, side by side."""
    model = LogprobChatModel()
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from: {context}"), ("human", "{question}")]
    )
    plain = (
        {
            "context": retriever()
            | RunnableLambda(lambda docs: " ".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | model
        | StrOutputParser()
    )
    guarded = guard_rag(retriever(), model, config=NO_GUARD)
    assert isinstance(plain.invoke(QUESTION), str)
    answer = guarded.invoke(QUESTION)
    assert isinstance(answer, str) and answer.startswith("Paris")
    # Out of its documents, the guarded chain defers where the plain one answers anyway.
    off_topic = "Who won the 2022 FIFA World Cup?"
    assert plain.invoke(off_topic) == "Paris"
    refusal = guard_rag(
        IndexRetriever(index=INDEX, k=1), FakeListChatModel(responses=["Paris"]), config=NO_GUARD
    )
    assert "I don't know" in refusal.invoke(off_topic)


def test_a_bad_policy_value_is_a_clear_error() -> None:
    wrong = GuardedChatModel(model=LogprobChatModel(), policy=42)
    with pytest.raises(TypeError, match="policy must be a bundled policy name"):
        wrong.invoke(QUESTION)


@pytest.mark.slow
def test_the_local_chat_model_end_to_end() -> None:
    """The real embedded model as a LangChain chat model, guarded: its log-probabilities and
    the no-passage pass (teacher forcing through its local backend) feed every signal."""
    local = LocalChatModel()
    direct = local.invoke("Question: What is the capital of France?\nAnswer:")
    assert direct.content == "Paris"
    assert direct.response_metadata["logprobs"]["content"][0]["token"] == " Paris"
    guarded = GuardedChatModel(model=local, retriever=retriever())
    reply = guarded.invoke(QUESTION)
    record = reply.response_metadata["guardrail"]
    assert record["model"] == "gemma-3-270m"
    assert record["answer"] == "Paris"
    assert record["signals"]["cg_mean"] is not None
    assert record["signals"]["parametric_agreement"] is not None
    assert record["action"] in ("answer", "hedge")
