"""docker-compose.yml and the Dockerfile agree with the code they deploy.

Docker is not run here: the files are parsed and checked against the settings, the CLI and
the app's routes, so that renaming a setting or a route breaks this test, not a deployment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.cli import build_parser
from guardrail.pipeline import load_policy_setting
from service import ServiceSettings
from service.routes import router

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def guardrail_service(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["guardrail"]
    return service


def words(command: str | list[str]) -> list[str]:
    """A compose command (a string or a list) as its words."""
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose environment (a mapping or a list of NAME=value) as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    else:
        pairs = {str(k): str(v) for k, v in env.items()}
    # Compose interpolation: ${NAME:-default} is the default when NAME is not set.
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in pairs.items()}


def test_services_are_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"guardrail", "redis"}


def test_the_port_is_the_settings_default(guardrail_service: dict[str, Any]) -> None:
    port = ServiceSettings.model_fields["port"].default
    published = [str(p) for p in guardrail_service["ports"]]
    assert published == [f"{port}:{port}"]
    args = build_parser().parse_args(words(guardrail_service["command"])[1:])
    assert args.port == port


def test_environment_names_real_settings(guardrail_service: dict[str, Any]) -> None:
    env = environment(guardrail_service)
    assert {"GUARDRAIL_POLICY", "GUARDRAIL_INDEX_DIR", "GUARDRAIL_CACHE_DIR"} <= set(env)
    fields = set(ServiceSettings.model_fields)  # GuardrailConfig's fields included
    for name in env:
        if name.startswith("GUARDRAIL_"):
            assert name.removeprefix("GUARDRAIL_").lower() in fields, name
    # Every value is valid for its setting.
    settings = ServiceSettings.model_validate(
        {
            k.removeprefix("GUARDRAIL_").lower(): v
            for k, v in env.items()
            if k.startswith("GUARDRAIL_")
        }
    )
    assert settings.policy == env["GUARDRAIL_POLICY"]
    assert load_policy_setting(settings.policy).name == settings.policy


def test_cache_and_index_are_on_the_volume(
    compose: dict[str, Any], guardrail_service: dict[str, Any]
) -> None:
    env = environment(guardrail_service)
    mounts = [str(v).split(":") for v in guardrail_service["volumes"]]
    named = {source: target for source, target, *_ in mounts}
    assert set(named) <= set(compose["volumes"])
    for variable in ("GUARDRAIL_CACHE_DIR", "GUARDRAIL_INDEX_DIR", "GUARDRAIL_DECISION_LOG"):
        assert any(Path(env[variable]).is_relative_to(target) for target in named.values())


def test_the_command_serves_on_all_interfaces(guardrail_service: dict[str, Any]) -> None:
    command = words(guardrail_service["command"])
    assert command[:2] == ["guardrail", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.func.__name__ == "cmd_serve"
    assert args.host == "0.0.0.0"


def test_the_health_check_asks_a_real_route(guardrail_service: dict[str, Any]) -> None:
    check = " ".join(words(guardrail_service["healthcheck"]["test"]))
    port = ServiceSettings.model_fields["port"].default
    assert f"http://127.0.0.1:{port}/readyz" in check
    paths = {getattr(route, "path", None) for route in router.routes}
    assert "/readyz" in paths


def test_redis_persists_with_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = words(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_the_dockerfile_builds_the_service(guardrail_service: dict[str, Any]) -> None:
    assert guardrail_service["build"]["context"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert 'pip install ".[cpu,escalation]"' in dockerfile
    for package in ("guardrail", "retrievers", "policies", "service"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'CMD ["guardrail", "serve", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile
