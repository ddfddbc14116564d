"""docker-compose.yml and the Dockerfile agree with the code they deploy.

Docker is not run here: the files are parsed and checked against the settings, the CLI and
the app's routes, so that renaming a setting or a route breaks this test, not a deployment.
"""

from __future__ import annotations

import os
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


def settings_from(env: dict[str, str]) -> ServiceSettings:
    """The settings a replica reads from this environment (and nothing else)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("GUARDRAIL_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        return ServiceSettings()  # empty values count as unset, as compose's ${X:-} gives
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def test_services_are_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "guardrail",
        "proxy",
        "redis",
        "model",
        "prometheus",
        "grafana",
    }


def test_two_replicas_behind_the_proxy(
    compose: dict[str, Any], guardrail_service: dict[str, Any]
) -> None:
    port = ServiceSettings.model_fields["port"].default
    assert guardrail_service["deploy"]["replicas"] == 2
    assert "ports" not in guardrail_service  # only the proxy publishes a port
    assert [str(p) for p in guardrail_service["expose"]] == [str(port)]
    proxy = compose["services"]["proxy"]
    assert str(proxy["image"]).startswith("nginx:")
    published = [str(p) for p in proxy["ports"]]
    assert published == [f"{port}:8080"]
    source, target, *_ = str(proxy["volumes"][0]).split(":")
    config = (ROOT / source).read_text(encoding="utf-8")
    assert target == "/etc/nginx/conf.d/default.conf"
    assert "listen 8080;" in config
    assert f"http://guardrail:{port}" in config
    assert "proxy_buffering off;" in config  # streamed completions pass through
    assert "resolver 127.0.0.11" in config  # replicas found by Docker's DNS


def test_replicas_share_redis_and_keep_a_spool_on_their_volume(
    compose: dict[str, Any], guardrail_service: dict[str, Any]
) -> None:
    settings = settings_from(environment(guardrail_service))
    assert settings.store == "redis"
    assert settings.redis_url == "redis://redis:6379/0"
    assert "redis" in compose["services"] and "redis" in guardrail_service["depends_on"]
    assert settings.resolved_store_path().is_relative_to("/data")


def test_the_model_server_serves_what_proxy_mode_asks_for(compose: dict[str, Any]) -> None:
    model = compose["services"]["model"]
    assert model["profiles"] == ["proxy"]
    command = words(model["command"])
    port = command[command.index("--port") + 1]
    assert [str(p) for p in model["expose"]] == [port]
    header = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert f"GUARDRAIL_UPSTREAM_URL=http://model:{port}/v1" in header
    proxy_mode = ServiceSettings(mode="proxy", upstream_url=f"http://model:{port}/v1")
    assert proxy_mode.upstream_url is not None


def test_the_command_port_is_the_settings_default(guardrail_service: dict[str, Any]) -> None:
    port = ServiceSettings.model_fields["port"].default
    args = build_parser().parse_args(words(guardrail_service["command"])[1:])
    assert args.port == port


def test_environment_names_real_settings(guardrail_service: dict[str, Any]) -> None:
    env = environment(guardrail_service)
    assert {"GUARDRAIL_POLICY", "GUARDRAIL_INDEX_DIR", "GUARDRAIL_CACHE_DIR"} <= set(env)
    fields = set(ServiceSettings.model_fields)  # GuardrailConfig's fields included
    for name in env:
        if name.startswith("GUARDRAIL_"):
            assert name.removeprefix("GUARDRAIL_").lower() in fields, name
    settings = settings_from(env)
    assert settings.policy == env["GUARDRAIL_POLICY"]
    assert load_policy_setting(settings.policy).name == settings.policy


def test_cache_and_index_are_on_the_volume(
    compose: dict[str, Any], guardrail_service: dict[str, Any]
) -> None:
    env = environment(guardrail_service)
    mounts = [str(v).split(":") for v in guardrail_service["volumes"]]
    named = {source: target for source, target, *_ in mounts}
    assert set(named) <= set(compose["volumes"])
    for variable in ("GUARDRAIL_CACHE_DIR", "GUARDRAIL_INDEX_DIR", "GUARDRAIL_STORE_PATH"):
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
