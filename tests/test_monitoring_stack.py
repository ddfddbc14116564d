"""The monitoring stack of docker-compose.yml: Prometheus, Grafana and its dashboard, and the
escalation budget gauges the dashboard compares the spend with.

Docker is not run here: the files are parsed and checked against each other and against the
app (its routes, its command's port, the metrics it exports, the recording rules), and
promtool checks the Prometheus configuration and every dashboard expression.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml
from fakes import ScriptedBackend, peaked
from prometheus_client.parser import text_string_to_metric_families
from test_alert_rules import exported_series, promtool
from test_compose import environment, words
from test_service import serve, settings

from guardrail.cli import build_parser
from guardrail.pipeline import Guardrail
from guardrail.policy_runtime import PolicyRuntime
from service import create_app
from service.metrics import Metrics
from service.routes import router

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

PROMETHEUS_SERIES = {
    "up": {"job", "instance"},
    "ALERTS": {"alertname", "alertstate", "severity", "tenant", "policy"},
}
"""Series that Prometheus makes itself: a target's health, and the alerts of rules.yml."""

TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series."""


# ------------------------------------------------------------------------------ the files


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def binds(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """The service's bind mounts from the repository, as (host path, container path)."""
    pairs = []
    for volume in svc.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            pairs.append((source, target))
    return pairs


def host_path(svc: dict[str, Any], inside: str) -> Path:
    """The repository file that the container sees at ``inside`` (the deepest bind mount
    that holds it); fails when no mount holds it."""
    path = PurePosixPath(inside)
    holders = [(s, t) for s, t in binds(svc) if path.is_relative_to(t)]
    assert holders, f"no bind mount of {svc.get('image')} holds {inside}"
    source, target = max(holders, key=lambda pair: len(pair[1]))
    return ROOT / source / path.relative_to(target)


def flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` in a command."""
    values = [w.split("=", 1)[1] for w in command if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def seconds(duration: str) -> float:
    """A Prometheus duration (15s, 1m, 15d) in seconds."""
    match = re.fullmatch(r"(\d+)([smhdwy])", duration)
    assert match, duration
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(match.group(1)) * unit[match.group(2)]


@pytest.fixture(scope="module")
def prometheus_config(compose: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The configuration file Prometheus is started with, and its contents."""
    prometheus = service(compose, "prometheus")
    path = host_path(prometheus, flag(words(prometheus["command"]), "config.file"))
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return path, config


def provisioning(compose: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Every Grafana provisioning file of ``kind`` (datasources, dashboards), parsed."""
    folder = host_path(service(compose, "grafana"), f"/etc/grafana/provisioning/{kind}")
    files = sorted(folder.glob("*.y*ml"))
    assert files, folder
    return [yaml.safe_load(f.read_text(encoding="utf-8")) for f in files]


@pytest.fixture(scope="module")
def datasource(compose: dict[str, Any]) -> dict[str, Any]:
    """The one provisioned data source."""
    sources = [s for file in provisioning(compose, "datasources") for s in file["datasources"]]
    assert len(sources) == 1, sources
    found: dict[str, Any] = sources[0]
    return found


@pytest.fixture(scope="module")
def dashboards(compose: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """Every dashboard the provisioned providers load, with its file."""
    grafana = service(compose, "grafana")
    found = []
    for file in provisioning(compose, "dashboards"):
        for provider in file["providers"]:
            assert provider["type"] == "file"
            folder = host_path(grafana, provider["options"]["path"])
            for path in sorted(folder.glob("*.json")):
                found.append((path, json.loads(path.read_text(encoding="utf-8"))))
    assert found
    return found


def guardrail_port(compose: dict[str, Any]) -> int:
    """The port the guardrail command serves on."""
    args = build_parser().parse_args(words(service(compose, "guardrail")["command"])[1:])
    port: int = args.port
    return port


# ------------------------------------------------------------------------------ compose


def test_prometheus_and_grafana_are_pinned_and_keep_their_data(compose: dict[str, Any]) -> None:
    prometheus, grafana = service(compose, "prometheus"), service(compose, "grafana")
    assert re.fullmatch(r"prom/prometheus:v[23]\.\d+\.\d+", prometheus["image"])
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", grafana["image"])
    command = words(prometheus["command"])
    # The drift rules compare the last hour with the last day: two days at least are kept.
    assert seconds(flag(command, "storage.tsdb.retention.time")) >= 2 * 86400
    mounts = [str(v).split(":") for v in prometheus["volumes"]]
    stored = [
        source for source, target, *_ in mounts if target == flag(command, "storage.tsdb.path")
    ]
    assert stored == ["prometheus-data"]
    assert any(str(v).endswith(":/var/lib/grafana") for v in grafana["volumes"])
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])


def test_only_grafana_is_published_beyond_this_host(compose: dict[str, Any]) -> None:
    # Prometheus has no login: its port is on the loopback only, if published at all.
    for published in service(compose, "prometheus").get("ports", []):
        assert str(published).startswith("127.0.0.1:"), published
    assert [str(p) for p in service(compose, "grafana")["ports"]] == ["3000:3000"]


def test_every_mounted_file_is_in_the_repository(compose: dict[str, Any]) -> None:
    mounted = [source for svc in compose["services"].values() for source, _ in binds(svc)]
    assert "./deploy/prometheus" in mounted and "./deploy/grafana/dashboards" in mounted
    for source in mounted:
        assert (ROOT / source).exists(), source


def test_grafana_needs_an_admin_password_and_has_no_default(compose: dict[str, Any]) -> None:
    grafana = service(compose, "grafana")
    raw = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert "GRAFANA_ADMIN_PASSWORD" in raw
    env = environment(grafana)
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == ""  # no default after ':-'
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # The entrypoint refuses to start without a password, and starts Grafana with one
    # (compose turns $$ into $; /run.sh, Grafana's own entrypoint, is replaced by echo).
    script = words(grafana["entrypoint"])
    assert script[:2] == ["sh", "-c"] and script[2].endswith("exec /run.sh")
    check = script[2].replace("$$", "$").replace("exec /run.sh", "echo started")
    for password, code, said in (("", 1, "set GRAFANA_ADMIN_PASSWORD"), ("s3cret", 0, "started")):
        done = subprocess.run(
            ["sh", "-c", check],
            env={"GF_SECURITY_ADMIN_PASSWORD": password, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == code and said in done.stdout + done.stderr, done


# ------------------------------------------------------------------------------ Prometheus


def test_prometheus_scrapes_each_replica_on_the_port_it_serves(
    compose: dict[str, Any], prometheus_config: tuple[Path, dict[str, Any]]
) -> None:
    _, config = prometheus_config
    assert seconds(config["global"]["scrape_interval"]) == 15
    assert seconds(config["global"]["evaluation_interval"]) == 60
    [job] = config["scrape_configs"]
    assert job["job_name"] == "guardrail"
    [discovery] = job["dns_sd_configs"]
    # The service name resolves to every replica's address: one target per replica.
    assert discovery["names"] == ["guardrail"] and "guardrail" in compose["services"]
    assert discovery["type"] == "A"
    assert discovery["port"] == guardrail_port(compose)
    [route] = [r for r in router.routes if getattr(r, "path", None) == job["metrics_path"]]
    # /metrics asks for no key, so the scrape sends none.
    assert not getattr(route, "dependencies", None)
    assert "authorization" not in job and "basic_auth" not in job


def test_the_public_proxy_does_not_pass_the_metrics_on() -> None:
    """Prometheus scrapes the replicas inside the network; nginx answers 404 for /metrics
    (exact match, so that no other route is caught)."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    block = re.search(r"location\s*=\s*/metrics\s*\{([^}]*)\}", conf)
    assert block is not None, "deploy/nginx.conf has no exact location for /metrics"
    assert re.search(r"return\s+404\s*;", block.group(1))
    assert "proxy_pass" not in block.group(1)


def test_the_rule_files_are_the_mounted_rules(
    compose: dict[str, Any], prometheus_config: tuple[Path, dict[str, Any]]
) -> None:
    prometheus = service(compose, "prometheus")
    inside = PurePosixPath(flag(words(prometheus["command"]), "config.file")).parent
    # Relative rule files are read from the configuration file's folder.
    files = [inside / name for name in prometheus_config[1]["rule_files"]]
    assert [host_path(prometheus, str(f)).resolve() for f in files] == [RULES]


def test_promtool_accepts_the_configuration_as_the_container_sees_it(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The mounts copied into a folder laid out as the container's file system."""
    prometheus = service(compose, "prometheus")
    for source, target in binds(prometheus):
        copy = tmp_path / target.lstrip("/")
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, copy)
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, copy)
    config = tmp_path / flag(words(prometheus["command"]), "config.file").lstrip("/")
    done = subprocess.run(
        [promtool(), "check", "config", str(config)], capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output and "SUCCESS: 14 rules found" in output


# ------------------------------------------------------------------------------ Grafana


def test_grafana_reads_the_prometheus_service(
    compose: dict[str, Any],
    datasource: dict[str, Any],
    prometheus_config: tuple[Path, dict[str, Any]],
) -> None:
    command = words(service(compose, "prometheus")["command"])
    listen = [w for w in command if w.startswith("--web.listen-address=")]
    port = listen[0].rsplit(":", 1)[1] if listen else "9090"  # Prometheus's default
    assert datasource["type"] == "prometheus" and datasource["uid"]
    assert datasource["url"] == f"http://prometheus:{port}"
    assert "prometheus" in service(compose, "grafana")["depends_on"]
    # $__rate_interval is right only when Grafana knows the scrape interval.
    scrape = prometheus_config[1]["global"]["scrape_interval"]
    assert seconds(datasource["jsonData"]["timeInterval"]) == seconds(scrape)


def test_grafana_loads_the_dashboard_from_the_mounted_folder(
    compose: dict[str, Any], dashboards: list[tuple[Path, dict[str, Any]]]
) -> None:
    assert [path.name for path, _ in dashboards] == ["guardrail.json"]
    home = environment(service(compose, "grafana"))["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(service(compose, "grafana"), home) == dashboards[0][0]
    assert dashboards[0][1]["uid"] == "guardrail"  # the address in the compose header
    assert "localhost:3000/d/guardrail" in (ROOT / "docker-compose.yml").read_text()


# ------------------------------------------------------------------------------ the dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the panels."""
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable's query, by name."""
    found = {}
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        found[variable["name"]] = query["query"] if isinstance(query, dict) else query
    return found


def known_series() -> dict[str, set[str]]:
    """Every series name the dashboard may use, with its labels: those the app exports (one
    of each labelled series counted, budgets from a policy file with budgets), the recording
    rules of rules.yml, and the series Prometheus makes itself."""
    known = exported_series()
    metrics = Metrics()
    runtime = PolicyRuntime.from_setting("support-bot")
    metrics.follow_policies(lambda: runtime.current.policies.all().values())
    metrics.errors.labels("internal").inc()
    metrics.rate_limited.labels("t").inc()
    metrics.cancelled.labels("queued").inc()
    for family in metrics.registry.collect():
        for sample in family.samples:
            known.setdefault(sample.name, set()).update(sample.labels)
    known = {name: labels | TARGET_LABELS for name, labels in known.items()}
    for rule in (r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]):
        if "record" in rule:
            grouped = re.search(r"by \(([^)]*)\)", rule["expr"])
            assert grouped, rule
            known[rule["record"]] = {label.strip() for label in grouped.group(1).split(",")}
    return known | PROMETHEUS_SERIES


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "and", "or", "unless", "offset", "bool",
}  # fmt: skip
NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"


def series_named(expr: str) -> set[str]:
    """The series names of a PromQL expression (not its functions, operators or labels)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for match in re.finditer(NAME, bare):
        called = bare[match.end() :].lstrip().startswith("(")
        if not called and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def problems(expr: str, known: dict[str, set[str]], legend: str = "") -> list[str]:
    """What ``expr`` names that no known series has: a series, a label selected or grouped
    by (every series of the expression must carry it), a label of the legend."""
    names = series_named(expr)
    found = [f"unknown series {n}" for n in sorted(names - set(known))]
    labels = [known[n] for n in names if n in known]
    for name, matchers in re.findall(rf"({NAME})\s*\{{([^}}]*)\}}", expr):
        for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            if name in known and label not in known[name]:
                found.append(f"{name} has no label {label}")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in (part.strip() for part in group.split(",")):
            if not all(label in carried for carried in labels):
                found.append(f"not every series of the expression has the label {label}")
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if not any(label in carried for carried in labels):
            found.append(f"the legend names {label}, which no series of the expression has")
    return found


def test_every_panel_and_variable_reads_the_provisioned_datasource(
    dashboards: list[tuple[Path, dict[str, Any]]], datasource: dict[str, Any]
) -> None:
    for _, dashboard in dashboards:
        queried = [p for p in panels(dashboard) if p["type"] != "row"]
        assert len(queried) >= 15
        for panel in queried:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] == datasource["uid"], variable["name"]


def test_every_expression_names_exported_series_and_recorded_rules(
    dashboards: list[tuple[Path, dict[str, Any]]],
) -> None:
    known = known_series()
    for _, dashboard in dashboards:
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found = problems(target["expr"], known, target.get("legendFormat", ""))
                assert not found, (panel["title"], target["expr"], found)
        for name, query in variable_queries(dashboard).items():
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, query
            series, label = match.groups()
            assert not problems(series, known), query
            assert all(label in known[n] for n in series_named(series)), (name, query)


def test_the_expression_check_catches_a_wrong_series_or_label() -> None:
    known = known_series()
    assert problems("sum by (stage) (rate(guardrail_stage_seconds_bucket[5m]))", known) == []
    assert problems("sum(rate(guardrail_request_total[5m]))", known) == [
        "unknown series guardrail_request_total"
    ]
    assert problems('guardrail:defer_share:1h{tenants="a"}', known) == [
        "guardrail:defer_share:1h has no label tenants"
    ]
    assert problems("sum by (tenant) (rate(guardrail_stage_seconds_bucket[5m]))", known)
    assert problems("guardrail_store_up", known, "{{tenant}}")


def promql_rules(exprs: list[str]) -> str:
    """The expressions as recording rules (Grafana's variables replaced), for promtool."""
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in (("$__rate_interval", "1m"), ("$__range", "6h")):
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\w+", ".*", expr)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_promtool_parses_every_expression(
    dashboards: list[tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    exprs = [e for _, d in dashboards for e in expressions(d)]
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(promql_rules(exprs))
    bad.write_text(promql_rules([*exprs, "sum by (le (rate(guardrail_confidence_bucket[5m]))"]))
    checks = {}
    for path in (good, bad):
        done = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
        )
        checks[path.name] = (done.returncode, done.stdout + done.stderr)
    assert checks["good.yml"][0] == 0, checks["good.yml"][1]
    assert f"SUCCESS: {len(exprs)} rules found" in checks["good.yml"][1]
    assert checks["bad.yml"][0] != 0


def test_the_dashboard_shows_what_issue_18_asks_for(
    dashboards: list[tuple[Path, dict[str, Any]]],
    prometheus_config: tuple[Path, dict[str, Any]],
) -> None:
    dashboard = dashboards[0][1]
    by_title = {p["title"]: p for p in panels(dashboard)}
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard)
    }

    def panel_with(*fragments: str) -> dict[str, Any]:
        hits = [t for t, e in exprs.items() if all(f in e for f in fragments)]
        assert hits, fragments
        return by_title[hits[0]]

    mix = panel_with("sum by (action)", "guardrail_requests_total")
    assert mix["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert mix["repeat"] == "tenant"  # one panel per tenant
    for share in ("defer_share", "hedge_share", "escalation_share", "confidence_mean"):
        panel_with(f"guardrail:{share}:1h", f"guardrail:{share}:1d")
    assert panel_with("guardrail_confidence_bucket")["type"] in {"bargauge", "heatmap"}
    panel_with("guardrail_escalations_total", "guardrail_escalation_budget_share")
    panel_with("guardrail_escalation_budget_per_minute")
    latency = panel_with("histogram_quantile(0.5", "histogram_quantile(0.95")
    assert "by (le, stage)" in exprs[latency["title"]]
    job = prometheus_config[1]["scrape_configs"][0]["job_name"]
    panel_with(f'up{{job="{job}"}}')
    panel_with("guardrail_store_up")
    panel_with("guardrail_questions_queued")
    assert set(variable_queries(dashboard)) == {"tenant", "policy"}
    assert "$tenant" in exprs[mix["title"]] and "$policy" in exprs[mix["title"]]


def test_no_two_panels_overlap(dashboards: list[tuple[Path, dict[str, Any]]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboards[0][1]["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


# ------------------------------------------------------------------------------ budget gauges

POLICY = """\
version: 1
extends: balanced
name: budgeted
actions:
  escalate:
    targets:
      - name: larger
        budget: {per_minute: 30}
      - name: largest
    budget: {max_share: 0.2}
tenants:
  acme:
    actions: {escalate: {budget: {max_share: 0.05}}}
"""

VOCAB = ("Paris", "Lyon", "Rome", "unanswerable")
ADMIN = {"Authorization": "Bearer admin-secret"}


def budgets(base: str) -> dict[str, dict[tuple[str, str], float]]:
    """The budget gauges of a server's /metrics, by metric and (policy, target)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("guardrail_escalation_budget_"):
            found[family.name] = {
                (s.labels["policy"], s.labels["target"]): s.value for s in family.samples
            }
    return found


def test_the_budget_gauges_follow_the_policies_in_force(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    model = ScriptedBackend(
        VOCAB, contextual=[peaked(VOCAB, "Paris", 0.9)], parametric=[peaked(VOCAB, "Paris", 0.9)]
    )
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting(str(policy_file)))
    app = create_app(settings(tmp_path, admin_key="admin-secret"), guard=guard)
    with serve(app) as base:
        assert budgets(base) == {
            "guardrail_escalation_budget_share": {
                ("budgeted", "chain"): 0.2,
                ("budgeted.acme", "chain"): 0.05,
            },
            "guardrail_escalation_budget_per_minute": {
                ("budgeted", "larger"): 30.0,
                ("budgeted.acme", "larger"): 30.0,
            },
        }
        # A reload replaces them: the chain gets a per-minute budget, the target loses its.
        policy_file.write_text(
            POLICY.replace("        budget: {per_minute: 30}\n", "").replace(
                "{max_share: 0.2}", "{max_share: 0.1, per_minute: 5}"
            ),
            encoding="utf-8",
        )
        reloaded = httpx.post(f"{base}/v1/policies/reload", headers=ADMIN, timeout=30)
        assert reloaded.status_code == 200, reloaded.text
        after = {
            "guardrail_escalation_budget_share": {
                ("budgeted", "chain"): 0.1,
                ("budgeted.acme", "chain"): 0.05,
            },
            "guardrail_escalation_budget_per_minute": {
                ("budgeted", "chain"): 5.0,
                ("budgeted.acme", "chain"): 5.0,
            },
        }
        assert budgets(base) == after
        # A file that does not validate changes nothing.
        policy_file.write_text(POLICY.replace("max_share: 0.2", "max_share: 2"), encoding="utf-8")
        refused = httpx.post(f"{base}/v1/policies/reload", headers=ADMIN, timeout=30)
        assert refused.status_code == 422
        assert budgets(base) == after


def test_no_budget_gauges_before_a_pipeline_serves() -> None:
    text = Metrics().render().decode()
    assert "# TYPE guardrail_escalation_budget_share gauge" in text
    assert "guardrail_escalation_budget_share{" not in text
