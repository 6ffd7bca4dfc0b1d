"""Aave V3.6 integer math and liquidation sizing, ported line by line.

Sources (aave-v3-origin 3.6.0): WadRayMath.sol, PercentageMath.sol, MathUtils.sol,
TokenMath.sol, GenericLogic.sol, LiquidationLogic.sol (configuration bitmaps are decoded in
aave_v3.py). Every operation keeps the Solidity order of operations and
rounding so results match the pool to the wei. Where Solidity reverts, these
functions raise `SolidityRevert` (ops) or report `revert_reason` (liquidations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

UINT256_MAX: Final = 2**256 - 1

WAD: Final = 10**18
HALF_WAD: Final = WAD // 2
RAY: Final = 10**27
HALF_RAY: Final = RAY // 2
WAD_RAY_RATIO: Final = 10**9

PERCENTAGE_FACTOR: Final = 10**4
HALF_PERCENTAGE_FACTOR: Final = PERCENTAGE_FACTOR // 2

# ValidationLogic
HEALTH_FACTOR_LIQUIDATION_THRESHOLD_WAD: Final = 10**18
MINIMUM_HEALTH_FACTOR_LIQUIDATION_THRESHOLD_WAD: Final = 95 * 10**16

# LiquidationLogic
DEFAULT_LIQUIDATION_CLOSE_FACTOR_BPS: Final = 5_000
CLOSE_FACTOR_HF_THRESHOLD_WAD: Final = 95 * 10**16
MIN_BASE_MAX_CLOSE_FACTOR_THRESHOLD_BASE: Final = 2_000 * 10**8
MIN_LEFTOVER_BASE: Final = MIN_BASE_MAX_CLOSE_FACTOR_THRESHOLD_BASE // 2

# Revert reasons as named by Errors.sol (custom errors) or the EVM panic.
MUST_NOT_LEAVE_DUST: Final = "MustNotLeaveDust"
HEALTH_FACTOR_NOT_BELOW_THRESHOLD: Final = "HealthFactorNotBelowThreshold"
COLLATERAL_CANNOT_BE_LIQUIDATED: Final = "CollateralCannotBeLiquidated"
SPECIFIED_CURRENCY_NOT_BORROWED: Final = "SpecifiedCurrencyNotBorrowedByUser"
INVALID_BURN_AMOUNT: Final = "InvalidBurnAmount"
PANIC_UNDERFLOW: Final = "Panic(0x11)"
PANIC_DIVISION_BY_ZERO: Final = "Panic(0x12)"


class SolidityRevert(ArithmeticError):
    """The Solidity library would revert (overflow guard or division by zero)."""


def _u256(*values: int) -> None:
    for v in values:
        if not 0 <= v <= UINT256_MAX:
            raise ValueError(f"not a uint256: {v}")


# --- WadRayMath -------------------------------------------------------------------------------


def wad_mul(a: int, b: int) -> int:
    """Half-up `a*b/WAD`."""
    _u256(a, b)
    if b != 0 and a > (UINT256_MAX - HALF_WAD) // b:
        raise SolidityRevert("wadMul overflow")
    return (a * b + HALF_WAD) // WAD


def wad_div(a: int, b: int) -> int:
    """Half-up `a*WAD/b`."""
    _u256(a, b)
    if b == 0 or a > (UINT256_MAX - b // 2) // WAD:
        raise SolidityRevert("wadDiv overflow or division by zero")
    return (a * WAD + b // 2) // b


def ray_mul(a: int, b: int) -> int:
    """Half-up `a*b/RAY`."""
    _u256(a, b)
    if b != 0 and a > (UINT256_MAX - HALF_RAY) // b:
        raise SolidityRevert("rayMul overflow")
    return (a * b + HALF_RAY) // RAY


def ray_mul_floor(a: int, b: int) -> int:
    _u256(a, b)
    if b != 0 and a > UINT256_MAX // b:
        raise SolidityRevert("rayMulFloor overflow")
    return a * b // RAY


def ray_mul_ceil(a: int, b: int) -> int:
    _u256(a, b)
    if b != 0 and a > UINT256_MAX // b:
        raise SolidityRevert("rayMulCeil overflow")
    return -(-(a * b) // RAY)


def ray_div(a: int, b: int) -> int:
    """Half-up `a*RAY/b`."""
    _u256(a, b)
    if b == 0 or a > (UINT256_MAX - b // 2) // RAY:
        raise SolidityRevert("rayDiv overflow or division by zero")
    return (a * RAY + b // 2) // b


def ray_div_floor(a: int, b: int) -> int:
    _u256(a, b)
    if b == 0 or a > UINT256_MAX // RAY:
        raise SolidityRevert("rayDivFloor overflow or division by zero")
    return a * RAY // b


def ray_div_ceil(a: int, b: int) -> int:
    _u256(a, b)
    if b == 0 or a > UINT256_MAX // RAY:
        raise SolidityRevert("rayDivCeil overflow or division by zero")
    return -(-(a * RAY) // b)


def ray_to_wad(a: int) -> int:
    """Half-up ray -> wad."""
    _u256(a)
    b, remainder = divmod(a, WAD_RAY_RATIO)
    return b + 1 if remainder >= WAD_RAY_RATIO // 2 else b


def wad_to_ray(a: int) -> int:
    _u256(a)
    if a * WAD_RAY_RATIO > UINT256_MAX:
        raise SolidityRevert("wadToRay overflow")
    return a * WAD_RAY_RATIO


# --- PercentageMath ---------------------------------------------------------------------------


def percent_mul(value: int, percentage_bps: int) -> int:
    """Half-up `value*percentage/1e4`."""
    _u256(value, percentage_bps)
    if percentage_bps != 0 and value > (UINT256_MAX - HALF_PERCENTAGE_FACTOR) // percentage_bps:
        raise SolidityRevert("percentMul overflow")
    return (value * percentage_bps + HALF_PERCENTAGE_FACTOR) // PERCENTAGE_FACTOR


def percent_mul_floor(value: int, percentage_bps: int) -> int:
    _u256(value, percentage_bps)
    if percentage_bps != 0 and value > UINT256_MAX // percentage_bps:
        raise SolidityRevert("percentMulFloor overflow")
    return value * percentage_bps // PERCENTAGE_FACTOR


def percent_mul_ceil(value: int, percentage_bps: int) -> int:
    _u256(value, percentage_bps)
    if percentage_bps != 0 and value > UINT256_MAX // percentage_bps:
        raise SolidityRevert("percentMulCeil overflow")
    return -(-(value * percentage_bps) // PERCENTAGE_FACTOR)


def percent_div(value: int, percentage_bps: int) -> int:
    """Half-up `value*1e4/percentage`."""
    _u256(value, percentage_bps)
    if percentage_bps == 0 or value > (UINT256_MAX - percentage_bps // 2) // PERCENTAGE_FACTOR:
        raise SolidityRevert("percentDiv overflow or division by zero")
    return (value * PERCENTAGE_FACTOR + percentage_bps // 2) // percentage_bps


def percent_div_ceil(value: int, percentage_bps: int) -> int:
    _u256(value, percentage_bps)
    if percentage_bps == 0 or value > UINT256_MAX // PERCENTAGE_FACTOR:
        raise SolidityRevert("percentDivCeil overflow or division by zero")
    return -(-(value * PERCENTAGE_FACTOR) // percentage_bps)


# --- MathUtils / TokenMath --------------------------------------------------------------------


def mul_div_ceil(a: int, b: int, c: int) -> int:
    _u256(a, b, c)
    if c == 0:
        raise SolidityRevert("mulDivCeil division by zero")
    if b != 0 and a > UINT256_MAX // b:
        raise SolidityRevert("mulDivCeil overflow")
    return -(-(a * b) // c)


def a_token_balance(scaled_balance: int, liquidity_index_ray: int) -> int:
    """`TokenMath.getATokenBalance`: what `AToken.balanceOf` returns (floor)."""
    return ray_mul_floor(scaled_balance, liquidity_index_ray)


def v_token_balance(scaled_balance: int, variable_borrow_index_ray: int) -> int:
    """`TokenMath.getVTokenBalance`: what `VariableDebtToken.balanceOf` returns (ceil)."""
    return ray_mul_ceil(scaled_balance, variable_borrow_index_ray)


def a_token_burn_scaled(amount: int, liquidity_index_ray: int) -> int:
    """Also `getATokenTransferScaledAmount` (both ceil)."""
    return ray_div_ceil(amount, liquidity_index_ray)


def v_token_burn_scaled(amount: int, variable_borrow_index_ray: int) -> int:
    return ray_div_floor(amount, variable_borrow_index_ray)


# --- GenericLogic -----------------------------------------------------------------------------


def health_factor_from_weighted_wad(weighted_threshold_base_bps: int, total_debt_base: int) -> int:
    """GenericLogic's HF from SUM(collateral_base_i * liquidation_threshold_i)."""
    if total_debt_base == 0:
        return UINT256_MAX
    return wad_div(weighted_threshold_base_bps, total_debt_base) // PERCENTAGE_FACTOR


