"""Issue 9's "done when": 1,000 borrowers, a block every second, the keeper already running, WETH -30%."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from scenario import launch_interval_market, run_price_shock

from keeper.devnet.stack import KEEPER_ADDRESS, Devnet


@pytest.fixture(scope="module")
async def thousand() -> AsyncIterator[Devnet]:
    dn = await launch_interval_market(borrowers=1_000, block_time=1)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.mark.slow
async def test_a_keeper_running_on_one_second_blocks_liquidates_everyone_a_30pct_fall_exposes(
        thousand: Devnet) -> None:
    result = await run_price_shock(thousand, symbol="WETH", pct=-30, timeout_s=300)
    print("scenario:", result.summary())  # the closing note's figure: blocks from shock to last liquidation
    assert len(result.victims) >= 20
    assert not result.timed_out
    assert result.still_liquidatable == []
    assert result.reverted == []
    assert result.breaker_trips == 0
    assert result.metrics.breaker_open._value.get() == 0
    # The keeper did the work: every victim was liquidated by it, none by anyone else.
    assert {liq.user for liq in result.liquidations} >= set(result.victims)
    assert {liq.liquidator for liq in result.liquidations} == {KEEPER_ADDRESS}
