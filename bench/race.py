"""The keeper against a naive poller, in one run, on a chain that mines a block every second.

    .venv/bin/python bench/race.py 1000 [10000 100000] [--shocks 20] [--profile]

For each size: launch a devnet with N real Pool positions (automine for set-up), time the
backfill, the full health refresh (Multicall3 vs one getUserAccountData at a time) and the
mirror recompute in process; then switch Anvil to 1-second interval mining and start, as
separate processes, `keeper run` (inventory, its own wallet) and bench/naive.py (another
wallet), each behind its own recording proxy. Then:
- steady state: requests per block for each, over 10 blocks with no price move;
- `--shocks` price drops of different assets and sizes, each restored after 8 blocks:
  shock-to-send (the block carrying the update, as first seen on a newHeads socket, to the
  keeper's first eth_sendRawTransaction at the proxy), which block each newly liquidatable
  position was first liquidated in and by whom, and requests per block during the shock;
- the naive keeper stops, and WETH falls 30% with the keeper alone (issue 9): blocks from the
  shock to the last liquidation, liquidatable accounts left, reverted transactions, breaker trips;
- the keeper's peak RSS (VmHWM) and its cycle-time histogram from /metrics.
Results go to bench/results/race-N.json; bench/plot.py draws them and prints the tables.
`--profile` runs the keeper under py-spy (bench/results/profile-N.txt) and skips the RSS figure.
`--no-race` measures the keeper alone at steady state (no naive keeper, shocks or crash).
`--crash-only` runs only issue 9's WETH -30% with the keeper alone, watched until nobody is
liquidatable or `--crash-blocks` pass (bench/results/crash-N.json).
Each keeper's wallet holds GAS_ETH of native coin: the devnet's 100 ETH pays for only ~700
liquidations at a tip that is a share of the profit, and a keeper out of gas stops sending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import figures
from keepers import HeadClock, KeeperProcess, NaiveProcess, cycle_stats

from keeper.chain.multicall import multicall
from keeper.devnet.proxy import RpcProxy
from keeper.devnet.seed import get_price, set_price
from keeper.devnet.stack import KEEPER_ADDRESS, Devnet, fund_inventory, launch
from keeper.log import configure_logging
from keeper.protocol.aave_v3 import GET_USER_ACCOUNT_DATA, LIQUIDATION, discover_market
from keeper.types import Market

RESULTS = Path(__file__).resolve().parent / "results"
NAIVE_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"  # Anvil account 2
NAIVE_ADDRESS = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
WINDOW = 8  # blocks watched after each shock
SHOCK_ASSETS = ("WETH", "WBTC", "LINK", "DAI", "USDC")
GAS_ETH = 10_000
# From this size on Anvil keeps only the newest states in memory: its default history took 18 GB
# while seeding 100,000 borrowers. Every read here is at a block a few blocks old at most.
PRUNED_FROM = 50_000
MEMORY_STATES = 64


def shock_plan(n: int) -> list[tuple[str, float]]:
    """Different assets, growing sizes: each drop reaches a band of accounts the last one did not."""
    return [(SHOCK_ASSETS[i % len(SHOCK_ASSETS)], -(4.0 + 1.5 * (i // len(SHOCK_ASSETS)) + (i % 3) * 0.5))
            for i in range(n)]


class Race:
    def __init__(self, dn: Devnet, market: Market, users: list[str]) -> None:
        self.dn, self.market, self.users = dn, market, users
        self.rpc = dn.rpc

    async def liquidatable(self, block: int) -> set[str]:
        """Accounts under HF 1 at `block`. getUserAccountData panics (0x11) on a few accounts after
        some liquidations on this devnet; those are left out, not fatal."""
        calls = [(self.market.pool, GET_USER_ACCOUNT_DATA.encode(u)) for u in self.users]
        results = await multicall(self.rpc, calls, block)
        out = set()
        for u, (ok, raw) in zip(self.users, results, strict=True):
            if ok and (data := GET_USER_ACCOUNT_DATA.decode(raw))[1] and data[5] < 10**18:
                out.add(u.lower())
        return out

    async def liquidations(self, start: int, end: int) -> list[dict[str, Any]]:
        logs = await self.rpc.get_logs({"address": self.market.pool, "topics": [LIQUIDATION.topic],
                                        "fromBlock": start, "toBlock": end})
        out = [LIQUIDATION.decode(lg) | {"block": int(lg["blockNumber"], 16)} for lg in logs]
        return [e | {"user": e["user"].lower(), "liquidator": e["liquidator"].lower()} for e in out]

    async def wait_block(self, n: int, limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while await self.rpc.block_number() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"block {n} not reached")
            await asyncio.sleep(0.1)

    async def shock(self, clock: HeadClock, proxies: dict[str, RpcProxy], symbol: str,
                    pct: float) -> dict[str, Any]:
        d = self.dn.deployment
        before = await self.liquidatable(await self.rpc.block_number())
        old = await get_price(self.rpc, d, symbol)
        counts0 = {k: _requests(p) for k, p in proxies.items()}
        t_submit = time.time()
        tx = await set_price(self.rpc, d, symbol, int(old * (100 + pct) / 100))
        block = int((await self.rpc.get_transaction_receipt(tx))["blockNumber"], 16)
        await self.wait_block(block + WINDOW)
        counts1 = {k: _requests(p) for k, p in proxies.items()}
        left = await self.liquidatable(block + WINDOW)
        events = await self.liquidations(block + 1, block + WINDOW)
        await set_price(self.rpc, d, symbol, old)
        first: dict[str, tuple[int, str]] = {}
        for e in events:
            who = "keeper" if e["liquidator"] == KEEPER_ADDRESS.lower() else \
                "naive" if e["liquidator"] == NAIVE_ADDRESS.lower() else e["liquidator"]
            first.setdefault(e["user"], (e["block"] - block, who))
        newly = (set(first) | left) - before
        return {
            "asset": symbol, "pct": pct, "block": block, "newly_liquidatable": len(newly),
            "first_liquidation": {u: first.get(u) for u in newly},
            "t_submit": t_submit, "t_block": clock.seen.get(block), "shock_to_send_ms": None,
            "requests_per_block": {k: (counts1[k] - counts0[k]) / WINDOW for k in proxies},
        }

    async def crash(self, clock: HeadClock, keeper: KeeperProcess, symbol: str = "WETH",
                    pct: float = -30, max_blocks: int = 90) -> dict[str, Any]:
        """Issue 9's scenario: the keeper alone, running and synced, when WETH falls 30%."""
        d = self.dn.deployment
        old = await get_price(self.rpc, d, symbol)
        before = await self.liquidatable(await self.rpc.block_number())
        t_submit = time.time()
        tx = await set_price(self.rpc, d, symbol, int(old * (100 + pct) / 100))
        block = int((await self.rpc.get_transaction_receipt(tx))["blockNumber"], 16)
        left, head = set(), block
        while head < block + max_blocks:
            await self.wait_block(head + 3)
            head = await self.rpc.block_number()
            left = await self.liquidatable(head)
            if not left:
                break
        events = await self.liquidations(block + 1, head)
        mine = KEEPER_ADDRESS.lower()
        ours = [e for e in events if e["liquidator"] == mine]
        kinds = ("exec.sent", "exec.replaced", "exec.cancel_sent")
        sent = [h for t, h, _, _ in keeper.sends(kinds) if t > t_submit]
        receipts = [await self.rpc.get_transaction_receipt(h) for h in sent]
        mined = [r for r in receipts if r is not None and int(r["blockNumber"], 16) > block]
        return {
            "asset": symbol, "pct": pct, "block": block, "liquidatable_before": len(before),
            "liquidations": len(ours), "users_liquidated": len({e["user"] for e in ours}),
            "blocks_to_last_liquidation": (max(e["block"] for e in ours) - block) if ours else None,
            "left_liquidatable": len(left), "left_sample": sorted(left)[:5], "watched_blocks": head - block,
            "reverted": sum(1 for r in mined if int(r["status"], 16) == 0),
            "breaker_trips": await keeper.metric("keeper_breaker_trips_total"),
        }