def health_factor_wad(
    total_collateral_base: int, total_debt_base: int, avg_liquidation_threshold_bps: int
) -> int:
    """HF from `getUserAccountData`-style totals.

    Exact when every collateral shares one threshold. With mixed thresholds the pool
    uses the unrounded weighted sum (see `account_data`), while the returned average is
    floored, so this can read a little low.
    """
    return health_factor_from_weighted_wad(
        total_collateral_base * avg_liquidation_threshold_bps, total_debt_base
    )


@dataclass(frozen=True, slots=True)
class AccountReserve:
    """One reserve of a borrower as `calculateUserAccountData` sees it."""

    collateral: int  # aToken balance, token units
    debt: int  # variable debt balance, token units
    price_base: int
    decimals: int
    ltv_bps: int  # eMode-adjusted where applicable
    liquidation_threshold_bps: int  # eMode-adjusted where applicable
    collateral_enabled: bool
    borrowing: bool


@dataclass(frozen=True, slots=True)
class AccountData:
    total_collateral_base: int
    total_debt_base: int
    avg_ltv_bps: int
    avg_liquidation_threshold_bps: int
    hf_wad: int
    has_zero_ltv_collateral: bool


def account_data(reserves: Sequence[AccountReserve]) -> AccountData:
    """Port of `GenericLogic.calculateUserAccountData` over per-reserve balances."""
    if not any(r.collateral_enabled or r.borrowing for r in reserves):
        return AccountData(0, 0, 0, 0, UINT256_MAX, False)
    total_collateral_base = total_debt_base = weighted_ltv = weighted_lt = 0
    has_zero_ltv = False
    for r in reserves:
        unit = 10**r.decimals
        if r.collateral_enabled:
            balance_base = r.collateral * r.price_base // unit  # floor
            total_collateral_base += balance_base
            if r.ltv_bps == 0:
                has_zero_ltv = True
            else:
                weighted_ltv += balance_base * r.ltv_bps
            weighted_lt += balance_base * r.liquidation_threshold_bps
        if r.borrowing:
            total_debt_base += mul_div_ceil(r.debt, r.price_base, unit)
    hf = health_factor_from_weighted_wad(weighted_lt, total_debt_base)
    avg_ltv = weighted_ltv // total_collateral_base if total_collateral_base else 0
    avg_lt = weighted_lt // total_collateral_base if total_collateral_base else 0
    return AccountData(total_collateral_base, total_debt_base, avg_ltv, avg_lt, hf, has_zero_ltv)


