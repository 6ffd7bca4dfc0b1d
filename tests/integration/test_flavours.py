"""Issue 12: the keeper's health equals the pool's on both flavours (v3.6, and v3.0 with stable debt)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet.chain import send_as
from keeper.devnet.seed import shock
from keeper.devnet.stack import KEEPER_DEV_KEY, Devnet
from keeper.health.mirror_sync import bootstrap, catch_up, reconcile
from keeper.metrics import Metrics
from keeper.pipeline import CycleReport
from keeper.protocol.aave_v3 import GET_USER_ACCOUNT_DATA, discover_market, read_account_health
from keeper.protocol.abi import fn

BORROW = fn("Pool", "borrow")
REPAY = fn("Pool", "repay")
APPROVE = fn("ERC20", "approve")
UINT256_MAX = 2**256 - 1


async def _stable_activity(dn: Devnet) -> int:
    """On v3.0: stable borrowers borrow more at the stable rate (a new personal rate and timestamp)
    and repay part of it. Returns how many stable transactions succeeded."""
    d, done = dn.deployment, 0
    for plan in [p for p in dn.plans if p.stable][:6]:
        sym = plan.stable[0]
        amount = plan.debt[sym] // 50
        for data in (BORROW.encode(d.assets[sym], amount, 1, 0, plan.address),
                     REPAY.encode(d.assets[sym], amount // 3, 1, plan.address)):
            if data[:4] == REPAY.selector:
                await send_as(dn.rpc, plan.address, d.assets[sym], APPROVE.encode(d.pool, UINT256_MAX),
                              gas=200_000, impersonate=True)
            receipt = await send_as(dn.rpc, plan.address, d.pool, data, gas=1_500_000, impersonate=True,
                                    require_success=False)
            done += int(receipt["status"], 16)
    return done


async def test_mirror_health_equals_get_user_account_data_to_the_wei(flavour_chain: Devnet) -> None:
    dn = flavour_chain
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    users = [p.address for p in dn.plans]
    block = await dn.rpc.block_number()
    mirror = await bootstrap(dn.rpc, market, users, block)
    assert not await reconcile(dn.rpc, mirror, users, block)
    if dn.deployment.aave_version == "3.0":
        assert market.rules.stable_debt and market.rules.sizing == "v3.0"
        assert sum(1 for u in mirror.users.values() if u.stable) >= 10  # stable debt is mirrored
        assert await _stable_activity(dn) >= 10
    else:
        assert market.rules.sizing == "v3.3" and not market.rules.stable_debt
    # 45 days of interest (stable debt compounds at each user's own rate), and a price move.
    await dn.rpc.call("evm_increaseTime", [hex(45 * 86_400)])
    await dn.rpc.call("evm_mine", [])
    await shock(dn.rpc, dn.deployment, "WETH", -7)
    block = await dn.rpc.block_number()
    await catch_up(dn.rpc, mirror, block)
    drifts = await reconcile(dn.rpc, mirror, users, block)
    assert not drifts, drifts[:3]
    # The keeper's batched reads are the pool's own answer, field for field.
    batched = await read_account_health(dn.rpc, market, users[:50], block, batch_size=16)
    for h in batched:
        raw = await dn.rpc.eth_call(market.pool, GET_USER_ACCOUNT_DATA.encode(h.user), hex(block))
        assert GET_USER_ACCOUNT_DATA.decode(raw) == (
            h.total_collateral_base, h.total_debt_base, h.available_borrows_base,
            h.current_liquidation_threshold_bps, h.ltv_bps, h.health_factor_wad)




async def test_unknown_revision_liquidates_every_borrower_by_fork_search_alone(
        flavour_chain: Devnet, capsys: pytest.CaptureFixture[str]) -> None:
    """POOL_REVISION forced to 99 (a setting, not a chain edit): no ported rule is used; the keeper
    searches each pair and debtToCover on the fork, and still liquidates everyone, without a revert."""
    dn = flavour_chain
    await shock(dn.rpc, dn.deployment, "WETH", -15)
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    users = [p.address for p in dn.plans]
    block = await dn.rpc.block_number()
    victims = {h.user for h in await read_account_health(dn.rpc, market, users, block) if h.liquidatable}
    assert len(victims) >= 5
    settings = load_settings(rpc_url=dn.url, pool_addresses_provider=dn.deployment.pool_addresses_provider,
                             private_key=KEEPER_DEV_KEY, metrics_port=0, poll_interval_s=0.1,
                             db_path=Path(tempfile.mkdtemp()) / "keeper.db", pool_revision_override=99)
    metrics = Metrics()

    def settled(report: CycleReport) -> bool:
        return report.liquidatable == 0 or not report.sent

    reports = await asyncio.wait_for(App(settings, metrics).run(until=settled, install_signals=False), 300)
    block = await dn.rpc.block_number()
    after = {h.user: h for h in await read_account_health(dn.rpc, market, users, block)}
    for u in victims:
        assert after[u].total_debt_base == 0 or after[u].health_factor_wad >= 10**18, u
    assert sum(r.reverted for r in reports) == 0
    assert sum(r.included for r in reports) >= len(victims)
    out = capsys.readouterr().out
    assert "protocol.unknown_revision" in out and "unknown-revision:simulate" in out
    assert out.count("strategy.fork_sized") >= len(victims)