async def run_size(n: int, shocks: int, profile: bool = False, crash_blocks: int = 90,
                   race_on: bool = True, figures_from: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"borrowers": n, "shocks": shocks}
    t0 = time.perf_counter()
    dn = await _launch(n)
    out["launch_s"] = time.perf_counter() - t0
    try:
        rpc, d = dn.rpc, dn.deployment
        market = await discover_market(rpc, d.pool_addresses_provider)
        users, f = await figures.backfill(rpc, market, d.start_block)
        out |= f
        if figures_from:  # measured by an earlier run of the same code on the same devnet seed
            out |= {k: v for k, v in figures_from.items() if k.startswith(("backfill", "refresh", "mirror"))}
        else:
            out |= await figures.refresh(rpc, market, users)
            out |= await figures.mirror(rpc, market, d, users)
        out["load_average"] = os.getloadavg()  # the machine is shared: how busy it was
        print(f"[{n}] in-process figures: {json.dumps({k: v for k, v in out.items()})}", flush=True)
        await fund_inventory(rpc, d, NAIVE_ADDRESS, 50_000_000)
        await fund_gas(dn, KEEPER_ADDRESS, NAIVE_ADDRESS)
        await rpc.call("evm_setIntervalMining", [1])
        race = Race(dn, market, users)
        async with HeadClock(dn.url) as clock, RpcProxy(dn.url) as kp, RpcProxy(dn.url) as np_:
            # Racing a competitor loses races after paying gas, and the breaker counts those by design
            # (3 an hour by default): in the race it is set out of the way; the crash below runs
            # a fresh keeper process on the defaults.
            keeper = KeeperProcess(dn, kp, profile=profile, tag=str(n),
                                   env={"KEEPER_BREAKER_MAX_FAILURES": "100000"})
            naive = NaiveProcess(dn, np_, NAIVE_KEY)
            try:
                out["keeper_sync_s"] = await keeper.start()
                if not race_on:  # the keeper alone at steady state: requests per block, cycles, RSS
                    out |= await steady(race, {"keeper": kp})
                    out["cycle"] = cycle_stats(await keeper.metrics_text())
                    out["keeper_peak_rss_mb"] = None if profile else keeper.peak_rss_mb()
                    return out
                out["naive_sync_s"] = await naive.start()
                print(f"[{n}] both keepers running", flush=True)
                out |= await steady(race, {"keeper": kp, "naive": np_})
                out["shock_runs"] = []
                for symbol, pct in shock_plan(shocks):
                    r = await race.shock(clock, {"keeper": kp, "naive": np_}, symbol, pct)
                    out["shock_runs"].append(r)
                    print(f"[{n}] shock {symbol} {pct}%: {r['newly_liquidatable']} newly liquidatable",
                          flush=True)
                await naive.stop()
                shock_to_send(out["shock_runs"], keeper.sends())
                out["cycle"] = cycle_stats(await keeper.metrics_text())
                rss = [None if profile else keeper.peak_rss_mb()]
                await keeper.stop()
                keeper = KeeperProcess(dn, kp, profile=False, tag=str(n))
                out["crash_keeper_sync_s"] = await keeper.start()
                out["crash"] = await race.crash(clock, keeper, max_blocks=crash_blocks)
                out["crash"]["cycle"] = cycle_stats(await keeper.metrics_text())
                print(f"[{n}] WETH -30%, keeper alone: {out['crash']}", flush=True)
                rss.append(keeper.peak_rss_mb())
                out["keeper_peak_rss_mb"] = max(r for r in rss if r is not None)
            finally:
                await naive.stop()
                await keeper.stop()
            out["keeper_methods"] = kp.counts()
    finally:
        await dn.close()
    return out


