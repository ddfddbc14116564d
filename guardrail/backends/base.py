"""The generator backend interface.

A backend has two methods and everything else is built on them:

- ``generate(prompt)``: greedy decoding that stops at the first newline, returning the answer
  tokens with their per-step statistics (log-probability, entropy of the full next-token
  distribution, ...);
- ``score(prompt, continuation)``: ONE teacher-forced forward pass that returns the same
  per-token statistics for a given continuation. The pipeline uses it to read the parametric
  (no-passage) distributions at every position of the contextual answer.

``chat`` tells the prompt builder whether the model expects a chat template (instruction-tuned
models) or plain few-shot text (base models); ``render_chat`` applies the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from guardrail.types import Generation, TokenStats


@runtime_checkable
class GeneratorBackend(Protocol):
    """What the pipeline needs from a language model."""

    name: str
    chat: bool

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """Decode a continuation of ``prompt`` up to the first newline; with ``probe``, also
        return ``log p(probe | prompt)`` (None where the backend cannot compute it)."""
        ...

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """Teacher-force ``continuation`` after ``prompt`` in one pass; token ids or text."""
        ...

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """Render (role, content) messages with the model's chat template, ready to generate."""
        ...
