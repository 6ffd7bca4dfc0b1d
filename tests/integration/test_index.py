"""The persistent borrower index against a real Anvil running the real Aave V3 market.

Stand-in: an HTTP proxy in front of Anvil that behaves like hosted nodes do with
eth_getLogs (refuses ranges over 1,000 blocks with their error texts, or hangs on them),
and that can hold getLogs requests so a backfill can be killed at a known point.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from keeper.chain.heads import fetch_head
from keeper.chain.rpc import RpcClient
from keeper.devnet import stack
from keeper.devnet.aave import deploy_market
from keeper.devnet.anvil import Anvil, AnvilOptions
from keeper.devnet.chain import DevChain
from keeper.devnet.seed import Seeder, plan_borrowers
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.index.indexer import BorrowerIndex, should_show_progress
from keeper.index.store import Store, read_checkpoint

REPO = Path(__file__).resolve().parents[2]
ROUNDS, PER_ROUND, GAP = 20, 5, 50  # borrowers spread over ~1,100 blocks


@dataclass
class Market:
    url: str
    rpc: RpcClient
    pool: str
    start_block: int
    head: int
    expected: set[str]  # every address the seeding made borrow


@pytest.fixture(scope="module")
async def market() -> AsyncIterator[Market]:
    """20 rounds of 5 borrowers with 50 empty blocks after each, then 300 more at once.

    Built like stack.launch but on an Anvil with --prune-history, and with the empty blocks
    mined before the big seeding: Anvil snapshots state per block, so ~1,000 empty blocks on
    a fully seeded market take 10+ s to mine instead of ~1.5 s. Logs and headers of old
    blocks stay available.
    """
    async with Anvil(AnvilOptions(extra=["--prune-history", "64"])) as node:
        chain = DevChain(node.url)
        try:
            deployment = await deploy_market(chain)
        finally:
            await chain.close()
        async with RpcClient(node.url, timeout_s=120, max_batch=500) as rpc:
            seeder = Seeder(rpc, deployment)
            expected: set[str] = set()
            for r in range(1, ROUNDS + 1):
                plans = plan_borrowers(PER_ROUND, seed=r, salt=r)
                await seeder.seed(plans)
                expected |= {p.address for p in plans}
                await rpc.call("anvil_mine", [hex(GAP)])
            plans = plan_borrowers(300)
            await seeder.seed(plans)
            expected |= {p.address for p in plans}
            head = await rpc.block_number()
            yield Market(node.url, rpc, deployment.pool, deployment.start_block, head, expected)


# -- a getLogs-limiting, request-recording proxy --------------------------------------------


@dataclass
class LogsProxy:
    upstream: str
    max_range: int | None = None
    refusal: tuple[int, str] | None = None  # (code, message); "{lo}"/"{hi}" filled with a range
    hang_over_max: bool = False  # instead of refusing, never answer (the client times out)
    hold_after: int | None = None  # hold every getLogs request after the N-th until released
    getlogs: list[tuple[int, int]] = field(default_factory=list)  # every getLogs range asked
    refused: int = 0
    held: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _http: aiohttp.ClientSession | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        items = body if isinstance(body, list) else [body]
        errors: dict[Any, dict] = {}
        for item in items:
            if item.get("method") != "eth_getLogs":
                continue
            f = item["params"][0]
            lo, hi = int(f["fromBlock"], 16), int(f["toBlock"], 16)
            self.getlogs.append((lo, hi))
            if self.hold_after is not None and len(self.getlogs) > self.hold_after:
                self.held.set()
                await self._release.wait()
                return web.Response(status=503)
            if self.max_range is not None and hi - lo + 1 > self.max_range:
                self.refused += 1
                if self.hang_over_max:
                    await self._release.wait()
                    return web.Response(status=503)
                assert self.refusal is not None
                code, msg = self.refusal
                text = msg.format(lo=hex(lo), hi=hex(lo + self.max_range - 1))
                errors[item["id"]] = {"code": code, "message": text}
        assert self._http is not None
        async with self._http.post(self.upstream, json=body) as resp:
            answer = await resp.json(content_type=None)
        if errors:
            answers = answer if isinstance(answer, list) else [answer]
            for a in answers:
                if a.get("id") in errors:
                    a.pop("result", None)
                    a["error"] = errors[a["id"]]
        return web.json_response(answer)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
async def make_proxy(market: Market) -> AsyncIterator[Any]:
    runners: list[tuple[web.AppRunner, LogsProxy]] = []

    async def make(**kw: Any) -> LogsProxy:
        proxy = LogsProxy(market.url, **kw)
        proxy._http = aiohttp.ClientSession()
        app = web.Application(client_max_size=2**24)
        app.router.add_post("/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append((runner, proxy))
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v3/SECRET-KEY"
        return proxy

    try:
        yield make
    finally:
        for runner, proxy in runners:
            proxy.release()
            async with asyncio.timeout(10):
                await runner.cleanup()
            if proxy._http is not None:
                await proxy._http.close()


async def index_once(url: str, db: Path, m: Market, **kw: Any) -> tuple[set[str], list[tuple[int, int]]]:
    """A fresh in-process index run to the current head: (borrowers, event keys)."""
    timeout_s = kw.pop("timeout_s", 10)
    async with RpcClient(url, timeout_s=timeout_s, max_retries=kw.pop("max_retries", 1)) as rpc:
        async with await Store.open(db) as store:
            index = BorrowerIndex(rpc, store, m.pool, start_block=m.start_block, **kw)
            await index.start()
            assert index.checkpoint.block >= m.head
            events = [(e.block, e.log_index) for e in await store.events()]
            return index.borrowers(), events


# -- tests -------------------------------------------------------------------------------


async def test_backfill_finds_every_seeded_borrower(market: Market, tmp_path: Path) -> None:
    borrowers, events = await index_once(market.url, tmp_path / "k.db", market, confirmations=0)
    assert borrowers == market.expected
    assert len(events) == len(set(events))
    direct = await backfill_borrowers(market.rpc, market.pool, market.start_block, market.head)
    assert direct == market.expected


async def _run_entry(url: str, db: Path, m: Market, cwd: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "KEEPER_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    env.pop("KEEPER_RPC_URL", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keeper.index", "--rpc-url", url, "--pool", m.pool, "--db", str(db),
        "--start-block", str(m.start_block), "--max-range", "25", "--confirmations", "0",
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def test_killed_backfill_resumes_from_its_checkpoint(market: Market, make_proxy: Any,
                                                           tmp_path: Path) -> None:
    db = tmp_path / "keeper.db"
    gate = await make_proxy(hold_after=12)
    proc = await _run_entry(gate.url, db, market, tmp_path)
    try:
        async with asyncio.timeout(60):
            await gate.held.wait()  # 12 pages asked for; the 13th is held
        killed_at = await asyncio.to_thread(read_checkpoint, db)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    killed_out, killed_err = await proc.stdout.read(), (await proc.stderr.read()).decode()
    # -9, or 255 if something else in this process reaped the child first (asyncio's watcher
    # then cannot read the status); either way the run did not finish.
    assert proc.returncode in (-signal.SIGKILL, 255), killed_err[-3000:]
    assert b'"checkpoint"' not in killed_out
    assert killed_at is not None and market.start_block < killed_at.block < market.head

    recorder = await make_proxy()
    proc = await _run_entry(recorder.url, db, market, tmp_path)
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["resumed_from"] == killed_at.block
    assert recorder.getlogs[0][0] == killed_at.block + 1 > market.start_block  # did not start over

    async with await Store.open(db) as store:
        resumed = await store.borrowers()
        resumed_events = [(e.block, e.log_index) for e in await store.events()]
    whole, whole_events = await index_once(market.url, tmp_path / "whole.db", market, confirmations=0)
    assert resumed == whole == market.expected
    assert resumed_events == whole_events  # nothing counted twice, nothing missed


REFUSALS = {
    "geth-style": (-32000, "exceed maximum block range: 1000"),
    "alchemy": (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K "
                        "block range and no limit on the response size, or you can request any block "
                        "range with a cap of 10K logs in the response. Based on your parameters, this "
                        "block range should work: [{lo}, {hi}]"),
    "infura": (-32005, "query returned more than 10000 results. Try with this block range [{lo}, {hi}]."),
    "no-hint": (-32602, "block range is too wide"),
    "server-timeout": (-32016, "eth_getLogs request was canceled due to enabled timeout."),
}


@pytest.mark.parametrize("style", [*REFUSALS, "timeout"])
async def test_node_capping_getlogs_ranges_still_gets_a_complete_backfill(
        market: Market, make_proxy: Any, tmp_path: Path, style: str) -> None:
    assert market.head - market.start_block > 1_000  # the cap must bite
    if style == "timeout":
        proxy = await make_proxy(max_range=1_000, hang_over_max=True)
        kw: dict[str, Any] = {"timeout_s": 0.5, "max_retries": 0}
    else:
        proxy = await make_proxy(max_range=1_000, refusal=REFUSALS[style])
        kw = {}
    borrowers, events = await index_once(proxy.url, tmp_path / "k.db", market, confirmations=0, **kw)
    direct, direct_events = await index_once(market.url, tmp_path / "direct.db", market,
                                             confirmations=0)
    assert proxy.refused >= 1
    assert borrowers == direct == market.expected
    assert events == direct_events


async def test_reorg_drops_orphaned_borrower_and_adds_new_branch_one(tmp_path: Path) -> None:
    dn = await stack.launch(borrowers=10)
    try:
        rpc, seeder = dn.rpc, Seeder(dn.rpc, dn.deployment)
        store = await Store.open(tmp_path / "k.db")
        index = BorrowerIndex(rpc, store, dn.deployment.pool, start_block=dn.deployment.start_block,
                              confirmations=2)
        try:
            await index.start()
            assert index.borrowers() == {p.address for p in dn.plans}

            (orphan,) = plan_borrowers(1, seed=101, salt=101)
            await seeder.seed([orphan])
            update = await index.advance(await fetch_head(rpc))
            assert update.new_borrowers == {orphan.address}
            before = index.checkpoint.block
            borrowed_at = min(e.block for e in await store.events(orphan.address))
            depth = max(3, before - borrowed_at + 1)

            await rpc.call("anvil_reorg", [depth, []])  # same height, the last blocks replaced
            update = await index.advance(await fetch_head(rpc))
            assert update.removed_borrowers == {orphan.address}
            assert update.fork_point == before - depth and update.reorg_depth == depth
            assert orphan.address not in index.borrowers()
            assert orphan.address not in {e.borrower for e in await store.events()}

            (fresh,) = plan_borrowers(1, seed=202, salt=202)
            await seeder.seed([fresh])
            update = await index.advance(await fetch_head(rpc))
            assert update.new_borrowers == {fresh.address} and update.fork_point is None
            head = await rpc.block_number()
            truth = await backfill_borrowers(rpc, dn.deployment.pool, dn.deployment.start_block, head)
            assert index.borrowers() == truth == {p.address for p in dn.plans} | {fresh.address}
            fresh_at = min(e.block for e in await store.events(fresh.address))
        finally:
            await store.close()

        # A reorg while the keeper was down is undone when it starts again.
        await rpc.call("anvil_reorg", [await rpc.block_number() - fresh_at + 1, []])
        async with await Store.open(tmp_path / "k.db") as store:
            index = BorrowerIndex(rpc, store, dn.deployment.pool, start_block=dn.deployment.start_block,
                                  confirmations=2)
            update = await index.start()
            assert update.removed_borrowers == {fresh.address}
            assert index.borrowers() == {p.address for p in dn.plans}
    finally:
        await dn.close()


async def test_live_blocks_report_activity_and_keep_recent_hashes(market: Market, tmp_path: Path) -> None:
    async with RpcClient(market.url) as rpc, await Store.open(tmp_path / "k.db") as store:
        index = BorrowerIndex(rpc, store, market.pool, start_block=market.start_block, confirmations=5,
                              keep_blocks=128)
        await index.start()
        hashes = await store.block_hashes()
        head = await fetch_head(rpc)
        assert hashes[head.number] == head.hash
        assert set(range(head.number - 5, head.number + 1)) <= set(hashes)  # the live tail
        update = await index.advance(head)  # nothing new
        assert update.blocks_read == 0 and not update.changed


def test_progress_bar_only_for_long_backfills_on_a_terminal() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert should_show_progress(Tty(), 1_000_000, 10_000)  # type: ignore[arg-type]
    assert not should_show_progress(Tty(), 50_000, 10_000)  # type: ignore[arg-type]
    assert not should_show_progress(Pipe(), 1_000_000, 10_000)  # type: ignore[arg-type]


def test_range_sizer_is_still_the_lead_s_entry_point() -> None:
    s = RangeSizer(max_range=2_000)
    s.shrink()
    assert s.current == 1_000
