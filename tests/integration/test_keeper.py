"""Issue 3: the whole path on a real Aave V3.6 market — index, health, fork simulation, liquidation."""

from __future__ import annotations

import asyncio
import tempfile
from decimal import Decimal
from pathlib import Path

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet.chain import send_as
from keeper.devnet.seed import Seeder, plan_position, shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet
from keeper.metrics import Metrics
from keeper.pipeline import CycleReport
from keeper.protocol.aave_v3 import (
    BALANCE_OF,
    GET_USER_ACCOUNT_DATA,
    UINT256_MAX,
    discover_market,
    read_account_health,
    read_prices,
    read_reserve_positions,
)
from keeper.protocol.abi import fn
from keeper.protocol.math import AccountReserve, account_data

WAD = 10**18


def _settings(dn: Devnet, **over):
    return load_settings(
        **{
            "rpc_url": dn.url,
            "pool_addresses_provider": dn.deployment.pool_addresses_provider,
            "private_key": KEEPER_DEV_KEY,
            "metrics_port": 0,
            "poll_interval_s": 0.1,
            "db_path": Path(tempfile.mkdtemp()) / "keeper.db",
            **over,
        }
    )


def _until_settled(app: App):
    def settled(report: CycleReport) -> bool:
        if report.dry_run or report.liquidatable == 0:
            return True
        # Nothing sent this cycle and nothing of ours still waiting for a block (1-second chains).
        waiting = app.sender is not None and bool(app.sender.registry.inflight)
        return not report.sent and not waiting

    return settled


async def _run(
    dn: Devnet, *, metrics: Metrics | None = None, until=None, **over
) -> list[CycleReport]:
    app = App(_settings(dn, **over), metrics)
    return await asyncio.wait_for(app.run(until=until or _until_settled(app), install_signals=False), 180)


async def _health(dn: Devnet, users: list[str]) -> dict:
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    block = await dn.rpc.block_number()
    return {h.user: h for h in await read_account_health(dn.rpc, market, users, block)}


async def test_keeper_health_equals_get_user_account_data_for_every_borrower(devnet: Devnet) -> None:
    market = await discover_market(devnet.rpc, devnet.deployment.pool_addresses_provider)
    users = [p.address for p in devnet.plans]
    block = await devnet.rpc.block_number()
    batched = await read_account_health(devnet.rpc, market, users, block, batch_size=64)
    direct = await devnet.rpc.batch(
        [
            (
                "eth_call",
                [{"to": market.pool, "data": "0x" + GET_USER_ACCOUNT_DATA.encode(u).hex()}, hex(block)],
            )
            for u in users
        ]
    )
    positions = await read_reserve_positions(devnet.rpc, market, users, block)
    prices = await read_prices(devnet.rpc, market, block)
    for h, raw in zip(batched, direct, strict=True):
        c, d, _, _lt, _ltv, hf = GET_USER_ACCOUNT_DATA.decode(bytes.fromhex(raw[2:]))
        assert (h.total_collateral_base, h.total_debt_base, h.health_factor_wad) == (c, d, hf)
        # And recomputed from the per-reserve balances with the ported GenericLogic, to the wei.
        local = account_data(
            [
                AccountReserve(
                    p.collateral,
                    p.debt,
                    prices[p.asset],
                    market.reserve(p.asset).decimals,
                    market.reserve(p.asset).ltv_bps,
                    market.reserve(p.asset).liquidation_threshold_bps,
                    p.collateral_enabled,
                    p.debt > 0,
                )
                for p in positions[h.user][0]
            ]
        )
        assert (local.total_collateral_base, local.total_debt_base, local.hf_wad) == (c, d, hf), h.user


async def test_every_position_a_shock_makes_liquidatable_is_liquidated(any_chain: Devnet) -> None:
    # Aave v3.6 on automine and on 1-second blocks, and v3.0 (stable debt, 50% per call above HF 0.95)
    chain = any_chain
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    users = [p.address for p in chain.plans]
    before = await _health(chain, users)
    victims = {u for u, h in before.items() if h.liquidatable}
    assert len(victims) >= 5
    metrics = Metrics()
    reports = await _run(chain, metrics=metrics, inclusion_wait_s=5 if chain.block_time else 0.5)
    after = await _health(chain, users)
    for u in victims:
        assert after[u].total_debt_base == 0 or after[u].health_factor_wad >= WAD, u
    assert sum(r.reverted for r in reports) == 0
    assert metrics.liquidations.labels(outcome="reverted")._value.get() == 0
    included = metrics.liquidations.labels(outcome="included")._value.get()
    assert included >= len(victims)
    assert sum(r.included for r in reports) <= included  # a late receipt is counted when it arrives
    assert metrics.profit_usd._value.get() > 0


