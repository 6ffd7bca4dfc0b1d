"""Issue 12: the Aave V3.0 devnet flavour, and where the v3.0 rules differ from v3.6's on chain."""

from __future__ import annotations

import pytest

from keeper.devnet.chain import send_as
from keeper.devnet.seed import Seeder, plan_position, shock
from keeper.devnet.stack import KEEPER_ADDRESS, Devnet
from keeper.errors import ExecutionReverted
from keeper.protocol.aave_v3 import (
    BALANCE_OF,
    POOL_REVISION,
    UINT256_MAX,
    discover_market,
    encode_liquidation_call,
    read_account_health,
)
from keeper.protocol.abi import decode_revert, fn

WAD = 10**18
APPROVE = fn("ERC20", "approve")


async def _health(dn: Devnet, users: list[str]) -> dict:
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    block = await dn.rpc.block_number()
    return {h.user: h for h in await read_account_health(dn.rpc, market, users, block)}


async def _balance(dn: Devnet, token: str, holder: str) -> int:
    return BALANCE_OF.decode_one(await dn.rpc.eth_call(token, BALANCE_OF.encode(holder)))


async def _debt(dn: Devnet, holder: str, sym: str) -> int:
    d = dn.deployment
    total = await _balance(dn, d.debt_tokens[sym], holder)
    if d.stable_debt_tokens:
        total += await _balance(dn, d.stable_debt_tokens[sym], holder)
    return total


async def _stable_debt(dn: Devnet, holder: str) -> int:
    return sum([await _balance(dn, t, holder) for t in dn.deployment.stable_debt_tokens.values()])


async def _liquidate(dn: Devnet, user: str, collateral: str, debt: str, amount: int) -> dict:
    d = dn.deployment
    await send_as(dn.rpc, KEEPER_ADDRESS, d.assets[debt], APPROVE.encode(d.pool, UINT256_MAX), gas=200_000)
    data = encode_liquidation_call(d.assets[collateral], d.assets[debt], user, amount)
    return await send_as(dn.rpc, KEEPER_ADDRESS, d.pool, data, gas=1_500_000, require_success=False)


async def test_v30_market_runs_pool_revision_1(devnet30: Devnet) -> None:
    raw = await devnet30.rpc.eth_call(devnet30.deployment.pool, POOL_REVISION.encode())
    assert POOL_REVISION.decode_one(raw) == 1
    market = await discover_market(devnet30.rpc, devnet30.deployment.pool_addresses_provider)
    assert {r.symbol for r in market.reserves} == {"WETH", "WBTC", "USDC", "DAI", "LINK"}


async def test_v30_borrowers_marked_stable_hold_stable_rate_debt(devnet30: Devnet) -> None:
    d = devnet30.deployment
    stable = [p for p in devnet30.plans if p.stable]
    assert len(stable) >= 10
    for p in stable:
        for sym in p.debt:
            held = await _balance(devnet30, d.stable_debt_tokens[sym], p.address)
            variable = await _balance(devnet30, d.debt_tokens[sym], p.address)
            if sym in p.stable:
                assert held >= p.debt[sym] and variable == 0, (p.address, sym)
            else:
                assert held == 0 and variable >= p.debt[sym], (p.address, sym)


async def test_v30_liquidation_call_repays_stable_debt(chain30: Devnet) -> None:
    await shock(chain30.rpc, chain30.deployment, "WETH", -15)
    health = await _health(chain30, [p.address for p in chain30.plans])
    victim = next(p for p in chain30.plans
                  if p.stable and health[p.address].liquidatable and "WETH" in p.collateral)
    debt_sym = victim.stable[0]
    before = await _debt(chain30, victim.address, debt_sym)
    receipt = await _liquidate(chain30, victim.address, "WETH", debt_sym, UINT256_MAX)
    assert int(receipt["status"], 16) == 1
    assert await _debt(chain30, victim.address, debt_sym) < before
    after = (await _health(chain30, [victim.address]))[victim.address]
    assert after.total_debt_base < health[victim.address].total_debt_base


