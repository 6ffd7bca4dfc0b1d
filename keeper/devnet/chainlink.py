"""`keeper devnet up --oracle chainlink`: the market priced the way mainnet prices it.

Each asset's AaveOracle source is Chainlink's `EACAggregatorProxy` over a `FluxAggregator` (both from
npm `@chainlink/contracts` 0.8.0, MIT, compiled here with solc-js 0.6.6 as on mainnet): the proxy is
what the oracle names, the aggregator is what emits `AnswerUpdated`, and the proxy can be re-pointed
(`proposeAggregator` + `confirmAggregator`, no event). One asset (`CAPO_SYMBOL`) is priced through the
project's `CapoPriceAdapter` (base feed x ratio, capped, no events). Optionally an L2-style
`PriceOracleSentinel` (Aave's) reads a sequencer-uptime feed (Chainlink's `MockV3Aggregator`).

Shocks go through the aggregator (a one-oracle round), or through the adapter's ratio for the CAPO asset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import ASSETS, Deployment
from keeper.devnet.build import AAVE_SETTINGS, Build, build_aave, build_own, compile_job
from keeper.devnet.chain import DevChain, send_as
from keeper.log import get_logger

log = get_logger(__name__)

CHAINLINK_SOURCES = [
    "@chainlink/contracts/src/v0.6/EACAggregatorProxy.sol",
    "@chainlink/contracts/src/v0.6/FluxAggregator.sol",
    "@chainlink/contracts/src/v0.6/tests/MockV3Aggregator.sol",
]
CHAINLINK_SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "istanbul",
    "outputSelection": AAVE_SETTINGS["outputSelection"],
}
CAPO_SYMBOL = "WBTC"  # priced as BTC/USD x ratio through the event-less adapter
CAPO_MAX_YEARLY_GROWTH_BPS = 1_000
RATIO_UNIT = 10**18
SEQUENCER_GRACE_S = 3_600  # Aave's usual L2 grace period
FLUX_TIMEOUT_S = 86_400
INT256_MAX = 2**255 - 1
ZERO = "0x0000000000000000000000000000000000000000"


def _sel(signature: str) -> bytes:
    return keccak(text=signature)[:4]


SEL_SUBMIT = _sel("submit(uint256,int256)")
SEL_LATEST_ROUND = _sel("latestRound()")
SEL_LATEST_ANSWER = _sel("latestAnswer()")
SEL_SET_RATIO = _sel("setRatio(uint256)")
SEL_PROPOSE = _sel("proposeAggregator(address)")
SEL_CONFIRM = _sel("confirmAggregator(address)")
SEL_UPDATE_ANSWER = _sel("updateAnswer(int256)")
SEL_SET_ASSET_SOURCES = _sel("setAssetSources(address[],address[])")
SEL_SET_SENTINEL = _sel("setPriceOracleSentinel(address)")


@dataclass(frozen=True)
class ChainlinkOracle:
    aggregators: dict[str, str]  # symbol -> FluxAggregator behind the proxy (emits AnswerUpdated)
    proxies: dict[str, str]  # symbol -> EACAggregatorProxy
    sources: dict[str, str]  # symbol -> what AaveOracle names: the proxy, or the CAPO adapter
    capo_symbol: str
    capo_adapter: str
    sequencer_feed: str | None = None
    sentinel: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ChainlinkOracle:
        return cls(**data)


async def build_chainlink() -> Build:
    return await compile_job("chainlink-0.8.0", CHAINLINK_SOURCES, CHAINLINK_SETTINGS, compiler="solc-0.6.6")


async def deploy_flux(chain: DevChain, cl: Build, description: str, answer: int) -> str:
    """A FluxAggregator with the deployer as its one oracle, answering `answer` in round 1."""
    flux = await chain.deploy(cl["FluxAggregator"], chain.sender, 0, FLUX_TIMEOUT_S, ZERO, 1, INT256_MAX, 8,
                              description)
    await chain.transact(flux.functions.changeOracles([], [chain.sender], [chain.sender], 1, 1, 0))
    await chain.transact(flux.functions.submit(1, answer))
    return flux.address


async def deploy_proxy(chain: DevChain, cl: Build, aggregator: str) -> str:
    proxy = await chain.deploy(cl["EACAggregatorProxy"], aggregator, ZERO)
    return proxy.address


async def deploy_chainlink_oracle(chain: DevChain, rpc: RpcClient, d: Deployment, *,
                                  sequencer: bool = False) -> Deployment:
    """Re-point every reserve of a freshly deployed market at Chainlink-shaped sources (same prices)."""
    cl, own = await build_chainlink(), await build_own(["contracts/CapoPriceAdapter.sol"])
    aggregators, proxies, sources = {}, {}, {}
    for spec in ASSETS:
        aggregators[spec.symbol] = await deploy_flux(chain, cl, f"{spec.symbol} / USD", spec.price_e8)
        proxies[spec.symbol] = await deploy_proxy(chain, cl, aggregators[spec.symbol])
        sources[spec.symbol] = proxies[spec.symbol]
    capo = await chain.deploy(own["CapoPriceAdapter"], proxies[CAPO_SYMBOL], 8, RATIO_UNIT,
                              CAPO_MAX_YEARLY_GROWTH_BPS, f"Capped {CAPO_SYMBOL} / USD")
    sources[CAPO_SYMBOL] = capo.address
    symbols = [s.symbol for s in ASSETS]
    data = SEL_SET_ASSET_SOURCES + encode(["address[]", "address[]"], [[d.assets[s] for s in symbols],
                                                                     [sources[s] for s in symbols]])
    await send_as(rpc, d.deployer, d.oracle, data, gas=1_000_000, what="setAssetSources")
    feed = sentinel = None
    if sequencer:
        feed, sentinel = await _deploy_sentinel(chain, rpc, cl, d)
    oracle = ChainlinkOracle(aggregators, proxies, sources, CAPO_SYMBOL, capo.address, feed, sentinel)
    log.info("devnet.chainlink_oracle", proxies=len(proxies), capo=CAPO_SYMBOL, sentinel=sentinel)
    return replace(d, feeds={**sources, "USD": d.feeds["USD"]}, chainlink=oracle.to_json())


async def _deploy_sentinel(chain: DevChain, rpc: RpcClient, cl: Build, d: Deployment) -> tuple[str, str]:
    """A sequencer-uptime feed (answer 0 = up, up since long ago) and Aave's PriceOracleSentinel on it."""
    aave = await build_aave()
    feed = await chain.deploy(cl["MockV3Aggregator"], 0, 0)
    await chain.transact(feed.functions.updateRoundData(1, 0, 1, 1))  # up since timestamp 1: no grace left
    sentinel = await chain.deploy(aave["PriceOracleSentinel"], d.pool_addresses_provider, feed.address,
                                  SEQUENCER_GRACE_S)
    await send_as(rpc, d.deployer, d.pool_addresses_provider,
                  SEL_SET_SENTINEL + encode(["address"], [sentinel.address]), gas=200_000,
                  what="setPriceOracleSentinel")
    return feed.address, sentinel.address


