"""Issue 13: what operators watch, against a keeper running on an interval-mined devnet.

/healthz turns 503 once the chain stops producing blocks and 200 when it resumes; /readyz is 503
while the backfill runs; `keeper status` reads a live keeper and fails on a dead one; a real
Prometheus (Debian's `prometheus`) scrapes the keeper and sees the head move and a liquidation.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keeper.app import App
from keeper.config import REPO_ROOT, load_settings
from keeper.devnet.anvil import free_port
from keeper.devnet.seed import shock
from keeper.devnet.stack import KEEPER_DEV_KEY, Devnet, launch

KEEPER = str(Path(sys.executable).with_name("keeper"))
DEPLOY = REPO_ROOT / "deploy"
MAX_HEAD_AGE_S = 3.0


@pytest.fixture(scope="module")
async def mined() -> AsyncIterator[Devnet]:
    """A market whose blocks come every second, like a real chain's, not on demand."""
    dn = await launch(borrowers=40, block_time=1)
    try:
        yield dn
    finally:
        await dn.close()


@asynccontextmanager
async def running_keeper(dn: Devnet, **over: Any) -> AsyncIterator[tuple[App, str, asyncio.Task]]:
    port = free_port()
    settings = load_settings(**{
        "rpc_url": dn.url, "pool_addresses_provider": dn.deployment.pool_addresses_provider,
        "start_block": dn.deployment.start_block, "private_key": KEEPER_DEV_KEY,
        "metrics_host": "127.0.0.1", "metrics_port": port, "poll_interval_s": 0.2,
        "health_max_head_age_s": MAX_HEAD_AGE_S, "db_path": Path(tempfile.mkdtemp()) / "keeper.db",
        **over,
    })
    app = App(settings)
    task = asyncio.create_task(app.run(install_signals=False))
    try:
        yield app, f"http://127.0.0.1:{port}", task
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)


async def get(url: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens yet."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.get(url) as r:
            return r.status, await r.text()
    except aiohttp.ClientConnectionError:
        return None


async def wait_for(url: str, want: Callable[[int, str], bool], task: asyncio.Task, timeout_s: float,
                   seen: list[tuple[int, str]] | None = None) -> tuple[int, str]:
    """Poll `url` until `want(status, body)`; every answer goes into `seen`. Fails if the keeper died."""
    async with asyncio.timeout(timeout_s):
        while True:
            if task.done():
                task.result()
                raise AssertionError("the keeper stopped")
            got = await get(url)
            if got is not None:
                if seen is not None:
                    seen.append(got)
                if want(*got):
                    return got
            await asyncio.sleep(0.05)


async def keeper_status(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(KEEPER, "status", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def set_mining(dn: Devnet, on: bool) -> None:
    await dn.rpc.call("evm_setIntervalMining", [1 if on else 0])
    await dn.rpc.call("evm_setAutomine", [False])


async def test_healthz_turns_503_when_the_chain_stops_and_200_when_it_resumes(mined: Devnet) -> None:
    async with running_keeper(mined, dry_run=True) as (_, url, task):
        await wait_for(url + "/readyz", lambda s, _: s == 200, task, 120)
        await wait_for(url + "/healthz", lambda s, _: s == 200, task, 30)
        code, screen = await keeper_status("--url", url)
        assert code == 0, screen
        assert "healthy" in screen and "head block" in screen and "borrowers tracked" in screen

        await set_mining(mined, on=False)
        try:
            stopped = time.monotonic()
            _, body = await wait_for(url + "/healthz", lambda s, _: s == 503, task, MAX_HEAD_AGE_S + 30)
            # Not before the configured age: the keeper was still following a live chain until then.
            assert time.monotonic() - stopped >= MAX_HEAD_AGE_S - 1.5
            assert body.splitlines()[0] == "unhealthy" and "head stale" in body, body
            assert (await get(url + "/readyz"))[0] == 200  # still ready: readiness is not liveness
            code, out = await keeper_status("--url", url, "--json")
            assert code == 1, out
            reported = json.loads(out)
            assert reported["healthy"] is False and any("head stale" in r for r in reported["health_reasons"])
        finally:
            await set_mining(mined, on=True)
        _, body = await wait_for(url + "/healthz", lambda s, _: s == 200, task, 30)
        assert body == "ok\n"


async def test_readyz_is_503_during_the_backfill_and_200_after(mined: Devnet) -> None:
    # A long history to page through one block at a time: the backfill takes seconds, not milliseconds.
    await mined.rpc.call("anvil_mine", [hex(400)])
    seen: list[tuple[int, str]] = []
    async with running_keeper(mined, dry_run=True, getlogs_max_range=1) as (_, url, task):
        await wait_for(url + "/readyz", lambda s, _: s == 200, task, 300, seen)
        during = [body for status, body in seen if status == 503]
        assert any("starting: backfill" in body for body in during), seen[:3]
        assert "\nkeeper_ready 1.0\n" in (await get(url + "/metrics"))[1]
        assert all(body.startswith("not ready") for body in during)
        # Alive all along: a liveness probe must not restart a keeper in its first backfill.
        assert (await get(url + "/healthz"))[0] == 200


async def test_keeper_status_exits_non_zero_against_a_dead_keeper() -> None:
    code, screen = await keeper_status("--url", f"http://127.0.0.1:{free_port()}")
    assert code == 3 and "unreachable" in screen, screen


def _exprs() -> list[str]:
    alerts = re.findall(r"^\s*expr:\s*(.+)$", (DEPLOY / "prometheus/alerts.yml").read_text(), re.M)
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    return alerts + [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@asynccontextmanager
async def prometheus(target: str) -> AsyncIterator[str]:
    """Debian's Prometheus scraping `target` every second, with the repository's alert rules."""
    work = Path(tempfile.mkdtemp(prefix="prom-"))
    port = free_port()
    (work / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "keeper", "static_configs": [{"targets": [target]}]}],
    }))
    log = (work / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60):
            while (await get(url + "/-/ready") or (0, ""))[0] != 200:
                assert proc.returncode is None, (work / "prometheus.log").read_text()[-2000:]
                await asyncio.sleep(0.2)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


