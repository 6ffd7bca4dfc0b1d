"""deploy/ against the code it deploys: metric names, label values, ports, paths, the health check.

The Prometheus files keep one `expr:` per line and are read with regular expressions; compose,
Kubernetes and promtool test files are read with PyYAML; the dashboard is JSON. No container engine
runs on the machines this was written on, so the image is not built here (see deploy/README.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from keeper.chain.rpc import _OUTCOMES as RPC_ERROR_OUTCOMES
from keeper.cli import EXIT_CONFIG
from keeper.config import REPO_ROOT, Settings
from keeper.metrics import LIQUIDATION_OUTCOMES, SIM_RESULTS, Metrics, bound_port, serve, stop

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
SERIES = re.compile(r"\bkeeper_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(keeper_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds or histograms carry, besides the keeper's own.
TARGET_LABELS = {"job", "instance", "le"}

# Sample names prometheus_client exports for each metric type (counters drop `_total` from the
# family name and add it back on the sample).
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}


def _collectors(m: Metrics) -> list[MetricWrapperBase]:
    return [v for v in vars(m).values() if isinstance(v, MetricWrapperBase)]


def exported_series(m: Metrics) -> dict[str, set[str]]:
    """Every sample name the keeper can export → the label names it carries."""
    labels = {c._name: set(c._labelnames) for c in _collectors(m)}  # family name → labels
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = labels.get(family.name, set())
    return out


def alert_exprs() -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^\s*expr:\s*(.+)$", ALERTS.read_text(), re.M)]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit as key → values (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_exported_series_include_counter_totals_and_histogram_buckets() -> None:
    # Guards the helper the next tests rely on: real names, with the exposition's suffixes.
    series = exported_series(Metrics())
    assert {"keeper_up", "keeper_liquidations_total", "keeper_rpc_seconds_bucket",
            "keeper_build_info"} <= set(series)
    assert "keeper_liquidations" not in series
    assert series["keeper_rpc_requests_total"] == {"method", "outcome"}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_keeper_series_used_is_one_the_keeper_exports(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs, f"no expressions read from the {source}"
    used = {name for e in exprs for name in SERIES.findall(e)}
    assert used, source
    assert used <= set(exported_series(Metrics())), used - set(exported_series(Metrics()))


def test_the_operational_alerts_exist() -> None:
    names = re.findall(r"^\s*-\s*alert:\s*(\S+)", ALERTS.read_text(), re.M)
    assert len(names) == len(set(names)) == len(alert_exprs())  # one expr each, no duplicates
    assert {"KeeperDown", "KeeperHeadStalled", "KeeperMirrorDrift", "KeeperLiquidationReverted",
            "KeeperSkippingHeads", "KeeperRpcErrors", "KeeperWalletBalanceLow"} <= set(names)
    text = ALERTS.read_text()
    assert len(re.findall(r"^\s*severity:\s*(critical|warning|info)\s*$", text, re.M)) == len(names)
    assert len(re.findall(r"^\s*summary:", text, re.M)) == len(names)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_names_and_values_in_queries_are_ones_the_keeper_emits(source: str) -> None:
    series = exported_series(Metrics())
    known_values = {
        ("keeper_liquidations_total", "outcome"): set(LIQUIDATION_OUTCOMES),
        ("keeper_simulations_total", "result"): set(SIM_RESULTS),
        ("keeper_rpc_requests_total", "outcome"): {"ok", "error", *(name for _, name in RPC_ERROR_OUTCOMES)},
    }
    checked = 0
    for expr in alert_exprs() if source == "alerts" else dashboard_exprs():
        metrics = set(SERIES.findall(expr))
        allowed = set().union(*(series[m] for m in metrics)) | TARGET_LABELS if metrics else TARGET_LABELS
        for grouping in GROUPING.findall(expr):
            names = {n.strip() for n in grouping.split(",") if n.strip()}
            assert names <= allowed, (expr, names - allowed)
        for metric, body in SELECTOR.findall(expr):
            for label, _, value in MATCHER.findall(body):
                assert label in series[metric] | TARGET_LABELS, (expr, label)
                if (metric, label) in known_values:
                    values = set(value.split("|"))
                    assert values <= known_values[(metric, label)], (expr, values)
                    checked += 1
    if source == "alerts":
        assert checked >= 2  # the reverted-liquidation and RPC-error selectors were really checked


def test_prometheus_scrapes_the_port_the_keeper_serves_on() -> None:
    port = Settings.model_fields["metrics_port"].default
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert f'"keeper:{port}"' in config
    # Relative to the config file: the same file checks in the repository and in the container.
    assert yaml.safe_load(config)["rule_files"] == ["alerts.yml"]
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert f'KEEPER_METRICS_PORT: "{port}"' in compose
    # The default 127.0.0.1 would be unreachable from the Prometheus container.
    assert "KEEPER_METRICS_HOST: 0.0.0.0" in compose
    assert "./prometheus:/etc/prometheus:ro" in compose


def test_grafana_dashboard_uses_the_provisioned_datasource_and_path() -> None:
    datasource = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    uid = re.search(r"^\s*uid:\s*(\S+)", datasource, re.M).group(1)
    assert "url: http://prometheus:9090" in datasource
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in p["targets"])
    provider_path = re.search(r"^\s*path:\s*(\S+)", (DEPLOY / "grafana/provisioning/dashboards/keeper.yml")
                              .read_text(), re.M).group(1)
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert f"./grafana/dashboard.json:{provider_path}/keeper.json:ro" in compose


def test_compose_keeps_the_database_on_a_volume_and_the_secrets_in_env_files() -> None:
    compose = (DEPLOY / "docker-compose.yml").read_text()
    settings_lines = "\n".join(ln.split("#", 1)[0] for ln in compose.splitlines())  # without comments
    db = re.search(r"KEEPER_DB_PATH:\s*(\S+)", compose).group(1)
    assert re.search(rf"^\s*-\s*keeper-data:{re.escape(str(Path(db).parent))}\s*$", compose, re.M)
    assert re.search(r"^\s*env_file:\s*\.env\b", compose, re.M)
    assert "PRIVATE_KEY" not in settings_lines and "PASSWORD" not in settings_lines
    assert "stop_signal: SIGTERM" in compose


def test_systemd_unit_restarts_stops_gracefully_and_writes_only_its_db_dir() -> None:
    unit = _unit(DEPLOY / "systemd" / "keeper.service")
    one = {k: v[-1] for k, v in unit.items()}
    assert one["Restart"] == "always"
    assert one["RestartPreventExitStatus"] == str(EXIT_CONFIG)  # a bad setting is not retried forever
    assert one["KillSignal"] == "SIGTERM" and one["KillMode"] == "mixed"
    assert int(one["TimeoutStopSec"]) >= 30
    assert one["EnvironmentFile"].startswith("/etc/")
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict"
    assert one["User"] != "root"
    db = next(v.split("=", 1)[1] for v in unit["Environment"] if v.startswith("KEEPER_DB_PATH="))
    assert str(Path(db).parent) in one["ReadWritePaths"].split()
    assert str(Path(db).parent) == f"/var/lib/{one['StateDirectory']}"
    assert one["ExecStart"].endswith("keeper run")


def test_dockerfile_runs_keeper_as_non_root_with_anvil_and_no_secrets() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "npm ci" in text and "KEEPER_ANVIL_PATH=/usr/local/bin/anvil" in text
    assert "KEEPER_METRICS_HOST=0.0.0.0" in text
    assert re.search(r'^ENTRYPOINT \["keeper"\]\s*$', text, re.M) and re.search(r'^CMD \["run"\]', text, re.M)
    instructions = [ln for ln in text.splitlines() if re.match(r"^(ENV|ARG|LABEL)\b", ln)]
    assert not any(re.search(r"PRIVATE_KEY|RPC_URL|PASSWORD|SECRET", ln) for ln in instructions)
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "node_modules"} <= set(ignored)


def _healthcheck_argv() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = re.search(r"^HEALTHCHECK .*?CMD\s+(\[.*\])\s*$", text, re.M).group(1)
    argv = json.loads(cmd)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


async def test_dockerfile_healthcheck_passes_on_a_healthy_keeper_and_fails_once_it_stops() -> None:
    healthy = True
    runner = await serve(Metrics(), "127.0.0.1", 0, healthy=lambda: healthy)
    try:
        env = {"KEEPER_METRICS_PORT": str(bound_port(runner)), "PATH": "/usr/bin:/bin"}

        async def check() -> int:
            proc = await asyncio.create_subprocess_exec(*_healthcheck_argv(), env=env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            return await asyncio.wait_for(proc.wait(), 20)

        assert await check() == 0
        healthy = False  # what /healthz reports once SIGTERM set the stop event
        assert await check() != 0
    finally:
        await stop(runner)


# What the issue asks the alerts to cover, and the alert that does.
REQUIRED_ALERTS = {
    "no new head": "KeeperHeadStalled", "head lag": "KeeperBehindHead",
    "breaker open": "KeeperCircuitBreakerOpen", "kill switch on": "KeeperSendingPaused",
    "low gas balance": "KeeperWalletBalanceLow", "reverts": "KeeperLiquidationReverted",
    "RPC error rate": "KeeperRpcErrors", "mirror drift": "KeeperMirrorDrift",
}


def test_every_alert_fires_and_stays_quiet_in_a_promtool_case() -> None:
    names = set(re.findall(r"^\s*-\s*alert:\s*(\S+)", ALERTS.read_text(), re.M))
    assert set(REQUIRED_ALERTS.values()) <= names
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    assert cases["rule_files"] == ["alerts.yml"]
    checks = [c for t in cases["tests"] for c in t["alert_rule_test"]]
    fires = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert names <= fires, f"never shown firing: {sorted(names - fires)}"
    assert names <= quiet, f"never shown quiet: {sorted(names - quiet)}"


def test_head_lag_alert_reads_the_gauge_the_keeper_registers() -> None:
    assert "keeper_head_lag_blocks" in exported_series(Metrics())
    assert any("keeper_head_lag_blocks" in e for e in alert_exprs())


@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),  # .ci/run installs it
                    reason="promtool (Debian package `prometheus`) is not installed")
def test_prometheus_config_and_rules_pass_promtool_checks_and_rule_unit_tests() -> None:
    cwd = DEPLOY / "prometheus"
    for argv in (["promtool", "check", "config", "prometheus.yml"],
                 ["promtool", "check", "rules", "alerts.yml"],
                 ["promtool", "test", "rules", "alerts_test.yml"]):
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    # From another directory too: the rule file resolves against the config, not the working directory.
    done = subprocess.run(["promtool", "check", "config", str(cwd / "prometheus.yml")], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "1 rule files found" in done.stdout, done.stdout + done.stderr
