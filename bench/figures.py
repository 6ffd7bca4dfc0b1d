"""The in-process figures of the race benchmark: backfill, full health refresh, mirror recompute.

Each runs on the seeded devnet (automine) before the keepers start; see bench/race.py.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import Deployment
from keeper.devnet.seed import set_price
from keeper.health.mirror_sync import bootstrap, catch_up
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.protocol.aave_v3 import GET_USER_ACCOUNT_DATA, read_account_health
from keeper.types import Market

NAIVE_REFRESH_SAMPLE = 10_000  # above this, the naive refresh is timed on a sample and scaled


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


async def backfill(rpc: RpcClient, market: Market, start_block: int) -> tuple[list[str], dict[str, Any]]:
    head = await rpc.block_number()
    t0 = time.perf_counter()
    found = await backfill_borrowers(rpc, market.pool, start_block, head, RangeSizer(max_range=10_000))
    dt = time.perf_counter() - t0
    return sorted(found), {"backfill_s": dt, "backfill_per_s": len(found) / dt}


async def refresh(rpc: RpcClient, market: Market, users: list[str]) -> dict[str, Any]:
    """Every borrower's getUserAccountData: Multicall3 (500 per eth_call) vs one eth_call each."""
    head = await rpc.block_number()
    multi = []
    for _ in range(3):
        t0 = time.perf_counter()
        await read_account_health(rpc, market, users, head)
        multi.append(time.perf_counter() - t0)
    sample = users[:NAIVE_REFRESH_SAMPLE]
    t0 = time.perf_counter()
    for u in sample:
        await rpc.eth_call(market.pool, GET_USER_ACCOUNT_DATA.encode(u), head)
    naive = (time.perf_counter() - t0) * len(users) / len(sample)
    return {"refresh_multicall_s": _median(multi), "refresh_naive_s": naive,
            "refresh_naive_sampled": len(sample), "refresh_ratio": naive / _median(multi)}


async def mirror(rpc: RpcClient, market: Market, d: Deployment, users: list[str]) -> dict[str, Any]:
    """Bootstrap the exact mirror, move WETH +1% (nobody becomes liquidatable), time the recompute."""
    head = await rpc.block_number()
    t0 = time.perf_counter()
    m = await bootstrap(rpc, market, users, head)
    bootstrap_s = time.perf_counter() - t0
    weth = d.assets["WETH"]
    await set_price(rpc, d, "WETH", m.reserves[weth].price_base * 101 // 100)
    await catch_up(rpc, m, await rpc.block_number())
    affected = m.affected_by_price(weth)
    full, subset = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        m.recompute(users)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.recompute(affected)
        subset.append(time.perf_counter() - t0)
    return {"mirror_bootstrap_s": bootstrap_s, "mirror_full_ms": 1e3 * _median(full),
            "mirror_affected_ms": 1e3 * _median(subset), "mirror_affected_users": len(affected)}