async def _launch(n: int) -> Devnet:
    return await launch(borrowers=n, fund_keeper_usd=50_000_000,
                        memory_states=MEMORY_STATES if n >= PRUNED_FROM else None)


async def fund_gas(dn: Devnet, *wallets: str) -> None:
    for w in wallets:
        await dn.rpc.call("anvil_setBalance", [w, hex(GAS_ETH * 10**18)])


async def crash_only(n: int, profile: bool, crash_blocks: int) -> dict[str, Any]:
    """Issue 9 at size n: a devnet with n borrowers on 1-second blocks, the keeper (defaults, breaker
    included) running and synced, then WETH -30%; watched until nobody is liquidatable."""
    out: dict[str, Any] = {"borrowers": n}
    dn = await _launch(n)
    try:
        market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
        users, _ = await figures.backfill(dn.rpc, market, dn.deployment.start_block)
        await fund_gas(dn, KEEPER_ADDRESS)
        await dn.rpc.call("evm_setIntervalMining", [1])
        race = Race(dn, market, users)
        async with HeadClock(dn.url) as clock, RpcProxy(dn.url) as kp:
            keeper = KeeperProcess(dn, kp, profile=profile, tag=f"crash-{n}")
            try:
                out["keeper_sync_s"] = await keeper.start()
                # Steady state first: cycle times with nothing to liquidate (issue 9: inside the block time).
                await race.wait_block(await dn.rpc.block_number() + 20)
                out["steady_cycle"] = cycle_stats(await keeper.metrics_text())
                out["crash"] = await race.crash(clock, keeper, max_blocks=crash_blocks)
                out["crash"]["cycle"] = cycle_stats(await keeper.metrics_text())
                out["keeper_peak_rss_mb"] = None if profile else keeper.peak_rss_mb()
            finally:
                await keeper.stop()
        out["load_average"] = os.getloadavg()
    finally:
        await dn.close()
    return out


