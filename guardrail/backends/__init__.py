"""Generator backends: the interface and the local transformers implementation."""

from guardrail.backends.base import GeneratorBackend
from guardrail.backends.transformers import TransformersBackend, token_stats_from_logits

__all__ = ["GeneratorBackend", "TransformersBackend", "token_stats_from_logits"]
