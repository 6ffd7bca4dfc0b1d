"""What polling event-less price sources costs per block, and how fast a silent move is found.

    .venv/bin/python bench/oracle_poll.py [--borrowers 2000] [--repeat 7]

Launches a `--oracle chainlink` devnet (Chainlink proxies over aggregators, WBTC priced by the
event-less CAPO-style adapter) and the default devnet, runs the tracker one block at a time, and prints
(median of --repeat blocks):
  quiet   one tracker update on a block where nothing moved: JSON-RPC requests by method and time
  moved   the update on the block where the CAPO adapter's ratio fell 15% (no log at all): time, the
          newly liquidatable accounts found in that block, and the requests it took
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keeper.chain.rpc import RpcClient
from keeper.devnet.seed import get_price, set_price
from keeper.devnet.stack import launch
from keeper.health.tracker import HealthTracker
from keeper.log import configure_logging
from keeper.protocol.aave_v3 import discover_market, read_account_data


async def one(oracle: str, borrowers: int, repeat: int) -> list[tuple[str, str]]:
    dn = await launch(borrowers=borrowers, oracle=oracle)
    requests: Counter[str] = Counter()
    rpc = RpcClient(dn.url, timeout_s=120, on_request=lambda method, _s, _o: requests.update([method]))
    await rpc.start()
    try:
        market = await discover_market(rpc, dn.deployment.pool_addresses_provider)
        users = [p.address for p in dn.plans]
        tracker = HealthTracker(rpc, market)
        await tracker.start(users, await rpc.block_number())
        quiet = []
        for _ in range(repeat):
            await dn.rpc.call("evm_mine", [])
            block = await rpc.block_number()
            requests.clear()
            t0 = time.perf_counter()
            view = await tracker.update(block)
            quiet.append((time.perf_counter() - t0) * 1e3)
        quiet_requests = dict(requests)
        rows = [(f"{oracle}: quiet block, tracker update", f"{statistics.median(quiet):.0f} ms, requests "
                 f"{quiet_requests}, polled reserves {view.polled_reserves}")]
        if oracle == "chainlink":
            rows.append(await _capo_move(dn, rpc, tracker, requests, repeat, market.pool, users))
        return rows
    finally:
        await rpc.close()
        await dn.close()


async def _capo_move(dn, rpc, tracker, requests, repeat, pool, users) -> tuple[str, str]:
    moved, found, reqs = [], [], {}
    base = await get_price(dn.rpc, dn.deployment, "WBTC")
    for _ in range(repeat):
        snap = await dn.rpc.call("evm_snapshot", [])
        mirror_block = tracker.mirror.block
        await set_price(dn.rpc, dn.deployment, "WBTC", base * 85 // 100)
        block = await rpc.block_number()
        requests.clear()
        t0 = time.perf_counter()
        view = await tracker.update(block)
        moved.append((time.perf_counter() - t0) * 1e3)
        reqs = dict(requests)
        chain = {h.user for h in await read_account_data(rpc, pool, users, block) if h.liquidatable}
        assert {h.user for h in view.liquidatable} == chain
        found.append(len(chain))
        await dn.rpc.call("evm_revert", [snap])
        await tracker.start(users, mirror_block)  # back to the pre-move state for the next run
    return ("chainlink: CAPO -15% block (no event), tracker update",
            f"{statistics.median(moved):.0f} ms, {found[0]} newly liquidatable found in that block "
            f"(= chain), requests {reqs}")


async def main(borrowers: int, repeat: int) -> None:
    rows = await one("devnet", borrowers, repeat) + await one("chainlink", borrowers, repeat)
    width = max(len(k) for k, _ in rows)
    print(f"\noracle_poll ({borrowers} borrowers, median of {repeat}, Python {sys.version.split()[0]})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--borrowers", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    configure_logging(level="WARNING")
    asyncio.run(main(args.borrowers, args.repeat))
