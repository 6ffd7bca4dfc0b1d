"""The racing processes of bench/race.py: our keeper, the naive poller, and a clock for heads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from keeper.devnet.proxy import RpcProxy
from keeper.devnet.stack import Devnet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


class HeadClock:
    """When each block was first seen (wall clock, as the keeper's log stamps), on Anvil's own
    newHeads socket (not through a proxy)."""

    def __init__(self, http_url: str) -> None:
        self.url = http_url.replace("http://", "ws://")
        self.seen: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HeadClock:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, ready: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]})
            ready.set()
            async for msg in ws:
                now = time.time()
                body = json.loads(msg.data)
                head = body.get("params", {}).get("result")
                if head:
                    self.seen.setdefault(int(head["number"], 16), now)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
    proc: asyncio.subprocess.Process | None = None

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            # Its whole process group: a keeper killed mid-cycle would leave its fork Anvil behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


class KeeperProcess(_Process):
    async def stop(self) -> None:
        # Under py-spy, end the keeper itself: py-spy writes its profile when its child exits.
        if self.profile and self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                os.kill(self._pid(), signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 30)
        await super().stop()

    """`keeper run` in inventory mode, its HTTP RPC through `proxy`, its heads from Anvil's socket."""

    def __init__(self, dn: Devnet, proxy: RpcProxy, *, profile: bool, tag: str,
                 env: dict[str, str] | None = None) -> None:
        self.dn, self.proxy, self.profile, self.tag = dn, proxy, profile, tag
        self.extra_env = env or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-keeper-"))
        self.log_path = self.tmp / "keeper.log"
        self.metrics_port = _free_port()

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.dn.keeper_env(), "KEEPER_RPC_URL": self.proxy.url,
                "KEEPER_WS_URL": self.dn.url.replace("http://", "ws://"),
                "KEEPER_DB_PATH": str(self.tmp / "keeper.db"), "KEEPER_METRICS_PORT": str(self.metrics_port),
                "KEEPER_MIN_PROFIT_USD": "0", "KEEPER_LOG_FORMAT": "json", "KEEPER_EXECUTION": "inventory",
                **self.extra_env}

    async def start(self, limit_s: float = 900) -> float:
        argv = [str(VENV_BIN / "python"), "-m", "keeper", "run"]
        if self.profile:
            RESULTS.mkdir(exist_ok=True)
            argv = [str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", "200", "-o",
                    str(RESULTS / f"profile-{self.tag}.txt"), "--", *argv]
        t0 = time.perf_counter()
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(*argv, env=self.env(), cwd=self.tmp, stdout=log,
                                                         stderr=asyncio.subprocess.STDOUT,
                                                         start_new_session=True)
        while "cycle.done" not in self.log_path.read_text(errors="replace"):
            if self.proc.returncode is not None or time.perf_counter() - t0 > limit_s:
                raise RuntimeError(f"keeper did not start: {self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.5)
        return time.perf_counter() - t0

    def sends(self, events: tuple[str, ...] = ("exec.sent",)) -> list[tuple[float, str, str, int]]:
        """(wall-clock time, tx hash, borrower, block decided at) of each broadcast the keeper
        logged, in order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"exec.' not in line:
                continue
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if e.get("event") in events and e.get("tx"):
                    when = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                    who, at = str(e.get("borrower", "")).lower(), int(e.get("decided_at") or 0)
                    out.append((when, e["tx"], who, at))
        return out

    def _pid(self) -> int:
        assert self.proc is not None
        if not self.profile:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self._pid()}/status").read_text()
        kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kb / 1024

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return await r.text()

    async def metric(self, name: str) -> float:
        return sum(float(v) for k, v in _samples(await self.metrics_text()) if k.split("{")[0] == name)


def _samples(text: str) -> list[tuple[str, str]]:
    return [tuple(line.rsplit(" ", 1)) for line in text.splitlines()  # type: ignore[misc]
            if line and not line.startswith("#")]


def cycle_stats(text: str) -> dict[str, Any]:
    """keeper_cycle_seconds as count, mean and the share of cycles longer than one second."""
    rows = dict(_samples(text))
    count = float(rows.get("keeper_cycle_seconds_count", 0))
    total = float(rows.get("keeper_cycle_seconds_sum", 0))
    under_1s = next((float(v) for k, v in rows.items()
                     if k.startswith("keeper_cycle_seconds_bucket") and 'le="1.0"' in k), None)
    return {"cycles": count, "mean_s": total / count if count else None,
            "over_1s_share": (1 - under_1s / count) if count and under_1s is not None else None,
            "heads_skipped": float(rows.get("keeper_heads_skipped", 0))}


class NaiveProcess(_Process):
    def __init__(self, dn: Devnet, proxy: RpcProxy, key: str) -> None:
        self.dn, self.proxy, self.key = dn, proxy, key

    async def start(self, limit_s: float = 900) -> float:
        t0 = time.perf_counter()
        d = self.dn.deployment
        self.proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "python"), str(ROOT / "bench" / "naive.py"), self.proxy.url,
            d.pool_addresses_provider, self.key, str(d.start_block), stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        if not line.startswith(b"ready"):
            raise RuntimeError("the naive keeper did not start")
        return time.perf_counter() - t0