# --- MathUtils / ReserveLogic: interest to a timestamp ----------------------------------------

SECONDS_PER_YEAR = 365 * 24 * 3600


def linear_interest_ray(rate_ray: int, last_update_timestamp: int, timestamp: int) -> int:
    """`MathUtils.calculateLinearInterest`: RAY + rate * dt / SECONDS_PER_YEAR (floor)."""
    if timestamp < last_update_timestamp:
        raise ValueError("timestamp before the reserve's last update")
    return RAY + rate_ray * (timestamp - last_update_timestamp) // SECONDS_PER_YEAR


def compounded_interest_ray(rate_ray: int, last_update_timestamp: int, timestamp: int) -> int:
    """`MathUtils.calculateCompoundedInterest` (3.6): RAY + x + x·(x/2 + x·x/6), x = rate·dt/year."""
    if timestamp < last_update_timestamp:
        raise ValueError("timestamp before the reserve's last update")
    exp = timestamp - last_update_timestamp
    if exp == 0:
        return RAY
    x = rate_ray * exp // SECONDS_PER_YEAR
    return RAY + x + ray_mul(x, x // 2 + ray_mul(x, x // 6))


def normalized_income_ray(liquidity_index_ray: int, liquidity_rate_ray: int, last_update_timestamp: int,
                          timestamp: int) -> int:
    """`ReserveLogic.getNormalizedIncome` at `timestamp`."""
    if timestamp == last_update_timestamp:
        return liquidity_index_ray
    return ray_mul(linear_interest_ray(liquidity_rate_ray, last_update_timestamp, timestamp),
                   liquidity_index_ray)


def normalized_debt_ray(variable_borrow_index_ray: int, variable_borrow_rate_ray: int,
                        last_update_timestamp: int, timestamp: int) -> int:
    """`ReserveLogic.getNormalizedDebt` at `timestamp`."""
    if timestamp == last_update_timestamp:
        return variable_borrow_index_ray
    return ray_mul(compounded_interest_ray(variable_borrow_rate_ray, last_update_timestamp, timestamp),
                   variable_borrow_index_ray)


def scaled_from_balance(balance: int, index_ray: int, *, debt: bool) -> int | None:
    """The unique scaled amount whose balance at `index_ray` is `balance`, or None if none is.

    balance(s) is floor(s·i/RAY) for aTokens and ceil(s·i/RAY) for debt tokens; with i >= RAY
    consecutive s map to balances at least 1 apart, so at most one s fits:
    the smallest s with floor(s·i/RAY) >= b is ceil(b·RAY/i); the largest with ceil(..) <= b is
    floor(b·RAY/i).
    """
    if balance < 0 or index_ray < RAY:
        return None
    s = balance * RAY // index_ray if debt else -(-(balance * RAY) // index_ray)
    got = v_token_balance(s, index_ray) if debt else a_token_balance(s, index_ray)
    return s if got == balance else None


# --- LiquidationLogic -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiquidationInputs:
    """What `executeLiquidationCall` reads for one (collateral, debt) pair.

    Totals and HF are `getUserAccountData` at the block the call executes in; balances
    are `balanceOf` of the aToken / variable debt token; prices are
    `AaveOracle.getAssetPrice`; bonus and fee are as ReserveConfiguration encodes them.
    """

    hf_wad: int
    total_collateral_base: int
    total_debt_base: int
    collateral_balance: int  # borrower's aToken balance, collateral units
    debt_balance: int  # borrower's variable debt, debt units
    collateral_price_base: int
    debt_price_base: int
    collateral_decimals: int
    debt_decimals: int
    bonus_bps: int  # 10500 = 5% bonus; the eMode category's if collateral is in it
    protocol_fee_bps: int  # collateral reserve's liquidation protocol fee
    collateral_enabled: bool = True  # borrower's UserConfiguration collateral bit
    receive_a_token: bool = False
    # Optional: with both, the 1-wei cap on the treasury transfer is applied exactly.
    collateral_scaled_balance: int | None = None
    collateral_liquidity_index_ray: int | None = None
    sizing: str = "v3.3"  # "v3.0": the v3.0-v3.2 LiquidationLogic (see math_v30.py)

    @property
    def collateral_unit(self) -> int:
        return 10**self.collateral_decimals

    @property
    def debt_unit(self) -> int:
        return 10**self.debt_decimals


@dataclass(frozen=True, slots=True)
class LiquidationOutcome:
    """What `liquidationCall(collateral, debt, user, debt_to_cover, receiveAToken)` does."""

    debt_to_cover: int  # as requested
    max_liquidatable_debt: int  # cap from the close factor, debt units
    close_factor_applied: bool
    debt_repaid: int  # actualDebtToLiquidate, pulled from the liquidator
    collateral_seized: int  # collateral units to the liquidator, fee already removed
    protocol_fee: int  # collateral units to the treasury
    collateral_seized_base: int  # collateralToLiquidateInBaseCurrency (fee included)
    takes_all_collateral: bool  # seized + fee == borrower's collateral balance
    has_no_collateral_left: bool  # remaining debt of every reserve becomes deficit
    deficit: int  # debt units of this reserve written off as deficit
    revert_reason: str | None = None

    @property
    def reverts(self) -> bool:
        return self.revert_reason is not None


def _reverted(debt_to_cover: int, reason: str) -> LiquidationOutcome:
    return LiquidationOutcome(debt_to_cover, 0, False, 0, 0, 0, 0, False, False, 0, reason)


def validation_revert(inputs: LiquidationInputs) -> str | None:
    """The `validateLiquidationCall` checks that depend on the borrower (not flags/sentinels),
    plus the division by zero a zero oracle price causes right after them."""
    if inputs.hf_wad >= HEALTH_FACTOR_LIQUIDATION_THRESHOLD_WAD:
        return HEALTH_FACTOR_NOT_BELOW_THRESHOLD
    if not inputs.collateral_enabled:
        return COLLATERAL_CANNOT_BE_LIQUIDATED
    if inputs.debt_balance == 0:
        return SPECIFIED_CURRENCY_NOT_BORROWED
    if inputs.collateral_price_base == 0 or inputs.debt_price_base == 0:
        return PANIC_DIVISION_BY_ZERO
    return None


def debt_balance_base(inputs: LiquidationInputs) -> int:
    """borrowerReserveDebtInBaseCurrency (ceil)."""
    return mul_div_ceil(inputs.debt_balance, inputs.debt_price_base, inputs.debt_unit)


def collateral_balance_base(inputs: LiquidationInputs) -> int:
    """borrowerReserveCollateralInBaseCurrency (floor)."""
    return inputs.collateral_balance * inputs.collateral_price_base // inputs.collateral_unit


def close_factor_applies(inputs: LiquidationInputs) -> bool:
    """Whether the 50% close factor may cap this reserve's debt (per-reserve values)."""
    return (
        collateral_balance_base(inputs) >= MIN_BASE_MAX_CLOSE_FACTOR_THRESHOLD_BASE
        and debt_balance_base(inputs) >= MIN_BASE_MAX_CLOSE_FACTOR_THRESHOLD_BASE
        and inputs.hf_wad > CLOSE_FACTOR_HF_THRESHOLD_WAD
    )


def max_liquidatable_debt(inputs: LiquidationInputs) -> tuple[int, bool]:
    """(maxLiquidatableDebt in debt units, whether the close factor cut it)."""
    if inputs.sizing == "v3.0":
        from keeper.protocol.math_v30 import max_liquidatable_debt_v30

        return max_liquidatable_debt_v30(inputs)
    if close_factor_applies(inputs):
        # 50% of the borrower's TOTAL debt, not of this reserve's debt.
        half_total_debt_base = percent_mul(
            inputs.total_debt_base, DEFAULT_LIQUIDATION_CLOSE_FACTOR_BPS
        )
        if debt_balance_base(inputs) > half_total_debt_base:
            return half_total_debt_base * inputs.debt_unit // inputs.debt_price_base, True
    return inputs.debt_balance, False


def available_collateral_to_liquidate(
    inputs: LiquidationInputs, actual_debt_to_liquidate: int
) -> tuple[int, int, int, int]:
    """`_calculateAvailableCollateralToLiquidate`.

    Returns (collateral to liquidator, debt repaid, protocol fee, collateral seized in base
    with the fee included), all as the Solidity function returns them.
    """
    collateral_price, collateral_unit = inputs.collateral_price_base, inputs.collateral_unit
    debt_price, debt_unit = inputs.debt_price_base, inputs.debt_unit
    bonus = inputs.bonus_bps

    base_collateral = (debt_price * actual_debt_to_liquidate * collateral_unit) // (
        collateral_price * debt_unit
    )
    max_collateral = percent_mul(base_collateral, bonus)

    if max_collateral > inputs.collateral_balance:
        collateral_amount = inputs.collateral_balance
        debt_needed = (percent_div if inputs.sizing == "v3.0" else percent_div_ceil)(
            (collateral_price * collateral_amount * debt_unit) // (debt_price * collateral_unit),
            bonus,
        )
    else:
        collateral_amount = max_collateral
        debt_needed = actual_debt_to_liquidate

    collateral_base = collateral_amount * collateral_price // collateral_unit

    protocol_fee = 0
    if inputs.protocol_fee_bps != 0:
        # The fee is a share of the bonus part only, carved out of the seized amount.
        bonus_collateral = collateral_amount - percent_div(collateral_amount, bonus)
        protocol_fee = percent_mul(bonus_collateral, inputs.protocol_fee_bps)
        collateral_amount -= protocol_fee
    return collateral_amount, debt_needed, protocol_fee, collateral_base


