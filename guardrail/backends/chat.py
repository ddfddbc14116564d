"""What every backend over a chat API shares: prompts kept as messages, and the answer's
token statistics read from OpenAI's chat ``logprobs`` format.

A chat backend's ``render_chat`` cannot return rendered text (the server applies its own
template), so it returns the messages themselves, encoded as a string that its ``generate``
decodes again (:func:`messages_prompt`, :func:`prompt_messages`). A plain string that is not
such an encoding is one user message.

``logprobs.content`` is a list of ``{"token", "logprob", "top_logprobs": [{"token",
"logprob"}]}``. The pipeline judges the answer's first line (its prompts ask for a one-line
answer), so only the entries of that line are kept (:func:`first_line_entries`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guardrail.backends.openai_compat import (
    alternatives,
    finite_logprob,
    first_line,
    topk_token_stats,
)
from guardrail.types import TokenStats

__all__ = [
    "MESSAGES_MARK",
    "chat_token_stats",
    "content_text",
    "first_line",
    "first_line_entries",
    "messages_prompt",
    "prompt_messages",
]

MESSAGES_MARK = "\x00chat-messages\x00"
"""Marks a prompt that is a JSON list of ``[role, content]`` pairs (a NUL byte never occurs in
a rendered prompt: questions and passages are text)."""


def messages_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """``(role, content)`` messages encoded as a prompt string for a chat backend."""
    return MESSAGES_MARK + json.dumps([[role, content] for role, content in messages])


def prompt_messages(prompt: str) -> list[tuple[str, str]]:
    """The messages of a prompt made by :func:`messages_prompt`; any other text is one user
    message."""
    if not prompt.startswith(MESSAGES_MARK):
        return [("user", prompt)]
    return [(str(role), str(content)) for role, content in json.loads(prompt[len(MESSAGES_MARK) :])]


def content_text(content: Any) -> str | None:
    """A chat message's content as text: a string as it is; a list of content parts as its
    text parts joined (OpenAI's ``{"type": "text", "text": ...}``, or plain strings; image,
    audio and reasoning parts carry no answer text); None when there is no content at all
    (``null``, as beside a tool call)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif (
            isinstance(part, Mapping)
            and isinstance(part.get("text"), str)
            and part.get("type", "text") in ("text", "output_text")
        ):
            texts.append(part["text"])
    return "".join(texts)


def first_line_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``logprobs.content`` entries up to the first line break after some text."""
    kept: list[Mapping[str, Any]] = []
    seen = ""
    for entry in entries:
        piece = str(entry.get("token", ""))
        if "\n" in piece and seen.strip():
            break
        kept.append(entry)
        seen += piece
    return kept


def chat_token_stats(
    entries: Any,
    id_of: Callable[[str], int],
    token_ids: Sequence[int] | None = None,
) -> TokenStats:
    """``TokenStats`` of a chat reply's first line from its ``logprobs.content`` entries; empty
    when there are none, or when one of them is malformed or its log-probability is not a
    finite number (``null`` or an infinity): the token signals are then unavailable rather
    than wrong, and a guard model reads the answer instead."""
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        return TokenStats.empty()
    kept = first_line_entries(entries)
    tokens = [e.get("token") for e in kept]
    values = [finite_logprob(e.get("logprob")) for e in kept]
    tops = [alternatives(e.get("top_logprobs")) for e in kept]
    if not kept or not all(isinstance(t, str) for t in tokens) or None in values or None in tops:
        return TokenStats.empty()
    return topk_token_stats(
        [str(t) for t in tokens],
        [v for v in values if v is not None],
        [t for t in tops if t is not None],
        id_of,
        list(token_ids)[: len(kept)] if token_ids is not None else None,
    )
