"""The daemon: builds every stage from Settings, runs them in one TaskGroup, shuts down cleanly.

Only this module imports every stage. A signal handler only sets an Event; each
task watches it, and each shutdown step has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from keeper.chain.rpc import RpcClient
from keeper.config import Settings
from keeper.errors import TRANSIENT_ERRORS, ConfigError, RpcError
from keeper.exec.executor import check_executor
from keeper.exec.sender import Sender
from keeper.exec.signer import Signer
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.log import get_logger, redact_url
from keeper.metrics import Metrics, serve, stop
from keeper.pipeline import CycleReport, Pipeline
from keeper.protocol.aave_v3 import ALLOWANCE, APPROVE, BALANCE_OF, UINT256_MAX, MarketReadError, discover_market
from keeper.sim.fork import ForkSimulator
from keeper.types import Address, Market

log = get_logger(__name__)

SHUTDOWN_STEP_TIMEOUT_S = 10.0


@dataclass
class Heads:
    """Newest-head-only hand-off: a slower consumer skips blocks, it never queues them."""

    latest: int = -1
    skipped: int = 0
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, block: int) -> None:
        if block > self.latest:
            self.latest = block
            self._event.set()

    async def next(self, after: int, timeout_s: float) -> int | None:
        if self.latest <= after:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout_s)
            except TimeoutError:
                return None
        if self.latest > after + 1 and after >= 0:
            self.skipped += self.latest - after - 1
        return self.latest if self.latest > after else None


class BorrowerSet:
    """Borrowers seen in Borrow events, extended block by block (in memory)."""

    def __init__(self, rpc: RpcClient, pool: Address, start_block: int, max_range: int) -> None:
        self.rpc, self.pool = rpc, pool
        self.next_block = start_block
        self.sizer = RangeSizer(max_range=max_range)
        self.borrowers: set[Address] = set()

    async def advance(self, head: int) -> set[Address]:
        if head >= self.next_block:
            new = await backfill_borrowers(self.rpc, self.pool, self.next_block, head, self.sizer)
            if new - self.borrowers:
                log.info("index.borrowers_added", count=len(new - self.borrowers), block=head)
            self.borrowers |= new
            self.next_block = head + 1
        return self.borrowers


async def connect(settings: Settings, metrics: Metrics) -> tuple[RpcClient, int]:
    """Open the RPC and check it answers (and is the expected chain) before anything else."""
    settings.require("rpc_url", "pool_addresses_provider")
    rpc = RpcClient(settings.rpc_url, timeout_s=settings.rpc_timeout_s,
                    max_retries=settings.rpc_max_retries, on_request=metrics.observe_rpc)
    await rpc.start()
    try:
        chain_id = await rpc.chain_id()
    except RpcError as e:
        await rpc.close()
        raise ConfigError(f"KEEPER_RPC_URL: cannot reach {redact_url(settings.rpc_url)} ({type(e).__name__})") \
            from None
    if settings.chain_id is not None and settings.chain_id != chain_id:
        await rpc.close()
        raise ConfigError(f"KEEPER_CHAIN_ID: expected chain {settings.chain_id}, the node is on {chain_id}")
    return rpc, chain_id


class App:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_event = asyncio.Event()
        self.heads = Heads()
        self.reports: list[CycleReport] = []

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self, *, until: Callable[[CycleReport], bool] | None = None,
                  install_signals: bool = True) -> list[CycleReport]:
        """Run until a signal, `request_stop()`, or `until(report)` says so."""
        s = self.settings
        rpc, chain_id = await connect(s, self.metrics)
        try:
            market = await discover_market(rpc, s.pool_addresses_provider)
            signer = self._signer(chain_id)
            sender = None if s.dry_run else Sender(rpc, signer, max_fee_gwei=s.max_fee_gwei,
                                                   poll_interval_s=min(0.5, s.poll_interval_s))
            if s.execution == "flashloan":
                await check_flash_setup(rpc, s, market, signer.address)
            elif sender is not None:
                await approve_inventory(rpc, market, sender)
            log.info("app.start", chain_id=chain_id, pool=market.pool, reserves=len(market.reserves),
                     keeper=signer.address, dry_run=s.dry_run, execution=s.execution,
                     settings=s.redacted())
            async with ForkSimulator(s.rpc_url, s.anvil_path) as simulator:
                pipeline = Pipeline(rpc=rpc, market=market, settings=s, metrics=self.metrics,
                                    simulator=simulator, keeper=signer.address, sender=sender)
                index = BorrowerSet(rpc, market.pool, s.start_block, s.getlogs_max_range)
                await self._supervise(rpc, pipeline, index, until, install_signals)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rpc.close(), SHUTDOWN_STEP_TIMEOUT_S)
        return self.reports

    def _signer(self, chain_id: int) -> Signer:
        self.settings.require("private_key")
        return Signer(self.settings.private_key, chain_id)

    async def _supervise(self, rpc: RpcClient, pipeline: Pipeline, index: BorrowerSet,
                         until: Callable[[CycleReport], bool] | None, install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
        runner = None
        if self.settings.metrics_port:
            runner = await serve(self.metrics, self.settings.metrics_host, self.settings.metrics_port,
                                 healthy=lambda: not self.stop_event.is_set())
        self.metrics.up.set(1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._poll_heads(rpc))
                tg.create_task(self._work(pipeline, index, until))
        finally:
            self.metrics.up.set(0)
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if runner is not None:
                await stop(runner, SHUTDOWN_STEP_TIMEOUT_S)
            log.info("app.stopped", cycles=len(self.reports), skipped_heads=self.heads.skipped)

    async def _poll_heads(self, rpc: RpcClient) -> None:
        delay = self.settings.poll_interval_s
        while not self.stop_event.is_set():
            try:
                head = await rpc.block_number()
                self.heads.publish(head)
                self.metrics.head_block.set(head)
                delay = self.settings.poll_interval_s
            except TRANSIENT_ERRORS as e:
                delay = min(delay * 2, 30.0)
                log.warning("heads.poll_failed", error=type(e).__name__, retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)

    async def _work(self, pipeline: Pipeline, index: BorrowerSet,
                    until: Callable[[CycleReport], bool] | None) -> None:
        last = -1
        backoff = 0.5
        while not self.stop_event.is_set():
            head = await self.heads.next(last, timeout_s=self.settings.poll_interval_s * 5)
            if head is None:
                continue
            try:
                with self.metrics.cycle_seconds.time():
                    borrowers = sorted(await index.advance(head))
                    report = await pipeline.run(head, borrowers)
                self.metrics.indexed_block.set(head)
                backoff = 0.5
            except (*TRANSIENT_ERRORS, MarketReadError) as e:
                # Skip this block rather than act on a partial view; the next head retries.
                log.warning("cycle.skipped", block=head, error=str(e), retry_in_s=backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            # Our own transactions changed the state: never decide again on a view older than them.
            last = max(head, report.included_through - 1)
            self.reports.append(report)
            log.info("cycle.done", block=head, borrowers=report.borrowers, liquidatable=report.liquidatable,
                     simulated=report.simulated, sent=len(report.sent), dry_run=len(report.dry_run),
                     skipped=report.skipped or None)
            if until is not None and until(report):
                self.request_stop()


async def check_flash_setup(rpc: RpcClient, s: Settings, market: Market, owner: Address) -> None:
    """Flash-loan mode needs an executor the keeper owns, on this market's pool, and a quoter."""
    s.require("executor_address", "uniswap_quoter")
    await check_executor(rpc, s.executor_address, owner, expected_pool=market.pool)
    if not await rpc.get_code(s.uniswap_quoter):
        raise ConfigError(f"KEEPER_UNISWAP_QUOTER: no contract at {s.uniswap_quoter} on this chain")


async def approve_inventory(rpc: RpcClient, market: Market, sender: Sender) -> None:
    """Inventory mode: let the pool pull each asset the keeper holds (once, before liquidating)."""
    keeper = sender.signer.address
    for r in market.reserves:
        balance = BALANCE_OF.decode_one(await rpc.eth_call(r.asset, BALANCE_OF.encode(keeper)))
        allowance = ALLOWANCE.decode_one(await rpc.eth_call(r.asset, ALLOWANCE.encode(keeper, market.pool)))
        if balance and allowance < balance:
            result = await sender.send(r.asset, APPROVE.encode(market.pool, UINT256_MAX), gas=100_000)
            log.info("exec.approved", asset=r.symbol, tx=result.tx_hash, success=result.success)
