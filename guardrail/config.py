"""Configuration of a ``Guardrail``: one settings object, passed in, never read at import.

Every field can come from the environment with the ``GUARDRAIL_`` prefix (for example
``GUARDRAIL_CACHE_DIR=/data/cache``, ``GUARDRAIL_TOP_K=4``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    """The user's cache directory for guardrail (models, indexes)."""
    return Path(platformdirs.user_cache_dir("guardrail"))


class GuardrailConfig(BaseSettings):
    """Settings of the pipeline and its models."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDRAIL_", extra="forbid", env_ignore_empty=True
    )

    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Converted models and the default index live here."""
    index_dir: Path | None = None
    """The passage index to search; default ``<cache_dir>/index/default``."""
    policy: str = "balanced"
    """A bundled policy name (balanced, strict, lenient, support-bot) or a policy YAML path."""
    shadow_policy: str | None = None
    """A second policy decided on every answer and recorded, never enforced (to compare)."""
    decision_log: Path | None = None
    """Append every decision record to this JSON Lines file."""
    generator: str = "gemma-3-270m"
    """The local model that answers (in proxy mode: the default guard model)."""
    upstream_url: str | None = None
    """Proxy mode: the OpenAI-compatible server (``http://host:8001/v1``) whose model answers
    instead of the local one."""
    upstream_api: Literal["chat", "completions"] = "chat"
    """The upstream route that answers: ``chat`` (``/v1/chat/completions``, what nearly every
    chatbot serves) or ``completions`` (``/v1/completions`` with the few-shot prompt; its
    ``echo`` can score the answer without the passages)."""
    upstream_logprobs: bool | None = None
    """Ask the upstream for token log-probabilities: ``None`` (the default) until it refuses
    them once, ``True`` always (a refusal is an error), ``False`` never."""
    guard: str = "auto"
    """The local model that reads an upstream's answer (proxy mode): teacher-forced with and
    without the passages, it gives the Confidence Gain and token signals of an answer another
    model wrote. ``auto``: the local model ``generator`` guards in proxy mode (in embedded mode
    the generator scores its own answers); a local model name: that model guards; ``none``:
    no guard (only an upstream ``completions`` route with ``echo`` can then give Confidence
    Gain)."""
    upstream_model: str | None = None
    """The model name to ask the upstream server for (default: ``generator``)."""
    upstream_api_key: SecretStr | None = None
    """The upstream server's API key, if it needs one (never logged)."""
    rewriter: str = "auto"
    """The model that rewrites a follow-up question of a conversation into a standalone one
    before retrieval and judgement: ``auto`` (the model that answers when it is a chat model,
    as a proxy-mode upstream or a wrapped LangChain model is; otherwise the first escalation
    target's local model, else the generator), ``generator`` (the model that answers), a
    local model name, or ``none`` (the last question is used as asked)."""
    escalation_targets: dict[str, str] = Field(
        default_factory=lambda: {"larger": "qwen2.5-0.5b-instruct"}
    )
    """Escalation target names (as policies name them) mapped to local model names."""
    top_k: int = Field(default=3, ge=1, le=20)
    max_question_chars: int = Field(default=1000, ge=1)
    max_new_tokens: int = Field(default=24, ge=1, le=512)
    max_passage_words: int = Field(default=160, ge=10)
    threads: int | None = Field(default=None, ge=1)
    """CPU threads of a local model's forward pass (default: the CPUs this process may use,
    its affinity capped by its control group's CPU quota; ``guardrail.hardware``). On a host
    shared with other busy processes, 1 is faster: see docs/service.md, "Threads"."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Precision of the local models' weights and activations: ``auto`` (bfloat16 where the
    CPU computes it natively, float32 elsewhere: see ``guardrail.hardware``), ``bfloat16``
    or ``float32``."""
    verifier: str = "default"
    """The answerability verifier behind ``verifier_answerable`` and ``verifier_support``:
    ``default`` (the artifact shipped with the package), a path to an artifact written by
    ``guardrail verifier train``, or ``none`` (the two signals are then null)."""
    abstain_probe: bool | None = None
    """Whether to measure ``abstain_logprob`` (one extra forward pass, about 13% of a
    generation): ``None`` (the default) when the policy in force needs it (its calibrator's
    features or its rules name it), ``True`` always, ``False`` never."""

    def resolved_dtype(self) -> str:
        """The precision the local models run in (``auto`` resolved for this CPU)."""
        from guardrail.hardware import resolve_dtype

        return resolve_dtype(self.dtype)

    def resolved_index_dir(self) -> Path:
        """The index directory, with the default filled in."""
        return self.index_dir or self.cache_dir / "index" / "default"
