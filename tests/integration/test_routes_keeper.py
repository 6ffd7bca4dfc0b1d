"""Issue 11 at the keeper level: flash-loan routes over every pool the DEX has, and auto mode."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet.aave import ASSETS
from keeper.devnet.seed import Seeder, plan_position, shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet, launch
from keeper.devnet.uniswap import PoolSpec, align_pools, arbitrage_loop, deploy_uniswap
from keeper.exec.executor import deploy_executor
from keeper.metrics import Metrics
from keeper.pipeline import CycleReport
from keeper.protocol.aave_v3 import discover_market, read_account_health
from keeper.protocol.abi import event

WAD = 10**18
LIQUIDATION_CALL = event("Pool", "LiquidationCall")
LT_BPS = {s.symbol: s.liquidation_threshold_bps for s in ASSETS}


def _near_the_line(i: int, coll: str, debt: str, usd: int, hf_bps: int = 11_000):
    """A one-pair position at health factor `hf_bps` at the quoted prices."""
    return plan_position(i, {coll: usd}, {debt: usd * LT_BPS[coll] // hf_bps}, salt=11)


@pytest.fixture(scope="module")
async def hub_net() -> AsyncIterator[Devnet]:
    """Pools only between USDC and each asset, plus WETH/DAI ($100M a side, like mainnet's USDC
    pools: deep enough for the largest seeded position); blocks every second."""
    dn = await launch(borrowers=60, seed=11, uniswap_layout="usdc_hub", dex_depth_usd=100_000_000)
    try:
        extra = [_near_the_line(i, c, d, usd) for i, (c, d, usd) in enumerate((
            ("LINK", "DAI", 3_000), ("LINK", "DAI", 40_000), ("LINK", "DAI", 250_000),
            ("WBTC", "WETH", 5_000), ("WBTC", "WETH", 80_000), ("WBTC", "WETH", 300_000),
        ))]
        await Seeder(dn.rpc, dn.deployment).seed(extra, liquidity_usd=0)
        dn.plans.extend(extra)
        await dn.rpc.call("evm_setIntervalMining", [1])
        yield dn
    finally:
        await dn.close()


def _settings(dn: Devnet, key: str, executor: str, quoter: str, **over):
    return load_settings(
        rpc_url=dn.url, pool_addresses_provider=dn.deployment.pool_addresses_provider, private_key=key,
        metrics_port=0, poll_interval_s=0.1, executor_address=executor, uniswap_quoter=quoter,
        db_path=Path(tempfile.mkdtemp()) / "keeper.db", **over,
    )


async def _liquidations(dn: Devnet, from_block: int) -> list[dict]:
    logs = await dn.rpc.get_logs({"address": (await _market(dn)).pool, "topics": [LIQUIDATION_CALL.topic],
                                  "fromBlock": hex(from_block), "toBlock": "latest"})
    out = []
    for entry in logs:
        ev = LIQUIDATION_CALL.decode(entry)
        out.append({k: to_checksum_address(v) if isinstance(v, str) else v for k, v in ev.items()})
    return out


async def _market(dn: Devnet):
    return await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)


async def _liquidatable(dn: Devnet) -> list[str]:
    market = await _market(dn)
    users = [p.address for p in dn.plans]
    return [h.user for h in await read_account_health(dn.rpc, market, users, await dn.rpc.block_number())
            if h.liquidatable]


async def test_usdc_hub_market_is_liquidated_whole_in_flash_loan_mode_while_prices_fall(
    hub_net: Devnet,
) -> None:
    dn = hub_net
    sym = {a: s for s, a in dn.deployment.assets.items()}
    account = Account.from_key(keccak(text="keeper-test-wallet:usdc-hub"))
    await dn.rpc.call("anvil_setBalance", [account.address, hex(10 * WAD)])
    key = "0x" + account.key.hex().removeprefix("0x")
    executor = await deploy_executor(dn.rpc, key, dn.deployment.pool_addresses_provider, dn.uniswap.router,
                                     poll_interval=0.1)
    start = await dn.rpc.block_number()
    await shock(dn.rpc, dn.deployment, "LINK", -10)
    await shock(dn.rpc, dn.deployment, "WBTC", -10)
    await align_pools(dn.rpc, dn.deployment, dn.uniswap)
    metrics = Metrics()
    # Each step moves the oracle and then the pools 4% inside one block: a sale simulated just
    # before it misses its slippage bound on chain and reverts (a lost race, as on mainnet).
    # The breaker must not halt the run for those few.
    app = App(_settings(dn, key, executor, dn.uniswap.quoter, execution="flashloan", breaker_max_failures=10),
              metrics)
    falling = asyncio.Event()
    falling.set()

    async def prices_keep_falling() -> None:
        """More steps down while the keeper works: new positions cross the line mid-run."""
        for _ in range(3):
            await asyncio.sleep(3)
            await shock(dn.rpc, dn.deployment, "LINK", -4)
            await shock(dn.rpc, dn.deployment, "WBTC", -4)
        falling.clear()

    idle = 0

    def done(report: CycleReport) -> bool:
        nonlocal idle
        idle = 0 if report.sent or falling.is_set() else idle + 1
        return not falling.is_set() and (report.liquidatable == 0 or idle >= 8)

    async with asyncio.TaskGroup() as tg:
        # Searchers pull the pools after the oracle and after the keeper's own sales.
        tg.create_task(arbitrage_loop(dn.rpc, dn.deployment, dn.uniswap, app.stop_event, period_s=0.3))
        tg.create_task(prices_keep_falling())
        try:
            await asyncio.wait_for(app.run(until=done, install_signals=False), 300)
        finally:
            app.request_stop()
    assert await _liquidatable(dn) == []
    liquidated = await _liquidations(dn, start)
    assert liquidated and all(ev["liquidator"] == executor for ev in liquidated)
    pairs = {(sym[ev["collateralAsset"]], sym[ev["debtAsset"]]) for ev in liquidated}
    assert {("LINK", "DAI"), ("WBTC", "WETH")} <= pairs, pairs
    assert metrics.skipped.labels(reason="no_route")._value.get() == 0
    assert metrics.liquidations.labels(outcome="reverted")._value.get() <= 3
    # Realised profit of every included liquidation, whenever it settled (on 1-second blocks most
    # land after their cycle's inclusion wait, so the cycle reports alone can miss them).
    assert metrics.profit_usd._value.get() > 0


async def test_auto_mode_uses_inventory_where_no_route_exists_and_flash_loans_where_one_does(
    chain: Devnet,
) -> None:
    dn = chain
    await shock(dn.rpc, dn.deployment, "WETH", -15)
    # A DEX with only WETH/USDC and DAI/USDC: WBTC and LINK cannot be bought or sold on it.
    uni = await deploy_uniswap(dn.rpc, dn.deployment, depth_usd=10_000_000,
                               pools=(PoolSpec("WETH", "USDC", 500), PoolSpec("DAI", "USDC", 100)))
    routable = {dn.deployment.assets[s] for s in ("WETH", "USDC", "DAI")}
    executor = await deploy_executor(dn.rpc, KEEPER_DEV_KEY, dn.deployment.pool_addresses_provider,
                                     uni.router, poll_interval=0.02)
    start = await dn.rpc.block_number()
    victims = await _liquidatable(dn)
    assert victims
    metrics = Metrics()
    app = App(_settings(dn, KEEPER_DEV_KEY, executor, uni.quoter, execution="auto"), metrics)
    idle = 0

    def done(report: CycleReport) -> bool:
        nonlocal idle
        idle = 0 if report.sent else idle + 1
        return report.liquidatable == 0 or idle >= 6

    await asyncio.wait_for(app.run(until=done, install_signals=False), 240)
    assert await _liquidatable(dn) == []
    liquidated = await _liquidations(dn, start)
    by_flash = [ev for ev in liquidated if ev["liquidator"] == executor]
    from_inventory = [ev for ev in liquidated if ev["liquidator"] == KEEPER_ADDRESS]
    assert by_flash and from_inventory and len(by_flash) + len(from_inventory) == len(liquidated)
    # Flash loans only where the collateral could be sold; the wallet paid wherever it could not
    # (and also where a route exists but the flash loan did not pay: too shallow, or its premium
    # and extra gas ate a small position's profit).
    assert all({ev["collateralAsset"], ev["debtAsset"]} <= routable for ev in by_flash)
    no_route_liquidations = [ev for ev in liquidated if ev["collateralAsset"] != ev["debtAsset"]
                             and not {ev["collateralAsset"], ev["debtAsset"]} <= routable]
    assert no_route_liquidations and all(ev["liquidator"] == KEEPER_ADDRESS for ev in no_route_liquidations)
    no_route = {s.labels["pair"] for m in metrics.registry.collect() if m.name == "keeper_no_route"
                for s in m.samples if s.value > 0}
    assert no_route and all({"WBTC", "LINK"} & set(p.split("/")) for p in no_route), no_route
