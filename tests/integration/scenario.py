"""Issue 9's production-shaped scenario, reusable by any test that wants to run it.

A market on an interval-mined devnet (a block every second, like a real chain), the keeper
already running with its index and mirror synced, THEN a price falls through the devnet's feed
while it runs. The result says what happened on chain: which borrowers were liquidatable at
the shock, who liquidated them and in which blocks, every transaction of the keeper's and
whether it reverted, and whether the breaker ever tripped.

    dn = await launch_interval_market(borrowers=1_000)
    result = await run_price_shock(dn, symbol="WETH", pct=-30)
    assert result.still_liquidatable == [] and result.reverted == [] and result.breaker_trips == 0

`keeper_rpc_url` points the keeper somewhere else than the devnet (a faulty proxy in front of
it); the scenario's own reads and the price move always go straight to the devnet.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet.seed import shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet, launch
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import LIQUIDATION, discover_market, read_account_health

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Liquidation:
    block: int
    user: str
    liquidator: str
    tx: str


@dataclass
class ShockResult:
    shock_block: int
    end_block: int
    victims: list[str]  # liquidatable at the shock block
    still_liquidatable: list[str]  # any borrower liquidatable at the end
    liquidations: list[Liquidation]  # every LiquidationCall after the shock, any liquidator
    keeper_txs: int  # the keeper's mined transactions after the shock
    reverted: list[str]  # hashes of the keeper's mined transactions that reverted
    breaker_trips: int
    cycles: int
    metrics: Metrics
    app: App
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def last_liquidation_block(self) -> int | None:
        return max((liq.block for liq in self.liquidations), default=None)

    @property
    def blocks_to_last(self) -> int | None:
        """Blocks from the price update's block to the last liquidation's."""
        last = self.last_liquidation_block
        return None if last is None else last - self.shock_block

    def summary(self) -> dict[str, Any]:
        return {"victims": len(self.victims), "liquidations": len(self.liquidations),
                "still_liquidatable": len(self.still_liquidatable), "keeper_txs": self.keeper_txs,
                "reverted": len(self.reverted), "breaker_trips": self.breaker_trips,
                "shock_block": self.shock_block, "last_liquidation_block": self.last_liquidation_block,
                "blocks_to_last": self.blocks_to_last, "cycles": self.cycles, "timed_out": self.timed_out}


async def launch_interval_market(*, borrowers: int = 1_000, block_time: int = 1, seed: int = 7,
                                 fund_keeper_usd: int = 50_000_000) -> Devnet:
    """A fresh devnet mining a block every `block_time` seconds (set-up itself runs on automine).

    Inventory mode liquidates only what the wallet holds: the devnet's default $5M of each asset
    runs out of USDC/DAI before a 30% WETH fall at 1,000 borrowers is fully covered."""
    return await launch(borrowers=borrowers, block_time=block_time, seed=seed,
                        fund_keeper_usd=fund_keeper_usd)


def keeper_settings(dn: Devnet, *, keeper_rpc_url: str | None = None, **over: Any):
    """What a new user sets: the RPC, the provider, the key and the start block; nothing tuned."""
    return load_settings(**{
        "rpc_url": keeper_rpc_url or dn.url,
        "pool_addresses_provider": dn.deployment.pool_addresses_provider,
        "private_key": KEEPER_DEV_KEY,
        "start_block": dn.deployment.start_block,
        "metrics_port": 0,
        "db_path": Path(tempfile.mkdtemp()) / "keeper.db",
        **over,
    })


async def run_price_shock(dn: Devnet, *, symbol: str = "WETH", pct: float = -30,
                          keeper_rpc_url: str | None = None, timeout_s: float = 300,
                          keeper: str = KEEPER_ADDRESS, **settings: Any) -> ShockResult:
    """Start the keeper, wait for its first cycle, move the price, and wait until no borrower is
    liquidatable and nothing of the keeper's is in flight (or `timeout_s` after the shock)."""
    metrics = Metrics()
    app = App(keeper_settings(dn, keeper_rpc_url=keeper_rpc_url, **settings), metrics)
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    users = [p.address for p in dn.plans]
    task = asyncio.create_task(app.run(install_signals=False))
    timed_out = False
    try:
        await _until(task, lambda: bool(app.reports), 120, "the first cycle (index and mirror synced)")
        await shock(dn.rpc, dn.deployment, symbol, pct)
        shock_block = await _price_update_block(dn, symbol)
        victims = sorted(h.user for h in await read_account_health(dn.rpc, market, users, shock_block)
                         if h.liquidatable)
        log.info("scenario.shock", symbol=symbol, pct=pct, block=shock_block, victims=len(victims))
        try:
            async with asyncio.timeout(timeout_s):
                while not await _settled(dn, market, victims, app):
                    if task.done():
                        break
                    await asyncio.sleep(1.0)
        except TimeoutError:
            timed_out = True
    finally:
        app.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 30)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 30)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    end = await dn.rpc.block_number()
    still = sorted(h.user for h in await read_account_health(dn.rpc, market, users, end) if h.liquidatable)
    breaker = app.sender.safety.breaker if app.sender and app.sender.safety else None
    result = ShockResult(
        shock_block=shock_block, end_block=end, victims=victims, still_liquidatable=still,
        liquidations=await _liquidations(dn, market.pool, shock_block, end),
        keeper_txs=0, reverted=[], breaker_trips=breaker.trips if breaker else 0,
        cycles=len(app.reports), metrics=metrics, app=app, timed_out=timed_out)
    result.keeper_txs, result.reverted = await keeper_txs(dn, keeper, shock_block, end)
    log.info("scenario.done", **result.summary())
    return result


async def _until(task: asyncio.Task, cond: Any, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():
                if task.done():
                    raise AssertionError(f"the keeper stopped before {what}: {task.exception()!r}")
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _price_update_block(dn: Devnet, symbol: str) -> int:
    """The block holding the feed's newest AnswerUpdated (the shock's block)."""
    logs = await dn.rpc.get_logs({"address": dn.deployment.feeds[symbol], "fromBlock": "0x0",
                                  "toBlock": "latest"})
    return max(int(entry["blockNumber"], 16) for entry in logs)


async def _settled(dn: Devnet, market: Any, victims: list[str], app: App) -> bool:
    if app.sender is not None and (app.sender.registry.inflight or app.sender.registry.reserving):
        return False
    block = await dn.rpc.block_number()
    return not any(h.liquidatable for h in await read_account_health(dn.rpc, market, victims, block))


async def _liquidations(dn: Devnet, pool: str, from_block: int, to_block: int) -> list[Liquidation]:
    logs = await dn.rpc.get_logs({"address": pool, "topics": [LIQUIDATION.topic],
                                  "fromBlock": hex(from_block), "toBlock": hex(to_block)})
    out = []
    for entry in logs:
        ev = LIQUIDATION.decode(entry)
        out.append(Liquidation(int(entry["blockNumber"], 16), to_checksum_address(ev["user"]),
                               to_checksum_address(ev["liquidator"]), entry["transactionHash"]))
    return out


async def keeper_txs(dn: Devnet, keeper: str, from_block: int, to_block: int) -> tuple[int, list[str]]:
    """The keeper's mined transactions in (from_block, to_block], and those that reverted."""
    hashes = []
    for n in range(from_block, to_block + 1):
        block = await dn.rpc.get_block(n, True)
        hashes += [t["hash"] for t in block["transactions"] if t["from"].lower() == keeper.lower()]
    receipts = await dn.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes]) if hashes else []
    reverted = [h for h, r in zip(hashes, receipts, strict=True) if int(r["status"], 16) == 0]
    return len(hashes), reverted
