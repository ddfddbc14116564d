"""Settings from command-line options: the one place every ``guardrail`` command gets them.

The environment (``GUARDRAIL_*``) gives the settings; an option given on the command line
overrides its setting. Kept apart from ``guardrail.cli`` so that the command modules it
registers can use it without importing the command line back.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

from guardrail.config import GuardrailConfig
from guardrail.errors import ConfigError

Config = TypeVar("Config", bound=GuardrailConfig)

OPTION_SETTINGS: tuple[str, ...] = (
    "index_dir",
    "policy",
    "top_k",
    "max_passage_words",
    "cache_dir",
    "host",
    "port",
    "shadow_policy",
    "decision_log",
    "mode",
    "upstream_url",
    "upstream_model",
    "upstream_api",
    "guard",
)
"""Settings an option of the same name (``--top-k`` for ``top_k``) overrides when given."""


def settings_from(settings_type: type[Config], args: argparse.Namespace) -> Config:
    """Settings of ``settings_type`` from the environment, overridden by the options given.

    ``--no-escalation`` configures no escalation target. An invalid value, from the
    environment or an option, is a ``ConfigError`` naming the setting.
    """
    overrides: dict[str, Any] = {}
    for key in OPTION_SETTINGS:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "no_escalation", False):
        overrides["escalation_targets"] = {}
    try:
        return settings_type(**overrides)
    except SettingsError as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"invalid setting in the environment: {exc} ({cause})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid setting: {problems}") from None


def config_from(args: argparse.Namespace) -> GuardrailConfig:
    """The pipeline's settings (``GuardrailConfig``) for a command's options."""
    return settings_from(GuardrailConfig, args)
