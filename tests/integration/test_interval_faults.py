"""Issue 9's "Faults" done-when: the 1,000-borrower, 1-second-block WETH -30% scenario with 20% of
the keeper's RPC requests failing (HTTP 503, HTTP 429, JSON-RPC -32005 and 3-second stalls) through
a faulty proxy in front of the devnet.

The keeper's RPC and its simulation fork both go through the proxy, as a user's do through their
provider; the scenario's own reads and the price move go straight to the devnet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from scenario import launch_interval_market, run_price_shock

from keeper.devnet.proxy import FAULT_KINDS, RpcProxy
from keeper.devnet.stack import KEEPER_ADDRESS, Devnet


@pytest.fixture(scope="module")
async def thousand() -> AsyncIterator[Devnet]:
    dn = await launch_interval_market(borrowers=1_000, block_time=1)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.mark.slow
async def test_a_keeper_behind_a_provider_failing_20pct_of_requests_liquidates_everyone(
        thousand: Devnet) -> None:
    async with RpcProxy(thousand.url, fault_rate=0.2, seed=9, stall_s=3.0) as proxy:
        result = await run_price_shock(thousand, symbol="WETH", pct=-30, keeper_rpc_url=proxy.url,
                                       timeout_s=300)
        faults = proxy.stats()
    summary = result.summary()
    print("scenario:", summary, "proxy:", {k: faults[k] for k in
                                           ("requests", "http_requests", "faulted_http_requests", "faults")})
    assert set(faults["faults"]) == set(FAULT_KINDS)
    assert faults["faulted_http_requests"] >= 0.1 * faults["http_requests"]
    assert len(result.victims) >= 20
    assert not result.timed_out
    assert result.still_liquidatable == []
    assert result.reverted == []
    assert result.breaker_trips == 0
    assert result.metrics.breaker_open._value.get() == 0
    assert {liq.user for liq in result.liquidations} >= set(result.victims)
    assert {liq.liquidator for liq in result.liquidations} == {KEEPER_ADDRESS}