def _leftovers_ok(inputs: LiquidationInputs, debt_repaid: int, collateral_taken: int) -> bool:
    """Dust rule: both leftovers worth at least MIN_LEFTOVER_BASE (debt ceil, collateral floor)."""
    debt_left_base = mul_div_ceil(
        inputs.debt_balance - debt_repaid, inputs.debt_price_base, inputs.debt_unit
    )
    collateral_left_base = (
        (inputs.collateral_balance - collateral_taken)
        * inputs.collateral_price_base
        // inputs.collateral_unit
    )
    return debt_left_base >= MIN_LEFTOVER_BASE and collateral_left_base >= MIN_LEFTOVER_BASE


def _capped_protocol_fee(inputs: LiquidationInputs, collateral_seized: int, fee: int) -> int:
    """The treasury transfer is cut to the borrower's remaining scaled balance (1-wei rounding)."""
    scaled, index = inputs.collateral_scaled_balance, inputs.collateral_liquidity_index_ray
    if fee == 0 or scaled is None or index is None:
        return fee
    # Both receiveAToken paths move ceil(amount/index) scaled units out of the borrower.
    remaining_scaled = scaled - a_token_burn_scaled(collateral_seized, index)
    if a_token_burn_scaled(fee, index) > remaining_scaled:
        return a_token_balance(remaining_scaled, index)
    return fee