def oracle_of(d: Deployment) -> ChainlinkOracle:
    if d.chainlink is None:
        raise ValueError("this devnet was not started with --oracle chainlink")
    return ChainlinkOracle.from_json(d.chainlink)


async def _call_int(rpc: RpcClient, to: str, data: bytes) -> int:
    raw = await rpc.call("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
    v = int(raw, 16)
    return v - (1 << 256) if v >> 255 else v


async def submit_answer(rpc: RpcClient, d: Deployment, aggregator: str, answer: int) -> str:
    """A new one-oracle round on a FluxAggregator: it emits AnswerUpdated like mainnet's."""
    round_id = await _call_int(rpc, aggregator, SEL_LATEST_ROUND) + 1
    receipt = await send_as(rpc, d.deployer, aggregator, SEL_SUBMIT + encode(["uint256", "int256"],
                            [round_id, answer]), gas=400_000, what=f"submit on {aggregator}")
    return receipt["transactionHash"]


async def set_price(rpc: RpcClient, d: Deployment, symbol: str, price_e8: int) -> str:
    """Move `symbol`'s oracle price: a round on its aggregator, or the CAPO adapter's ratio."""
    o = oracle_of(d)
    if symbol == o.capo_symbol:
        base = await _call_int(rpc, o.proxies[symbol], SEL_LATEST_ANSWER)
        ratio = -(-price_e8 * RATIO_UNIT // base)  # rounded up: base x ratio lands on the price
        receipt = await send_as(rpc, d.deployer, o.capo_adapter, SEL_SET_RATIO + encode(["uint256"], [ratio]),
                                gas=100_000, what="setRatio on the CAPO adapter")
        return receipt["transactionHash"]
    return await submit_answer(rpc, d, await current_aggregator(rpc, o.proxies[symbol]), price_e8)


async def current_aggregator(rpc: RpcClient, proxy: str) -> str:
    raw = await rpc.call("eth_call", [{"to": proxy, "data": "0x" + _sel("aggregator()").hex()}, "latest"])
    return to_checksum_address("0x" + raw[-40:])


async def swap_aggregator(rpc: RpcClient, d: Deployment, chain: DevChain, symbol: str, answer: int) -> str:
    """Deploy a new aggregator answering `answer` and re-point `symbol`'s proxy at it (no proxy event)."""
    o = oracle_of(d)
    new = await deploy_flux(chain, await build_chainlink(), f"{symbol} / USD v2", answer)
    proxy = o.proxies[symbol]
    for sel in (SEL_PROPOSE, SEL_CONFIRM):
        await send_as(rpc, d.deployer, proxy, sel + encode(["address"], [new]), gas=200_000,
                      what="propose/confirm aggregator")
    return new


async def set_asset_source(rpc: RpcClient, d: Deployment, symbol: str, source: str) -> None:
    """Governance's way: AaveOracle.setAssetSources (emits AssetSourceUpdated)."""
    data = SEL_SET_ASSET_SOURCES + encode(["address[]", "address[]"], [[d.assets[symbol]], [source]])
    await send_as(rpc, d.deployer, d.oracle, data, gas=300_000, what="setAssetSources")


async def set_sequencer(rpc: RpcClient, d: Deployment, *, up: bool) -> None:
    """Report the sequencer down (1) or up (0); the grace period runs from an up report."""
    o = oracle_of(d)
    if o.sequencer_feed is None:
        raise ValueError("this devnet has no sequencer feed (launch with sequencer=True)")
    await send_as(rpc, d.deployer, o.sequencer_feed, SEL_UPDATE_ANSWER + encode(["int256"], [0 if up else 1]),
                  gas=200_000, what="sequencer feed update")
