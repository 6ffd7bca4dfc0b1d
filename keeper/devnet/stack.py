"""The whole local stand-in for mainnet: Anvil + Aave V3 market + seeded borrowers + a funded keeper."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_abi import encode

from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import ASSETS, Deployment, deploy_market
from keeper.devnet.aave30 import deploy_market_v30, with_stable_debt
from keeper.devnet.anvil import Anvil, AnvilOptions
from keeper.devnet.chain import DevChain, send_as
from keeper.devnet.chainlink import deploy_chainlink_oracle
from keeper.devnet.seed import SEL_DEPOSIT, SEL_MINT, BorrowerPlan, Seeder, plan_borrowers
from keeper.devnet.uniswap import LAYOUTS, UniswapDeployment, deploy_uniswap
from keeper.exec.executor import deploy_executor
from keeper.log import get_logger

log = get_logger(__name__)

# Anvil's default account 1 (from the public test mnemonic): the devnet keeper's wallet.
KEEPER_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
KEEPER_DEV_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


@dataclass
class Devnet:
    anvil: Anvil
    deployment: Deployment
    plans: list[BorrowerPlan]
    rpc: RpcClient
    uniswap: UniswapDeployment
    executor: str  # the keeper's flash-loan executor (Liquidator), owned by KEEPER_ADDRESS
    timings: dict[str, float] = field(default_factory=dict)
    block_time: int | None = None  # seconds between blocks; None: automine

    @property
    def url(self) -> str:
        return self.anvil.url

    def keeper_env(self) -> dict[str, str]:
        """The KEEPER_ settings that point a keeper at this devnet."""
        return {
            "KEEPER_RPC_URL": self.url,
            "KEEPER_POOL_ADDRESSES_PROVIDER": self.deployment.pool_addresses_provider,
            "KEEPER_START_BLOCK": str(self.deployment.start_block),
            "KEEPER_CHAIN_ID": str(self.deployment.chain_id),
            # Anvil's public test key for account 1: a devnet wallet, never a real one.
            "KEEPER_PRIVATE_KEY": KEEPER_DEV_KEY,
            "KEEPER_UNISWAP_ROUTER": self.uniswap.router,
            "KEEPER_UNISWAP_QUOTER": self.uniswap.quoter,
            "KEEPER_EXECUTOR_ADDRESS": self.executor,
        }

    async def close(self) -> None:
        await self.rpc.close()
        await self.anvil.stop()


async def launch(
    *,
    borrowers: int = 200,
    seed: int = 7,
    port: int = 0,
    block_time: int | None = None,
    detach: bool = False,
    log_path: Path | None = None,
    state_cache: Path | None = None,
    fund_keeper_usd: int = 5_000_000,
    anvil_binary: Path | None = None,
    dex_depth_usd: int = 10_000_000,
    aave: str = "3.6",
    uniswap_layout: str = "default",
    oracle: str = "devnet",
    sequencer: bool = False,
    memory_states: int | None = None,
) -> Devnet:
    """Start Anvil, deploy the market, seed borrowers and fund the keeper's inventory.

    With `block_time`, blocks are mined on an interval like a real chain's; set-up
    still runs on automine so it finishes in seconds. `uniswap_layout` picks the pools
    (keeper.devnet.uniswap.LAYOUTS: "default", or "usdc_hub" with only USDC pairs and WETH/DAI).
    `oracle="chainlink"` prices the market through
    Chainlink proxies, aggregators and a CAPO-style adapter (keeper/devnet/chainlink.py); `sequencer`
    adds an L2 PriceOracleSentinel on a sequencer-uptime feed. `memory_states` caps the historical
    states Anvil keeps (`--prune-history`, none on disk): at 100,000 borrowers its default history
    took 18 GB of memory before seeding ended.
    """
    pools = LAYOUTS[uniswap_layout]
    extra = ["--prune-history", str(memory_states)] if memory_states else []
    anvil = Anvil(AnvilOptions(port=port, state_cache=state_cache, extra=extra), binary=anvil_binary,
                  detach=detach, log_path=log_path)
    await anvil.start()
    rpc = RpcClient(anvil.url, timeout_s=120, max_batch=500)
    await rpc.start()
    try:
        timings: dict[str, float] = {}
        chain = DevChain(anvil.url)
        t0 = time.monotonic()
        deployment = await (deploy_market_v30 if aave == "3.0" else deploy_market)(chain)
        if oracle == "chainlink":
            deployment = await deploy_chainlink_oracle(chain, rpc, deployment, sequencer=sequencer)
        await chain.close()
        timings["deploy_s"] = time.monotonic() - t0
        plans = plan_borrowers(borrowers, seed=seed)
        if aave == "3.0":
            plans = with_stable_debt(plans)
        t0 = time.monotonic()
        await Seeder(rpc, deployment).seed(plans)
        timings["seeding_s"] = time.monotonic() - t0
        await fund_inventory(rpc, deployment, KEEPER_ADDRESS, fund_keeper_usd)
        t0 = time.monotonic()
        uniswap = await deploy_uniswap(rpc, deployment, depth_usd=dex_depth_usd, pools=pools)
        executor = await deploy_executor(
            rpc, KEEPER_DEV_KEY, deployment.pool_addresses_provider, uniswap.router, poll_interval=0.02
        )
        timings["dex_and_executor_s"] = time.monotonic() - t0
        if block_time is not None:
            await rpc.call("evm_setIntervalMining", [int(block_time)])
        log.info(
            "devnet.ready",
            url=anvil.url,
            borrowers=len(plans),
            **{k: round(v, 2) for k, v in timings.items()},
        )
        return Devnet(anvil, deployment, plans, rpc, uniswap, executor, timings, block_time)
    except BaseException:
        await rpc.close()
        await anvil.stop()
        raise


async def fund_inventory(rpc: RpcClient, d: Deployment, holder: str, usd_each: int) -> None:
    """Give `holder` `usd_each` dollars of every listed asset (inventory-mode liquidations)."""
    await rpc.call("anvil_impersonateAccount", [holder])
    try:
        for spec in ASSETS:
            amount = usd_each * 10**spec.decimals * 10**8 // spec.price_e8
            token = d.assets[spec.symbol]
            if spec.symbol == "WETH":
                await rpc.call("anvil_setBalance", [holder, hex(amount + 100 * 10**18)])
                await send_as(rpc, holder, token, SEL_DEPOSIT, value=amount, gas=300_000)
            else:
                mint = SEL_MINT + encode(["address", "uint256"], [holder, amount])
                await send_as(rpc, d.deployer, token, mint, gas=300_000)
    finally:
        await rpc.call("anvil_stopImpersonatingAccount", [holder])


__all__ = ["KEEPER_ADDRESS", "KEEPER_DEV_KEY", "Devnet", "fund_inventory", "launch"]
