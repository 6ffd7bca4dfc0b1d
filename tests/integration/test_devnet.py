"""Issue 2: the local stand-in for mainnet is a real Aave V3.6 market with planned borrowers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from keeper.devnet.chain import send_as
from keeper.devnet.seed import SPECS, Seeder, plan_position, quoted_prices, shock
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


async def _send(dn: Devnet, sender: str, to: str, data: bytes) -> dict:
    return await send_as(dn.rpc, sender, to, data, gas=1_500_000, require_success=False)


async def _health(dn: Devnet, users: list[str]) -> dict:
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    block = await dn.rpc.block_number()
    return {h.user: h for h in await read_account_health(dn.rpc, market, users, block)}


def _predicted_hf_wad(plan, prices: dict[str, int]) -> int:
    """HF from the plan's amounts at `prices` (interest ignored)."""
    weighted = sum(
        a * prices[s] // 10 ** SPECS[s].decimals * SPECS[s].liquidation_threshold_bps
        for s, a in plan.collateral.items()
    )
    debt = sum(a * prices[s] // 10 ** SPECS[s].decimals for s, a in plan.debt.items())
    return weighted * WAD // (debt * 10_000)


async def test_market_runs_pool_revision_10(devnet: Devnet) -> None:
    raw = await devnet.rpc.eth_call(devnet.deployment.pool, POOL_REVISION.encode())
    assert POOL_REVISION.decode_one(raw) == 10


async def test_market_lists_the_five_assets_at_the_quoted_prices(devnet: Devnet) -> None:
    market = await discover_market(devnet.rpc, devnet.deployment.pool_addresses_provider)
    assert {r.symbol for r in market.reserves} == {"WETH", "WBTC", "USDC", "DAI", "LINK"}
    prices = await devnet.rpc.eth_call(
        market.oracle, fn("AaveOracle", "getAssetsPrices").encode([r.asset for r in market.reserves])
    )
    by_symbol = dict(
        zip(
            [r.symbol for r in market.reserves],
            fn("AaveOracle", "getAssetsPrices").decode_one(prices),
            strict=True,
        )
    )
    assert by_symbol == {
        "WBTC": 87_959_91_000000,
        "WETH": 2_920_50_000000,
        "LINK": 12_95_000000,
        "USDC": 1_00_000000,
        "DAI": 1_00_000000,
    }


async def test_every_seeded_borrower_has_its_planned_position(devnet: Devnet) -> None:
    d, plans = devnet.deployment, devnet.plans
    assert len(plans) == 200
    assert any(p.collateral_usd(quoted_prices()) < 2_000 for p in plans), "no small positions"
    assert any(p.collateral_usd(quoted_prices()) > 500_000 for p in plans), "no large positions"
    calls = []
    for p in plans:
        for sym in SPECS:
            calls.append(
                (
                    "eth_call",
                    [{"to": d.a_tokens[sym], "data": "0x" + BALANCE_OF.encode(p.address).hex()}, "latest"],
                )
            )
            calls.append(
                (
                    "eth_call",
                    [{"to": d.debt_tokens[sym], "data": "0x" + BALANCE_OF.encode(p.address).hex()}, "latest"],
                )
            )
    results = iter(await devnet.rpc.batch(calls))
    for p in plans:
        for sym in SPECS:
            collateral, debt = int(next(results), 16), int(next(results), 16)
            planned_collateral, planned_debt = p.collateral.get(sym, 0), p.debt.get(sym, 0)
            # Supplied and borrowed amounts are exact; interest since seeding adds at most 1 bp.
            assert planned_collateral <= collateral <= planned_collateral * 10_001 // 10_000 + 1, (
                p.address,
                sym,
            )
            assert planned_debt <= debt <= planned_debt * 10_001 // 10_000 + 1, (p.address, sym)
    health = await _health(devnet, [p.address for p in plans])
    for p in plans:
        hf = health[p.address].health_factor_wad
        # Interest accrued since seeding can only lower HF, by far less than 1e-6.
        assert 102 * WAD // 100 - WAD // 10**6 <= hf <= 25 * WAD // 10, (p.address, hf)
        assert abs(hf - p.target_hf_bps * WAD // 10_000) <= WAD // 1000, (p.address, hf, p.target_hf_bps)


async def test_shock_makes_exactly_the_predicted_borrowers_liquidatable(chain: Devnet) -> None:
    plans = chain.plans
    old, new = await shock(chain.rpc, chain.deployment, "WETH", -15)
    assert new == old * 85 // 100
    prices = {**quoted_prices(), "WETH": new}
    predicted = {p.address: _predicted_hf_wad(p, prices) for p in plans}
    health = await _health(chain, [p.address for p in plans])
    # Leave a 0.01% band for interest around HF = 1; outside it the plan decides.
    below = {a for a, hf in predicted.items() if hf < WAD - WAD // 10_000}
    above = {a for a, hf in predicted.items() if hf > WAD + WAD // 10_000}
    liquidatable = {a for a, h in health.items() if h.liquidatable}
    assert below, "the shock should make some borrowers liquidatable"
    assert below <= liquidatable
    assert not (above & liquidatable)
    assert len(plans) - len(below) - len(above) <= 2


async def test_liquidation_call_on_a_shocked_borrower_succeeds(chain: Devnet) -> None:
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    health = await _health(chain, [p.address for p in chain.plans])
    victim = next(p for p in chain.plans if health[p.address].liquidatable and "WETH" in p.collateral)
    debt_sym = next(iter(victim.debt))
    d = chain.deployment
    await _send(chain, KEEPER_ADDRESS, d.assets[debt_sym], APPROVE.encode(d.pool, UINT256_MAX))
    receipt = await _send(
        chain,
        KEEPER_ADDRESS,
        d.pool,
        encode_liquidation_call(d.assets["WETH"], d.assets[debt_sym], victim.address, UINT256_MAX),
    )
    assert int(receipt["status"], 16) == 1
    after = (await _health(chain, [victim.address]))[victim.address]
    assert after.total_debt_base < health[victim.address].total_debt_base


async def _position(dn: Devnet, index: int, collateral_usd: dict, debt_usd: dict):
    plan = plan_position(index, collateral_usd, debt_usd)
    await Seeder(dn.rpc, dn.deployment).seed([plan], liquidity_usd=0)
    return plan


async def _liquidate(dn: Devnet, plan, collateral: str, debt: str, amount: int) -> dict:
    d = dn.deployment
    await _send(dn, KEEPER_ADDRESS, d.assets[debt], APPROVE.encode(d.pool, UINT256_MAX))
    data = encode_liquidation_call(d.assets[collateral], d.assets[debt], plan.address, amount)
    return await _send(dn, KEEPER_ADDRESS, d.pool, data)


async def _revert_reason(dn: Devnet, plan, collateral: str, debt: str, amount: int) -> str:
    d = dn.deployment
    await _send(dn, KEEPER_ADDRESS, d.assets[debt], APPROVE.encode(d.pool, UINT256_MAX))
    data = encode_liquidation_call(d.assets[collateral], d.assets[debt], plan.address, amount)

    with pytest.raises(ExecutionReverted) as e:
        await dn.rpc.eth_call(d.pool, data, "latest", from_=KEEPER_ADDRESS)
    return decode_revert(e.value.data)


async def _debt(dn: Devnet, plan, sym: str) -> int:
    raw = await dn.rpc.eth_call(dn.deployment.debt_tokens[sym], BALANCE_OF.encode(plan.address))
    return BALANCE_OF.decode_one(raw)


async def test_small_position_between_095_and_1_is_closed_whole(bare_chain: Devnet) -> None:
    plan = await _position(bare_chain, 1, {"WBTC": 1_500}, {"USDC": 1_150})
    await shock(bare_chain.rpc, bare_chain.deployment, "WBTC", -3)
    hf = (await _health(bare_chain, [plan.address]))[plan.address].health_factor_wad
    assert 95 * WAD // 100 < hf < WAD
    receipt = await _liquidate(bare_chain, plan, "WBTC", "USDC", UINT256_MAX)
    assert int(receipt["status"], 16) == 1
    assert await _debt(bare_chain, plan, "USDC") == 0


async def test_large_position_above_095_is_capped_at_half(bare_chain: Devnet) -> None:
    plan = await _position(bare_chain, 2, {"WETH": 100_000}, {"USDC": 80_000})
    await shock(bare_chain.rpc, bare_chain.deployment, "WETH", -5)
    hf = (await _health(bare_chain, [plan.address]))[plan.address].health_factor_wad
    assert 95 * WAD // 100 < hf < WAD
    before = await _debt(bare_chain, plan, "USDC")
    receipt = await _liquidate(bare_chain, plan, "WETH", "USDC", UINT256_MAX)
    assert int(receipt["status"], 16) == 1
    after = await _debt(bare_chain, plan, "USDC")
    repaid = before - after
    assert before // 2 - 10 <= repaid <= before // 2 + 10, (before, repaid)


async def test_liquidation_that_would_leave_dust_reverts(bare_chain: Devnet) -> None:
    # Debt under $2,000: no close factor, so a partial repayment is taken as asked.
    plan = await _position(bare_chain, 3, {"WETH": 2_600}, {"USDC": 1_900})
    await shock(bare_chain.rpc, bare_chain.deployment, "WETH", -15)
    assert (await _health(bare_chain, [plan.address]))[plan.address].liquidatable
    leaves_900 = 1_000 * 10**6  # repay $1,000 of $1,900: $900 of debt would be left
    assert await _revert_reason(bare_chain, plan, "WETH", "USDC", leaves_900) == "MustNotLeaveDust"
    receipt = await _liquidate(bare_chain, plan, "WETH", "USDC", UINT256_MAX)  # the whole debt is fine
    assert int(receipt["status"], 16) == 1


def _keeper(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keeper", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_devnet_up_prints_settings_and_down_leaves_no_process(tmp_path) -> None:
    from keeper.devnet.anvil import free_port

    port = free_port()
    up = _keeper("devnet", "up", "--port", str(port), "--borrowers", "20")
    assert up.returncode == 0, up.stderr
    settings = dict(line.split("=", 1) for line in up.stdout.splitlines() if line.startswith("KEEPER_"))
    assert settings["KEEPER_RPC_URL"] == f"http://127.0.0.1:{port}"
    assert settings["KEEPER_POOL_ADDRESSES_PROVIDER"].startswith("0x")
    from keeper.devnet import state

    pid = state.load(port)["pid"]
    try:
        os.kill(pid, 0)  # running
        down = _keeper("devnet", "down", "--port", str(port))
        assert down.returncode == 0, down.stderr
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert state.load(port) is None
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_devnet_with_block_time_mines_on_its_own() -> None:
    from keeper.devnet.stack import launch

    dn = await launch(borrowers=5, block_time=1)
    try:
        first = await dn.rpc.block_number()
        for _ in range(100):
            if await dn.rpc.block_number() >= first + 2:
                break
            await asyncio.sleep(0.1)
        assert await dn.rpc.block_number() >= first + 2
    finally:
        await dn.close()
