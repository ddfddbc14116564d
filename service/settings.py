"""Settings of the HTTP service: the pipeline's settings plus where and how to serve.

``ServiceSettings`` extends ``GuardrailConfig``, so one flat settings object with the
``GUARDRAIL_`` prefix covers both (``GUARDRAIL_POLICY``, ``GUARDRAIL_INDEX_DIR``,
``GUARDRAIL_CACHE_DIR``, ``GUARDRAIL_PORT``, ...) and can be handed to
``Guardrail.from_config`` as it is. It is read when ``create_app`` or ``guardrail serve`` is
called, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from guardrail.config import GuardrailConfig


class DriftSettings(BaseModel):
    """When the dashboard marks a drift: the same defaults as the alert rules of
    ``deploy/prometheus/rules.yml``, which hold them in their expressions."""

    model_config = ConfigDict(extra="forbid")

    recent_hours: float = Field(default=1.0, gt=0)
    """The recent window."""
    reference_hours: float = Field(default=24.0, gt=0)
    """The reference window (it includes the recent one, as ``rate(...[1d])`` does)."""
    share_change: float = Field(default=0.15, gt=0, le=1)
    """A refusal, hedge or escalation share that moves by more than this is a drift."""
    confidence_drop: float = Field(default=0.1, gt=0, le=1)
    """A mean confidence that falls by more than this is a drift."""
    min_decisions: int = Field(default=30, ge=1)
    """Fewer decisions in the recent window mark nothing (too few to tell)."""

    @model_validator(mode="after")
    def _windows(self) -> DriftSettings:
        if self.reference_hours <= self.recent_hours:
            raise ValueError(
                f"drift reference_hours ({self.reference_hours:g}) must be longer than "
                f"recent_hours ({self.recent_hours:g})"
            )
        return self


class ServiceSettings(GuardrailConfig):
    """Settings of the pipeline (inherited) and of the HTTP server."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDRAIL_", extra="forbid", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    """Interface to listen on; ``0.0.0.0`` in a container."""
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=65536, ge=1)
    """Larger request bodies are refused with 413 before they are parsed."""
    admin_key: SecretStr | None = None
    """The key of admin operations (``Authorization: Bearer <key>``); unset disables them.
    Never logged or shown (``SecretStr``)."""
    api_keys: dict[str, str] = Field(default_factory=dict, repr=False)
    """API key -> tenant name (JSON in ``GUARDRAIL_API_KEYS``). Empty: no key is asked for
    and every request is the base policy's; otherwise every API request needs a key."""
    store: Literal["sqlite", "redis"] = "sqlite"
    """Where decisions are recorded: a SQLite file, or Redis shared by replicas."""
    store_path: Path | None = None
    """The SQLite store (with Redis: the local spool); default under ``cache_dir``."""
    redis_url: str | None = Field(default=None, repr=False)
    """``redis://host:6379/0``; required with ``store: redis``."""
    cache_ttl_seconds: int = Field(default=0, ge=0)
    """Serve a repeated question (same normalised text, corpus, policy, tenant) from the
    response cache for this long; 0 turns the cache off."""
    rate_limit_per_minute: int = Field(default=120, ge=0)
    """Questions per minute per API key (without keys, all callers share one limit); 0: no
    limit. Over the limit: 429 with ``Retry-After``."""
    max_active_questions: int | None = Field(default=None, ge=1)
    """Questions in work at once (past the rate limit and the response cache). Default: 2
    with a local model (it runs one forward pass at a time; the second question does its
    retrieval, verifier and recording meanwhile), 8 in proxy mode (the upstream generates)."""
    max_queued_questions: int = Field(default=16, ge=0)
    """Questions that may wait for a place in work; beyond that a question is refused at
    once with 503 ``overloaded`` and a ``Retry-After`` estimated from recent questions."""
    mode: Literal["embedded", "proxy", "model"] = "embedded"
    """``embedded``: the local model answers; ``proxy``: the OpenAI-compatible server at
    ``upstream_url`` answers and guardrail decides; ``model``: serve the local model itself as
    an OpenAI-compatible model server (no retrieval, no policy)."""
    drift: DriftSettings = Field(default_factory=DriftSettings)
    """When the dashboard marks a drift (JSON in ``GUARDRAIL_DRIFT``, e.g.
    ``{"share_change": 0.2}``; the keys not given keep their defaults)."""
    served_model: str = "guardrail"
    """The model name clients give to /v1/chat/completions (``model``)."""

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        if self.store == "redis" and not self.redis_url:
            raise ValueError("store 'redis' needs redis_url (GUARDRAIL_REDIS_URL)")
        if self.mode == "proxy" and not self.upstream_url:
            raise ValueError(
                "mode 'proxy' needs upstream_url (GUARDRAIL_UPSTREAM_URL), the wrapped "
                "chatbot's OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1"
            )
        if self.mode == "embedded" and self.upstream_url:
            raise ValueError("upstream_url is set: use mode 'proxy' (GUARDRAIL_MODE=proxy)")
        return self

    def resolved_max_active(self) -> int:
        """``max_active_questions`` with its default for the mode filled in."""
        if self.max_active_questions is not None:
            return self.max_active_questions
        return 8 if self.mode == "proxy" else 2

    def resolved_store_path(self) -> Path:
        """The SQLite store file (or Redis spool), with the default filled in."""
        name = "decisions.sqlite" if self.store == "sqlite" else "decisions-spool.sqlite"
        return self.store_path or self.cache_dir / name
