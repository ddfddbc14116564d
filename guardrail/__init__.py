"""guardrail: selective-answering RAG middleware.

Retrieve passages, answer with them, measure how the passages changed the model's certainty
(Confidence Gain) and other signals, and let a YAML policy answer, hedge, defer or escalate.

    >>> from guardrail import Guardrail, GuardrailConfig      # doctest: +SKIP
    >>> guard = Guardrail.from_config(GuardrailConfig())      # doctest: +SKIP
    >>> guard.ask("When did the 1973 oil crisis begin?").text # doctest: +SKIP

Nothing is loaded at import time: models and indexes load on first use.
"""

from guardrail.config import GuardrailConfig
from guardrail.errors import (
    BackendError,
    ConfigError,
    GuardrailError,
    ModelUnavailableError,
    QuestionError,
)
from guardrail.pipeline import Guardrail
from guardrail.types import Citation, Generation, Response, TokenStats

__all__ = [
    "BackendError",
    "Citation",
    "ConfigError",
    "Generation",
    "Guardrail",
    "GuardrailConfig",
    "GuardrailError",
    "ModelUnavailableError",
    "QuestionError",
    "Response",
    "TokenStats",
]
