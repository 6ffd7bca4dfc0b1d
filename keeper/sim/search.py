"""Sizing by simulation alone, for pools whose revision the keeper does not know.

No ported rule is trusted: every (collateral, debt) pair is tried on the fork, and `debtToCover` is
searched there — "as much as allowed" (UINT256_MAX) and the whole reserve debt first; when both
revert (a dust rule, say), a bisection finds the largest amount that does not. The trial with the
highest measured profit wins; UINT256_MAX unless another is clearly (beyond gas noise) better.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from keeper.log import get_logger
from keeper.types import Opportunity, Position, ReservePosition, SimResult

log = get_logger(__name__)

UINT256_MAX = 2**256 - 1
ALL_ALLOWED_TOLERANCE_BASE = 10**8  # $1 in a USD market: gas noise between two runs


@dataclass(frozen=True, slots=True)
class ForkTrial:
    amount: int  # the debtToCover that was run
    result: SimResult  # measured on the fork: success, balance deltas, profit net of gas


Evaluate = Callable[[int], Awaitable[ForkTrial]]


async def search_amount(evaluate: Evaluate, debt_balance: int, *, max_steps: int = 16,
                        resolution_bps: int = 10) -> ForkTrial | None:
    """The most profitable debtToCover the pool accepts for one pair, or None if it accepts none.

    The bisection assumes what dust rules and close factors produce: below some amount the call
    goes through, above it (short of the whole debt) it reverts. It stops at `resolution_bps` of
    the debt or after `max_steps` runs.
    """
    trials = [await evaluate(UINT256_MAX)]
    if debt_balance > 0:
        trials.append(await evaluate(debt_balance))
    if not any(t.result.success for t in trials) and debt_balance > 1:
        lo, hi, found = 0, debt_balance, None
        step = max(1, debt_balance * resolution_bps // 10_000)
        for _ in range(max_steps):
            if hi - lo <= step:
                break
            mid = (lo + hi) // 2
            trial = await evaluate(mid)
            if trial.result.success:
                lo, found = mid, trial
            else:
                hi = mid
        if found is not None:
            trials.append(found)
    ok = [t for t in trials if t.result.success]
    if not ok:
        return None
    best = max(ok, key=lambda t: (t.result.profit_base, t.amount))
    # "All that is allowed" stays valid while interest accrues before the block; an exact amount can
    # leave a wei of debt (and revert on a dust rule). Prefer it unless the other is clearly better.
    if ok[0].amount == UINT256_MAX and best.result.profit_base - ok[0].result.profit_base <= max(
            abs(best.result.profit_base) // 1_000, ALL_ALLOWED_TOLERANCE_BASE):
        return ok[0]
    return best


def liquidation_pairs(position: Position) -> Iterator[tuple[ReservePosition, ReservePosition]]:
    """Every (collateral, debt) pair the borrower has: enabled collateral with a balance, any debt."""
    for col in position.reserves:
        if not (col.collateral_enabled and col.collateral > 0):
            continue
        for dbt in position.reserves:
            if dbt.debt > 0:
                yield col, dbt


def trial_opportunity(position: Position, collateral: ReservePosition, debt: ReservePosition,
                      amount: int, result: SimResult | None = None, gas_base: int = 0) -> Opportunity:
    """An Opportunity for one fork trial; with `result`, its amounts and profit are the fork's measured
    deltas (`gas_base`: the run's gas in the base currency)."""
    repaid, seized, net = min(amount, debt.debt), 0, 0
    if result is not None:
        deltas = result.balance_deltas
        if collateral.asset != debt.asset:  # same asset: only the net change is observable
            repaid = -deltas.get(debt.asset, 0)
            seized = deltas.get(collateral.asset, 0)
        net = result.profit_base
    return Opportunity(
        user=position.user, block=position.block, collateral_asset=collateral.asset,
        debt_asset=debt.asset, debt_to_cover=amount, expected_debt_repaid=repaid,
        expected_collateral_seized=seized, expected_protocol_fee=0, gross_profit_base=net + gas_base,
        cost_base=gas_base, net_profit_base=net,
    )


async def best_by_fork(position: Position, simulate: Callable[[Opportunity], Awaitable[SimResult]],
                       native_price_base: int) -> Opportunity | None:
    """The most profitable (pair, debtToCover) of `position` as measured by `simulate` on the fork;
    its amounts and profit are the fork's. None when the pool accepts no liquidation at all."""
    best: tuple[ReservePosition, ReservePosition, ForkTrial] | None = None
    for col, dbt in liquidation_pairs(position):
        async def evaluate(amount: int, col: ReservePosition = col, dbt: ReservePosition = dbt) -> ForkTrial:
            return ForkTrial(amount, await simulate(trial_opportunity(position, col, dbt, amount)))

        trial = await search_amount(evaluate, dbt.debt)
        if trial is not None and (best is None or trial.result.profit_base > best[2].result.profit_base):
            best = (col, dbt, trial)
    if best is None:
        return None
    col, dbt, trial = best
    gas_base = trial.result.gas_cost_wei * native_price_base // 10**18
    opp = trial_opportunity(position, col, dbt, trial.amount, trial.result, gas_base)
    log.info("strategy.fork_sized", borrower=position.user, collateral=col.asset, debt=dbt.asset,
             debt_to_cover=trial.amount, simulated_base=opp.net_profit_base)
    return opp