def liquidation_outcome(inputs: LiquidationInputs, debt_to_cover: int) -> LiquidationOutcome:
    """Port of `LiquidationLogic.executeLiquidationCall` for one `debtToCover`.

    `debt_to_cover` above the allowed maximum (e.g. UINT256_MAX) means "as much as allowed".
    Not modelled: reserve active/paused flags, grace periods, the PriceOracleSentinel,
    and InvalidBurnAmount when a tiny nonzero debt repay scales to 0 vToken units.
    """
    _u256(debt_to_cover)
    if (reason := validation_revert(inputs)) is not None:
        return _reverted(debt_to_cover, reason)
    if inputs.sizing == "v3.0":
        from keeper.protocol.math_v30 import liquidation_outcome_v30

        return liquidation_outcome_v30(inputs, debt_to_cover)

    max_debt, close_factor = max_liquidatable_debt(inputs)
    requested = min(debt_to_cover, max_debt)
    seized, debt_repaid, fee, seized_base = available_collateral_to_liquidate(inputs, requested)
    taken = seized + fee

    reason = None
    if debt_repaid < inputs.debt_balance and taken < inputs.collateral_balance:
        if not _leftovers_ok(inputs, debt_repaid, taken):
            reason = MUST_NOT_LEAVE_DUST

    no_collateral_left = inputs.total_collateral_base == seized_base
    # _burnDebtTokens burns the whole reserve debt when no collateral is left.
    burn_amount = inputs.debt_balance if no_collateral_left else debt_repaid
    if reason is None and burn_amount == 0:
        reason = INVALID_BURN_AMOUNT
    if reason is None and debt_repaid > inputs.debt_balance:
        reason = PANIC_UNDERFLOW  # outstandingDebt = borrowerReserveDebt - actualDebt
    if reason is None and seized == 0 and not inputs.receive_a_token:
        reason = INVALID_BURN_AMOUNT  # aToken.burn of 0 scaled units
    if reason is None:
        fee = _capped_protocol_fee(inputs, seized, fee)

    deficit = inputs.debt_balance - debt_repaid if no_collateral_left and reason is None else 0
    return LiquidationOutcome(
        debt_to_cover=debt_to_cover,
        max_liquidatable_debt=max_debt,
        close_factor_applied=close_factor,
        debt_repaid=debt_repaid,
        collateral_seized=seized,
        protocol_fee=fee,
        collateral_seized_base=seized_base,
        takes_all_collateral=taken == inputs.collateral_balance,
        has_no_collateral_left=no_collateral_left,
        deficit=max(deficit, 0),
        revert_reason=reason,
    )


