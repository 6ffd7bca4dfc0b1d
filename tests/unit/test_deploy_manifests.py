"""deploy/k8s/ and the compose files: they parse, they are wired to what the keeper serves, and the
Kubernetes objects pass Kubernetes' own schemas (kubernetes-validate ships them; no network).

Overlays are rendered with `kubectl kustomize` where kubectl is installed; the base files are
validated either way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from keeper.config import REPO_ROOT, Settings
from keeper.health_http import CHECKS, HealthState, routes

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.30.0"
PORT = Settings.model_fields["metrics_port"].default


class _GoLikeLoader(yaml.SafeLoader):
    """Reads `0x2f39...` (a 20-byte address) as a string, like kubectl's Go YAML does (it does not fit
    an int64); PyYAML alone would make it a 160-bit int. Decimal ints stay ints."""


_GoLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_GoLikeLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9]*)$"),
                                    list("-+0123456789"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)]


def _render(overlay: Path, tmp: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` on a copy of deploy/k8s whose overlay has its example secret.env."""
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy)
    target = copy / "overlays" / overlay.name
    shutil.copy(target / "secret.env.example", target / "secret.env")
    done = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.load_all(done.stdout, Loader=_GoLikeLoader) if d]


def _deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    return dep


def _served_paths() -> set[str]:
    return {r.path for r in routes(HealthState(60))} | {"/metrics"}


def test_every_manifest_and_compose_file_parses() -> None:
    files = [*K8S.rglob("*.yaml"), *DEPLOY.glob("docker-compose*.yml"), *DEPLOY.glob("prometheus/*.yml"),
             *DEPLOY.glob("grafana/provisioning/*/*.yml")]
    assert len(files) >= 12
    for f in files:
        assert _docs(f), f


def test_base_objects_pass_the_kubernetes_schema() -> None:
    objs = [o for o in _k8s_objects() if o["apiVersion"] != "monitoring.coreos.com/v1"]
    assert {o["kind"] for o in objs} >= {"Deployment", "Service", "PersistentVolumeClaim"}
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_deployment_is_one_non_root_replica_recreated_with_probes_on_what_the_keeper_serves() -> None:
    dep = _deployment(_k8s_objects())
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}  # one key, one nonce owner
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": PORT}
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    path, _, query = live["path"].partition("?")
    assert path == "/healthz" and ready["path"] == "/readyz" and {path, ready["path"]} <= _served_paths()
    # A restart would close the breaker: liveness leaves it out, and only checks /healthz knows.
    assert query == "ignore=breaker_open" and "breaker_open" in CHECKS
    assert live["port"] == ready["port"] == "metrics"
    refs = [e.get("configMapRef", e.get("secretRef"))["name"] for e in c["envFrom"]]
    assert refs == ["keeper-config", "keeper-secrets"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    base = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    config = dict(kv.split("=", 1) for kv in base["configMapGenerator"][0]["literals"])
    assert str(Path(config["KEEPER_DB_PATH"]).parent) in mounts and config["KEEPER_METRICS_HOST"] == "0.0.0.0"
    assert int(config["KEEPER_METRICS_PORT"]) == PORT
    assert {k.removeprefix("KEEPER_").lower() for k in config} <= set(Settings.model_fields)


def test_service_monitor_scrapes_the_service_port_by_name() -> None:
    objs = _k8s_objects()
    (svc,) = [o for o in objs if o["kind"] == "Service"]
    (mon,) = [o for o in objs if o["kind"] == "ServiceMonitor"]
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    base = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    common = base["labels"][0]["pairs"]
    assert mon["spec"]["selector"]["matchLabels"].items() <= common.items()


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_market_overlay_renders_valid_objects_with_its_own_secret(overlay: Path, tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    objs = _render(overlay, tmp_path)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service"]
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        assert o["metadata"]["name"].endswith(overlay.name) or o["kind"] in ("ConfigMap", "Secret")
    config = next(o for o in objs if o["kind"] == "ConfigMap")["data"]
    Settings(**{k.removeprefix("KEEPER_").lower(): v for k, v in config.items()})  # the keeper accepts them
    secret = next(o for o in objs if o["kind"] == "Secret")
    assert set(secret["data"]) == {"KEEPER_PRIVATE_KEY", "KEEPER_RPC_URL"}
    env_from = [e.get("configMapRef", e.get("secretRef"))["name"] for e in
                _deployment(objs)["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    assert env_from == [config_name(objs, "ConfigMap"), config_name(objs, "Secret")]
    assert "deploy/k8s/overlays/*/secret.env" in (REPO_ROOT / ".gitignore").read_text()


def config_name(objs: list[dict[str, Any]], kind: str) -> str:
    return next(o["metadata"]["name"] for o in objs if o["kind"] == kind)


def test_devnet_compose_runs_a_dry_run_keeper_on_the_devnet_with_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.devnet.yml").read_text())
    svc = compose["services"]
    assert set(svc) == {"devnet", "keeper", "prometheus", "grafana"}
    keeper, devnet = svc["keeper"], svc["devnet"]
    assert "--dry-run" in keeper["command"] and keeper["environment"]["KEEPER_DRY_RUN"] == "true"
    assert keeper["network_mode"] == "service:devnet" and "ports" not in keeper
    assert keeper["depends_on"]["devnet"]["condition"] == "service_healthy"
    # The keeper reads .env from its working directory: the volume the devnet writes it to.
    assert f"devnet-env:{keeper['working_dir']}:ro" in keeper["volumes"]
    assert f"devnet-env:{keeper['working_dir']}" in devnet["volumes"]
    assert keeper["working_dir"] in " ".join(devnet["healthcheck"]["test"])
    # Prometheus's one config scrapes keeper:PORT; the devnet carries that name for the keeper inside it.
    assert "keeper" in devnet["networks"]["default"]["aliases"]
    assert f"127.0.0.1:{PORT}:{PORT}" in devnet["ports"]
    assert "./prometheus:/etc/prometheus:ro" in svc["prometheus"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in svc["grafana"]["volumes"]
    assert devnet["build"]["target"] in re.findall(r"^FROM \S+ AS (\S+)", (DEPLOY / "Dockerfile").read_text(),
                                                   re.M)


def test_dockerfile_is_multi_stage_and_every_stage_that_runs_drops_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 3
    for stage in stages:
        if re.search(r"^(ENTRYPOINT|CMD)\b", stage, re.M):  # a stage meant to run, not just to build
            users = re.findall(r"^USER\s+(\S+)", stage, re.M)
            assert users and users[-1].split(":")[0] not in ("root", "0"), stage.splitlines()[0]
    main = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert main["services"]["keeper"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "target" not in main["services"]["keeper"]["build"]  # the last stage: the keeper
