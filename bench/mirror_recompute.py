"""How fast the exact health mirror recomputes after one price update, at devnet scale.

    .venv/bin/python bench/mirror_recompute.py [--borrowers 10000] [--repeat 7]

Launches a devnet with N seeded borrowers, bootstraps the mirror at the head (Multicall3), checks it
against getUserAccountData for every borrower, moves the WETH price once, catches the mirror up
from the logs, and times (median of --repeat runs, pure CPU, one core):
  full      recompute of every borrower after the update
  affected  recompute of `affected_by_price(WETH)` only
and, for scale, the chain round trip the mirror replaces (getUserAccountData for all, Multicall3).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keeper.devnet.seed import set_price
from keeper.devnet.stack import launch
from keeper.health.mirror_sync import bootstrap, catch_up, reconcile
from keeper.log import configure_logging
from keeper.protocol.aave_v3 import discover_market, read_account_data


def _median_ms(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


async def main(borrowers: int, repeat: int) -> None:
    t0 = time.monotonic()
    dn = await launch(borrowers=borrowers)
    launch_s = time.monotonic() - t0
    try:
        rpc, d = dn.rpc, dn.deployment
        users = [p.address for p in dn.plans]
        market = await discover_market(rpc, d.pool_addresses_provider)
        head = await rpc.block_number()

        t0 = time.monotonic()
        mirror = await bootstrap(rpc, market, users, head)
        bootstrap_s = time.monotonic() - t0
        t0 = time.monotonic()
        drifts = await reconcile(rpc, mirror, users, head)
        reconcile_s = time.monotonic() - t0
        assert not drifts, f"{len(drifts)} users drift right after the bootstrap"

        weth = d.assets["WETH"]
        old = mirror.reserves[weth].price_base
        await set_price(rpc, d, "WETH", old * 95 // 100)
        t0 = time.monotonic()
        cu = await catch_up(rpc, mirror, await rpc.block_number())
        catch_up_ms = (time.monotonic() - t0) * 1e3
        assert cu.applied.prices == {weth}

        t0 = time.perf_counter()
        affected = mirror.affected_by_price(weth)
        index_ms = (time.perf_counter() - t0) * 1e3
        full_ms, full = _median_ms(lambda: mirror.recompute(users), repeat)
        subset_ms, subset = _median_ms(lambda: mirror.recompute(affected), repeat)
        # Same users, same numbers, whichever way they were computed.
        assert all(subset[u] == full[u] for u in affected)

        t0 = time.monotonic()
        chain = await read_account_data(rpc, mirror.pool, users, mirror.block)
        chain_s = time.monotonic() - t0
        drifted = sum(1 for h in chain if full.get(h.user) != h)
        liquidatable = sum(1 for h in full.values() if h.liquidatable)

        rows = [
            ("borrowers", f"{borrowers}"),
            ("devnet launch (deploy + seed)", f"{launch_s:.1f} s " + ", ".join(
                f"{k} {v:.1f} s" for k, v in dn.timings.items())),
            ("mirror bootstrap (Multicall3, pinned block)", f"{bootstrap_s:.2f} s"),
            ("reconcile all vs getUserAccountData", f"{reconcile_s:.2f} s, drift 0"),
            ("catch_up after one price update (getLogs+apply)", f"{catch_up_ms:.1f} ms"),
            ("affected_by_price(WETH)", f"{len(affected)} users ({100 * len(affected) / borrowers:.0f}%), "
                                        f"{index_ms:.2f} ms"),
            ("full recompute, every borrower", f"{full_ms:.1f} ms ({1e3 * full_ms / borrowers:.1f} µs/user)"),
            ("affected-subset recompute", f"{subset_ms:.1f} ms ({1e3 * subset_ms / max(1, len(affected)):.1f}"
                                          " µs/user)"),
            ("getUserAccountData for all via Multicall3", f"{chain_s * 1e3:.0f} ms (the chain round trip)"),
            ("mirror == chain after the update", f"{borrowers - drifted}/{borrowers} to the wei"),
            ("liquidatable after -5% WETH", f"{liquidatable}"),
        ]
        width = max(len(k) for k, _ in rows)
        print(f"\nmirror_recompute (median of {repeat}, Python {sys.version.split()[0]})")
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        assert drifted == 0
    finally:
        await dn.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--borrowers", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    configure_logging(level="WARNING")
    asyncio.run(main(args.borrowers, args.repeat))
