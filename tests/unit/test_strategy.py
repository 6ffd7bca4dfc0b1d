"""Pair choice, debtToCover sizing and net profit, with hand-derived numbers."""

from __future__ import annotations

import dataclasses

from keeper.protocol.math import UINT256_MAX, health_factor_wad, liquidation_outcome
from keeper.strategy.opportunity import (
    best_opportunity,
    candidate_amounts,
    evaluate_position,
    liquidation_inputs,
)
from keeper.strategy.profit import Costs, flash_premium, gas_cost_base, profit
from keeper.types import AccountHealth, Position, Reserve, ReservePosition

ETH = 10**18
USD = 10**8
USDC = 10**6
WETH = "0x1111111111111111111111111111111111111111"
WBTC = "0x2222222222222222222222222222222222222222"
USDC_ADDR = "0x3333333333333333333333333333333333333333"
BORROWER = "0x9999999999999999999999999999999999999999"
PRICES = {WETH: 2_000 * USD, WBTC: 50_000 * USD, USDC_ADDR: USD}
FREE = Costs(gas_units=0, gas_price_wei=0, native_price_base=2_000 * USD)
# 500k gas at 20 gwei = 0.01 ETH = $20; 5 bps flash premium; 30 bps swap cost.
COSTS = Costs(
    gas_units=500_000,
    gas_price_wei=20 * 10**9,
    native_price_base=2_000 * USD,
    flash_premium_bps=5,
    swap_cost_bps=30,
)


def reserve(
    asset: str,
    symbol: str,
    decimals: int,
    bonus_bps: int = 10_500,
    fee_bps: int = 1_000,
    **flags: bool,
) -> Reserve:
    return Reserve(
        asset=asset,
        symbol=symbol,
        decimals=decimals,
        a_token=asset,
        variable_debt_token=asset,
        ltv_bps=7_500,
        liquidation_threshold_bps=8_000,
        liquidation_bonus_bps=bonus_bps,
        liquidation_protocol_fee_bps=fee_bps,
        usage_as_collateral_enabled=True,
        borrowing_enabled=True,
        active=flags.get("active", True),
        frozen=flags.get("frozen", False),
        paused=flags.get("paused", False),
    )


RESERVES = (reserve(WETH, "WETH", 18), reserve(WBTC, "WBTC", 8), reserve(USDC_ADDR, "USDC", 6))