async def query(prom: str, expr: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(prom + "/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def until_query(prom: str, expr: str, task: asyncio.Task, timeout_s: float) -> float:
    async with asyncio.timeout(timeout_s):
        while True:
            assert not task.done(), task.result()
            result = await query(prom, expr)
            if result:
                return float(result[0]["value"][1])
            await asyncio.sleep(0.5)


@pytest.mark.skipif(shutil.which("prometheus") is None and not os.environ.get("CI"),  # CI must run it
                    reason="Prometheus (Debian package `prometheus`, installed by .ci/run) is not installed")
async def test_a_real_prometheus_sees_the_head_advance_and_a_liquidation(mined: Devnet) -> None:
    async with running_keeper(mined, min_profit_usd=0) as (_, url, task), \
            prometheus(url.removeprefix("http://")) as prom:
        await wait_for(url + "/readyz", lambda s, _: s == 200, task, 120)
        first = await until_query(prom, 'keeper_head_block{job="keeper"} > 0', task, 60)
        await until_query(prom, f'keeper_head_block{{job="keeper"}} > {first:.0f}', task, 60)
        await until_query(prom, 'up{job="keeper"} == 1 and keeper_up == 1 and keeper_ready == 1', task, 30)

        await shock(mined.rpc, mined.deployment, "WETH", -15)
        included = await until_query(
            prom, 'sum(keeper_liquidations_total{job="keeper",outcome="included"}) > 0', task, 180)
        assert included >= 1

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(prom + "/api/v1/label/__name__/values") as r:
                scraped = set((await r.json())["data"])
            async with http.get(prom + "/api/v1/rules") as r:
                groups = (await r.json())["data"]["groups"]
        named = {n for e in _exprs() for n in re.findall(r"\bkeeper_[a-z0-9_]+\b", e)}
        assert named and named <= scraped, sorted(named - scraped)
        rules = [rule for g in groups for rule in g["rules"]]
        assert rules and all(rule["health"] == "ok" for rule in rules), \
            [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
