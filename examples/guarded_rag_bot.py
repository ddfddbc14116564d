"""The same RAG chatbot as plain_rag_bot.py, with guardrail in front of it.

    python examples/guarded_rag_bot.py

The change is three lines: import guard_rag, and build the chain from the same retriever and
model with it. Same input (a question string), same output (an answer string); questions that
the documents do not support get "I don't know" instead of a guess.
"""

from __future__ import annotations

from common import QUESTIONS, demo_retriever

from guardrail.langchain import GuardedChatModel, LocalChatModel, guard_rag


def main() -> None:
    retriever = demo_retriever()
    llm = LocalChatModel()
    chain = guard_rag(retriever, llm, policy="balanced")  # <- instead of the hand-made chain
    for question in QUESTIONS:
        print(f"Q: {question}\nA: {chain.invoke(question)}\n")

    # The same, as a chat model whose replies carry the decision record.
    guarded = GuardedChatModel(model=llm, retriever=retriever, policy="balanced")
    reply = guarded.invoke(QUESTIONS[-1])
    record = reply.response_metadata["guardrail"]
    print(f"decision: {record['action']} (rule {record['rule']}): {'; '.join(record['reasons'])}")


if __name__ == "__main__":
    main()