def largest_debt_leaving_min_leftover(inputs: LiquidationInputs) -> int:
    """Largest debtToCover (≤ the allowed max) whose partial liquidation leaves ≥ MIN_LEFTOVER_BASE
    of both debt and collateral; 0 if none does.

    The leftovers only shrink as the amount grows, so a binary search is exact.
    v3.0-v3.2 pools have no dust rule: 0 (nothing to search for).
    """
    if validation_revert(inputs) is not None or inputs.sizing == "v3.0":
        return 0

    def ok(amount: int) -> bool:
        seized, repaid, fee, _ = available_collateral_to_liquidate(inputs, amount)
        return repaid <= inputs.debt_balance and _leftovers_ok(inputs, repaid, seized + fee)

    lo, hi = 0, max_liquidatable_debt(inputs)[0]
    if not ok(lo):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_debt_to_cover(inputs: LiquidationInputs) -> int:
    """Largest debtToCover the pool accepts without reverting; 0 if it accepts none.

    Usually the close-factor cap (or the full reserve debt). When that amount would leave
    dust (reserve debt just over 50% of total debt), the largest partial amount that
    leaves ≥ MIN_LEFTOVER_BASE is returned instead: passing more, even UINT256_MAX, reverts.
    """
    if validation_revert(inputs) is not None:
        return 0
    max_debt, _ = max_liquidatable_debt(inputs)
    if max_debt == 0:
        return 0
    if not liquidation_outcome(inputs, max_debt).reverts:
        return max_debt
    amount = largest_debt_leaving_min_leftover(inputs)
    if amount == 0 or liquidation_outcome(inputs, amount).reverts:
        return 0
    return amount
