"""Net profit of a liquidation in base currency (8-decimal USD on Aave V3).

Integers only. Revenue rounds down and costs round up, so the estimate never flatters
an opportunity by a rounding unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.protocol.math import (
    PERCENTAGE_FACTOR,
    LiquidationInputs,
    LiquidationOutcome,
    mul_div_ceil,
    percent_mul_ceil,
)

WEI_PER_NATIVE = 10**18


@dataclass(frozen=True, slots=True)
class Costs:
    """What it costs to execute one liquidation, besides the debt repaid."""

    gas_units: int
    gas_price_wei: int  # effective price the keeper expects to pay (base fee + tip)
    native_price_base: int  # price of 1 native coin (1e18 wei) in base units
    flash_premium_bps: int = 0  # Pool FLASHLOAN_PREMIUM_TOTAL; 0 when using own funds
    swap_cost_base: int = 0  # flat cost of turning collateral into the debt asset
    swap_cost_bps: int = 0  # proportional cost (DEX fee + slippage) of the collateral value


@dataclass(frozen=True, slots=True)
class ProfitBreakdown:
    collateral_value_base: int  # collateral the liquidator receives, floor
    debt_value_base: int  # debt the liquidator repays, ceil
    gross_profit_base: int
    gas_cost_base: int
    flash_premium_base: int
    swap_cost_base: int
    cost_base: int
    net_profit_base: int


def value_base_floor(amount: int, price_base: int, decimals: int) -> int:
    return amount * price_base // 10**decimals


def value_base_ceil(amount: int, price_base: int, decimals: int) -> int:
    return mul_div_ceil(amount, price_base, 10**decimals)


def gas_cost_base(gas_units: int, gas_price_wei: int, native_price_base: int) -> int:
    """gas_units * gas_price_wei * native_price_base / 1e18, rounded up."""
    return mul_div_ceil(gas_units * gas_price_wei, native_price_base, WEI_PER_NATIVE)


def flash_premium(amount: int, premium_bps: int) -> int:
    """Aave 3.6 FlashLoanLogic charges `amount.percentMulCeil(premium)`."""
    return percent_mul_ceil(amount, premium_bps)


def swap_cost(
    collateral_value_base: int,
    costs: Costs,
    *,
    quoted_out_value_base: int | None = None,
) -> int:
    """Cost of selling the seized collateral.

    With a quote (value of the quoted output for exactly the seized amount), the cost is
    what the swap loses against the oracle; it can be negative when the DEX pays more.
    Without one, the flat and proportional estimates from `costs` apply.
    """
    if quoted_out_value_base is not None:
        return collateral_value_base - quoted_out_value_base + costs.swap_cost_base
    proportional = mul_div_ceil(collateral_value_base, costs.swap_cost_bps, PERCENTAGE_FACTOR)
    return costs.swap_cost_base + proportional


def profit(
    inputs: LiquidationInputs,
    outcome: LiquidationOutcome,
    costs: Costs,
    *,
    swap_out_debt: int | None = None,
) -> ProfitBreakdown:
    """Net profit of `outcome` in base currency.

    `swap_out_debt` is a quote, in debt-asset units, for selling exactly
    `outcome.collateral_seized`; it replaces the bps estimate in `costs`.
    """
    collateral_value = value_base_floor(
        outcome.collateral_seized, inputs.collateral_price_base, inputs.collateral_decimals
    )
    debt_value = value_base_ceil(outcome.debt_repaid, inputs.debt_price_base, inputs.debt_decimals)
    gas = gas_cost_base(costs.gas_units, costs.gas_price_wei, costs.native_price_base)
    premium = value_base_ceil(
        flash_premium(outcome.debt_repaid, costs.flash_premium_bps),
        inputs.debt_price_base,
        inputs.debt_decimals,
    )
    quoted_value = (
        None
        if swap_out_debt is None
        else value_base_floor(swap_out_debt, inputs.debt_price_base, inputs.debt_decimals)
    )
    swap = swap_cost(collateral_value, costs, quoted_out_value_base=quoted_value)
    gross = collateral_value - debt_value
    cost = gas + premium + swap
    return ProfitBreakdown(
        collateral_value_base=collateral_value,
        debt_value_base=debt_value,
        gross_profit_base=gross,
        gas_cost_base=gas,
        flash_premium_base=premium,
        swap_cost_base=swap,
        cost_base=cost,
        net_profit_base=gross - cost,
    )
