"""The heatmap's predictions against the devnet: shock the price, then ask the pool who is liquidatable.

The heatmap reads every position at one block; the shock lands a few blocks (seconds) later, so
interest accrued in between can tip a borrower sitting exactly on the line. Borrowers whose health
factor after the shock is within 0.01% of 1.0 (the interest band) are excluded from the comparison
on both sides; every other borrower must be predicted exactly.
"""

from __future__ import annotations

import pytest

from keeper.config import load_settings
from keeper.devnet.seed import shock
from keeper.devnet.stack import Devnet
from keeper.errors import ConfigError
from keeper.health.heatmap import Heatmap
from keeper.heatmap_cmd import heatmap, render
from keeper.protocol.aave_v3 import discover_market, read_account_health

WAD = 10**18
BAND_WAD = WAD // 10_000  # 0.01% of HF 1


def _settings(dn: Devnet):
    env = {k.removeprefix("KEEPER_").lower(): v for k, v in dn.keeper_env().items()}
    return load_settings(**env, metrics_port=0)


async def _liquidatable_after_shock(dn: Devnet, asset: str, pct: int) -> tuple[set[str], set[str]]:
    """(liquidatable, within the interest band) among all seeded borrowers, read from the pool."""
    await shock(dn.rpc, dn.deployment, asset, pct)
    block = await dn.rpc.block_number()
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider, block)
    healths = await read_account_health(dn.rpc, market, [p.address for p in dn.plans], block)
    liquidatable = {h.user for h in healths if h.liquidatable}
    band = {h.user for h in healths if h.total_debt_base and abs(h.health_factor_wad - WAD) <= BAND_WAD}
    return liquidatable, band


async def _weth_heatmap(dn: Devnet) -> Heatmap:
    hm = await heatmap(_settings(dn), asset="weth", steps=25, step_bps=100)
    assert hm.unmodelled == ()  # the local replica agreed with getUserAccountData for every borrower
    assert hm.positions == len(dn.plans)
    return hm


async def test_positions_predicted_liquidatable_at_minus_15_percent_are_those_the_pool_reports(
        chain: Devnet) -> None:
    hm = await _weth_heatmap(chain)
    predicted = hm.users_liquidatable_at(-1500)
    assert hm.level(-1500).positions == len(predicted)
    assert len(predicted) >= 10  # the seeded book leans towards HF 1: a real test, not 0 == 0

    actual, band = await _liquidatable_after_shock(chain, "WETH", -15)

    assert predicted - band == actual - band
    assert len(band) <= 2, band  # the exclusion stays an exception


async def test_positions_owing_weth_are_predicted_liquidatable_when_weth_rises_15_percent(
        chain: Devnet) -> None:
    hm = await _weth_heatmap(chain)
    assert hm.debt_exposed > 0
    predicted = hm.users_liquidatable_at(1500)
    assert hm.level(1500).positions == len(predicted) >= 3

    actual, band = await _liquidatable_after_shock(chain, "WETH", 15)

    assert predicted - band == actual - band
    assert len(band) <= 2, band


async def test_heatmap_levels_are_priced_from_the_oracle_and_render(chain: Devnet) -> None:
    hm = await _weth_heatmap(chain)
    weth = chain.deployment.assets["WETH"]
    assert hm.asset == weth and hm.symbol == "WETH"
    old, new = await shock(chain.rpc, chain.deployment, "WETH", -15)
    assert (hm.price_base, hm.level(-1500).price_base) == (old, new)
    assert render(hm).row_count == 1 + 25 + 25  # both sides: some borrowers owe WETH


async def test_unknown_asset_is_a_config_error_naming_the_listed_ones(devnet: Devnet) -> None:
    with pytest.raises(ConfigError, match=r"unknown asset 'DOGE'.*WETH"):
        await heatmap(_settings(devnet), asset="DOGE", steps=5, step_bps=100)