def shock_to_send(runs: list[dict[str, Any]], sends: list[tuple[float, str, str, int]]) -> None:
    """From each shock's block (first seen on the socket) to the keeper's first broadcast decided
    on a view at or after that block for one of that shock's borrowers, whenever it came (after the
    watch window too); a backlog from an earlier shock is not this shock's send."""
    for r in runs:
        newly = set(r["first_liquidation"])
        first = next((t for t, _, who, at in sends if at >= r["block"] and who in newly), None)
        if first is not None and r["t_block"] is not None:
            r["shock_to_send_ms"] = 1e3 * (first - r["t_block"])


def _requests(proxy: RpcProxy) -> int:
    return sum(proxy.counts().values())


async def steady(race: Race, proxies: dict[str, RpcProxy], blocks: int = 10) -> dict[str, Any]:
    start = await race.rpc.block_number()
    await race.wait_block(start + 1)
    c0 = {k: _requests(p) for k, p in proxies.items()}
    m0 = proxies["keeper"].counts()
    await race.wait_block(start + 1 + blocks)
    m1 = proxies["keeper"].counts()
    return {"steady_requests_per_block": {k: (_requests(p) - c0[k]) / blocks for k, p in proxies.items()},
            "steady_keeper_methods_per_block": {k: (v - m0.get(k, 0)) / blocks for k, v in m1.items()
                                                if v - m0.get(k, 0)}}


def saved_figures(log: str | None) -> dict[int, dict[str, Any]]:
    """The "[N] in-process figures: {...}" lines of an earlier run's output, by size."""
    if not log:
        return {}
    lines = [x for x in Path(log).read_text().splitlines() if " in-process figures: " in x]
    return {int(x[1 : x.index("]")]): json.loads(x.split(": ", 1)[1]) for x in lines}


async def main(sizes: list[int], shocks: int, profile: bool, race_on: bool,
               saved: dict[int, dict[str, Any]], crash_blocks: int | None) -> None:
    RESULTS.mkdir(exist_ok=True)
    for n in sizes:
        if crash_blocks is not None:
            out = await crash_only(n, profile, crash_blocks)
            path = RESULTS / f"crash-{n}.json"
            path.write_text(json.dumps(out, indent=1, default=str))
            print(f"[{n}] WETH -30%, keeper alone: {out['crash']}\n[{n}] results in {path}", flush=True)
            continue
        out = await run_size(n, shocks, profile, race_on=race_on, figures_from=saved.get(n))
        path = RESULTS / f"race-{n}.json"
        path.write_text(json.dumps(out, indent=1, default=str))
        print(f"[{n}] results in {path}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", type=int, nargs="*", default=[1000])
    ap.add_argument("--shocks", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-race", action="store_true",
                    help="the keeper alone at steady state: no naive keeper, no shocks, no crash")
    ap.add_argument("--figures-from", metavar="LOG",
                    help="reuse the in-process figures an earlier run printed (skips ~4 minutes at 10,000)")
    ap.add_argument("--crash-only", action="store_true",
                    help="only WETH -30% with the keeper alone, until nobody is liquidatable")
    ap.add_argument("--crash-blocks", type=int, default=600,
                    help="with --crash-only: blocks to watch at most (default 600)")
    args = ap.parse_args()
    configure_logging(level="WARNING")
    saved = saved_figures(args.figures_from)
    asyncio.run(main(args.sizes, args.shocks, args.profile, not args.no_race, saved,
                     args.crash_blocks if args.crash_only else None))
