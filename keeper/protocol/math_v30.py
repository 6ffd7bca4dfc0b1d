"""The v3.0-v3.2 liquidation rules (npm @aave/core-v3 1.19.3, LiquidationLogic.sol), ported.

Where they differ from v3.3+ (math.py):
- the close factor caps this reserve's debt (stable + variable), not the total: 50% while HF is
  above 0.95, 100% below, whatever the position's size;
- `debtAmountNeeded` when the collateral runs out is `percentDiv` (half up), not rounded up;
- no dust rule (any leftover is allowed) and no deficit (debt left without collateral stays debt);
- the protocol fee is transferred uncapped.
`liquidation_outcome` in math.py dispatches here when `inputs.sizing == "v3.0"`, after the shared
validation checks.
"""

from __future__ import annotations

from typing import Final

from keeper.protocol.math import (
    CLOSE_FACTOR_HF_THRESHOLD_WAD,
    DEFAULT_LIQUIDATION_CLOSE_FACTOR_BPS,
    INVALID_BURN_AMOUNT,
    PERCENTAGE_FACTOR,
    RAY,
    SECONDS_PER_YEAR,
    LiquidationInputs,
    LiquidationOutcome,
    available_collateral_to_liquidate,
    percent_mul,
    ray_mul,
)

MAX_LIQUIDATION_CLOSE_FACTOR_BPS: Final = PERCENTAGE_FACTOR


def max_liquidatable_debt_v30(inputs: LiquidationInputs) -> tuple[int, bool]:
    """(maxLiquidatableDebt, whether the 50% close factor applied): a share of this reserve's debt."""
    half = inputs.hf_wad > CLOSE_FACTOR_HF_THRESHOLD_WAD
    factor = DEFAULT_LIQUIDATION_CLOSE_FACTOR_BPS if half else MAX_LIQUIDATION_CLOSE_FACTOR_BPS
    return percent_mul(inputs.debt_balance, factor), half


def liquidation_outcome_v30(inputs: LiquidationInputs, debt_to_cover: int) -> LiquidationOutcome:
    """`executeLiquidationCall` of v3.0 for one `debtToCover` (validation already passed)."""
    max_debt, close_factor = max_liquidatable_debt_v30(inputs)
    requested = min(debt_to_cover, max_debt)
    seized, debt_repaid, fee, seized_base = available_collateral_to_liquidate(inputs, requested)
    reason = None
    if debt_repaid == 0 or (seized == 0 and not inputs.receive_a_token):
        reason = INVALID_BURN_AMOUNT  # burning 0 scaled units of the debt or the aToken
    return LiquidationOutcome(
        debt_to_cover=debt_to_cover,
        max_liquidatable_debt=max_debt,
        close_factor_applied=close_factor,
        debt_repaid=debt_repaid,
        collateral_seized=seized,
        protocol_fee=fee,
        collateral_seized_base=seized_base,
        takes_all_collateral=seized + fee == inputs.collateral_balance,
        has_no_collateral_left=False,  # v3.0 has no deficit: what is left stays debt
        deficit=0,
        revert_reason=reason,
    )


def compounded_interest_ray_v30(rate_ray: int, last_update_timestamp: int, timestamp: int) -> int:
    """`MathUtils.calculateCompoundedInterest` of v3.0: the three-term binomial with its own roundings."""
    if timestamp < last_update_timestamp:
        raise ValueError("timestamp before the last update")
    exp = timestamp - last_update_timestamp
    if exp == 0:
        return RAY
    exp_minus_two = exp - 2 if exp > 2 else 0
    base_power_two = ray_mul(rate_ray, rate_ray) // (SECONDS_PER_YEAR * SECONDS_PER_YEAR)
    base_power_three = ray_mul(base_power_two, rate_ray) // SECONDS_PER_YEAR
    second = exp * (exp - 1) * base_power_two // 2
    third = exp * (exp - 1) * exp_minus_two * base_power_three // 6
    return RAY + rate_ray * exp // SECONDS_PER_YEAR + second + third


def stable_debt_balance(principal: int, rate_ray: int, last_update_timestamp: int, timestamp: int) -> int:
    """`StableDebtToken.balanceOf`: the principal compounded at the user's own rate since their update."""
    if principal == 0:
        return 0
    return ray_mul(principal, compounded_interest_ray_v30(rate_ray, last_update_timestamp, timestamp))
