"""Generator backends: the interface, the local transformers implementation and the
OpenAI-compatible client.

The transformers backend imports PyTorch, so it is loaded on first access
(``guardrail.backends.TransformersBackend``), not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.backends.base import GeneratorBackend

if TYPE_CHECKING:
    from guardrail.backends.transformers import TransformersBackend, token_stats_from_logits

__all__ = ["GeneratorBackend", "TransformersBackend", "token_stats_from_logits"]

_LAZY = frozenset({"TransformersBackend", "token_stats_from_logits"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from guardrail.backends import transformers

        return getattr(transformers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
