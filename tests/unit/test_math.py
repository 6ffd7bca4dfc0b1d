"""Ported Aave V3.6 math: expectations derived by hand from the Solidity sources."""

from __future__ import annotations

import dataclasses

import pytest

from keeper.protocol.math import (
    HALF_RAY,
    HALF_WAD,
    MUST_NOT_LEAVE_DUST,
    RAY,
    UINT256_MAX,
    WAD,
    AccountReserve,
    LiquidationInputs,
    SolidityRevert,
    account_data,
    health_factor_wad,
    largest_debt_leaving_min_leftover,
    liquidation_outcome,
    max_debt_to_cover,
    mul_div_ceil,
    percent_div,
    percent_div_ceil,
    percent_mul,
    percent_mul_ceil,
    percent_mul_floor,
    ray_div,
    ray_div_ceil,
    ray_div_floor,
    ray_mul,
    ray_mul_ceil,
    ray_mul_floor,
    ray_to_wad,
    wad_div,
    wad_mul,
    wad_to_ray,
)

ETH = 10**18
USD = 10**8  # one dollar in base units
USDC = 10**6
WETH_PRICE = 2_000 * USD


def weth_usdc(**overrides: int | bool | None) -> LiquidationInputs:
    """WETH collateral (18 dec, $2000) against USDC debt (6 dec, $1), 5% bonus, 10% fee."""
    fields: dict[str, int | bool | None] = dict(
        hf_wad=97 * 10**16,
        total_collateral_base=0,
        total_debt_base=0,
        collateral_balance=0,
        debt_balance=0,
        collateral_price_base=WETH_PRICE,
        debt_price_base=USD,
        collateral_decimals=18,
        debt_decimals=6,
        bonus_bps=10_500,
        protocol_fee_bps=1_000,
    )
    fields.update(overrides)
    return LiquidationInputs(**fields)  # type: ignore[arg-type]


# Small: 0.6971875 WETH ($1394.375) vs 1150 USDC, LT 80% -> HF exactly 0.97.
SMALL = weth_usdc(
    total_collateral_base=1_394_375 * USD // 1000,
    total_debt_base=1_150 * USD,
    collateral_balance=697_187_500_000_000_000,
    debt_balance=1_150 * USDC,
)
# Large: 6.0625 WETH ($12,125) vs 10,000 USDC, LT 80% -> HF 0.97.
LARGE = weth_usdc(
    total_collateral_base=12_125 * USD,
    total_debt_base=10_000 * USD,
    collateral_balance=6_062_500_000_000_000_000,
    debt_balance=10_000 * USDC,
)


# --- rounding of the libraries ----------------------------------------------------------------


def test_ray_mul_rounds_half_up_at_exactly_half():
    assert ray_mul(1, HALF_RAY) == 1
    assert ray_mul(1, HALF_RAY - 1) == 0


