"""Settings of the HTTP service: the pipeline's settings plus where and how to serve.

``ServiceSettings`` extends ``GuardrailConfig``, so one flat settings object with the
``GUARDRAIL_`` prefix covers both (``GUARDRAIL_POLICY``, ``GUARDRAIL_INDEX_DIR``,
``GUARDRAIL_CACHE_DIR``, ``GUARDRAIL_PORT``, ...) and can be handed to
``Guardrail.from_config`` as it is. It is read when ``create_app`` or ``guardrail serve`` is
called, never at import time.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from guardrail.config import GuardrailConfig


class ServiceSettings(GuardrailConfig):
    """Settings of the pipeline (inherited) and of the HTTP server."""

    model_config = SettingsConfigDict(env_prefix="GUARDRAIL_", extra="forbid")

    host: str = "127.0.0.1"
    """Interface to listen on; ``0.0.0.0`` in a container."""
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=65536, ge=1)
    """Larger request bodies are refused with 413 before they are parsed."""
    admin_key: SecretStr | None = None
    """The key of admin operations (``Authorization: Bearer <key>``); unset disables them.
    Never logged or shown (``SecretStr``)."""
