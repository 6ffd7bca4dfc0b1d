"""How far each price must move before a borrower can be liquidated. Pure, integer math.

HF = W / D with W = Σ collateral_i × LT_i (base currency) and D the debt. A fall
of x in asset i's price alone brings HF to 1 when x = (W − D) / (c_i × LT_i); a
rise of y in debt asset k's price alone when y = (W − D) / d_k.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.strategy.profit import value_base_floor
from keeper.types import Address, Position, Reserve

BPS = 10_000


@dataclass(frozen=True, slots=True)
class PriceMove:
    asset: Address
    symbol: str
    move_bps: int  # negative: the price must fall; positive: rise. 10_000 = 100%


def price_moves(position: Position, reserves: dict[Address, Reserve]) -> list[PriceMove]:
    """Single-asset moves that make the position liquidatable, smallest first."""
    weighted: dict[Address, int] = {}
    debts: dict[Address, int] = {}
    for p in position.reserves:
        r = reserves[p.asset]
        price = position.prices_base[p.asset]
        if p.collateral_enabled and p.collateral and r.liquidation_threshold_bps:
            weighted[p.asset] = (
                value_base_floor(p.collateral, price, r.decimals) * r.liquidation_threshold_bps
            )
        if p.debt:
            debts[p.asset] = value_base_floor(p.debt, price, r.decimals)
    total_w = sum(weighted.values())  # base × bps
    total_d = sum(debts.values()) * BPS
    if not total_d:
        return []
    headroom = total_w - total_d
    if headroom <= 0:
        return [PriceMove(a, reserves[a].symbol, 0) for a in {**weighted, **debts}]
    # Rounded away from zero: the move must be at least this large.
    moves = [
        PriceMove(a, reserves[a].symbol, -_ceil_div(headroom * BPS, w))
        for a, w in weighted.items()
        if headroom < w
    ]  # a fall of 100% or more is no threshold
    moves += [PriceMove(a, reserves[a].symbol, _ceil_div(headroom, d)) for a, d in debts.items()]
    return sorted(moves, key=lambda m: abs(m.move_bps))


def uniform_collateral_drop_bps(hf_wad: int) -> int:
    """The fall of every collateral price together that brings HF to 1."""
    if hf_wad <= 10**18:
        return 0
    return BPS - BPS * 10**18 // hf_wad


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