def test_ray_mul_floor_and_ceil_round_in_their_direction():
    assert ray_mul_floor(1, HALF_RAY) == 0
    assert ray_mul_floor(3, RAY // 2) == 1
    assert ray_mul_ceil(1, 1) == 1
    assert ray_mul_ceil(2, RAY // 2) == 1  # exact results are not bumped


def test_ray_div_rounds_half_up_and_variants_floor_and_ceil():
    assert ray_div(1, 2 * RAY) == 1  # 0.5 -> 1
    assert ray_div(1, 2 * RAY + 2) == 0  # just under 0.5 -> 0
    assert ray_div_floor(1, 2 * RAY) == 0
    assert ray_div_ceil(1, 3 * RAY) == 1
    assert ray_div_ceil(3, 3 * RAY) == 1


def test_wad_mul_and_wad_div_round_half_up():
    assert wad_mul(1, HALF_WAD) == 1
    assert wad_mul(1, HALF_WAD - 1) == 0
    assert wad_div(1, 2 * WAD) == 1
    assert wad_div(1, 2 * WAD + 2) == 0


def test_ray_to_wad_rounds_half_up_and_wad_to_ray_scales():
    assert ray_to_wad(5 * 10**8) == 1
    assert ray_to_wad(5 * 10**8 - 1) == 0
    assert wad_to_ray(3) == 3 * 10**9


def test_percent_mul_rounds_half_up_floor_and_ceil_variants_do_not():
    assert percent_mul(1, 5_000) == 1
    assert percent_mul(1, 4_999) == 0
    assert percent_mul_floor(1, 9_999) == 0
    assert percent_mul_ceil(1, 1) == 1
    assert percent_mul_ceil(10_000, 3) == 3


def test_percent_div_rounds_half_up_and_ceil_variant_rounds_up():
    assert percent_div(1, 20_000) == 1  # 0.5 -> 1
    assert percent_div(1, 20_002) == 0
    assert percent_div_ceil(1, 30_000) == 1
    assert percent_div_ceil(3, 30_000) == 1


def test_mul_div_ceil_rounds_up_only_with_a_remainder():
    assert mul_div_ceil(7, 3, 2) == 11
    assert mul_div_ceil(6, 3, 2) == 9


def test_overflow_guards_revert_like_the_assembly():
    limit = (UINT256_MAX - HALF_RAY) // 3
    assert ray_mul(limit, 3) == (limit * 3 + HALF_RAY) // RAY
    with pytest.raises(SolidityRevert):
        ray_mul(limit + 1, 3)
    with pytest.raises(SolidityRevert):
        wad_div(1, 0)
    with pytest.raises(SolidityRevert):
        percent_div(1, 0)
    assert ray_mul(UINT256_MAX, 0) == 0  # b == 0 never reverts


# --- GenericLogic -----------------------------------------------------------------------------


def test_health_factor_is_collateral_times_threshold_over_debt():
    assert health_factor_wad(1_394_375 * USD // 1000, 1_150 * USD, 8_000) == 97 * 10**16


def test_health_factor_without_debt_is_uint256_max():
    assert health_factor_wad(1_000 * USD, 0, 8_000) == UINT256_MAX


def test_account_data_floors_collateral_and_ceils_debt():
    weth = AccountReserve(
        collateral=ETH - 1,
        debt=0,
        price_base=WETH_PRICE,
        decimals=18,
        ltv_bps=8_000,
        liquidation_threshold_bps=8_250,
        collateral_enabled=True,
        borrowing=False,
    )
    dai = AccountReserve(
        collateral=0,
        debt=10**18 + 1,
        price_base=USD,
        decimals=18,
        ltv_bps=7_500,
        liquidation_threshold_bps=8_000,
        collateral_enabled=False,
        borrowing=True,
    )
    data = account_data([weth, dai])
    assert data.total_collateral_base == 2_000 * USD - 1  # (1e18-1)*2000e8/1e18 floored
    assert data.total_debt_base == USD + 1  # (1e18+1)*1e8/1e18 ceiled
    assert data.avg_liquidation_threshold_bps == 8_250
    assert data.hf_wad == wad_div((2_000 * USD - 1) * 8_250, USD + 1) // 10_000


# --- LiquidationLogic -------------------------------------------------------------------------


def test_small_position_at_hf_097_is_closed_whole():
    out = liquidation_outcome(SMALL, UINT256_MAX)
    assert not out.close_factor_applied
    assert out.debt_repaid == 1_150 * USDC
    # 1150 USDC = 0.575 WETH, +5% bonus = 0.60375 WETH; fee = 10% of the 0.02875 bonus.
    assert out.protocol_fee == 2_875_000_000_000_000
    assert out.collateral_seized == 603_750_000_000_000_000 - 2_875_000_000_000_000
    assert out.collateral_seized_base == 1_207_50 * USD // 100
    assert out.revert_reason is None


def test_small_position_partial_leaving_under_1000_dollars_reverts_with_dust():
    out = liquidation_outcome(SMALL, 500 * USDC)  # would leave $650 of debt
    assert out.revert_reason == MUST_NOT_LEAVE_DUST


def test_small_position_max_debt_to_cover_is_the_full_debt():
    assert max_debt_to_cover(SMALL) == 1_150 * USDC


def test_large_position_at_hf_097_is_capped_at_half_the_total_debt():
    out = liquidation_outcome(LARGE, UINT256_MAX)
    assert out.close_factor_applied
    assert out.max_liquidatable_debt == 5_000 * USDC
    assert out.debt_repaid == 5_000 * USDC
    assert out.collateral_seized + out.protocol_fee == 2_625_000_000_000_000_000
    assert out.protocol_fee == 12_500_000_000_000_000
    assert not out.reverts


def test_large_position_at_hf_exactly_095_can_be_closed_fully():
    # 5.9375 WETH ($11,875) * 80% / $10,000 = 0.95; the close factor needs HF > 0.95.
    at_095 = dataclasses.replace(
        LARGE,
        hf_wad=95 * 10**16,
        collateral_balance=5_937_500_000_000_000_000,
        total_collateral_base=11_875 * USD,
    )
    out = liquidation_outcome(at_095, UINT256_MAX)
    assert not out.close_factor_applied
    assert out.debt_repaid == 10_000 * USDC
    assert out.collateral_seized + out.protocol_fee == 5_250_000_000_000_000_000


def test_close_factor_applies_one_wei_above_hf_095():
    just_above = dataclasses.replace(LARGE, hf_wad=95 * 10**16 + 1)
    assert liquidation_outcome(just_above, UINT256_MAX).debt_repaid == 5_000 * USDC


def test_hf_at_one_is_not_liquidatable():
    out = liquidation_outcome(dataclasses.replace(LARGE, hf_wad=WAD), UINT256_MAX)
    assert out.revert_reason == "HealthFactorNotBelowThreshold"
    assert max_debt_to_cover(dataclasses.replace(LARGE, hf_wad=WAD)) == 0


def test_close_factor_threshold_uses_ceiled_debt_value():
    # DAI debt worth $1999.99999999...: ceil puts it at exactly $2000, so 50% applies.
    dai_debt = dataclasses.replace(
        LARGE,
        debt_decimals=18,
        debt_balance=2_000 * 10**18 - 1,
        total_debt_base=2_000 * USD,
    )
    out = liquidation_outcome(dai_debt, UINT256_MAX)
    assert out.close_factor_applied
    assert out.debt_repaid == 1_000 * 10**18


def test_close_factor_threshold_uses_floored_collateral_value():
    # 1 WETH minus 1 wei is worth $1999.99999999 floored: below the threshold, no 50% cap.
    thin = dataclasses.replace(
        LARGE,
        collateral_balance=ETH - 1,
        total_collateral_base=2_000 * USD - 1,
        debt_balance=1_500 * USDC,
        total_debt_base=3_000 * USD,
    )
    out = liquidation_outcome(thin, UINT256_MAX)
    assert not out.close_factor_applied
    assert out.max_liquidatable_debt == 1_500 * USDC


def test_close_factor_does_not_cap_a_reserve_holding_less_than_half_the_total_debt():
    minority = dataclasses.replace(LARGE, total_debt_base=25_000 * USD)
    out = liquidation_outcome(minority, UINT256_MAX)
    assert not out.close_factor_applied
    assert out.debt_repaid == 10_000 * USDC


# 3 WETH ($6000) + $6000 of other collateral vs 10,000 USDC: HF 0.96, 50% cap = 5000 USDC,
# which needs $5250 of WETH and would leave $750 of it.
DUSTY = weth_usdc(
    hf_wad=96 * 10**16,
    total_collateral_base=12_000 * USD,
    total_debt_base=10_000 * USD,
    collateral_balance=3 * ETH,
    debt_balance=10_000 * USDC,
)


def test_cap_that_leaves_under_1000_dollars_of_collateral_reverts_even_with_uint_max():
    assert liquidation_outcome(DUSTY, UINT256_MAX).revert_reason == MUST_NOT_LEAVE_DUST


def test_max_debt_to_cover_falls_back_to_largest_amount_leaving_1000_dollars():
    # seized+fee = percentMul(d * 5e8, 10500) <= 2.5 WETH  <=>  d <= 4761.904761 USDC
    assert max_debt_to_cover(DUSTY) == 4_761_904_761
    assert largest_debt_leaving_min_leftover(DUSTY) == 4_761_904_761
    assert not liquidation_outcome(DUSTY, 4_761_904_761).reverts
    assert liquidation_outcome(DUSTY, 4_761_904_762).revert_reason == MUST_NOT_LEAVE_DUST


def test_leftover_debt_of_exactly_1000_dollars_is_allowed():
    # Reserve holds 5500 of 10,000 total debt: the 5000 cap leaves $500, 4500 leaves $1000.
    split = dataclasses.replace(
        LARGE,
        debt_balance=5_500 * USDC,
        total_debt_base=10_000 * USD,
        collateral_balance=20 * ETH,
        total_collateral_base=40_000 * USD,
    )
    assert liquidation_outcome(split, UINT256_MAX).revert_reason == MUST_NOT_LEAVE_DUST
    assert max_debt_to_cover(split) == 4_500 * USDC


def test_taking_all_collateral_skips_the_dust_rule_and_books_a_deficit():
    # 0.5 WETH ($1000) against 1000 USDC: collateral runs out first.
    short = weth_usdc(
        hf_wad=8 * 10**17,
        total_collateral_base=1_000 * USD,
        total_debt_base=1_000 * USD,
        collateral_balance=ETH // 2,
        debt_balance=1_000 * USDC,
    )
    out = liquidation_outcome(short, UINT256_MAX)
    assert out.takes_all_collateral and out.has_no_collateral_left
    # percentDivCeil(1000e6, 10500) = ceil(952380952.38)
    assert out.debt_repaid == 952_380_953
    # bonus part = 0.5e18 - percentDiv(0.5e18, 10500) = 0.5e18 - 476190476190476190
    assert out.protocol_fee == percent_mul(500_000_000_000_000_000 - 476_190_476_190_476_190, 1_000)
    assert out.collateral_seized == ETH // 2 - out.protocol_fee
    assert out.deficit == 1_000 * USDC - 952_380_953
    assert not out.reverts


def test_protocol_fee_is_taken_from_the_liquidators_collateral():
    no_fee = liquidation_outcome(dataclasses.replace(SMALL, protocol_fee_bps=0), UINT256_MAX)
    with_fee = liquidation_outcome(SMALL, UINT256_MAX)
    assert no_fee.protocol_fee == 0
    assert no_fee.collateral_seized == 603_750_000_000_000_000
    assert with_fee.collateral_seized == no_fee.collateral_seized - with_fee.protocol_fee
    assert with_fee.debt_repaid == no_fee.debt_repaid


def test_protocol_fee_is_cut_to_the_borrowers_remaining_scaled_balance():
    # Scaled 1e18 at index 3: balance 3 WETH, all seized. fee = 28571428571428571 (= 2 mod 3),
    # so ceil(seized/3) + ceil(fee/3) = 1e18 + 1 > 1e18 and the fee shrinks by 2 wei.
    wiped = weth_usdc(
        hf_wad=5 * 10**17,
        total_collateral_base=6_000 * USD,
        total_debt_base=10_000 * USD,
        collateral_balance=3 * ETH,
        debt_balance=10_000 * USDC,
        protocol_fee_bps=2_000,
    )
    uncapped = liquidation_outcome(wiped, UINT256_MAX)
    indexed = dataclasses.replace(
        wiped, collateral_scaled_balance=ETH, collateral_liquidity_index_ray=3 * RAY
    )
    capped = liquidation_outcome(indexed, UINT256_MAX)
    assert uncapped.protocol_fee == 28_571_428_571_428_571
    assert capped.protocol_fee == 28_571_428_571_428_569
    assert capped.collateral_seized == uncapped.collateral_seized


def test_collateral_not_enabled_cannot_be_liquidated():
    out = liquidation_outcome(dataclasses.replace(SMALL, collateral_enabled=False), UINT256_MAX)
    assert out.revert_reason == "CollateralCannotBeLiquidated"


def test_zero_debt_to_cover_reverts_with_invalid_burn_amount():
    big_leftovers = dataclasses.replace(LARGE, collateral_balance=100 * ETH)
    assert liquidation_outcome(big_leftovers, 0).revert_reason == "InvalidBurnAmount"
