"""Pick the (collateral, debt) pair and debtToCover that earn the most from one borrower.

Pure and deterministic: the same position, reserves and costs give the same answer.
Every returned sizing has been run through the ported LiquidationLogic and does not
revert (in particular never with MustNotLeaveDust) at the position's block.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from keeper.protocol.math import (
    UINT256_MAX,
    LiquidationInputs,
    LiquidationOutcome,
    largest_debt_leaving_min_leftover,
    liquidation_outcome,
    max_debt_to_cover,
)
from keeper.strategy.profit import Costs, ProfitBreakdown, profit
from keeper.types import Address, Opportunity, Position, Reserve, ReservePosition


@dataclass(frozen=True, slots=True)
class Candidate:
    """One evaluated sizing of one pair."""

    collateral_asset: Address
    debt_asset: Address
    debt_to_cover: int  # what to pass to liquidationCall; UINT256_MAX = all that is allowed
    inputs: LiquidationInputs
    outcome: LiquidationOutcome
    profit: ProfitBreakdown


def _by_address(items: Iterable[Reserve]) -> dict[str, Reserve]:
    return {r.asset.lower(): r for r in items}


def _price(position: Position, asset: Address) -> int:
    for key, price in position.prices_base.items():
        if key.lower() == asset.lower():
            return price
    return 0


def _liquidatable_reserve(reserve: Reserve) -> bool:
    # validateLiquidationCall: both reserves active and unpaused; frozen does not matter.
    return reserve.active and not reserve.paused


def liquidation_inputs(
    position: Position,
    collateral: ReservePosition,
    debt: ReservePosition,
    collateral_reserve: Reserve,
    debt_reserve: Reserve,
    *,
    bonus_bps: int | None = None,
    sizing: str = "v3.3",
) -> LiquidationInputs:
    """Inputs for the ported liquidationCall; `bonus_bps` overrides the reserve's (eMode);
    `sizing` is the pool's rule set (Market.rules.sizing)."""
    return LiquidationInputs(
        hf_wad=position.health.health_factor_wad,
        total_collateral_base=position.health.total_collateral_base,
        total_debt_base=position.health.total_debt_base,
        collateral_balance=collateral.collateral,
        debt_balance=debt.debt,
        collateral_price_base=_price(position, collateral.asset),
        debt_price_base=_price(position, debt.asset),
        collateral_decimals=collateral_reserve.decimals,
        debt_decimals=debt_reserve.decimals,
        bonus_bps=collateral_reserve.liquidation_bonus_bps if bonus_bps is None else bonus_bps,
        protocol_fee_bps=collateral_reserve.liquidation_protocol_fee_bps,
        collateral_enabled=collateral.collateral_enabled,
        sizing=sizing,
    )


def candidate_amounts(inputs: LiquidationInputs) -> tuple[int, ...]:
    """debtToCover values worth trying: all allowed, full debt, largest dust-safe partial.

    Amounts at or above the close-factor cap behave the same, so they collapse into
    UINT256_MAX, which also keeps a full close full when interest accrues before mining.
    """
    outcome = liquidation_outcome(inputs, UINT256_MAX)
    cap = outcome.max_liquidatable_debt
    raw = (
        UINT256_MAX,
        inputs.debt_balance,
        max_debt_to_cover(inputs),
        largest_debt_leaving_min_leftover(inputs),
    )
    return tuple(sorted({UINT256_MAX if a >= cap else a for a in raw if a > 0}))


def evaluate_pair(
    position: Position,
    collateral: ReservePosition,
    debt: ReservePosition,
    collateral_reserve: Reserve,
    debt_reserve: Reserve,
    costs: Costs,
    *,
    bonus_bps: int | None = None,
    sizing: str = "v3.3",
) -> list[Candidate]:
    """All non-reverting sizings of one pair."""
    inputs = liquidation_inputs(
        position, collateral, debt, collateral_reserve, debt_reserve, bonus_bps=bonus_bps, sizing=sizing
    )
    found: list[Candidate] = []
    for amount in candidate_amounts(inputs):
        outcome = liquidation_outcome(inputs, amount)
        if outcome.reverts:
            continue
        found.append(
            Candidate(
                collateral_asset=collateral.asset,
                debt_asset=debt.asset,
                debt_to_cover=amount,
                inputs=inputs,
                outcome=outcome,
                profit=profit(inputs, outcome, costs),
            )
        )
    return found


def _rank(c: Candidate) -> tuple[int, str, str, int]:
    return (
        -c.profit.net_profit_base,
        c.collateral_asset.lower(),
        c.debt_asset.lower(),
        c.debt_to_cover,
    )


def evaluate_position(
    position: Position,
    reserves: Iterable[Reserve],
    costs: Costs,
    *,
    bonus_overrides_bps: Mapping[Address, int] | None = None,
    sizing: str = "v3.3",
) -> list[Candidate]:
    """Every non-reverting sizing of every liquidatable pair, best net profit first.

    `bonus_overrides_bps` maps a collateral asset to the bonus to use instead of the
    reserve's, e.g. the borrower's eMode category bonus for assets in that category.
    """
    if not position.health.liquidatable:
        return []
    by_asset = _by_address(reserves)
    overrides = {k.lower(): v for k, v in (bonus_overrides_bps or {}).items()}
    collaterals = [p for p in position.reserves if p.collateral_enabled and p.collateral > 0]
    debts = [p for p in position.reserves if p.debt > 0]
    found: list[Candidate] = []
    for col in collaterals:
        col_reserve = by_asset.get(col.asset.lower())
        for dbt in debts:
            dbt_reserve = by_asset.get(dbt.asset.lower())
            if col_reserve is None or dbt_reserve is None:
                continue
            if not (_liquidatable_reserve(col_reserve) and _liquidatable_reserve(dbt_reserve)):
                continue
            if _price(position, col.asset) == 0 or _price(position, dbt.asset) == 0:
                continue
            found += evaluate_pair(
                position,
                col,
                dbt,
                col_reserve,
                dbt_reserve,
                costs,
                bonus_bps=overrides.get(col.asset.lower()),
                sizing=sizing,
            )
    return sorted(found, key=_rank)


def to_opportunity(position: Position, candidate: Candidate) -> Opportunity:
    p, o = candidate.profit, candidate.outcome
    return Opportunity(
        user=position.user,
        block=position.block,
        collateral_asset=candidate.collateral_asset,
        debt_asset=candidate.debt_asset,
        debt_to_cover=candidate.debt_to_cover,
        expected_debt_repaid=o.debt_repaid,
        expected_collateral_seized=o.collateral_seized,
        expected_protocol_fee=o.protocol_fee,
        gross_profit_base=p.gross_profit_base,
        cost_base=p.cost_base,
        net_profit_base=p.net_profit_base,
    )


def best_opportunity(
    position: Position,
    reserves: Iterable[Reserve],
    costs: Costs,
    *,
    bonus_overrides_bps: Mapping[Address, int] | None = None,
    min_net_profit_base: int = 1,
    sizing: str = "v3.3",
) -> Opportunity | None:
    """The most profitable non-reverting liquidation, or None below `min_net_profit_base`."""
    ranked = evaluate_position(position, reserves, costs, bonus_overrides_bps=bonus_overrides_bps,
                               sizing=sizing)
    if not ranked or ranked[0].profit.net_profit_base < min_net_profit_base:
        return None
    return to_opportunity(position, ranked[0])
