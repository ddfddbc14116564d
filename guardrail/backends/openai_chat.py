"""A backend over an OpenAI-compatible ``POST /v1/chat/completions`` route: proxy mode against
the chat endpoints nearly every chatbot already uses (OpenAI and the gateways that speak its
API, vLLM, llama.cpp's server, Ollama, LiteLLM).

The pipeline's chat prompt (a system message that declares the passages to be quoted data,
the passages in ``<passage>`` tags and the question in the user turn) is sent as messages.
``logprobs: true`` with ``top_logprobs: k`` is asked for; an upstream that refuses the
parameter (a 400 or 422) is asked again without it, once, and not asked for it again (a 429 or
a 5xx is a failure and changes nothing); an upstream that ignores it returns none. Without
log-probabilities the token signals of the upstream are unavailable and a local guard model
reads the answer instead (``guardrail.pipeline``).
A chat route cannot teacher-force a given text, so ``score`` is never available here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from guardrail.backends.chat import (
    chat_token_stats,
    content_text,
    messages_prompt,
    prompt_messages,
)
from guardrail.backends.openai_compat import (
    OpenAIClient,
    ScoringUnavailable,
    UpstreamRefusal,
    first_choice,
    first_line,
    prompt_token_count,
)
from guardrail.errors import BackendError
from guardrail.types import FinishReason, Generation, TokenStats

REFUSAL_STATUSES = (400, 422)
"""The statuses with which a server rejects a request's parameters: only these make the chat
backend ask again without log-probabilities (a 429, a 5xx or a 401 is a failure, not a
refusal of the parameter)."""


class OpenAIChatBackend(OpenAIClient):
    """A ``GeneratorBackend`` over a server's ``/v1/chat/completions`` route.

    ``logprobs``: ``True`` asks for them on every request, ``False`` never, ``None`` (the
    default) asks until the upstream refuses the parameter once."""

    chat = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        top_logprobs: int = 5,
        logprobs: bool | None = None,
        timeout_seconds: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            model,
            api_key=api_key,
            top_logprobs=top_logprobs,
            timeout_seconds=timeout_seconds,
            transport=transport,
        )
        self.logprobs = logprobs
        self._ask_logprobs = logprobs is not False

    @property
    def asks_logprobs(self) -> bool:
        """Whether the next request asks for log-probabilities."""
        return self._ask_logprobs

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The messages, kept as messages (the server applies its own template)."""
        return messages_prompt(messages)

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """One chat completion of the prompt's messages; the answer is the reply's first
        line, with its top-k token statistics when the upstream returns them."""
        start = time.perf_counter()
        body: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": r, "content": c} for r, c in prompt_messages(prompt)],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        data = self._complete(body)
        choice = first_choice(data, self._shown_url)
        content = self._answer_text(choice.get("message"))
        logprobs = choice.get("logprobs")
        entries = logprobs.get("content") if isinstance(logprobs, dict) else None
        stats = chat_token_stats(entries, self._id)
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "eos"
        return Generation(
            text=first_line(content),
            stats=stats,
            prompt_tokens=prompt_token_count(data),
            finish_reason=finish,
            seconds=time.perf_counter() - start,
        )

    def _answer_text(self, message: Any) -> str:
        """The reply message's text: its content, or its content parts' text joined. No
        content (``null``, or a ``refusal`` in its place) is an empty answer, decided as the
        model saying nothing; a tool call instead of text is a ``BackendError``."""
        if not isinstance(message, dict):
            raise BackendError(f"the model server at {self._shown_url} returned no message")
        text = content_text(message.get("content"))
        if text is None and message.get("tool_calls"):
            raise BackendError(
                f"the model server at {self._shown_url} answered with a tool call instead of "
                "text; guardrail judges text answers (ask the upstream without tools)"
            )
        return text or ""

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self._ask_logprobs:
            return self._post("/chat/completions", body)
        try:
            return self._post(
                "/chat/completions",
                {**body, "logprobs": True, "top_logprobs": self.top_logprobs},
                refused=UpstreamRefusal,
            )
        except UpstreamRefusal as exc:
            # A failure (overloaded, rate-limited, unauthorised, ...) is not a refusal of the
            # parameter, and logprobs asked for explicitly make the refusal the answer.
            if exc.status not in REFUSAL_STATUSES or self.logprobs:
                raise BackendError(str(exc)) from exc
        # The upstream refused the request with logprobs: ask without, and from now on.
        data = self._post("/chat/completions", body)
        self._ask_logprobs = False
        return data

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """Not available: a chat route cannot teacher-force a given answer."""
        raise ScoringUnavailable(
            f"the chat route of {self._shown_url} cannot score a given answer (no teacher "
            "forcing); a local guard model can (setting guard)"
        )
