"""A plain LangChain RAG chatbot: retrieve, stuff the passages into a prompt, answer.

    python examples/plain_rag_bot.py

It answers every question, including those its documents say nothing about.
Compare with guarded_rag_bot.py, the same bot with guardrail in front of it.
"""

from __future__ import annotations

from common import QUESTIONS, demo_retriever
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from guardrail.langchain import LocalChatModel


def format_docs(docs: list) -> str:
    return " ".join(doc.page_content for doc in docs)


def main() -> None:
    retriever = demo_retriever()
    llm = LocalChatModel()  # the embedded Gemma-3-270M; any LangChain chat model works
    prompt = ChatPromptTemplate.from_messages(
        [("human", "Context: {context}\n\nQuestion: {question}\nAnswer:")]
    )
    chain = (
        {"context": retriever | RunnableLambda(format_docs), "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    for question in QUESTIONS:
        print(f"Q: {question}\nA: {chain.invoke(question)}\n")


if __name__ == "__main__":
    main()