async def test_predicted_profit_matches_the_fork_simulation(flavour_chain: Devnet) -> None:
    chain = flavour_chain
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    reports = await _run(chain, dry_run=True)
    pairs = [pair for r in reports for pair in r.opportunities]
    assert pairs
    for opp, sim in pairs:
        assert sim.success
        # Tolerance: 0.5% of the profit or $1, whichever is larger. The prediction and the
        # fork differ by gas (estimated vs used) and by interest accrued in the fork's block.
        tolerance = max(abs(sim.profit_base) // 200, 10**8)
        assert abs(opp.net_profit_base - sim.profit_base) <= tolerance, (opp, sim.profit_base)


async def test_dry_run_sends_nothing_and_counts_the_same_opportunities(any_chain: Devnet) -> None:
    chain = any_chain  # automine, and 1-second blocks
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    nonce = await chain.rpc.get_transaction_count(KEEPER_ADDRESS, "latest")
    block = await chain.rpc.block_number()
    metrics = Metrics()
    dry = await _run(chain, metrics=metrics, dry_run=True)
    assert await chain.rpc.get_transaction_count(KEEPER_ADDRESS, "latest") == nonce
    if chain.block_time is None:
        assert await chain.rpc.block_number() == block  # nothing at all reached the chain
    else:  # blocks keep coming; none holds a transaction
        for n in range(block + 1, await chain.rpc.block_number() + 1):
            assert (await chain.rpc.get_block(n))["transactions"] == [], n
    would = {s.opportunity.user for r in dry for s in r.dry_run}
    assert metrics.liquidations.labels(outcome="dry_run")._value.get() == len(would)
    assert metrics.liquidations.labels(outcome="sent")._value.get() == 0
    live = await _run(chain, until=lambda r: True)  # one live cycle at the same state
    assert {opp.user for opp, _ in live[0].opportunities} == would


async def _keeper_txs_to(dn: Devnet, to: str, from_block: int) -> int:
    """Transactions the keeper sent to `to` since `from_block` (its token approvals do not count)."""
    head = await dn.rpc.block_number()
    count = 0
    for n in range(from_block + 1, head + 1):
        block = await dn.rpc.get_block(n, True)
        count += sum(
            1
            for t in block["transactions"]
            if t["from"].lower() == KEEPER_ADDRESS.lower() and (t["to"] or "").lower() == to.lower()
        )
    return count


async def _open(dn: Devnet, index: int, collateral_usd: dict, debt_usd: dict):
    plan = plan_position(index, collateral_usd, debt_usd, salt=3)
    await Seeder(dn.rpc, dn.deployment).seed([plan], liquidity_usd=0)
    return plan


async def _debt(dn: Devnet, user: str, symbol: str) -> int:
    raw = await dn.rpc.eth_call(dn.deployment.debt_tokens[symbol], BALANCE_OF.encode(user))
    return BALANCE_OF.decode_one(raw)


async def test_liquidation_that_does_not_pay_after_gas_is_not_sent(bare_chain: Devnet) -> None:
    plan = await _open(bare_chain, 1, {"WBTC": 1_500}, {"USDC": 1_150})
    await shock(bare_chain.rpc, bare_chain.deployment, "WBTC", -3)
    # 300 gwei base fee: ~$300 of gas for a ~$50 bonus.
    await bare_chain.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(300 * 10**9)])
    await bare_chain.rpc.call("evm_mine", [])
    start = await bare_chain.rpc.block_number()
    metrics = Metrics()
    reports = await _run(bare_chain, metrics=metrics, until=lambda r: True, max_fee_gwei=Decimal(5000))
    assert reports[0].liquidatable == 1
    assert reports[0].skipped == {"unprofitable": 1}
    assert metrics.skipped.labels(reason="unprofitable")._value.get() == 1
    assert metrics.liquidations.labels(outcome="sent")._value.get() == 0
    assert await _keeper_txs_to(bare_chain, bare_chain.deployment.pool, start) == 0
    assert await _debt(bare_chain, plan.address, "USDC") > 0


async def test_position_with_about_1150_of_debt_is_closed_whole(bare_chain: Devnet) -> None:
    plan = await _open(bare_chain, 2, {"WBTC": 1_500}, {"USDC": 1_150})
    await shock(bare_chain.rpc, bare_chain.deployment, "WBTC", -3)
    reports = await _run(bare_chain)
    assert sum(r.included for r in reports) == 1
    assert await _debt(bare_chain, plan.address, "USDC") == 0


