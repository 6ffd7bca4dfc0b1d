"""`keeper heatmap ASSET`: how much collateral becomes liquidatable at each price level of one asset.

The I/O half (the math is keeper/health/heatmap.py): one pinned block, every borrower from Borrow
logs, their account data, per-reserve balances, eMode thresholds and oracle prices at that block.
Read-only; needs KEEPER_RPC_URL and KEEPER_POOL_ADDRESSES_PROVIDER only.
"""

from __future__ import annotations

from decimal import Decimal

from eth_utils import is_hex_address, to_checksum_address
from rich.table import Table

from keeper.app import connect
from keeper.chain.rpc import RpcClient
from keeper.config import Settings
from keeper.errors import ConfigError
from keeper.health.heatmap import Heatmap, Level, build_heatmap
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import (
    discover_market,
    read_account_health,
    read_emode_categories,
    read_prices,
    read_reserve_positions,
)
from keeper.types import Address, Market, Position, Reserve

BAR_WIDTH = 32
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def find_reserve(market: Market, asset: str) -> Reserve:
    """A reserve by symbol (case-insensitive) or address; ConfigError naming the choices otherwise."""
    if is_hex_address(asset):
        try:
            return market.reserve(to_checksum_address(asset))
        except KeyError:
            pass
    else:
        for r in market.reserves:
            if r.symbol.upper() == asset.upper():
                return r
    raise ConfigError(f"unknown asset {asset!r}; this market lists "
                      f"{', '.join(r.symbol for r in market.reserves)}")


async def heatmap(settings: Settings, *, asset: str, steps: int = 50, step_bps: int = 100) -> Heatmap:
    if steps < 1 or step_bps < 1:
        raise ConfigError("heatmap: --steps and --step-bps must be at least 1")
    rpc, _ = await connect(settings, Metrics())
    try:
        block = await rpc.block_number()
        market = await discover_market(rpc, settings.pool_addresses_provider, block)
        reserve = find_reserve(market, asset)
        borrowers = sorted(await backfill_borrowers(rpc, market.pool, settings.start_block, block,
                                                    RangeSizer(max_range=settings.getlogs_max_range)))
        healths = await read_account_health(rpc, market, borrowers, block,
                                            batch_size=settings.multicall_batch_size,
                                            gas_per_batch=settings.multicall_gas)
        indebted = [h for h in healths if h.total_debt_base]
        balances = await read_reserve_positions(rpc, market, [h.user for h in indebted], block)
        prices = await read_prices(rpc, market, block)
        thresholds = await _emode_thresholds(rpc, market, {u: e for u, (_, e) in balances.items()}, block)
        positions = [Position(h.user, block, h, balances[h.user][0], prices) for h in indebted]
        return build_heatmap(positions, {r.asset: r for r in market.reserves}, reserve.asset,
                             steps=steps, step_bps=step_bps, price_base=prices[reserve.asset],
                             thresholds_bps=thresholds, base_currency_unit=market.base_currency_unit,
                             block=block)
    finally:
        await rpc.close()


async def _emode_thresholds(rpc: RpcClient, market: Market, emodes: dict[Address, int], block: int
                            ) -> dict[Address, dict[Address, int]]:
    """user → asset → eMode liquidation threshold, for users in an eMode category.

    GenericLogic uses the category's LT for a collateral whose reserve id is set in the category's
    collateral bitmap, and the reserve's own LT otherwise.
    """
    categories = await read_emode_categories(rpc, market, emodes.values(), block)
    per_category = {c: {a: cat.liquidation_threshold_bps for a in cat.collateral_assets}
                    for c, cat in categories.items()}
    return {u: per_category[e] for u, e in emodes.items() if e and per_category.get(e)}


def _usd(value_base: int, unit: int) -> str:
    return f"{Decimal(value_base) / unit:,.0f}"


def bar(value: int, largest: int, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of block characters, `width` cells for `largest`, eighths of a cell."""
    if value <= 0 or largest <= 0:
        return ""
    eighths = max(1, value * width * 8 // largest)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def rows(hm: Heatmap) -> list[Level]:
    """Levels top to bottom like an order book: highest price first. A side no position is
    exposed to is left out."""
    up = list(reversed(hm.up)) if hm.debt_exposed else []
    down = list(hm.down) if hm.collateral_exposed or hm.debt_exposed else []
    return [*up, hm.now, *down]


def render(hm: Heatmap) -> Table:
    unit = hm.base_currency_unit
    shown = rows(hm)
    largest = max((lv.new_collateral_base for lv in shown), default=0)
    table = Table(title=f"{hm.symbol} liquidation heatmap at block {hm.block}: "
                        f"{hm.collateral_exposed} positions hold it as collateral, {hm.debt_exposed} owe it "
                        f"(of {hm.positions} with debt)",
                  caption="new: liquidatable first at this level; cumulative: liquidatable at this price "
                          "(values at this price, base currency)"
                          + (f"; {len(hm.unmodelled)} positions left out (local HF ≠ chain HF)"
                             if hm.unmodelled else ""))
    for col in ("price", "move", "new collateral $", "cumulative collateral $", "cumulative debt $",
                "positions new / cum."):
        table.add_column(col, justify="right")
    table.add_column("", justify="left", no_wrap=True)
    for lv in shown:
        table.add_row(
            f"{Decimal(lv.price_base) / unit:,.2f}",
            "now" if lv.move_bps == 0 else f"{lv.move_bps / 100:+.2f}%",
            _usd(lv.new_collateral_base, unit), _usd(lv.collateral_base, unit), _usd(lv.debt_base, unit),
            f"{lv.new_positions} / {lv.positions}", bar(lv.new_collateral_base, largest),
            style="bold" if lv.move_bps == 0 else None,
        )
    return table
