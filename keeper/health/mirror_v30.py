"""The mirror's health on v3.0-v3.1 pools: `GenericLogic.calculateUserAccountData` of @aave/core-v3 1.19.3.

It differs from v3.6's (mirror.py `_account`) in its roundings and in stable-rate debt:
- aToken and variable-debt balances are `rayMul` half up (not floor / ceil);
- a reserve's debt is variable + `StableDebtToken.balanceOf` (principal compounded at the user's own
  rate since the user's last stable update), valued `debt * price / unit` rounded down;
- an asset is in the user's eMode category when its configuration names that category;
- HF is `percentMul(totalCollateral, avgLT).wadDiv(totalDebt)` with avgLT = sum(value·LT) / total,
  available borrows `percentMul(totalCollateral, avgLtv) - totalDebt`.
Categories with their own price source (v3.0 eMode oracles) are not mirrored: such a user's health
is None, and the tracker reads it on chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from keeper.protocol.math import UINT256_MAX, percent_mul, ray_div, ray_mul, wad_div
from keeper.protocol.math_v30 import stable_debt_balance
from keeper.types import AccountHealth, Address

if TYPE_CHECKING:
    from keeper.health.mirror import HealthMirror, UserState


def account_v30(mirror: HealthMirror, user: Address, u: UserState, ctx: Mapping[int, tuple],
                timestamp: int, block: int) -> AccountHealth | None:
    em_lt = em_ltv = em_coll = 0
    if u.emode:
        cat = mirror.emodes.get(u.emode)
        if cat is None or cat.price_source_set:
            return None
        em_lt, em_ltv, em_coll = cat.liquidation_threshold_bps, cat.ltv_bps, cat.collateral_bitmap
    total_collateral = weighted_lt = weighted_ltv = 0
    bits = u.collateral_mask
    while bits:
        low = bits & -bits
        rid = low.bit_length() - 1
        bits ^= low
        rc = ctx.get(rid)
        if rc is None:
            continue
        income, _, price, unit, lt, ltv = rc
        if lt == 0:
            continue
        if price is None:
            return None
        scaled = u.a_scaled.get(rid, 0)
        value = (ray_mul(scaled, income) if scaled else 0) * price // unit
        total_collateral += value
        in_category = bool((em_coll >> rid) & 1)
        if ltv:
            weighted_ltv += value * (em_ltv if in_category else ltv)
        weighted_lt += value * (em_lt if in_category else lt)
    total_debt = 0
    for rid in set(u.v_scaled) | set(u.stable):
        rc = ctx.get(rid)
        if rc is None:
            continue
        price = rc[2]
        if price is None:
            return None
        scaled = u.v_scaled.get(rid, 0)
        debt = ray_mul(scaled, rc[1]) if scaled else 0
        if rid in u.stable:
            debt += stable_debt_balance(*u.stable[rid], timestamp)
        total_debt += debt * price // rc[3]
    avg_ltv = weighted_ltv // total_collateral if total_collateral else 0
    avg_lt = weighted_lt // total_collateral if total_collateral else 0
    hf = UINT256_MAX if total_debt == 0 else wad_div(percent_mul(total_collateral, avg_lt), total_debt)
    borrowable = percent_mul(total_collateral, avg_ltv)
    available = borrowable - total_debt if borrowable > total_debt else 0
    return AccountHealth(user, block, total_collateral, total_debt, available, avg_lt, avg_ltv, hf)



def move_scaled_v30(old: int, delta: int, balance_increase: int, index: int,
                    prev_index: int | None) -> int | None:
    """v3.0 `_mintScaled` / `_burnScaled`: the scaled balance moves by `rayDiv(amount, index)` (half up),
    `amount = |delta|`; None when the event's balanceIncrease does not fit the mirrored balance."""
    if prev_index is not None and ray_mul(old, index) - ray_mul(old, prev_index) != balance_increase:
        return None
    step = ray_div(abs(delta), index)
    new = old + step if delta >= 0 else old - step
    return new if new >= 0 else None