# --- the rules differ where they should ---------------------------------------------------------


async def _small_position_at_097(dn: Devnet, index: int):
    """$1,500 of WBTC against $1,150 of USDC, then WBTC -3%: HF about 0.98, under $2,000 each side."""
    plan = plan_position(index, {"WBTC": 1_500}, {"USDC": 1_150})
    await Seeder(dn.rpc, dn.deployment).seed([plan], liquidity_usd=0)
    await shock(dn.rpc, dn.deployment, "WBTC", -3)
    hf = (await _health(dn, [plan.address]))[plan.address].health_factor_wad
    assert 95 * WAD // 100 < hf < WAD
    return plan


async def test_v30_small_position_near_097_gets_at_most_half_per_call(bare_chain30: Devnet) -> None:
    plan = await _small_position_at_097(bare_chain30, 41)
    before = await _debt(bare_chain30, plan.address, "USDC")
    receipt = await _liquidate(bare_chain30, plan.address, "WBTC", "USDC", UINT256_MAX)
    assert int(receipt["status"], 16) == 1
    repaid = before - await _debt(bare_chain30, plan.address, "USDC")
    assert 0 < repaid <= (before + 1) // 2, (before, repaid)


async def test_v36_same_small_position_is_closed_whole(bare_chain: Devnet) -> None:
    plan = await _small_position_at_097(bare_chain, 41)
    receipt = await _liquidate(bare_chain, plan.address, "WBTC", "USDC", UINT256_MAX)
    assert int(receipt["status"], 16) == 1
    assert await _debt(bare_chain, plan.address, "USDC") == 0


async def _leave_ten_dollars(dn: Devnet, index: int) -> tuple[str, bytes]:
    """Under HF 0.95 (so 100% is allowed on both), ask to repay all but $10 of the USDC debt."""
    plan = plan_position(index, {"WETH": 1_400}, {"USDC": 1_100})
    await Seeder(dn.rpc, dn.deployment).seed([plan], liquidity_usd=0)
    await shock(dn.rpc, dn.deployment, "WETH", "-13.5")  # HF about 0.91, collateral still covers it
    hf = (await _health(dn, [plan.address]))[plan.address].health_factor_wad
    assert hf < 95 * WAD // 100
    debt = await _debt(dn, plan.address, "USDC")
    d = dn.deployment
    await send_as(dn.rpc, KEEPER_ADDRESS, d.assets["USDC"], APPROVE.encode(d.pool, UINT256_MAX), gas=200_000)
    return plan.address, encode_liquidation_call(d.assets["WETH"], d.assets["USDC"], plan.address,
                                                 debt - 10 * 10**6)


async def test_v30_liquidation_leaving_ten_dollars_of_debt_succeeds(bare_chain30: Devnet) -> None:
    user, data = await _leave_ten_dollars(bare_chain30, 42)
    receipt = await send_as(bare_chain30.rpc, KEEPER_ADDRESS, bare_chain30.deployment.pool, data,
                            gas=1_500_000, require_success=False)
    assert int(receipt["status"], 16) == 1
    left = await _debt(bare_chain30, user, "USDC")
    assert 10 * 10**6 <= left <= 10 * 10**6 + 10**4  # $10 plus a moment's interest


async def test_v36_liquidation_leaving_ten_dollars_reverts_with_dust(bare_chain: Devnet) -> None:
    _, data = await _leave_ten_dollars(bare_chain, 42)
    with pytest.raises(ExecutionReverted) as e:
        await bare_chain.rpc.eth_call(bare_chain.deployment.pool, data, "latest", from_=KEEPER_ADDRESS)
    assert decode_revert(e.value.data) == "MustNotLeaveDust"


def _nothing_left(report) -> bool:
    """Every liquidatable borrower is either gone or has no collateral left to seize."""
    return report.liquidatable == report.skipped.get("no_liquidatable_pair", 0) and not report.sent


