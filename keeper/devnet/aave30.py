"""Deploy an Aave V3.0 market (npm `@aave/core-v3@1.19.3`, POOL_REVISION 1) on a devnet Anvil.

The bytecode is the package's own precompiled Hardhat artifacts, read from node_modules at run
time (the core is BUSL-1.1: nothing here is committed). The steps follow aave-v3-deploy's order:
addresses provider and ACL, logic libraries, Pool and PoolConfigurator behind the provider's
proxies, oracle, data provider, token implementations, one rate strategy, then the reserves —
the same assets, feeds and risk parameters as the v3.6 devnet, plus stable-rate borrowing on
the stablecoins and WETH.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from eth_utils import keccak, to_checksum_address

from keeper.devnet.aave import (
    ASSETS,
    CREATE2_FACTORY,
    CREATE2_FACTORY_RUNTIME,
    FLASH_LOAN_PREMIUM_BPS,
    MULTICALL3,
    OWN_CONTRACTS,
    ZERO,
    Deployment,
    _deploy_assets,
)
from keeper.devnet.build import NODE_MODULES, Build, BuildError, build_aave, build_own
from keeper.devnet.chain import DEPLOYER, DevChain
from keeper.devnet.seed import BorrowerPlan
from keeper.log import get_logger

log = get_logger(__name__)

CORE_V3 = NODE_MODULES / "@aave" / "core-v3" / "artifacts" / "contracts"
ARTIFACTS = {
    "PoolAddressesProvider": "protocol/configuration/PoolAddressesProvider.sol",
    "ACLManager": "protocol/configuration/ACLManager.sol",
    "Pool": "protocol/pool/Pool.sol",
    "PoolConfigurator": "protocol/pool/PoolConfigurator.sol",
    "DefaultReserveInterestRateStrategy": "protocol/pool/DefaultReserveInterestRateStrategy.sol",
    "AaveOracle": "misc/AaveOracle.sol",
    "AaveProtocolDataProvider": "misc/AaveProtocolDataProvider.sol",
    "AToken": "protocol/tokenization/AToken.sol",
    "VariableDebtToken": "protocol/tokenization/VariableDebtToken.sol",
    "StableDebtToken": "protocol/tokenization/StableDebtToken.sol",
    **{lib: f"protocol/libraries/logic/{lib}.sol" for lib in (
        "SupplyLogic", "BorrowLogic", "LiquidationLogic", "EModeLogic", "BridgeLogic", "PoolLogic",
        "ConfiguratorLogic", "FlashLoanLogic")},
}
# Libraries with no links of their own; FlashLoanLogic links BorrowLogic, so it comes after.
PLAIN_LIBRARIES = ("SupplyLogic", "BorrowLogic", "LiquidationLogic", "EModeLogic", "BridgeLogic",
                   "PoolLogic", "ConfiguratorLogic")
# Reserves that allow stable-rate borrowing (seeded borrowers take some of their debt stable).
STABLE_RATE_ASSETS = frozenset({"USDC", "DAI", "WETH"})
RAY = 10**27
# optimal usage 80%, base 0, slope1 4%, slope2 60%; stable: slope1 0.5%, slope2 60%,
# base stable offset 2%, excess offset 5%, optimal stable/total debt 20% (mainnet-like).
RATE_STRATEGY = (80 * RAY // 100, 0, 4 * RAY // 100, 60 * RAY // 100, RAY // 200, 60 * RAY // 100,
                 2 * RAY // 100, 5 * RAY // 100, 20 * RAY // 100)
# The treasury receives the protocol's share of bonuses; on this devnet it is a plain address.
TREASURY = to_checksum_address(keccak(text="keeper-devnet-v3.0-treasury")[-20:])


@cache
def load_core_v30() -> Build:
    """The precompiled v3.0 artifacts the devnet needs, as a Build (never copied out of node_modules)."""
    contracts = {}
    for name, unit in ARTIFACTS.items():
        path: Path = CORE_V3 / unit / f"{name}.json"
        if not path.exists():
            raise BuildError(f"{path} is missing: run `make setup` (npm ci installs @aave/core-v3)")
        art = json.loads(path.read_text())
        contracts[f"{unit}:{name}"] = {
            "abi": art["abi"], "bytecode": art["bytecode"].removeprefix("0x"),
            "linkReferences": art.get("linkReferences") or {},
            "deployedBytecode": art["deployedBytecode"].removeprefix("0x"),
        }
    return Build(contracts)


async def deploy_market_v30(chain: DevChain, *, rpc_url: str | None = None) -> Deployment:
    core, tokens_build, own = load_core_v30(), await build_aave(), await build_own(OWN_CONTRACTS)
    start_block = await chain.w3.eth.block_number
    await chain.set_code(CREATE2_FACTORY, CREATE2_FACTORY_RUNTIME)
    await chain.set_code(MULTICALL3, "0x" + own["Multicall3"].deployed_bytecode)
    # Test tokens and feeds: the same contracts (and so the same listings) as the v3.6 devnet.
    tokens, feeds = await _deploy_assets(chain, tokens_build, own)

    provider = await chain.deploy(core["PoolAddressesProvider"], "Keeper Devnet v3.0", DEPLOYER)
    await chain.transact(provider.functions.setACLAdmin(DEPLOYER))
    acl = await chain.deploy(core["ACLManager"], provider.address)
    await chain.transact(provider.functions.setACLManager(acl.address))
    await chain.transact(acl.functions.addPoolAdmin(DEPLOYER))

    libraries = {name: (await chain.deploy(core[name])).address for name in PLAIN_LIBRARIES}
    libraries["FlashLoanLogic"] = (await chain.deploy(
        core["FlashLoanLogic"], libraries={"BorrowLogic": libraries["BorrowLogic"]})).address
    pool_impl = await chain.deploy(core["Pool"], provider.address, libraries=libraries)
    await chain.transact(pool_impl.functions.initialize(provider.address))
    await chain.transact(provider.functions.setPoolImpl(pool_impl.address))
    configurator_impl = await chain.deploy(core["PoolConfigurator"], libraries=libraries)
    await chain.transact(configurator_impl.functions.initialize(provider.address))
    await chain.transact(provider.functions.setPoolConfiguratorImpl(configurator_impl.address))
    pool = to_checksum_address(await provider.functions.getPool().call())
    configurator = chain.contract(core["PoolConfigurator"],
                                  await provider.functions.getPoolConfigurator().call())

    symbols = [s.symbol for s in ASSETS]
    oracle = await chain.deploy(core["AaveOracle"], provider.address, [tokens[s] for s in symbols],
                                [feeds[s] for s in symbols], ZERO, ZERO, 10**8)
    await chain.transact(provider.functions.setPriceOracle(oracle.address))
    data_provider = await chain.deploy(core["AaveProtocolDataProvider"], provider.address)
    await chain.transact(provider.functions.setPoolDataProvider(data_provider.address))
    await chain.transact(configurator.functions.updateFlashloanPremiumTotal(FLASH_LOAN_PREMIUM_BPS))

    a_tokens, debt_tokens, stable_tokens = await _list_reserves(chain, core, configurator, pool,
                                                                provider.address, tokens)
    block = await chain.w3.eth.block_number
    deployment = Deployment(
        rpc_url=rpc_url or chain.url, chain_id=await chain.w3.eth.chain_id, deployer=DEPLOYER,
        pool_addresses_provider=provider.address, pool=pool, pool_configurator=configurator.address,
        oracle=oracle.address, data_provider=data_provider.address, acl_manager=acl.address,
        treasury=TREASURY, multicall3=MULTICALL3, assets=tokens, a_tokens=a_tokens,
        debt_tokens=debt_tokens, feeds=feeds, start_block=start_block, deploy_block=block,
        aave_version="3.0", stable_debt_tokens=stable_tokens,
    )
    log.info("devnet.market_deployed", aave="3.0", pool=pool, provider=provider.address, block=block)
    return deployment


async def _list_reserves(chain: DevChain, core: Build, configurator, pool: str, provider: str,
                         tokens: dict[str, str]) -> tuple[dict, dict, dict]:
    a_impl = await chain.deploy(core["AToken"], pool)
    variable_impl = await chain.deploy(core["VariableDebtToken"], pool)
    stable_impl = await chain.deploy(core["StableDebtToken"], pool)
    strategy = await chain.deploy(core["DefaultReserveInterestRateStrategy"], provider, *RATE_STRATEGY)
    inputs = [(
        a_impl.address, stable_impl.address, variable_impl.address, s.decimals, strategy.address,
        tokens[s.symbol], TREASURY, ZERO,
        f"Aave Devnet {s.symbol}", f"aDev{s.symbol}",
        f"Aave Devnet Variable Debt {s.symbol}", f"variableDebtDev{s.symbol}",
        f"Aave Devnet Stable Debt {s.symbol}", f"stableDebtDev{s.symbol}", b"",
    ) for s in ASSETS]
    await chain.transact(configurator.functions.initReserves(inputs))
    for s in ASSETS:
        asset = tokens[s.symbol]
        await chain.transact(configurator.functions.configureReserveAsCollateral(
            asset, s.ltv_bps, s.liquidation_threshold_bps, s.liquidation_bonus_bps))
        await chain.transact(configurator.functions.setReserveBorrowing(asset, True))
        if s.symbol in STABLE_RATE_ASSETS:
            await chain.transact(configurator.functions.setReserveStableRateBorrowing(asset, True))
        await chain.transact(configurator.functions.setReserveFlashLoaning(asset, True))
        await chain.transact(configurator.functions.setLiquidationProtocolFee(asset, s.protocol_fee_bps))
        await chain.transact(configurator.functions.setReserveFactor(asset, s.reserve_factor_bps))
    pool_contract = chain.contract(core["Pool"], pool)
    a_tokens, debt_tokens, stable_tokens = {}, {}, {}
    for s in ASSETS:
        data = await pool_contract.functions.getReserveData(tokens[s.symbol]).call()
        a_tokens[s.symbol] = to_checksum_address(data[8])
        stable_tokens[s.symbol] = to_checksum_address(data[9])
        debt_tokens[s.symbol] = to_checksum_address(data[10])
    return a_tokens, debt_tokens, stable_tokens


def with_stable_debt(plans: list[BorrowerPlan], *, every: int = 3) -> list[BorrowerPlan]:
    """Every `every`-th borrower takes its debt in stable-rate reserves at the stable rate."""
    out = []
    for i, plan in enumerate(plans):
        stable = tuple(s for s in plan.debt if s in STABLE_RATE_ASSETS) if i % every == 1 else ()
        out.append(replace(plan, stable=stable) if stable else plan)
    return out