def position(
    collaterals: dict[str, int], debt_usdc: int, *, hf_wad: int | None = None, enabled: bool = True
) -> Position:
    """Borrower with the given collateral balances, USDC debt and LT 80% everywhere."""
    decimals = {WETH: 18, WBTC: 8}
    coll_base = sum(amount * PRICES[a] // 10 ** decimals[a] for a, amount in collaterals.items())
    debt_base = debt_usdc * USD // USDC
    hf = health_factor_wad(coll_base, debt_base, 8_000) if hf_wad is None else hf_wad
    health = AccountHealth(
        user=BORROWER,
        block=100,
        total_collateral_base=coll_base,
        total_debt_base=debt_base,
        available_borrows_base=0,
        current_liquidation_threshold_bps=8_000,
        ltv_bps=7_500,
        health_factor_wad=hf,
    )
    rows = [ReservePosition(a, amount, 0, enabled) for a, amount in collaterals.items()]
    rows.append(ReservePosition(USDC_ADDR, 0, debt_usdc, False))
    return Position(BORROWER, 100, health, tuple(rows), dict(PRICES))


SMALL = position({WETH: 697_187_500_000_000_000}, 1_150 * USDC)  # $1150 debt, HF 0.97
LARGE = position({WETH: 6_062_500_000_000_000_000}, 10_000 * USDC)  # $10k debt, HF 0.97
LARGE_095 = position({WETH: 5_937_500_000_000_000_000}, 10_000 * USDC)  # HF 0.95
# $6000 WETH + $6000 WBTC vs $10k: HF 0.96; either 50% slice would leave $750 of collateral.
DUSTY = position({WETH: 3 * ETH, WBTC: 12_000_000}, 10_000 * USDC)


# --- profit -----------------------------------------------------------------------------------


def test_gas_cost_converts_wei_to_base_currency_rounding_up():
    assert gas_cost_base(500_000, 20 * 10**9, 2_000 * USD) == 20 * USD
    assert gas_cost_base(1, 1, 1) == 1  # 1e-18 of a unit still costs one base unit


def test_flash_premium_rounds_up_like_flashloanlogic():
    assert flash_premium(1_150 * USDC, 5) == 575_000
    assert flash_premium(1, 5) == 1


def test_net_profit_subtracts_gas_premium_and_swap_cost():
    inputs = liquidation_inputs(
        SMALL, SMALL.reserves[0], SMALL.reserves[1], RESERVES[0], RESERVES[2]
    )
    outcome = liquidation_outcome(inputs, UINT256_MAX)
    p = profit(inputs, outcome, COSTS)
    # 0.600875 WETH = $1201.75 received, $1150 repaid.
    assert p.gross_profit_base == 5_175_000_000
    assert p.gas_cost_base == 2_000_000_000
    assert p.flash_premium_base == 57_500_000  # 575000 USDC units = $0.575
    assert p.swap_cost_base == 360_525_000  # 30 bps of $1201.75
    assert p.net_profit_base == 5_175_000_000 - 2_000_000_000 - 57_500_000 - 360_525_000


def test_swap_quote_replaces_the_bps_estimate():
    inputs = liquidation_inputs(
        SMALL, SMALL.reserves[0], SMALL.reserves[1], RESERVES[0], RESERVES[2]
    )
    outcome = liquidation_outcome(inputs, UINT256_MAX)
    p = profit(inputs, outcome, COSTS, swap_out_debt=1_195 * USDC)  # DEX pays $1195
    assert p.swap_cost_base == 120_175_000_000 - 119_500_000_000


# --- opportunity ------------------------------------------------------------------------------


def test_small_position_is_closed_whole():
    opp = best_opportunity(SMALL, RESERVES, FREE)
    assert opp is not None
    assert opp.debt_to_cover == UINT256_MAX  # full close stays full if interest accrues
    assert opp.expected_debt_repaid == 1_150 * USDC
    assert opp.expected_collateral_seized == 600_875_000_000_000_000
    assert opp.expected_protocol_fee == 2_875_000_000_000_000
    assert opp.net_profit_base == 5_175_000_000


def test_large_position_at_hf_097_is_capped_at_half():
    opp = best_opportunity(LARGE, RESERVES, FREE)
    assert opp is not None
    assert opp.expected_debt_repaid == 5_000 * USDC
    assert opp.expected_collateral_seized == 2_612_500_000_000_000_000


def test_large_position_at_hf_095_is_closed_fully():
    assert LARGE_095.health.health_factor_wad == 95 * 10**16
    opp = best_opportunity(LARGE_095, RESERVES, FREE)
    assert opp is not None
    assert opp.expected_debt_repaid == 10_000 * USDC


def test_partial_that_would_leave_dust_is_replaced_by_the_largest_safe_amount():
    opp = best_opportunity(DUSTY, RESERVES, FREE)
    assert opp is not None
    # WETH: seized+fee <= 2.5 WETH  <=>  d <= 4761.904761 USDC (5% bonus beats nothing else).
    assert (opp.collateral_asset, opp.debt_to_cover) == (WETH, 4_761_904_761)
    inputs = liquidation_inputs(
        DUSTY, DUSTY.reserves[0], DUSTY.reserves[2], RESERVES[0], RESERVES[2]
    )
    assert not liquidation_outcome(inputs, opp.debt_to_cover).reverts


def test_no_evaluated_candidate_reverts():
    for pos in (SMALL, LARGE, LARGE_095, DUSTY):
        for cand in evaluate_position(pos, RESERVES, FREE):
            assert not liquidation_outcome(cand.inputs, cand.debt_to_cover).reverts


def test_amounts_at_or_above_the_cap_collapse_into_uint_max():
    inputs = liquidation_inputs(
        LARGE, LARGE.reserves[0], LARGE.reserves[1], RESERVES[0], RESERVES[2]
    )
    # Cap 5000, full 10,000 and the largest dust-safe partial (the cap itself) are one call.
    assert candidate_amounts(inputs) == (UINT256_MAX,)


def test_candidates_add_the_dust_safe_partial_when_the_cap_would_leave_dust():
    inputs = liquidation_inputs(
        DUSTY, DUSTY.reserves[0], DUSTY.reserves[2], RESERVES[0], RESERVES[2]
    )
    assert candidate_amounts(inputs) == (4_761_904_761, UINT256_MAX)
    assert [
        c.debt_to_cover
        for c in evaluate_position(DUSTY, RESERVES, FREE)
        if c.collateral_asset == WETH
    ] == [4_761_904_761]


def test_higher_bonus_collateral_is_preferred():
    both = position({WETH: 3 * ETH, WBTC: 12_000_000}, 10_000 * USDC, hf_wad=9 * 10**17)
    reserves = (
        reserve(WETH, "WETH", 18, bonus_bps=10_500),
        reserve(WBTC, "WBTC", 8, bonus_bps=10_800),
        RESERVES[2],
    )
    opp = best_opportunity(both, reserves, FREE)
    assert opp is not None and opp.collateral_asset == WBTC


def test_emode_bonus_override_changes_the_choice():
    both = position({WETH: 3 * ETH, WBTC: 12_000_000}, 10_000 * USDC, hf_wad=9 * 10**17)
    reserves = (
        reserve(WETH, "WETH", 18, bonus_bps=10_500),
        reserve(WBTC, "WBTC", 8, bonus_bps=10_800),
        RESERVES[2],
    )
    opp = best_opportunity(both, reserves, FREE, bonus_overrides_bps={WETH: 11_000})
    assert opp is not None and opp.collateral_asset == WETH


def test_unprofitable_liquidation_returns_none():
    pricey_gas = dataclasses.replace(COSTS, gas_price_wei=10**12)  # $2000 of gas
    assert best_opportunity(SMALL, RESERVES, pricey_gas) is None
    assert best_opportunity(SMALL, RESERVES, pricey_gas, min_net_profit_base=-(10**30)) is not None


def test_healthy_position_returns_none():
    healthy = position({WETH: 10 * ETH}, 1_000 * USDC)
    assert best_opportunity(healthy, RESERVES, FREE) is None


def test_collateral_not_enabled_by_borrower_is_skipped():
    assert (
        best_opportunity(
            position({WETH: ETH}, 1_150 * USDC, hf_wad=9 * 10**17, enabled=False), RESERVES, FREE
        )
        is None
    )


def test_paused_reserve_is_skipped_but_frozen_is_not():
    paused = (reserve(WETH, "WETH", 18, paused=True), *RESERVES[1:])
    frozen = (reserve(WETH, "WETH", 18, frozen=True), *RESERVES[1:])
    assert best_opportunity(SMALL, paused, FREE) is None
    assert best_opportunity(SMALL, frozen, FREE) is not None


def test_result_does_not_depend_on_reserve_order():
    forward = evaluate_position(DUSTY, RESERVES, COSTS)
    backward = evaluate_position(
        dataclasses.replace(DUSTY, reserves=tuple(reversed(DUSTY.reserves))),
        tuple(reversed(RESERVES)),
        COSTS,
    )
    assert forward == backward
