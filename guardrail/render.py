"""Turning a decision into the text the user reads, with citations."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from guardrail.text import contains_phrase, normalize_answer
from guardrail.types import Citation
from policies import Action, Decision, Policy
from retrievers import Passage


def cited_passages(answer: str, passages: Sequence[Passage]) -> list[Passage]:
    """The passages that contain the answer, or the best passage when none does."""
    needle = normalize_answer(answer)
    holding = [p for p in passages if needle and contains_phrase(p.text, needle)]
    return holding or list(passages[:1])


def citations(passages: Sequence[Passage]) -> tuple[Citation, ...]:
    """Citation records for passages."""
    return tuple(Citation(p.id, p.source, p.title, p.score) for p in passages)


def _source_line(passages: Sequence[Passage]) -> str:
    labels = [f"[{i}] {p.title or p.source} ({p.id})" for i, p in enumerate(passages, start=1)]
    return "Sources: " + "; ".join(labels) if labels else ""


def caveat(
    confidence: float, flag_details: Mapping[str, str], parametric_answer: str | None, answer: str
) -> str:
    """One sentence naming what made the answer uncertain."""
    if "knowledge_conflict" in flag_details:
        if parametric_answer and normalize_answer(parametric_answer) != normalize_answer(answer):
            return (
                f"the documents say '{answer}', but without them the model would have answered "
                f"'{parametric_answer}'; check the source"
            )
        return "the documents conflict with what the model otherwise believes; check the source"
    return f"the model is only moderately confident in this answer (confidence {confidence:.2f})"


def render(
    *,
    action: Action,
    question: str,
    answer: str,
    confidence: float,
    passages: Sequence[Passage],
    decision: Decision,
    policy: Policy,
    flag_details: Mapping[str, str],
    parametric_answer: str | None,
) -> tuple[str, tuple[Citation, ...]]:
    """The user-facing text for ``action`` and the passages it cites."""
    if action in (Action.ANSWER, Action.HEDGE):
        cited = cited_passages(answer, passages)
        sources = _source_line(cited)
        if action is Action.ANSWER:
            text = f"{answer}\n\n{sources}" if sources else answer
        else:
            settings = policy.actions.hedge
            conflict = (
                "knowledge_conflict" in flag_details
                and parametric_answer is not None
                and normalize_answer(parametric_answer) != normalize_answer(answer)
            )
            template = settings.conflict_template if conflict else settings.template
            text = template.format(
                answer=answer,
                caveat=caveat(confidence, flag_details, parametric_answer, answer),
                sources=sources,
                question=question,
                parametric_answer=parametric_answer or "",
                passage=quote(cited[:1], settings.quote_words),
            )
        return text, citations(cited)
    settings_defer = policy.actions.defer
    message = settings_defer.message
    related = [p for p in passages if p.score is not None][: settings_defer.max_related]
    if not settings_defer.show_related:
        return message, ()
    if related:
        titles = sorted({p.title or p.source for p in related})
        message += " The closest documents found were: " + ", ".join(titles) + "."
    return message, citations(related)


def quote(passages: Sequence[Passage], max_words: int) -> str:
    """The first passage as a quotation of at most ``max_words`` words, with its label."""
    if not passages:
        return ""
    passage = passages[0]
    words = passage.text.split()
    text = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    return f'"{text}" ({passage.title or passage.source}, {passage.id})'


def text_pieces(text: str) -> list[str]:
    """The text in word-sized pieces (each word with its trailing space), for streaming: the
    pieces join back to exactly the text."""
    return re.findall(r"\S+\s*|\s+", text)
