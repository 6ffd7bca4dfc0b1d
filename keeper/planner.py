"""How one liquidatable position is planned: which pair, how much, paid how (inventory, flash loan
with a swap route, or the better of the two), and whether it clears the profit floor.

The plans are priced with oracle prices, ported protocol rules and real DEX quotes; the pipeline
(keeper/pipeline.py) then proves the chosen one on the fork before anything is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from keeper.chain.rpc import RpcClient
from keeper.config import Settings
from keeper.exec.plan import LiquidationTx, flashloan_tx, inventory_tx
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import BALANCE_OF
from keeper.protocol.uniswap_graph import RouteFinder
from keeper.sim.search import best_by_fork
from keeper.strategy.opportunity import Candidate, best_opportunity, evaluate_position, to_opportunity
from keeper.strategy.profit import Costs, ProfitBreakdown, flash_premium, profit
from keeper.strategy.routes import best_net_route, choose_execution, pair_names
from keeper.types import Address, Market, Opportunity, Position, SimResult

log = get_logger(__name__)

FLASH_CANDIDATES = 3  # sizings quoted on the DEX per borrower
# Until the fork measures it: a liquidationCall is ~330k gas, with a flash loan and swap ~600k.
FLASH_GAS_UNITS, INVENTORY_GAS_UNITS = 650_000, 400_000


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a position is not planned (a planner's answer when it has no transaction)."""

    reason: str
    kv: dict[str, object] = field(default_factory=dict)


Planned = tuple[Opportunity, LiquidationTx] | Skip
# Runs a planned liquidation on the fork (the pipeline's simulation): unknown revisions are sized by it.
Simulate = Callable[[Opportunity, LiquidationTx], Awaitable[SimResult]]


