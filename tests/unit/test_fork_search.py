"""The fork search's logic (issue 12), with the fork's answers scripted: which amounts revert and
what each earns. The real fork is exercised in tests/integration/test_flavours.py."""

from __future__ import annotations

from keeper.sim.search import UINT256_MAX, ForkTrial, search_amount
from keeper.types import Opportunity, SimResult

OPP = Opportunity("0x" + "11" * 20, 1, "0x" + "22" * 20, "0x" + "33" * 20, 0, 0, 0, 0, 0, 0, 0)


def _scripted(ok_below: int | None, profit) -> tuple[list[int], object]:
    tried: list[int] = []

    async def evaluate(amount: int) -> ForkTrial:
        tried.append(amount)
        success = ok_below is None or amount <= ok_below
        return ForkTrial(amount, SimResult(OPP, success, 300_000, 0, {}, profit(amount) if success else 0))

    return tried, evaluate


async def test_all_allowed_wins_when_it_goes_through() -> None:
    tried, evaluate = _scripted(None, lambda a: 500 * 10**8)
    best = await search_amount(evaluate, 1_000)
    assert best is not None and best.amount == UINT256_MAX and tried == [UINT256_MAX, 1_000]


async def test_a_clearly_better_exact_amount_beats_all_allowed() -> None:
    _, evaluate = _scripted(None, lambda a: 500 * 10**8 if a == UINT256_MAX else 900 * 10**8)
    best = await search_amount(evaluate, 1_000)
    assert best is not None and best.amount == 1_000


async def test_largest_non_reverting_amount_is_found_by_bisection() -> None:
    # A dust-like rule: anything above 61,200 of 100,000 units reverts, the whole debt included.
    tried, evaluate = _scripted(61_200, lambda a: a * 10**6)
    best = await search_amount(evaluate, 100_000)
    assert best is not None and 61_200 - 100 <= best.amount <= 61_200
    assert len(tried) <= 2 + 16


async def test_nothing_is_returned_when_every_amount_reverts() -> None:
    _, evaluate = _scripted(-1, lambda a: 0)
    assert await search_amount(evaluate, 1_000) is None
