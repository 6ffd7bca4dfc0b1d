"""Deploy a current Aave V3 market (aave-v3-origin 3.6.0) on a devnet Anvil.

The market is built by the package's own batch contracts, in the order
`AaveV3BatchOrchestration.deployAaveV3` uses, from bytecode compiled here
(see build.py). Python plays the part of the Foundry script: it deploys each
batch, reads its report, links libraries and hands reports to the next batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from eth_utils import to_checksum_address

from keeper.devnet.build import Build, build_aave, build_own
from keeper.devnet.chain import DEPLOYER, DevChain
from keeper.log import get_logger

log = get_logger(__name__)

# Safe singleton factory (same runtime as the deterministic-deployment proxy).
# Aave's Create2Utils reverts MISSING_CREATE2_FACTORY without it.
CREATE2_FACTORY = "0x914d7Fec6aaC8cd542e72Bca78B30650d45643d7"
CREATE2_FACTORY_RUNTIME = (
    "0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe036016000816020823780358282"
    "34f58015156039578182fd5b8082525050506014600cf3"
)
MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
ZERO = "0x0000000000000000000000000000000000000000"
OWN_CONTRACTS = ["contracts/DevnetPriceFeed.sol", "contracts/Multicall3.sol"]


@dataclass(frozen=True, slots=True)
class AssetSpec:
    """One devnet listing: price from the issue's quotes, risk params near mainnet's."""

    symbol: str
    decimals: int
    price_e8: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int  # 10500 = 5% bonus
    protocol_fee_bps: int = 1000  # 10% of the bonus goes to the treasury
    reserve_factor_bps: int = 1000


# LTVs sit 1% under the liquidation threshold so seeded positions can start at HF 1.02.
ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec("WETH", 18, 2_920_50_000000, 8200, 8300, 10500),
    AssetSpec("WBTC", 8, 87_959_91_000000, 7700, 7800, 10500),
    AssetSpec("USDC", 6, 1_00_000000, 7700, 7800, 10450),
    AssetSpec("DAI", 18, 1_00_000000, 7600, 7700, 10500),
    AssetSpec("LINK", 18, 12_95_000000, 7000, 7100, 10700),
)
FLASH_LOAN_PREMIUM_BPS = 5
# optimal usage, base rate, slope1, slope2 (bps): a plain default curve.
RATE_DATA = (8000, 0, 400, 6000)


@dataclass(frozen=True)
class Deployment:
    """What a keeper, a test or the seeder needs to know about a devnet market."""

    rpc_url: str
    chain_id: int
    deployer: str
    pool_addresses_provider: str
    pool: str
    pool_configurator: str
    oracle: str
    data_provider: str
    acl_manager: str
    treasury: str
    multicall3: str
    assets: dict[str, str]  # symbol -> underlying
    a_tokens: dict[str, str]
    debt_tokens: dict[str, str]
    feeds: dict[str, str]  # symbol -> DevnetPriceFeed
    start_block: int
    deploy_block: int
    aave_version: str = "3.6"  # devnet flavour: "3.6" (aave-v3-origin) or "3.0" (@aave/core-v3 1.19.3)
    stable_debt_tokens: dict[str, str] = field(default_factory=dict)  # symbol -> StableDebtToken (3.0)
    chainlink: dict | None = None  # `--oracle chainlink`: keeper/devnet/chainlink.py's ChainlinkOracle

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Deployment:
        return cls(**data)


def _report(values: tuple | list, abi: list, fn: str) -> dict[str, str]:
    """Name the fields of a report struct returned by a batch getter."""
    out = next(e for e in abi if e.get("name") == fn)["outputs"][0]
    return {c["name"]: v for c, v in zip(out["components"], values, strict=True)}


async def deploy_market(chain: DevChain, *, rpc_url: str | None = None) -> Deployment:
    aave, own = await build_aave(), await build_own(OWN_CONTRACTS)
    start_block = await chain.w3.eth.block_number
    await chain.set_code(CREATE2_FACTORY, CREATE2_FACTORY_RUNTIME)
    await chain.set_code(MULTICALL3, "0x" + own["Multicall3"].deployed_bytecode)

    tokens, feeds = await _deploy_assets(chain, aave, own)
    core = await _deploy_core(chain, aave, feeds["WETH"], tokens["WETH"])
    a_tokens, debt_tokens = await _list_reserves(chain, aave, core, tokens, feeds)
    block = await chain.w3.eth.block_number
    deployment = Deployment(
        rpc_url=rpc_url or chain.url,
        chain_id=await chain.w3.eth.chain_id,
        deployer=DEPLOYER,
        pool_addresses_provider=core["poolAddressesProvider"],
        pool=core["poolProxy"],
        pool_configurator=core["poolConfiguratorProxy"],
        oracle=core["aaveOracle"],
        data_provider=core["protocolDataProvider"],
        acl_manager=core["aclManager"],
        treasury=core["treasury"],
        multicall3=MULTICALL3,
        assets=tokens,
        a_tokens=a_tokens,
        debt_tokens=debt_tokens,
        feeds=feeds,
        start_block=start_block,
        deploy_block=block,
    )
    log.info("devnet.market_deployed", pool=deployment.pool,
             provider=deployment.pool_addresses_provider, block=block)
    return deployment


async def _deploy_assets(chain: DevChain, aave: Build, own: Build) -> tuple[dict, dict]:
    tokens: dict[str, str] = {}
    feeds: dict[str, str] = {}
    for spec in ASSETS:
        if spec.symbol == "WETH":
            token = await chain.deploy(aave["WETH9"])
        else:
            token = await chain.deploy(aave["TestnetERC20"], spec.symbol, spec.symbol,
                                       spec.decimals, DEPLOYER)
        feed = await chain.deploy(own["DevnetPriceFeed"], 8, f"{spec.symbol} / USD", spec.price_e8)
        tokens[spec.symbol] = token.address
        feeds[spec.symbol] = feed.address
    # The market's reference currency (USD) needs a feed of its own for the getters batch.
    usd = await chain.deploy(own["DevnetPriceFeed"], 8, "USD / USD", 1_00_000000)
    feeds["USD"] = usd.address
    return tokens, feeds


async def _deploy_core(chain: DevChain, aave: Build, eth_feed: str, weth: str) -> dict[str, str]:
    """AaveV3BatchOrchestration.deployAaveV3, step by step."""
    libs1 = await chain.deploy(aave["AaveV3LibrariesBatch1"])
    libraries = _report(await libs1.functions.getLibrariesReport().call(),
                        libs1.abi, "getLibrariesReport")
    libs2 = await chain.deploy(aave["AaveV3LibrariesBatch2"],
                               libraries={"BorrowLogic": libraries["borrowLogic"]})
    libraries.update({k: v for k, v in _report(
        await libs2.functions.getLibrariesReport().call(), libs2.abi, "getLibrariesReport"
    ).items() if v != ZERO})
    linked = {name[0].upper() + name[1:]: addr for name, addr in libraries.items()}

    roles = (DEPLOYER, DEPLOYER, DEPLOYER)
    config = (
        eth_feed,  # networkBaseTokenPriceInUsdProxyAggregator
        eth_feed,  # marketReferenceCurrencyPriceInUsdProxyAggregator (replaced below)
        "Keeper Devnet Market",
        8,  # oracleDecimals
        ZERO,  # paraswapAugustusRegistry: no paraswap adapters
        ZERO, 0,  # no L2 sequencer feed
        8080,  # providerId
        b"\x00" * 32,  # salt
        weth,
        FLASH_LOAN_PREMIUM_BPS,
        ZERO, ZERO, ZERO, 0,  # incentives, treasury (deploy a collector), no partner
    )
    empty_report = (ZERO,) * 34

    setup = await chain.deploy(aave["AaveV3SetupBatch"], DEPLOYER, roles, config, empty_report)
    initial = _report(await setup.functions.getInitialReport().call(), setup.abi, "getInitialReport")
    provider = initial["poolAddressesProvider"]

    await chain.deploy(aave["AaveV3GettersBatchOne"], eth_feed, eth_feed)
    pool_batch = await chain.deploy(aave["AaveV3PoolBatch"], provider,
                                    initial["interestRateStrategy"], libraries=linked)
    pool_report = _report(await pool_batch.functions.getPoolReport().call(),
                          pool_batch.abi, "getPoolReport")
    periphery = await chain.deploy(aave["AaveV3PeripheryBatch"], DEPLOYER, config, provider,
                                   setup.address)
    periphery_report = _report(await periphery.functions.getPeripheryReport().call(),
                               periphery.abi, "getPeripheryReport")
    misc = await chain.deploy(aave["AaveV3MiscBatch"], False, provider, ZERO, 0)
    misc_report = _report(await misc.functions.getMiscReport().call(), misc.abi, "getMiscReport")

    await chain.transact(setup.functions.setupAaveV3Market(
        roles, config, pool_report["poolImplementation"],
        pool_report["poolConfiguratorImplementation"], periphery_report["aaveOracle"],
        periphery_report["rewardsControllerImplementation"], misc_report["priceOracleSentinel"],
    ))
    setup_report = _report(await setup.functions.getSetupReport().call(), setup.abi, "getSetupReport")

    getters2 = await chain.deploy(aave["AaveV3GettersBatchTwo"], setup_report["poolProxy"],
                                  DEPLOYER, weth, provider, False)
    getters2_report = _report(await getters2.functions.getGettersReportTwo().call(),
                              getters2.abi, "getGettersReportTwo")
    await chain.transact(setup.functions.setProtocolDataProvider(
        getters2_report["protocolDataProvider"]))
    await chain.transact(setup.functions.transferMarketOwnership(roles))

    treasury = periphery_report["revenueSplitter"]
    if treasury == ZERO:
        treasury = periphery_report["treasury"]
    tokens_batch = await chain.deploy(aave["AaveV3TokensBatch"], setup_report["poolProxy"],
                                      setup_report["rewardsControllerProxy"], treasury)
    tokens_report = _report(await tokens_batch.functions.getTokensReport().call(),
                            tokens_batch.abi, "getTokensReport")
    await chain.deploy(aave["AaveV3HelpersBatchOne"], setup_report["poolProxy"],
                       setup_report["poolConfiguratorProxy"], initial["interestRateStrategy"],
                       periphery_report["aaveOracle"], setup_report["rewardsControllerProxy"],
                       treasury, tokens_report["aToken"], tokens_report["variableDebtToken"])
    await chain.deploy(aave["AaveV3HelpersBatchTwo"], setup_report["poolProxy"],
                       setup_report["rewardsControllerProxy"], DEPLOYER)
    return {
        "poolAddressesProvider": provider,
        "poolProxy": setup_report["poolProxy"],
        "poolConfiguratorProxy": setup_report["poolConfiguratorProxy"],
        "aaveOracle": periphery_report["aaveOracle"],
        "protocolDataProvider": getters2_report["protocolDataProvider"],
        "aclManager": setup_report["aclManager"],
        "treasury": treasury,
        "aToken": tokens_report["aToken"],
        "variableDebtToken": tokens_report["variableDebtToken"],
    }


async def _list_reserves(chain: DevChain, aave: Build, core: dict, tokens: dict,
                         feeds: dict) -> tuple[dict, dict]:
    configurator = chain.contract(aave["PoolConfiguratorInstance"], core["poolConfiguratorProxy"])
    oracle = chain.contract(aave["AaveOracle"], core["aaveOracle"])
    pool = chain.contract(aave["PoolInstance"], core["poolProxy"])
    await chain.transact(oracle.functions.setAssetSources(
        [tokens[s.symbol] for s in ASSETS], [feeds[s.symbol] for s in ASSETS]))
    rate_data = _encode_rate_data(*RATE_DATA)
    inputs = [(
        core["aToken"], core["variableDebtToken"], tokens[s.symbol],
        f"Aave Devnet {s.symbol}", f"aDev{s.symbol}",
        f"Aave Devnet Variable Debt {s.symbol}", f"variableDebtDev{s.symbol}",
        b"", rate_data,
    ) for s in ASSETS]
    await chain.transact(configurator.functions.initReserves(inputs))
    for s in ASSETS:
        asset = tokens[s.symbol]
        await chain.transact(configurator.functions.configureReserveAsCollateral(
            asset, s.ltv_bps, s.liquidation_threshold_bps, s.liquidation_bonus_bps))
        await chain.transact(configurator.functions.setReserveBorrowing(asset, True))
        await chain.transact(configurator.functions.setReserveFlashLoaning(asset, True))
        await chain.transact(configurator.functions.setLiquidationProtocolFee(
            asset, s.protocol_fee_bps))
        await chain.transact(configurator.functions.setReserveFactor(asset, s.reserve_factor_bps))
    a_tokens, debt_tokens = {}, {}
    for s in ASSETS:
        data = await pool.functions.getReserveData(tokens[s.symbol]).call()
        a_tokens[s.symbol] = to_checksum_address(data[8])
        debt_tokens[s.symbol] = to_checksum_address(data[10])
    return a_tokens, debt_tokens


def _encode_rate_data(optimal: int, base: int, slope1: int, slope2: int) -> bytes:
    from eth_abi import encode

    return encode(["(uint16,uint32,uint32,uint32)"], [(optimal, base, slope1, slope2)])
