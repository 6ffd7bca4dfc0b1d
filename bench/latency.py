"""Benchmark: from a price-update block to a signed liquidation, at N borrowers (default 10,000).

Usage: .venv/bin/python bench/latency.py [N]
Builds the daemon's stages as app.py does (index, mirror-backed health tracker, pipeline with
the fork simulator), moves WETH by -15% in one block, then times each stage until the first
liquidation transaction is signed. Prints one line per measurement.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from keeper.app import approve_inventory
from keeper.chain.heads import fetch_head
from keeper.config import load_settings
from keeper.devnet.seed import shock
from keeper.devnet.stack import KEEPER_DEV_KEY, launch
from keeper.exec.sender import Sender
from keeper.exec.signer import Signer
from keeper.health.tracker import HealthTracker
from keeper.index.indexer import BorrowerIndex
from keeper.index.store import Store
from keeper.metrics import Metrics
from keeper.pipeline import Pipeline
from keeper.protocol.aave_v3 import discover_market
from keeper.sim.fork import ForkSimulator


async def main(n: int) -> None:
    t0 = time.perf_counter()
    dn = await launch(borrowers=n)
    print(f"[{n}] devnet ready in {time.perf_counter() - t0:.1f} s")
    tmp = Path(tempfile.mkdtemp())
    try:
        s = load_settings(
            rpc_url=dn.url,
            pool_addresses_provider=dn.deployment.pool_addresses_provider,
            private_key=KEEPER_DEV_KEY,
            db_path=tmp / "keeper.db",
            metrics_port=0,
        )
        rpc = dn.rpc
        market = await discover_market(rpc, s.pool_addresses_provider)
        signer = Signer(s.private_key, market.chain_id)
        signed_at: list[float] = []
        sign = signer.sign

        def timed_sign(tx: dict) -> tuple[bytes, str]:
            signed_at.append(time.perf_counter())
            return sign(tx)

        signer.sign = timed_sign  # type: ignore[method-assign]
        async with await Store.open(s.db_path) as store, ForkSimulator(s.rpc_url, s.anvil_path) as sim:
            index = BorrowerIndex(rpc, store, market.pool, start_block=0)
            t = time.perf_counter()
            started = await index.start()
            print(
                f"[{n}] index backfill: {len(index.borrowers())} borrowers in {time.perf_counter() - t:.2f} s"
            )
            tracker = HealthTracker(rpc, market, source="mirror")
            t = time.perf_counter()
            await tracker.start(index.borrowers(), started.block)
            print(f"[{n}] mirror bootstrap: {time.perf_counter() - t:.2f} s")
            await sim.at_block(started.block)  # the daemon's fork is already running
            sender = Sender(rpc, signer, max_fee_gwei=s.max_fee_gwei, poll_interval_s=0.01)
            await approve_inventory(rpc, market, sender)
            pipeline = Pipeline(
                rpc=rpc,
                market=market,
                settings=s,
                metrics=Metrics(),
                simulator=sim,
                keeper=signer.address,
                sender=sender,
            )
            signed_at.clear()  # the approvals above were signed too
            await shock(rpc, dn.deployment, "WETH", -15)
            head = await fetch_head(rpc)
            t_head = time.perf_counter()
            update = await index.advance(head)
            t_index = time.perf_counter()
            view = await tracker.update(head.number, added=update.new_borrowers)
            t_health = time.perf_counter()
            print(
                f"[{n}] price-update block {head.number}: index {1000 * (t_index - t_head):.0f} ms, "
                f"health (mirror recompute of all {view.tracked} + {view.checked_on_chain} on-chain "
                f"re-checks) {1000 * (t_health - t_index):.0f} ms "
                f"(mirror part {1000 * view.mirror_seconds:.0f} "
                f"ms), liquidatable {len(view.liquidatable)}"
            )
            t_cycle = time.perf_counter()
            report = await pipeline.run(view)
            t_end = time.perf_counter()
            first = signed_at[0] if signed_at else None
            if first is None:
                print(f"[{n}] nothing was signed: {report.skipped}")
            else:
                print(
                    f"[{n}] price-update block -> first signed liquidation: {1000 * (first - t_head):.0f} ms "
                    f"(positions+strategy+fork sim {1000 * (first - t_cycle):.0f} ms)"
                )
            print(
                f"[{n}] whole cycle: {report.included} liquidations included, {report.reverted} reverted, "
                f"in {t_end - t_head:.2f} s; skipped {report.skipped}"
            )
            everyone = HealthTracker(rpc, market, source="chain")
            await everyone.start(index.borrowers(), head.number)
            t = time.perf_counter()
            await everyone.update(head.number)
            print(
                f"[{n}] for comparison, getUserAccountData for every borrower at that block: "
                f"{1000 * (time.perf_counter() - t):.0f} ms"
            )
    finally:
        await dn.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