async def test_v30_keeper_liquidates_everyone_on_an_interval_mined_chain_while_prices_move() -> None:
    """A v3.0 market mined every second like a real chain; LINK's price keeps moving while the keeper
    runs. Every borrower the WETH shock made liquidatable ends healthy or closed, stable debt included."""
    import asyncio
    import tempfile
    from pathlib import Path

    from keeper.app import App
    from keeper.config import load_settings
    from keeper.devnet.seed import set_price
    from keeper.devnet.stack import KEEPER_DEV_KEY, launch

    dn = await launch(borrowers=100, seed=3, aave="3.0", block_time=1)
    try:
        await shock(dn.rpc, dn.deployment, "WETH", -20)
        users = [p.address for p in dn.plans]
        before = await _health(dn, users)
        victims = {u for u, h in before.items() if h.liquidatable}
        stable_victims = {p.address for p in dn.plans if p.stable and p.address in victims}
        assert len(victims) >= 3 and stable_victims
        stable_before = {u: await _stable_debt(dn, u) for u in stable_victims}
        settings = load_settings(
            rpc_url=dn.url, pool_addresses_provider=dn.deployment.pool_addresses_provider,
            private_key=KEEPER_DEV_KEY, metrics_port=0, poll_interval_s=0.2,
            db_path=Path(tempfile.mkdtemp()) / "keeper.db")
        app = App(settings)

        async def move_link() -> None:
            price = 12_95_000000
            for step in range(30):
                price = price * (1000 + (7 if step % 2 else -6)) // 1000
                await set_price(dn.rpc, dn.deployment, "LINK", price)
                await asyncio.sleep(1.5)

        mover = asyncio.create_task(move_link())
        try:
            reports = await asyncio.wait_for(app.run(until=_nothing_left, install_signals=False), 240)
        finally:
            mover.cancel()
        after = await _health(dn, users)
        for u in victims:  # v3.0 has no deficit: a borrower whose collateral ran out keeps the rest as debt
            h = after[u]
            assert h.total_debt_base == 0 or h.health_factor_wad >= WAD or h.total_collateral_base == 0, u
        # A price can move between a simulation and its 1-second block: at most one lost race.
        assert sum(r.reverted for r in reports) <= 1
        assert all(after[u].total_debt_base < before[u].total_debt_base for u in victims)
        repaid_stable = [u for u, before in stable_before.items() if await _stable_debt(dn, u) < before]
        assert repaid_stable, "no stable-rate debt was repaid by a liquidation"
    finally:
        await dn.close()


def test_devnet_up_aave_30_then_keeper_scan_reads_revision_1(tmp_path) -> None:
    """`keeper devnet up --aave 3.0` from the command line, then `keeper scan` against it."""
    import os
    import signal
    import subprocess
    import sys

    from keeper.devnet import state
    from keeper.devnet.anvil import free_port

    def keeper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "keeper", *args], capture_output=True, text=True,
                              timeout=180, env={**os.environ, **(env or {})})

    port = free_port()
    up = keeper("devnet", "up", "--port", str(port), "--borrowers", "5", "--aave", "3.0")
    assert up.returncode == 0, up.stderr
    pid = state.load(port)["pid"]
    try:
        settings = dict(line.split("=", 1) for line in up.stdout.splitlines() if line.startswith("KEEPER_"))
        scan = keeper("scan", env={**settings, "KEEPER_DB_PATH": str(tmp_path / "k.db")})
        assert scan.returncode == 0, scan.stderr
        # Its eMode reads go through getEModeCategoryData: v3.6's getters would revert on this pool.
        assert "health factor" in scan.stdout and "eMode" not in scan.stderr
        assert state.load(port)["deployment"].aave_version == "3.0"
    finally:
        assert keeper("devnet", "down", "--port", str(port)).returncode == 0
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