async def test_large_position_is_capped_at_half(bare_chain: Devnet) -> None:
    plan = await _open(bare_chain, 3, {"WETH": 200_000}, {"USDC": 160_000})
    await shock(bare_chain.rpc, bare_chain.deployment, "WETH", -4)
    debt = await _debt(bare_chain, plan.address, "USDC")
    reports = await _run(bare_chain, until=lambda r: True)  # one cycle: one liquidation
    assert reports[0].included == 1
    opp, _ = reports[0].opportunities[0]
    assert opp.debt_to_cover == UINT256_MAX
    repaid = debt - await _debt(bare_chain, plan.address, "USDC")
    assert abs(repaid - debt // 2) <= debt // 10**6, (debt, repaid)


async def test_a_liquidation_that_would_leave_dust_is_never_sent(bare_chain: Devnet) -> None:
    # WETH and LINK collateral against $10,000 USDC at HF ~0.96: the 50% cap on the WETH
    # side would leave under $1,000 of WETH, so only a smaller, dust-safe amount may go out.
    plan = await _open(bare_chain, 4, {"WETH": 6_000, "LINK": 7_600}, {"USDC": 10_000})
    await shock(bare_chain.rpc, bare_chain.deployment, "LINK", -12)
    health = (await _health(bare_chain, [plan.address]))[plan.address]
    assert 95 * WAD // 100 < health.health_factor_wad < WAD
    metrics = Metrics()
    reports = await _run(bare_chain, metrics=metrics)
    assert sum(r.reverted for r in reports) == 0
    assert metrics.simulations.labels(result="reverted")._value.get() == 0
    assert sum(r.included for r in reports) >= 1
    left = await _debt(bare_chain, plan.address, "USDC")
    assert left == 0 or left >= 1_000 * 10**6


async def test_emode_borrower_is_priced_with_its_category_bonus(bare_chain: Devnet) -> None:
    """A borrower in eMode is liquidated with the category's bonus (2%), not the reserve's (5%)."""
    d, rpc = bare_chain.deployment, bare_chain.rpc
    admin = [fn("PoolConfigurator", "setEModeCategory").encode(2, 8500, 8800, 10200, "majors"),
             fn("PoolConfigurator", "setAssetCollateralInEMode").encode(d.assets["WETH"], 2, True),
             fn("PoolConfigurator", "setAssetBorrowableInEMode").encode(d.assets["USDC"], 2, True)]
    for data in admin:
        await _send_from(bare_chain, d.deployer, d.pool_configurator, data)
    plan = await _open(bare_chain, 5, {"WETH": 10_000}, {"USDC": 7_500})
    await _send_from(bare_chain, plan.address, d.pool, fn("Pool", "setUserEMode").encode(2))
    # Borrow to 84% of the collateral: beyond the reserve's 82% LTV, within the category's 85%.
    borrow = fn("Pool", "borrow").encode(d.assets["USDC"], 900 * 10**6, 2, 0, plan.address)
    await _send_from(bare_chain, plan.address, d.pool, borrow)
    await shock(rpc, d, "WETH", -6)
    assert (await _health(bare_chain, [plan.address]))[plan.address].liquidatable
    reports = await _run(bare_chain, until=lambda r: True)
    ((opp, sim),) = reports[0].opportunities
    assert sim.success and reports[0].included == 1
    # The prediction (made with the category's bonus) is what the fork's balances say, to the wei.
    assert sim.balance_deltas[d.assets["WETH"]] == opp.expected_collateral_seized
    assert -sim.balance_deltas[d.assets["USDC"]] == opp.expected_debt_repaid
    # The bonus actually paid: collateral received is 2% over the debt repaid (less the protocol fee).
    collateral_value = sim.balance_deltas[d.assets["WETH"]] * (await _price(bare_chain, "WETH")) // 10**18
    repaid_value = -sim.balance_deltas[d.assets["USDC"]] * 10**8 // 10**6
    assert repaid_value * 1015 // 1000 < collateral_value < repaid_value * 1025 // 1000


async def _send_from(dn: Devnet, sender: str, to: str, data: bytes) -> None:
    await send_as(dn.rpc, sender, to, data, impersonate=True)


async def _price(dn: Devnet, symbol: str) -> int:
    from keeper.devnet.seed import get_price

    return await get_price(dn.rpc, dn.deployment, symbol)
