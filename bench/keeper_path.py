"""Benchmark: devnet set-up and the keeper's hot path at N borrowers.

Usage: .venv/bin/python bench/keeper_path.py [N ...]   (default: 200 2000)
Prints one line per measurement; BENCHMARKS.md records the numbers with this command.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import time

from keeper.devnet import build
from keeper.devnet.seed import shock
from keeper.devnet.stack import KEEPER_ADDRESS, launch
from keeper.exec.plan import inventory_tx
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.protocol.aave_v3 import discover_market, read_account_health, read_prices, read_reserve_positions
from keeper.sim.fork import ForkSimulator
from keeper.strategy.opportunity import best_opportunity
from keeper.strategy.profit import Costs
from keeper.types import Position


async def compile_times() -> None:
    cache = build.CACHE_DIR
    saved = cache.with_name("solc.bench-saved")
    if cache.exists():
        shutil.move(cache, saved)
    try:
        t0 = time.perf_counter()
        await build.build_aave()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        await build.build_aave()
        cached = time.perf_counter() - t0
    finally:
        if saved.exists():
            shutil.rmtree(cache, ignore_errors=True)
            shutil.move(saved, cache)
    print(f"compile Aave V3.6 (solc-js): cold {cold:.1f} s, cached {cached * 1000:.0f} ms")


async def path(n: int) -> None:
    t0 = time.perf_counter()
    dn = await launch(borrowers=n)
    print(
        f"[{n}] launch {time.perf_counter() - t0:.2f} s (deploy {dn.timings['deploy_s']:.2f} s, "
        f"seed {dn.timings['seeding_s']:.2f} s)"
    )
    try:
        rpc, d = dn.rpc, dn.deployment
        market = await discover_market(rpc, d.pool_addresses_provider)
        head = await rpc.block_number()
        t0 = time.perf_counter()
        borrowers = await backfill_borrowers(
            rpc, market.pool, d.start_block, head, RangeSizer(max_range=10_000)
        )
        dt = time.perf_counter() - t0
        print(
            f"[{n}] backfill {len(borrowers)} borrowers in {dt * 1000:.0f} ms ({len(borrowers) / dt:,.0f}/s)"
        )
        users = sorted(borrowers)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            await read_account_health(rpc, market, users, head)
            samples.append(time.perf_counter() - t0)
        print(
            f"[{n}] refresh every borrower's health (Multicall3, 500/call): "
            f"median {statistics.median(samples) * 1000:.0f} ms"
        )
        await shock(rpc, d, "WETH", -15)
        head = await rpc.block_number()
        healths = [h for h in await read_account_health(rpc, market, users, head) if h.liquidatable]
        positions = await read_reserve_positions(rpc, market, [h.user for h in healths], head)
        prices = await read_prices(rpc, market, head)
        weth = next(r.asset for r in market.reserves if r.symbol == "WETH")
        costs = Costs(gas_units=450_000, gas_price_wei=2 * 10**9, native_price_base=prices[weth])
        async with ForkSimulator(
            dn.url, build.REPO_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
        ) as sim:
            t0 = time.perf_counter()
            await sim.at_block(head)
            first = time.perf_counter() - t0
            times = []
            for h in healths[:30]:
                opp = best_opportunity(
                    Position(h.user, head, h, positions[h.user][0], prices),
                    market.reserves,
                    costs,
                    min_net_profit_base=-(2**255),
                )
                if opp is None:
                    continue
                plan = inventory_tx(opp, market, KEEPER_ADDRESS)
                t0 = time.perf_counter()
                await sim.run(plan.tx, plan.watch, setup=plan.approvals)
                times.append(time.perf_counter() - t0)
        print(
            f"[{n}] fork start {first * 1000:.0f} ms; simulation per candidate: median "
            f"{statistics.median(times) * 1000:.1f} ms over {len(times)} candidates"
        )
    finally:
        await dn.close()


async def main(sizes: list[int]) -> None:
    await compile_times()
    for n in sizes:
        await path(n)


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [200, 2000]))