class Planner:
    def __init__(self, *, rpc: RpcClient, fork_rpc: Callable[[], RpcClient], market: Market,
                 settings: Settings, metrics: Metrics, keeper: Address) -> None:
        self.rpc = rpc
        self.fork_rpc = fork_rpc  # the fork's client: it holds this cycle's earlier liquidations and swaps
        self.market = market
        self.settings = settings
        self.metrics = metrics
        self.keeper = keeper
        self.executor = settings.executor_address
        self.gas_units = INVENTORY_GAS_UNITS if settings.execution == "inventory" else FLASH_GAS_UNITS
        quoter = settings.uniswap_quoter
        self.routes = RouteFinder(rpc, quoter, [r.asset for r in market.reserves], hubs=settings.hubs(),
                                  refresh_blocks=settings.pool_refresh_blocks,
                                  max_hops=settings.swap_max_hops) if quoter else None
        self.min_profit_base = int(settings.min_profit_usd * market.base_currency_unit)

    async def plan(self, position: Position, costs: Costs, bonuses: dict[Address, int],
                   simulate: Simulate) -> Planned:
        if self.market.rules.sizing == "simulate":  # an unknown revision: no ported rules are trusted
            return await self._plan_by_fork(position, costs, simulate)
        plan_for = {"flashloan": self._plan_flash, "inventory": self._plan_inventory,
                    "auto": self._plan_auto}[self.settings.execution]
        return await plan_for(position, costs, bonuses)

    async def _plan_inventory(self, position: Position, costs: Costs, bonuses: dict[Address, int]) -> Planned:
        opp = best_opportunity(position, self.market.reserves, costs, bonus_overrides_bps=bonuses,
                               min_net_profit_base=-(2**255), sizing=self.market.rules.sizing)
        if opp is None:
            return Skip("no_liquidatable_pair")
        if opp.net_profit_base < self.min_profit_base:
            return Skip("unprofitable", {"predicted_base": opp.net_profit_base})
        return opp, inventory_tx(opp, self.market, self.keeper)

    async def _plan_by_fork(self, position: Position, costs: Costs, simulate: Simulate) -> Planned:
        """An unknown revision: pair and debtToCover are searched on the fork (from inventory only)."""
        if self.settings.execution != "inventory":
            return Skip("unknown_rules_needs_inventory")

        async def run(opp: Opportunity) -> SimResult:
            return await simulate(opp, inventory_tx(opp, self.market, self.keeper))

        opp = await best_by_fork(position, run, costs.native_price_base)
        if opp is None:
            return Skip("no_liquidatable_pair")
        if opp.net_profit_base < self.min_profit_base:
            return Skip("unprofitable", {"predicted_base": opp.net_profit_base})
        return opp, inventory_tx(opp, self.market, self.keeper)

    async def _plan_auto(self, position: Position, costs: Costs, bonuses: dict[Address, int]) -> Planned:
        """A flash loan where it pays; else the wallet's own debt asset, if it holds enough and that pays."""
        flash = await self._plan_flash(position, costs, bonuses)
        held = await self._plan_held(position, replace(costs, gas_units=INVENTORY_GAS_UNITS), bonuses)
        mode = choose_execution(None if isinstance(flash, Skip) else flash[0].net_profit_base,
                                None if isinstance(held, Skip) else held[0].net_profit_base,
                                self.min_profit_base)
        if mode is None:  # both are skips: a planned one always pays the floor
            return held if isinstance(held, Skip) and held.reason == "unprofitable" else flash
        log.info("strategy.execution", borrower=position.user, mode=mode,
                 flash_skip=flash.reason if isinstance(flash, Skip) else None)
        return flash if mode == "flashloan" else held

    async def _plan_held(self, position: Position, costs: Costs, bonuses: dict[Address, int]) -> Planned:
        """The best inventory liquidation whose debt asset the wallet holds (on the fork: this cycle's
        earlier liquidations have already spent some)."""
        balances: dict[Address, int] = {}
        for c in evaluate_position(position, self.market.reserves, costs, bonus_overrides_bps=bonuses,
                                   sizing=self.market.rules.sizing):
            if c.debt_asset not in balances:
                raw = await self.fork_rpc().eth_call(c.debt_asset, BALANCE_OF.encode(self.keeper), "latest")
                balances[c.debt_asset] = BALANCE_OF.decode_one(raw)
            # Interest accrues until inclusion: keep a margin like the flash loan's.
            needed = c.outcome.debt_repaid * (10_000 + self.settings.flash_margin_bps) // 10_000 + 1
            if balances[c.debt_asset] < needed:
                continue
            opp = to_opportunity(position, c)
            if opp.net_profit_base < self.min_profit_base:
                return Skip("unprofitable", {"predicted_base": opp.net_profit_base})
            return opp, inventory_tx(opp, self.market, self.keeper)
        return Skip("no_inventory")

    async def _plan_flash(self, position: Position, costs: Costs, bonuses: dict[Address, int]) -> Planned:
        """Price the best few sizings with real swap quotes; the oracle alone would flatter them."""
        costs = replace(costs, flash_premium_bps=self.market.flash_loan_premium_bps)
        candidates = evaluate_position(position, self.market.reserves, costs, bonus_overrides_bps=bonuses,
                                       sizing=self.market.rules.sizing)[:FLASH_CANDIDATES]
        if not candidates:
            return Skip("no_liquidatable_pair")
        if self.routes is not None:
            await self.routes.ensure(position.block)
        quoted = [q for c in candidates if (q := await self._quote(c, costs, position)) is not None]
        if not quoted:
            return Skip("no_route", {"pairs": self._pairs(candidates)})
        best = max(quoted, key=lambda q: q.profit.net_profit_base)
        owed = best.candidate.outcome.debt_repaid + flash_premium(
            best.candidate.outcome.debt_repaid, self.market.flash_loan_premium_bps)
        if best.out < owed:
            return Skip("route_too_shallow", {"swap_out": best.out, "owed": owed})
        priced = best.profit
        opp = replace(to_opportunity(position, best.candidate), gross_profit_base=priced.gross_profit_base,
                      cost_base=priced.cost_base, net_profit_base=priced.net_profit_base)
        if opp.net_profit_base < self.min_profit_base:
            return Skip("unprofitable", {"predicted_base": opp.net_profit_base})
        debt = self.market.reserve(opp.debt_asset)
        min_profit = self.min_profit_base * 10**debt.decimals // position.prices_base[opp.debt_asset]
        plan = flashloan_tx(opp, self.executor, self.keeper, swap_path=best.path,
                            quoted_out=best.out,
                            slippage_bps=self.settings.swap_slippage_bps,
                            margin_bps=self.settings.flash_margin_bps, min_profit=min_profit)
        return opp, plan

    async def _quote(self, c: Candidate, costs: Costs, position: Position) -> _Quote | None:
        seized = c.outcome.collateral_seized
        if c.collateral_asset == c.debt_asset:
            out, path = seized, b""
        else:
            # The path is chosen on the chain's pools at this block, where arbitrage keeps them, and
            # priced on the fork, which also holds this cycle's earlier swaps: chosen on the fork, it
            # would detour around pools our own earlier sales moved, which arbitrage restores.
            routes = await self.routes.quote(self.rpc, c.collateral_asset, c.debt_asset, seized,
                                             prices_base=position.prices_base, decimals=self._decimals,
                                             block=position.block) if self.routes else []
            i = c.inputs
            route = best_net_route(
                routes, gas_price_wei=costs.gas_price_wei, native_price_base=costs.native_price_base,
                out_price_base=i.debt_price_base, out_decimals=i.debt_decimals,
                in_price_base=i.collateral_price_base, in_decimals=i.collateral_decimals)
            if route is not None and self.routes is not None:
                route = await self.routes.requote(self.fork_rpc(), route)
            if route is None:
                pair = self._pairs([c])
                self.metrics.no_route.labels(pair=pair).inc()
                log.info("strategy.no_route", borrower=position.user, pair=pair,
                         collateral=c.collateral_asset, debt=c.debt_asset, amount_in=seized)
                return None
            out, path = route.amount_out, route.path
            log.debug("strategy.route", borrower=position.user, pair=self._pairs([c]), hops=route.hops,
                      path=pair_names(self.market.reserves, [route.tokens]), fees=list(route.fees),
                      amount_in=seized, amount_out=out)
        return _Quote(c, out, path, profit(c.inputs, c.outcome, costs, swap_out_debt=out))

    @property
    def _decimals(self) -> dict[str, int]:
        return {r.asset: r.decimals for r in self.market.reserves}

    def _pairs(self, candidates: list[Candidate]) -> str:
        return pair_names(self.market.reserves, [(c.collateral_asset, c.debt_asset) for c in candidates])


@dataclass(frozen=True, slots=True)
class _Quote:
    candidate: Candidate
    out: int  # debt-asset units the swap returns for the seized collateral
    path: bytes
    profit: ProfitBreakdown
