"""The daemon: builds every stage from Settings, runs them in one TaskGroup, shuts down cleanly.

Only this module imports every stage. A signal handler only sets an Event; each
task watches it, and each shutdown step has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from keeper.chain.heads import HeadWatcher
from keeper.chain.rpc import RpcClient, RpcObserver
from keeper.config import Settings
from keeper.errors import TRANSIENT_ERRORS, ConfigError, RpcError
from keeper.exec.executor import check_executor
from keeper.exec.relay import BundleRelay, PrivateTx
from keeper.exec.safety import CircuitBreaker, KillSwitch, Safety
from keeper.exec.sender import Sender, SendPolicy
from keeper.exec.signer import Signer
from keeper.health.mirror_sync import MirrorSyncError
from keeper.health.tracker import HealthTracker
from keeper.health_http import HealthState
from keeper.health_http import routes as health_routes
from keeper.index.indexer import BorrowerIndex, ChainMoved
from keeper.index.store import Store
from keeper.log import get_logger, redact_url
from keeper.metrics import Metrics, serve, stop
from keeper.pipeline import CycleReport, Pipeline
from keeper.protocol.aave_v3 import (
    ALLOWANCE,
    APPROVE,
    BALANCE_OF,
    UINT256_MAX,
    MarketReadError,
    discover_market,
)
from keeper.sim.fork import ForkSimulator
from keeper.sim.upstream import ForkUpstream
from keeper.types import Address, Market

log = get_logger(__name__)

SHUTDOWN_STEP_TIMEOUT_S = 10.0


async def connect(settings: Settings, metrics: Metrics,
                  observer: RpcObserver | None = None) -> tuple[RpcClient, int]:
    """Open the RPC and check it answers (and is the expected chain) before anything else."""
    settings.require("rpc_url", "pool_addresses_provider")
    rpc = RpcClient(settings.rpc_endpoints(), timeout_s=settings.rpc_timeout_s,
                    max_retries=settings.rpc_max_retries, read_deadline_s=settings.rpc_read_deadline_s,
                    send_deadline_s=settings.rpc_send_deadline_s, on_request=observer or metrics.observe_rpc,
                    on_event=metrics.count_rpc_event, on_health=metrics.observe_endpoint)
    await rpc.start()
    try:
        chain_id = await rpc.chain_id()
    except RpcError as e:
        await rpc.close()
        where = redact_url(settings.rpc_url)
        raise ConfigError(f"KEEPER_RPC_URL: cannot reach {where} ({type(e).__name__})") from None
    if settings.chain_id is not None and settings.chain_id != chain_id:
        await rpc.close()
        raise ConfigError(f"KEEPER_CHAIN_ID: expected chain {settings.chain_id}, the node is on {chain_id}")
    return rpc, chain_id


class App:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_event = asyncio.Event()
        self.reports: list[CycleReport] = []
        self.sender: Sender | None = None  # set by run() unless dry run
        self.health = HealthState(settings.health_max_head_age_s)  # /healthz and /readyz
        self.health.stopping = self.stop_event.is_set

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self, *, until: Callable[[CycleReport], bool] | None = None,
                  install_signals: bool = True) -> list[CycleReport]:
        """Run until a signal, `request_stop()`, or `until(report)` says so."""
        s = self.settings
        rpc, chain_id = await connect(s, self.metrics, self.health.rpc_observer(self.metrics.observe_rpc))
        runner = None
        try:
            if s.metrics_port:  # up before the backfill, so /readyz can say it is not done
                runner = await serve(self.metrics, s.metrics_host, s.metrics_port,
                                     routes=health_routes(self.health))
            market = await discover_market(rpc, s.pool_addresses_provider,
                                           revision_override=s.pool_revision_override)
            signer = self._signer(chain_id)
            sender = self.sender = None if s.dry_run else self._sender(rpc, signer)
            if sender is not None and sender.safety is not None:
                breaker = sender.safety.breaker
                self.health.breaker = lambda: breaker.reason if breaker.is_open() else None
            if sender is not None:
                await check_gas_balance(rpc, s, signer.address, self.metrics)
                try:  # a restart mid-liquidation: the fork replays what the last run left pending
                    await sender.adopt_pending()
                except RpcError as e:
                    log.warning("exec.adopt_pending_failed", error=str(e))
            else:  # dry run: no floor to enforce, but keeper_wallet_balance_wei must not read 0
                self.metrics.wallet_balance_wei.set(await rpc.get_balance(signer.address, "latest"))
            if s.execution != "inventory":  # flashloan or auto
                await check_flash_setup(rpc, s, market, signer.address)
            if s.execution != "flashloan" and sender is not None:
                await approve_inventory(rpc, market, sender)
            log.info("app.start", chain_id=chain_id, pool=market.pool, reserves=len(market.reserves),
                     pool_revision=market.rules.revision, rules=market.rules.name,
                     keeper=signer.address, dry_run=s.dry_run, execution=s.execution,
                     settings=s.redacted())
            # The fork reads the chain through the keeper's RpcClient (hedging, failover, retries).
            async with await Store.open(s.db_path) as store, ForkUpstream(rpc) as upstream, \
                    ForkSimulator(upstream.url, s.anvil_path) as simulator:
                stages = await self._build(rpc, market, store, simulator, signer.address, sender)
                await self._supervise(stages, until, install_signals)
        finally:
            if runner is not None:
                with contextlib.suppress(Exception):
                    await stop(runner, SHUTDOWN_STEP_TIMEOUT_S)
            if self.sender is not None:
                if self.sender.registry.inflight:
                    log.warning("exec.pending_at_shutdown", attempts=len(self.sender.registry.inflight),
                                nonces=sorted(a.nonce for a in self.sender.registry.inflight.values()))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sender.close(), SHUTDOWN_STEP_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rpc.close(), SHUTDOWN_STEP_TIMEOUT_S)
        return self.reports

    async def _build(self, rpc: RpcClient, market: Market, store: Store, simulator: ForkSimulator,
                     keeper: Address, sender: Sender | None) -> _Stages:
        s, m = self.settings, self.metrics
        index = BorrowerIndex(rpc, store, market.pool, start_block=s.start_block,
                              confirmations=s.index_confirmations, max_range=s.getlogs_max_range)
        self.health.set_phase("backfill")
        started = await index.start()
        m.indexed_block.set(started.block)
        tracker = HealthTracker(rpc, market, source=s.health_source, batch_size=s.multicall_batch_size,
                                gas_per_batch=s.multicall_gas, metrics=m,
                                recheck_per_block=s.recheck_per_block)
        self.health.set_phase("mirror bootstrap")
        await tracker.start(index.borrowers(), started.block)
        self.health.mark_ready()
        m.ready.set(1)
        watcher = HeadWatcher(rpc, ws_url=s.ws_url, stall_timeout_s=s.heads_stall_timeout_s,
                              poll_interval_s=s.poll_interval_s,
                              on_reconnect=lambda reason: m.reconnects.labels(reason=reason).inc())
        pipeline = Pipeline(rpc=rpc, market=market, settings=s, metrics=m, simulator=simulator,
                            keeper=keeper, sender=sender)
        if pipeline.routes is not None and s.execution != "inventory":
            await pipeline.routes.ensure(started.block)  # the pool graph, before the first head
        return _Stages(watcher, index, tracker, pipeline, started.block)

    def _signer(self, chain_id: int) -> Signer:
        self.settings.require("private_key")
        return Signer(self.settings.private_key, chain_id)

    def _sender(self, rpc: RpcClient, signer: Signer) -> Sender:
        """The one Sender (and so the one nonce manager) for the keeper's key, with its safety gate."""
        s, m = self.settings, self.metrics
        if s.breaker_reset_s is not None:
            log.warning("app.deprecated_setting", name="KEEPER_BREAKER_RESET_S",
                        use="KEEPER_BREAKER_COOLDOWN_S")
        breaker = CircuitBreaker(max_failures=s.breaker_max_failures, window_s=s.breaker_window_s,
                                 cooldown_s=s.breaker_cooldown_s, metrics=m)
        safety = Safety(breaker=breaker, kill_switch=KillSwitch(s.kill_switch_file, m),
                        min_balance_wei=int(s.min_gas_balance_eth * 10**18), metrics=m)
        private = bundles = None
        if s.bundle_relay_url:
            if s.relay_signing_key is None:
                raise ConfigError("KEEPER_RELAY_SIGNING_KEY: required with KEEPER_BUNDLE_RELAY_URL")
            bundles = BundleRelay(s.bundle_relay_url, s.relay_signing_key, timeout_s=s.rpc_timeout_s)
            if bundles.address == signer.address:
                raise ConfigError("KEEPER_RELAY_SIGNING_KEY: must not be the keeper's own KEEPER_PRIVATE_KEY")
        elif s.private_tx_url:
            private = PrivateTx(s.private_tx_url, method=s.private_tx_method, signing_key=s.relay_signing_key,
                                timeout_s=s.rpc_timeout_s)
        return Sender(rpc, signer, max_fee_gwei=s.max_fee_gwei, poll_interval_s=min(0.5, s.poll_interval_s),
                      policy=SendPolicy.from_settings(s), safety=safety, metrics=m, private=private,
                      bundles=bundles)

    async def _supervise(self, stages: _Stages, until: Callable[[CycleReport], bool] | None,
                         install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
        self.metrics.up.set(1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._until_stopped(stages.watcher.run()))
                tg.create_task(self._work(stages, until))
                if stages.pipeline.sender is not None:  # follows sent transactions block by block
                    tg.create_task(self._until_stopped(stages.pipeline.sender.run()))
        finally:
            self.metrics.up.set(0)
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            log.info("app.stopped", cycles=len(self.reports), skipped_heads=stages.watcher.slot.skipped)

    async def _until_stopped(self, forever: Coroutine[Any, Any, None]) -> None:
        """Run a task that never ends on its own (the head watcher) until shutdown."""
        task = asyncio.ensure_future(forever)
        stopper = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopper):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(task, stopper, return_exceptions=True),
                                       SHUTDOWN_STEP_TIMEOUT_S)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()

    def _head_lag(self, st: _Stages, block: int) -> None:
        """How far the chain moved on while the cycle at `block` ran (`keeper_head_lag_blocks`)."""
        newest = st.watcher.slot.head
        seen = max(block, newest.number if newest is not None else block)
        self.metrics.head_lag_blocks.set(seen - block)
        if st.pipeline.sender is not None:
            st.pipeline.sender.saw_head(seen)
        if seen - block > 1:
            log.info("cycle.behind", block=block, head=seen, lag_blocks=seen - block)

    async def _work(self, st: _Stages, until: Callable[[CycleReport], bool] | None) -> None:
        last = st.start_block - 1  # the head the index started at is the first to act on
        backoff = 0.5
        while not self.stop_event.is_set():
            head = await st.watcher.slot.next(after=last, timeout=self.settings.poll_interval_s * 5)
            if head is None:
                continue
            self.metrics.head_block.set(head.number)
            self.health.head_seen(head.number)
            try:
                with self.metrics.cycle_seconds.time():
                    update = await st.index.advance(head)
                    view = await st.tracker.update(head.number, added=update.new_borrowers,
                                                   removed=update.removed_borrowers, timestamp=head.timestamp,
                                                   reorg=update.fork_point is not None)
                    report = await st.pipeline.run(view)
                self.metrics.indexed_block.set(update.block)
                self.metrics.heads_skipped.set(st.watcher.slot.skipped)
                self._head_lag(st, head.number)
                backoff = 0.5
            except (*TRANSIENT_ERRORS, MarketReadError, ChainMoved, MirrorSyncError) as e:
                # Skip this block rather than act on a partial view; the next head retries.
                log.warning("cycle.skipped", block=head.number, error=str(e), retry_in_s=backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            # Our own transactions changed the state: never decide again on a view older than them.
            last = max(head.number, report.included_through - 1)
            self.reports.append(report)
            log.info("cycle.done", block=head.number, borrowers=report.borrowers,
                     liquidatable=report.liquidatable, checked_on_chain=view.checked_on_chain,
                     drift=view.drift, simulated=report.simulated, sent=len(report.sent),
                     dry_run=len(report.dry_run), skipped=report.skipped or None)
            if until is not None and until(report):
                self.request_stop()


@dataclass(frozen=True, slots=True)
class _Stages:
    watcher: HeadWatcher
    index: BorrowerIndex
    tracker: HealthTracker
    pipeline: Pipeline
    start_block: int


async def check_flash_setup(rpc: RpcClient, s: Settings, market: Market, owner: Address) -> None:
    """Flash-loan mode needs an executor the keeper owns, on this market's pool, and a quoter."""
    s.require("executor_address", "uniswap_quoter")
    await check_executor(rpc, s.executor_address, owner, expected_pool=market.pool)
    if not await rpc.get_code(s.uniswap_quoter):
        raise ConfigError(f"KEEPER_UNISWAP_QUOTER: no contract at {s.uniswap_quoter} on this chain")


async def check_gas_balance(rpc: RpcClient, s: Settings, address: Address, metrics: Metrics) -> None:
    """Refuse to start a sending keeper whose wallet cannot pay for gas."""
    balance = await rpc.get_balance(address, "latest")
    metrics.wallet_balance_wei.set(balance)
    floor = int(s.min_gas_balance_eth * 10**18)
    if balance < floor:
        raise ConfigError(f"KEEPER_MIN_GAS_BALANCE_ETH: the keeper's wallet {address} holds "
                          f"{Decimal(balance) / 10**18:f} of the native coin, below the floor "
                          f"{s.min_gas_balance_eth}")


async def approve_inventory(rpc: RpcClient, market: Market, sender: Sender) -> None:
    """Inventory mode: let the pool pull each asset the keeper holds (once, before liquidating)."""
    keeper = sender.signer.address
    for r in market.reserves:
        balance = BALANCE_OF.decode_one(await rpc.eth_call(r.asset, BALANCE_OF.encode(keeper)))
        allowance = ALLOWANCE.decode_one(await rpc.eth_call(r.asset, ALLOWANCE.encode(keeper, market.pool)))
        if balance and allowance < balance:
            result = await sender.send(r.asset, APPROVE.encode(market.pool, UINT256_MAX), gas=100_000)
            log.info("exec.approved", asset=r.symbol, tx=result.tx_hash, success=result.success)
