"""Pool discovery and route search on a real Uniswap V3 (factory, pools, QuoterV2) on Anvil."""

from __future__ import annotations

from keeper.devnet.aave import ASSETS
from keeper.devnet.chain import send_as
from keeper.devnet.seed import get_price
from keeper.devnet.stack import Devnet
from keeper.devnet.uniswap import PoolSpec, add_pools, deploy_uniswap
from keeper.protocol.abi import fn
from keeper.protocol.uniswap_graph import RouteFinder, discover_pools, factory_of
from keeper.protocol.uniswap_v3 import quote_paths
from keeper.strategy.routes import best_net_route

CREATE_POOL = fn("UniswapV3Factory", "createPool")
DECIMALS = {s.symbol: s.decimals for s in ASSETS}


def _finder(dn: Devnet, quoter: str, **kw) -> RouteFinder:
    return RouteFinder(dn.rpc, quoter, list(dn.deployment.assets.values()), **kw)


async def _prices(dn: Devnet) -> tuple[dict[str, int], dict[str, int]]:
    assets = dn.deployment.assets
    prices = {assets[s]: await get_price(dn.rpc, dn.deployment, s) for s in assets}
    return prices, {assets[s]: DECIMALS[s] for s in assets}


async def test_discovery_finds_exactly_the_live_pools_between_reserves(bare_chain: Devnet) -> None:
    dn = bare_chain
    factory = await factory_of(dn.rpc, dn.uniswap.quoter)
    assert factory == dn.uniswap.factory
    graph = await discover_pools(dn.rpc, factory, list(dn.deployment.assets.values()),
                                 await dn.rpc.block_number())
    assert {(e.address, e.fee) for e in graph.edges} == {(p.address, p.fee) for p in dn.uniswap.pools}
    assert all(e.liquidity > 0 for e in graph.edges)


async def test_pool_created_refreshes_the_graph_and_an_empty_pool_is_no_route(bare_chain: Devnet) -> None:
    dn = bare_chain
    link, dai = dn.deployment.assets["LINK"], dn.deployment.assets["DAI"]
    finder = _finder(dn, dn.uniswap.quoter, refresh_blocks=10_000)
    graph = await finder.ensure(await dn.rpc.block_number())
    assert graph is not None and not graph.pools(link, dai)
    # A pool with no liquidity: the factory knows it, the graph must not offer it.
    await send_as(dn.rpc, dn.deployment.deployer, dn.uniswap.factory, CREATE_POOL.encode(link, dai, 500),
                  gas=6_000_000, what="create an empty LINK/DAI pool")
    graph = await finder.ensure(await dn.rpc.block_number())
    assert graph is not None and not graph.pools(link, dai)
    # A funded one, long before the interval refresh is due: PoolCreated alone brings it in.
    await add_pools(dn.rpc, dn.deployment, dn.uniswap, [PoolSpec("LINK", "DAI", 3000)], depth_usd=1_000_000)
    graph = await finder.ensure(await dn.rpc.block_number())
    assert graph is not None and [e.fee for e in graph.pools(link, dai)] == [3000]
    prices, decimals = await _prices(dn)
    paths = finder.paths(link, dai, prices_base=prices, decimals=decimals)
    assert paths[0] == ((link, dai), (3000,))


async def test_a_large_sale_takes_two_deep_hops_where_a_small_one_takes_the_thin_direct_pool(
    bare_chain: Devnet,
) -> None:
    """Direct LINK/DAI 0.3% holds $250k a side; LINK/USDC 1% and USDC/DAI 0.01% hold $20M each.

    $1,000 of LINK loses less in the thin pool (0.3% + ~0.4% impact) than through the deep ones
    (1.01%); $150,000 would move the thin pool ~40% and goes through USDC instead.
    """
    dn = bare_chain
    uni = await deploy_uniswap(dn.rpc, dn.deployment, depth_usd=20_000_000, pools=(
        PoolSpec("LINK", "DAI", 3000, 125),
        PoolSpec("LINK", "USDC", 10000),
        PoolSpec("DAI", "USDC", 100),
    ))
    link, dai, usdc = (dn.deployment.assets[s] for s in ("LINK", "DAI", "USDC"))
    finder = _finder(dn, uni.quoter)
    await finder.ensure(await dn.rpc.block_number())
    prices, decimals = await _prices(dn)
    gas = {"gas_price_wei": 10**9, "native_price_base": prices[dn.deployment.assets["WETH"]],
           "out_price_base": prices[dai], "out_decimals": 18}
    chosen = {}
    for usd in (1_000, 150_000):
        amount = usd * 10**8 * 10**18 // prices[link]
        routes = await finder.quote(dn.rpc, link, dai, amount, prices_base=prices, decimals=decimals)
        assert {r.hops for r in routes} == {1, 2}  # both were quoted, in one call
        chosen[usd] = best_net_route(routes, **gas)
    small, large = chosen[1_000], chosen[150_000]
    assert small is not None and large is not None
    assert (small.tokens, small.fees) == ((link, dai), (3000,))
    assert (large.tokens, large.fees) == ((link, usdc, dai), (10000, 100))
    # And the choice is right: the other path really pays less at each size.
    for r, other in ((small, ((link, usdc, dai), (10000, 100))), (large, ((link, dai), (3000,)))):
        (alt,) = await quote_paths(dn.rpc, uni.quoter, [other], r.amount_in, "latest")
        assert alt.amount_out < r.amount_out
