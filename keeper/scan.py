"""`keeper scan`: one read-only pass over a market, ranking borrowers by how close they are to liquidation."""

from __future__ import annotations

from dataclasses import dataclass

from keeper.app import connect
from keeper.config import Settings
from keeper.health.risk import PriceMove, price_moves, uniform_collateral_drop_bps
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import discover_market, read_account_health, read_prices, read_reserve_positions
from keeper.types import AccountHealth, Market, Position


@dataclass(frozen=True, slots=True)
class AtRisk:
    health: AccountHealth
    moves: list[PriceMove]  # single-asset moves that make it liquidatable, smallest first
    uniform_drop_bps: int  # all collateral prices falling together


@dataclass(frozen=True, slots=True)
class ScanResult:
    market: Market
    block: int
    borrowers: int
    at_risk: list[AtRisk]


async def scan(settings: Settings, *, hf_below_wad: int = 12 * 10**17, limit: int = 50) -> ScanResult:
    rpc, _ = await connect(settings, Metrics())
    try:
        block = await rpc.block_number()
        market = await discover_market(rpc, settings.pool_addresses_provider, block)
        borrowers = sorted(await backfill_borrowers(rpc, market.pool, settings.start_block, block,
                                                    RangeSizer(max_range=settings.getlogs_max_range)))
        healths = await read_account_health(rpc, market, borrowers, block,
                                            batch_size=settings.multicall_batch_size,
                                            gas_per_batch=settings.multicall_gas)
        risky = sorted((h for h in healths if h.total_debt_base and h.health_factor_wad < hf_below_wad),
                       key=lambda h: h.health_factor_wad)[:limit]
        reserves = await read_reserve_positions(rpc, market, [h.user for h in risky], block)
        prices = await read_prices(rpc, market, block)
        by_asset = {r.asset: r for r in market.reserves}
        at_risk = []
        for h in risky:
            position = Position(h.user, block, h, reserves[h.user][0], prices)
            at_risk.append(AtRisk(h, price_moves(position, by_asset),
                                  uniform_collateral_drop_bps(h.health_factor_wad)))
        return ScanResult(market, block, len(borrowers), at_risk)
    finally:
        await rpc.close()
