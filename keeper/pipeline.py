"""One keeper cycle at one block: health → opportunity → simulation → execution.

This is where a liquidation is decided: each liquidatable position is planned
(keeper/planner.py: pair, size, route, inventory or flash loan), proved on the fork,
and only a plan the fork shows profitable is handed to the sender. Every stage hands
plain values to the next; the cycle only sequences them, counts and logs. How a
transaction is signed and sent lives in keeper/exec/sender.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from keeper.chain.rpc import RpcClient
from keeper.config import Settings
from keeper.errors import TRANSIENT_ERRORS, ExecutionError, SimulationError
from keeper.exec.fees import Fees, suggest_fees
from keeper.exec.plan import LiquidationTx
from keeper.exec.sender import Attempt, Intent, Outcome, Sender, SendRefused
from keeper.health.tracker import HealthView
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.planner import Planner, Skip
from keeper.protocol.aave_v3 import read_emode_categories, read_prices, read_reserve_positions
from keeper.protocol.math import MINIMUM_HEALTH_FACTOR_LIQUIDATION_THRESHOLD_WAD
from keeper.sim.fork import ForkSimulator, TxRequest
from keeper.strategy.profit import Costs, value_base_floor
from keeper.types import AccountHealth, Address, Market, Opportunity, Position, SimResult

log = get_logger(__name__)

SEND_FINISH_MARGIN_S = 5.0  # beyond the broadcast deadline, for signing and the nonce manager
POSITION_CHUNK = 16  # borrowers whose per-reserve balances are read per round trip
NATIVE_WRAPPERS = ("WETH", "WMATIC", "WPOL", "WAVAX", "WBNB", "WXDAI", "WFTM", "WS", "WMNT")


@dataclass
class CycleReport:
    block: int
    borrowers: int = 0
    liquidatable: int = 0
    simulated: int = 0
    sent: list[str] = field(default_factory=list)  # tx hashes
    dry_run: list[SimResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_users: dict[Address, str] = field(default_factory=dict)  # borrower -> reason
    profit_base: int = 0
    gas_spent_wei: int = 0
    opportunities: list[tuple[Opportunity, SimResult]] = field(default_factory=list)
    included_through: int = 0  # newest block holding one of this cycle's transactions
    settled: list[tuple[Opportunity, SimResult]] = field(default_factory=list)  # included, with their sims
    included: int = 0
    reverted: int = 0
    gas_used: int = 0

    def skip(self, reason: str, user: Address) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_users[user] = reason


def native_asset(market: Market, override: str | None = None) -> Address | None:
    """The reserve whose oracle price prices gas (the wrapped native coin)."""
    if override:
        return override
    for r in market.reserves:
        if r.symbol.upper() in NATIVE_WRAPPERS:
            return r.asset
    return None


class Pipeline:
    def __init__(self, *, rpc: RpcClient, market: Market, settings: Settings, metrics: Metrics,
                 simulator: ForkSimulator, keeper: Address, sender: Sender | None) -> None:
        self.rpc = rpc
        self.market = market
        self.settings = settings
        self.metrics = metrics
        self.sim = simulator
        self.keeper = keeper
        self.sender = sender  # None: dry run, nothing is ever broadcast
        self.native = native_asset(market, settings.native_asset)
        self.planner = Planner(rpc=rpc, fork_rpc=lambda: simulator.rpc, market=market, settings=settings,
                               metrics=metrics, keeper=keeper)
        self.routes = self.planner.routes  # the pool graph (the app reads it before the first head)
        self.executor = settings.executor_address
        self.min_profit_base = self.planner.min_profit_base
        self._sent: list[_Sent] = []  # this cycle's transactions, settled at its end
        # The last liquidation handed to the sender: it is signed and broadcast while the next
        # candidate is simulated; the next send waits for it (nonces in simulated order).
        self._sending: asyncio.Future[None] | None = None

    @property
    def dry_run(self) -> bool:
        return self.sender is None

    async def run(self, view: HealthView) -> CycleReport:
        """Decide, simulate and send for every borrower the health stage found liquidatable."""
        block = view.block
        report = CycleReport(block=block, borrowers=view.tracked, liquidatable=len(view.liquidatable))
        self.metrics.borrowers_tracked.set(view.tracked)
        self.metrics.borrowers_liquidatable.set(len(view.liquidatable))
        self.metrics.mirror_drift.set(view.drift)
        self.metrics.polled_reserves.set(view.polled_reserves)
        self.metrics.liquidation_allowed.set(int(view.liquidation_allowed))
        gated = self._sequencer_gate(view, report)
        liquidatable = [h for h in gated if self._may_send(h.user, block, report)]
        if not liquidatable:
            return report
        fees = await suggest_fees(self.rpc, max_fee_gwei=self.settings.max_fee_gwei)
        try:
            await self.sim.at_block(block)
        except SimulationError as e:
            log.warning("sim.fork_unavailable", block=block, error=str(e), retry="next_block")
            return report
        await self._replay_pending(block)
        try:
            await self._decide_all(liquidatable, block, fees, report)
        finally:
            await self._finish_sending()
        await self._settle_sent(report)
        return report

    async def _finish_sending(self) -> None:
        """Wait for the cycle's last send and raise what it raised. A send is never abandoned
        half-way (its nonce reserved, its bytes perhaps out): a cycle that was cancelled or raised
        still lets it finish."""
        sending, self._sending = self._sending, None
        if sending is None:
            return
        if not sending.done():
            await asyncio.wait({sending}, timeout=self.settings.rpc_send_deadline_s + SEND_FINISH_MARGIN_S)
        if sending.done() and not sending.cancelled():
            sending.result()

    async def _decide_all(self, liquidatable: list[AccountHealth], block: int, fees: Fees,
                          report: CycleReport) -> None:
        # Largest debts first, read in small chunks: the first liquidation is signed after one
        # chunk's reads, not after every liquidatable account's.
        for start in range(0, len(liquidatable), POSITION_CHUNK):
            chunk = liquidatable[start : start + POSITION_CHUNK]
            try:
                positions = await self._positions(chunk, block)
            except TRANSIENT_ERRORS as e:
                # These borrowers are still liquidatable next block and read again then;
                # the other chunks go on now.
                log.warning("pipeline.chunk_failed", block=block, borrowers=len(chunk), error=str(e),
                            retry="next_block")
                self.metrics.read_chunks_failed.labels(stage="positions").inc()
                continue
            for position, bonuses in positions:
                await self._handle(position, bonuses, fees, report)

    async def _replay_pending(self, block: int) -> None:
        """Put this keeper's transactions that were not mined at `block` on the fork first: on a
        chain with a block time the previous cycle's may be pending, or mined after `block`
        (this cycle's view is older than them), and they land before anything sent now."""
        if self.sender is None:
            return
        pending = [(a.nonce, TxRequest(self.keeper, a.intent.to, a.intent.data, gas=a.intent.gas_limit))
                   for a in self.sender.replayable()]
        # An earlier run's, found pending at start (those mined by now are skipped by the fork).
        pending += [(t.nonce, TxRequest(self.keeper, t.to, t.data, gas=t.gas)) for t in self.sender.inherited]
        try:
            applied = await self.sim.replay_pending(self.keeper, pending)
        except SimulationError as e:
            log.warning("sim.replay_failed", block=block, pending=len(pending), error=str(e))
            return
        if applied:
            log.info("sim.replayed_pending", block=block, applied=applied)

    def _sequencer_gate(self, view: HealthView, report: CycleReport) -> list[AccountHealth]:
        """While the pool's PriceOracleSentinel disallows liquidations (L2 sequencer down or in its grace
        period) the pool reverts every liquidation of an account at HF >= 0.95: skip those, send nothing."""
        if view.liquidation_allowed:
            return view.liquidatable
        out = []
        for h in view.liquidatable:
            if h.health_factor_wad >= MINIMUM_HEALTH_FACTOR_LIQUIDATION_THRESHOLD_WAD:
                self._skip(report, "sequencer_grace", h.user, hf_wad=h.health_factor_wad)
            else:
                out.append(h)
        return out

    def _may_send(self, user: Address, block: int, report: CycleReport) -> bool:
        """One attempt per borrower in flight, a cooldown after a failure, and nothing at all while
        paused or tripped: decided before the borrower's balances are read or the fork spends time
        on it (in a crash, most of a cycle's list is still in flight from the one before)."""
        if self.sender is not None and (why := self.sender.blocked(user, block)):
            self._skip(report, why, user)
            return False
        return True

    async def _positions(self, healths: list[AccountHealth], block: int) -> list[tuple[Position, dict]]:
        """Each borrower's per-reserve balances, and the eMode bonuses that apply to them."""
        users = [h.user for h in healths]
        reserves = await read_reserve_positions(self.rpc, self.market, users, block)
        prices = await read_prices(self.rpc, self.market, block)
        emodes = await read_emode_categories(self.rpc, self.market, [e for _, e in reserves.values()], block)
        out = []
        for h in healths:
            positions, emode = reserves[h.user]
            cat = emodes.get(emode)
            bonuses = dict.fromkeys(cat.collateral_assets, cat.liquidation_bonus_bps) if cat else {}
            out.append((Position(h.user, block, h, positions, prices), bonuses))
        return out

    def _costs(self, position: Position, fees: Fees) -> Costs:
        native_price = position.prices_base.get(self.native, 0) if self.native else 0
        return Costs(gas_units=self.planner.gas_units, gas_price_wei=fees.expected_price,
                     native_price_base=native_price)

    async def _handle(self, position: Position, bonuses: dict[Address, int], fees: Fees,
                      report: CycleReport) -> None:
        costs = self._costs(position, fees)

        async def simulate(opp: Opportunity, plan: LiquidationTx) -> SimResult:
            return await self._simulate(opp, plan, position, costs)

        planned = await self.planner.plan(position, costs, bonuses, simulate)
        if isinstance(planned, Skip):
            return self._skip(report, planned.reason, position.user, **planned.kv)
        opp, plan = planned
        try:
            result = await self._simulate(opp, plan, position, costs)
        except SimulationError as e:
            log.warning("sim.failed", borrower=position.user, error=str(e))
            self.metrics.simulations.labels(result="error").inc()
            return self._skip(report, "sim_error", position.user)
        report.simulated += 1
        report.opportunities.append((opp, result))
        if not result.success:
            self.metrics.simulations.labels(result="reverted").inc()
            return self._skip(report, "sim_reverted", position.user, revert=result.revert_reason)
        if result.profit_base < self.min_profit_base:
            self.metrics.simulations.labels(result="unprofitable").inc()
            return self._skip(report, "sim_unprofitable", position.user, simulated_base=result.profit_base)
        self.metrics.simulations.labels(result="profitable").inc()
        await self.sim.commit()  # what is sent next must be simulated on top of this one
        if self.sender is None:
            return await self._execute(opp, plan, result, fees, costs.native_price_base, report)
        if self._sending is not None:
            # The one before first (nonces in simulated order), and its errors. Shielded: a cycle
            # cancelled here leaves the send to finish (`_finish_sending`).
            await asyncio.shield(self._sending)
        # Signed and broadcast while the next candidate is simulated.
        self._sending = asyncio.ensure_future(
            self._execute(opp, plan, result, fees, costs.native_price_base, report))

    def _skip(self, report: CycleReport, reason: str, user: Address, **kv: object) -> None:
        report.skip(reason, user)
        self.metrics.skipped.labels(reason=reason).inc()
        log.info("strategy.skip", borrower=user, reason=reason, **kv)

    async def _simulate(self, opp: Opportunity, plan: LiquidationTx, position: Position,
                        costs: Costs) -> SimResult:
        t0 = time.monotonic()
        # Live, the fork must see the wallet exactly as it is: a missing approval is a revert there
        # too, not something to paper over. A dry run has made no approvals, so stand them in.
        run = await self.sim.run(plan.tx, plan.watch, setup=plan.approvals if self.dry_run else ())
        self.metrics.sim_seconds.observe(time.monotonic() - t0)
        value = sum(
            _signed_value(delta, position.prices_base[token], self.market.reserve(token).decimals)
            for token, delta in run.token_deltas.items()
        )
        gas_cost_wei = run.gas_used * costs.gas_price_wei  # priced at what we will bid, not the fork's
        gas_base = gas_cost_wei * costs.native_price_base // 10**18
        result = SimResult(opportunity=opp, success=run.success, gas_used=run.gas_used,
                           gas_cost_wei=gas_cost_wei, balance_deltas=run.token_deltas,
                           profit_base=value - gas_base, revert_reason=run.revert_reason)
        log.info("sim.done", borrower=opp.user, success=run.success, gas=run.gas_used,
                 predicted_base=opp.net_profit_base, simulated_base=result.profit_base,
                 seconds=round(run.seconds, 4), reason=run.revert_reason)
        return result

    async def _execute(self, opp: Opportunity, plan: LiquidationTx, sim: SimResult, fees: Fees,
                       native_price_base: int, report: CycleReport) -> None:
        """Hand the decided liquidation to the sender; record what it settles to.

        The sender bids from the profit at stake and follows the transaction in the
        background (replacement, cancellation); the cycle goes on to the next borrower at once
        and, at its end, waits `inclusion_wait_s` for all its receipts (`_settle_sent`).
        """
        usd = Decimal(sim.profit_base) / self.market.base_currency_unit
        if self.sender is None:
            report.dry_run.append(sim)
            self.metrics.liquidations.labels(outcome="dry_run").inc()
            log.info("exec.dry_run", borrower=opp.user, collateral=opp.collateral_asset,
                     debt=opp.debt_asset, debt_to_cover=opp.debt_to_cover, profit_usd=str(usd))
            return
        gas_limit = sim.gas_used * 13 // 10 + 20_000
        # What the liquidation earns before gas, in wei: the bid may spend up to all of it but the floor.
        gross_base = sim.profit_base + sim.gas_cost_wei * native_price_base // 10**18
        profit_wei = gross_base * 10**18 // native_price_base if native_price_base else None
        floor_wei = self.min_profit_base * 10**18 // native_price_base if native_price_base else 0
        intent = Intent(key=opp.user, to=plan.tx.to, data=plan.tx.data, gas_limit=gas_limit,
                        gas_estimate=sim.gas_used, profit_wei=profit_wei, floor_wei=floor_wei,
                        block=opp.block, watch_pool=self.market.pool,
                        ours=tuple(a for a in (self.keeper, self.executor) if a))
        try:
            attempt = await self.sender.submit(intent, fees)
        except SendRefused as e:
            return self._skip(report, e.reason, opp.user, detail=str(e))
        except ExecutionError as e:
            log.warning("exec.send_failed", borrower=opp.user, error=str(e))
            return self._skip(report, "send_failed", opp.user)
        # The simulated profit, re-priced at the fees actually bid (the report's and the realised
        # profit's reference).
        gas_cost_wei = sim.gas_used * attempt.bid.price_at(fees.next_base_fee)
        priced = replace(sim, gas_cost_wei=gas_cost_wei,
                         profit_base=gross_base - gas_cost_wei * native_price_base // 10**18)
        for i, (o, s) in enumerate(report.opportunities):
            if s is sim:
                report.opportunities[i] = (o, priced)
        self.metrics.liquidations.labels(outcome="sent").inc()
        report.sent.append(attempt.tx_hash)

        def realised_base(outcome: Outcome) -> int:
            gas_delta_wei = priced.gas_cost_wei - outcome.gas_cost_wei
            return priced.profit_base + gas_delta_wei * native_price_base // 10**18

        def record(outcome: Outcome) -> None:  # exactly once per attempt, whenever it settles
            self.metrics.add_gas_spent_wei(outcome.gas_cost_wei)
            self.metrics.liquidations.labels(outcome=outcome.status).inc()
            if outcome.success:
                self.metrics.add_profit_usd(Decimal(realised_base(outcome)) / self.market.base_currency_unit)

        attempt.add_done_callback(record)
        self._sent.append(_Sent(attempt, opp, priced, realised_base))

    async def _settle_sent(self, report: CycleReport) -> None:
        """Wait up to `inclusion_wait_s` in all (not per transaction: on a chain with a block
        time each would wait for the next block) for this cycle's transactions, and report them.
        Outcomes that arrive later are counted in the metrics when they arrive."""
        sent, self._sent = self._sent, []
        if not sent:
            return
        assert self.sender is not None
        await self.sender.settle_all([s.attempt for s in sent], self.settings.inclusion_wait_s)
        for s in sent:
            outcome = s.attempt.outcome
            if outcome is None:
                log.info("exec.pending", borrower=s.opp.user, tx=s.attempt.tx_hash, nonce=s.attempt.nonce)
                continue
            self._report_outcome(s, outcome, report)

    def _report_outcome(self, s: _Sent, outcome: Outcome, report: CycleReport) -> None:
        report.gas_spent_wei += outcome.gas_cost_wei
        if outcome.block is None:
            return
        report.included_through = max(report.included_through, outcome.block)
        report.gas_used += outcome.gas_used
        if outcome.status == "reverted":
            report.reverted += 1
            return
        if not outcome.success:
            return
        report.included += 1
        report.settled.append((s.opp, s.priced))
        realised = s.realised_base(outcome)
        report.profit_base += realised
        log.info("exec.profit", borrower=s.opp.user, tx=outcome.tx_hash, block=outcome.block,
                 gas=outcome.gas_used, profit_usd=str(Decimal(realised) / self.market.base_currency_unit))


@dataclass(frozen=True, slots=True)
class _Sent:
    """A transaction this cycle sent, and what its report needs when it settles."""

    attempt: Attempt
    opp: Opportunity
    priced: SimResult
    realised_base: Callable[[Outcome], int]


def _signed_value(delta: int, price_base: int, decimals: int) -> int:
    """Base value of a balance change; losses rounded up, gains down (never flattering)."""
    if delta >= 0:
        return value_base_floor(delta, price_base, decimals)
    return -(-delta * price_base + 10**decimals - 1) // 10**decimals
