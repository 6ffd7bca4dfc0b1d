"""Benchmark: pool discovery and one route search on a devnet layout (5 reserves, 4 fee tiers).

Usage: .venv/bin/python bench/routes.py [layout] [repeats]   (default: usdc_hub 21; or `default`)
Prints the median of each step; BENCHMARKS.md records the numbers with this command.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from keeper.devnet.aave import ASSETS
from keeper.devnet.seed import get_price
from keeper.devnet.stack import launch
from keeper.devnet.uniswap import LAYOUTS
from keeper.protocol.uniswap_graph import RouteFinder, discover_pools, factory_of
from keeper.strategy.routes import best_net_route


async def main(layout: str, repeats: int) -> None:
    dn = await launch(borrowers=0, uniswap_layout=layout)
    try:
        assets = dn.deployment.assets
        tokens = list(assets.values())
        factory = await factory_of(dn.rpc, dn.uniswap.quoter)
        block = await dn.rpc.block_number()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            graph = await discover_pools(dn.rpc, factory, tokens, block)
            times.append(time.perf_counter() - t0)
        assert len(graph.edges) == len(LAYOUTS[layout])
        pairs = len(tokens) * (len(tokens) - 1) // 2
        print(f"{layout}: discover {len(tokens)} reserves x 4 tiers ({pairs * 4} getPool"
              f" + {len(graph.edges)} liquidity): median {statistics.median(times) * 1000:.1f} ms")
        prices = {assets[s]: await get_price(dn.rpc, dn.deployment, s) for s in assets}
        decimals = {assets[s.symbol]: s.decimals for s in ASSETS}
        for max_hops in (2, 3):
            finder = RouteFinder(dn.rpc, dn.uniswap.quoter, tokens, max_hops=max_hops)
            await finder.ensure(block)
            link, dai = assets["LINK"], assets["DAI"]
            amount = 50_000 * 10**8 * 10**18 // prices[link]
            paths = finder.paths(link, dai, prices_base=prices, decimals=decimals)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                routes = await finder.quote(dn.rpc, link, dai, amount, prices_base=prices, decimals=decimals)
                best_net_route(routes, gas_price_wei=10**9, native_price_base=prices[assets["WETH"]],
                               out_price_base=prices[dai], out_decimals=18)
                times.append(time.perf_counter() - t0)
            print(f"route LINK->DAI $50k, max_hops={max_hops}: {len(paths)} paths quoted in one Multicall3,"
                  f" median {statistics.median(times) * 1000:.1f} ms")
    finally:
        await dn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "usdc_hub",
                     int(sys.argv[2]) if len(sys.argv) > 2 else 21))
