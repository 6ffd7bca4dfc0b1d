"""A liquidation heatmap: what becomes liquidatable at each price level of one asset. Pure, integer math.

For an asset X and price levels p_k = p_0 × (10_000 + move_k) // 10_000 (move_k = ±k × step_bps;
the same truncation `keeper.devnet.seed.shock` applies), every borrower's health factor is
recomputed with only X's price changed, with `GenericLogic.calculateUserAccountData`'s own
operations and rounding (Aave V3.6):

    collateral_i = balance_i × price_i // 10^dec_i                    (floor, enabled collateral only)
    debt_i       = ceil(debt_i × price_i / 10^dec_i)                  (`MathUtils.mulDivCeil`)
    HF           = wadDiv(Σ collateral_i × LT_i, Σ debt_i) // 10_000  (wadDiv rounds half up)
    liquidatable ⇔ debt > 0 and HF < 1e18

Balances are `balanceOf` of the aToken (floor) and variable-debt token (ceil), i.e. what the pool
itself uses, so at the read block the local HF equals `getUserAccountData`'s to the wei. Every
position is checked against the chain's HF at the current prices first: one that disagrees (an
eMode category not passed in `thresholds_bps`, a stale read) is left out and listed in
`Heatmap.unmodelled` rather than guessed at.

X as collateral: a falling price lowers Σ collateral × LT, so the "down" side hurts. X as debt: a
rising price raises the debt, so the "up" side hurts. Both sides are always computed, and a position
holding X on both sides is evaluated exactly: its HF, (a + b·p) / (c + d·p), still moves one way with
p, the direction set by the signs, up to a rounding unit.

Per level:
  cumulative (`positions`, `collateral_base`, `debt_base`): the positions liquidatable at exactly
    that price, valued at that price, including those liquidatable already (level 0). Since HF is
    monotone in p, these are the positions liquidatable at this move or any smaller one.
  marginal (`new_*`): positions liquidatable here that were at no level closer to the current price,
    valued at this level's price, plus `new_asset_collateral`: the X tokens they hold as collateral
    (what liquidators could seize and sell, before the close factor).
Cumulative values are at the level's price, so they are not the sum of the marginal ones above.

A snapshot at one block: interest accrued afterwards (debt faster than collateral) moves every HF by
a hair, so a borrower within ~0.01% of HF 1 at a level may land on either side of it later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from keeper.protocol.math import (
    PERCENTAGE_FACTOR,
    WAD,
    AccountReserve,
    account_data,
    health_factor_from_weighted_wad,
    mul_div_ceil,
)
from keeper.types import Address, Position, Reserve

BPS = PERCENTAGE_FACTOR


@dataclass(frozen=True, slots=True)
class Level:
    move_bps: int  # signed; -1_500 = the price 15% lower
    price_base: int  # X's price at this level
    # cumulative: liquidatable at this price
    positions: int
    collateral_base: int
    debt_base: int
    # marginal: liquidatable here for the first time going out from the current price
    new_positions: int
    new_collateral_base: int
    new_debt_base: int
    new_asset_collateral: int  # X token units held as collateral by the new positions
    new_users: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class Heatmap:
    asset: Address
    symbol: str
    decimals: int
    block: int
    price_base: int  # X's current price
    base_currency_unit: int
    step_bps: int
    now: Level  # move 0: liquidatable already
    down: tuple[Level, ...]  # -step, -2×step, ...
    up: tuple[Level, ...]  # +step, +2×step, ...
    positions: int  # modelled positions with debt
    collateral_exposed: int  # of which hold X as enabled collateral with LT > 0
    debt_exposed: int  # of which owe X
    unmodelled: tuple[Address, ...]  # local HF ≠ chain HF at the current price: left out

    def level(self, move_bps: int) -> Level:
        for lv in (self.now, *self.down, *self.up):
            if lv.move_bps == move_bps:
                return lv
        raise KeyError(move_bps)

    def users_liquidatable_at(self, move_bps: int) -> set[Address]:
        """Users first liquidatable at `move_bps` or a smaller move on the same side."""
        side = self.down if move_bps < 0 else self.up
        out = set(self.now.new_users)
        for lv in side:
            if abs(lv.move_bps) <= abs(move_bps):
                out.update(lv.new_users)
        return out


def price_at(price_base: int, move_bps: int) -> int:
    """The price after a move of `move_bps`, truncated like `seed.shock`."""
    return price_base * (BPS + move_bps) // BPS


def health_factor_at(position: Position, reserves: Mapping[Address, Reserve],
                     prices_base: Mapping[Address, int] | None = None,
                     thresholds_bps: Mapping[Address, int] | None = None) -> int:
    """GenericLogic's HF of `position` with `prices_base` overriding some of its prices.

    `thresholds_bps` overrides reserves' liquidation thresholds (the user's eMode category).
    """
    prices = {**position.prices_base, **(prices_base or {})}
    lts = thresholds_bps or {}
    rows = []
    for p in position.reserves:
        r = reserves[p.asset]
        rows.append(AccountReserve(
            collateral=p.collateral, debt=p.debt, price_base=prices[p.asset], decimals=r.decimals,
            ltv_bps=r.ltv_bps, liquidation_threshold_bps=lts.get(p.asset, r.liquidation_threshold_bps),
            collateral_enabled=p.collateral_enabled, borrowing=p.debt > 0,
        ))
    return account_data(rows).hf_wad


@dataclass(frozen=True, slots=True)
class _Split:
    """One position's HF inputs, split into the part X's price moves and the fixed rest."""

    user: Address
    price_base: int  # X's price in this position's price map
    unit: int
    weighted_rest: int  # Σ collateral_i × LT_i over i ≠ X (base × bps)
    collateral_rest: int  # Σ collateral_i over i ≠ X (base)
    debt_rest: int  # Σ debt_i over i ≠ X (base, each rounded up)
    x_collateral: int  # X units counted as collateral (0 unless enabled)
    x_lt_bps: int
    x_debt: int

    def at(self, move_bps: int) -> tuple[bool, int, int]:
        """(liquidatable, collateral_base, debt_base) with X moved by `move_bps`."""
        p = price_at(self.price_base, move_bps)
        x_coll = self.x_collateral * p // self.unit
        debt = self.debt_rest + (mul_div_ceil(self.x_debt, p, self.unit) if self.x_debt else 0)
        weighted = self.weighted_rest + x_coll * self.x_lt_bps
        liquidatable = debt > 0 and health_factor_from_weighted_wad(weighted, debt) < WAD
        return liquidatable, self.collateral_rest + x_coll, debt


def _split(position: Position, reserves: Mapping[Address, Reserve], asset: Address,
           lts: Mapping[Address, int]) -> _Split:
    weighted = coll = debt = x_coll = x_debt = 0
    for p in position.reserves:
        r = reserves[p.asset]
        unit = 10**r.decimals
        if p.asset == asset:
            x_coll = p.collateral if p.collateral_enabled else 0
            x_debt = p.debt
            continue
        price = position.prices_base[p.asset]
        if p.collateral_enabled:
            value = p.collateral * price // unit
            coll += value
            weighted += value * lts.get(p.asset, r.liquidation_threshold_bps)
        if p.debt:
            debt += mul_div_ceil(p.debt, price, unit)
    x = reserves[asset]
    return _Split(position.user, position.prices_base.get(asset, 0), 10**x.decimals, weighted, coll, debt,
                  x_coll, lts.get(asset, x.liquidation_threshold_bps), x_debt)


def moves(steps: int, step_bps: int) -> tuple[list[int], list[int]]:
    """(down, up) moves in bps, nearest first; the down side stops short of a zero price."""
    if steps < 0 or step_bps <= 0:
        raise ValueError("steps must be ≥ 0 and step_bps > 0")
    down = [-k * step_bps for k in range(1, steps + 1) if k * step_bps < BPS]
    up = [k * step_bps for k in range(1, steps + 1)]
    return down, up


def build_heatmap(positions: Iterable[Position], reserves: Mapping[Address, Reserve], asset: Address, *,
                  steps: int = 50, step_bps: int = 100, price_base: int | None = None,
                  thresholds_bps: Mapping[Address, Mapping[Address, int]] | None = None,
                  base_currency_unit: int = 10**8, block: int | None = None) -> Heatmap:
    """The heatmap of `asset` over `steps` levels of `step_bps` each side of the current price.

    `reserves` maps asset → Reserve for every asset the positions hold; `thresholds_bps` maps
    user → asset → liquidation threshold for users in an eMode category. `price_base` is the
    reference price shown for level 0 (default: the first position's price of `asset`); each
    position is valued at its own prices, with X's moved by the level's move.
    """
    if asset not in reserves:
        raise KeyError(asset)
    down_moves, up_moves = moves(steps, step_bps)
    thresholds_bps = thresholds_bps or {}
    exposed: list[_Split] = []
    fixed: list[tuple[Address, int, int]] = []  # liquidatable whatever X does: (user, coll, debt)
    unmodelled: list[Address] = []
    n_positions = coll_exposed = debt_exposed = 0
    for pos in positions:
        if pos.health.total_debt_base == 0:
            continue
        lts = thresholds_bps.get(pos.user, {})
        if health_factor_at(pos, reserves, thresholds_bps=lts) != pos.health.health_factor_wad:
            unmodelled.append(pos.user)
            continue
        block = pos.block if block is None else block
        n_positions += 1
        if price_base is None and asset in pos.prices_base:
            price_base = pos.prices_base[asset]
        s = _split(pos, reserves, asset, lts)
        if s.x_collateral or s.x_debt:
            coll_exposed += bool(s.x_collateral and s.x_lt_bps)
            debt_exposed += bool(s.x_debt)
            exposed.append(s)
        else:
            liquidatable, coll, debt = s.at(0)
            if liquidatable:
                fixed.append((s.user, coll, debt))
    if price_base is None:
        raise ValueError(f"no price for {asset}: pass price_base")

    def level(move: int, counted: set[Address]) -> Level:
        """Exposed positions at `move`, plus the fixed ones; `counted` collects first crossings."""
        n, coll, debt = len(fixed), sum(f[1] for f in fixed), sum(f[2] for f in fixed)
        new: list[Address] = []
        new_coll = new_debt = new_x = 0
        if move == 0:  # the fixed ones are new at the current price
            new, new_coll, new_debt = [f[0] for f in fixed], coll, debt
            counted.update(new)
        for s in exposed:
            liquidatable, c, d = s.at(move)
            if not liquidatable:
                continue
            n, coll, debt = n + 1, coll + c, debt + d
            if s.user not in counted:
                counted.add(s.user)
                new.append(s.user)
                new_coll, new_debt, new_x = new_coll + c, new_debt + d, new_x + s.x_collateral
        return Level(move, price_at(price_base, move), n, coll, debt, len(new), new_coll, new_debt, new_x,
                     tuple(new))

    already: set[Address] = set()
    now = level(0, already)
    down_seen, up_seen = set(already), set(already)
    x = reserves[asset]
    return Heatmap(
        asset=asset, symbol=x.symbol, decimals=x.decimals, block=block or 0, price_base=price_base,
        base_currency_unit=base_currency_unit, step_bps=step_bps, now=now,
        down=tuple(level(m, down_seen) for m in down_moves), up=tuple(level(m, up_seen) for m in up_moves),
        positions=n_positions, collateral_exposed=coll_exposed, debt_exposed=debt_exposed,
        unmodelled=tuple(unmodelled),
    )
