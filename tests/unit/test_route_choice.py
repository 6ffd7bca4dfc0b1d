"""Route search over a pool graph, gas-netted route choice and auto mode's execution rule: pure."""

from __future__ import annotations

import pytest
from eth_utils import to_checksum_address

from keeper.protocol.uniswap_graph import PoolEdge, PoolGraph
from keeper.protocol.uniswap_v3 import Route
from keeper.strategy.routes import best_net_route, choose_execution, fair_out, gas_in_token

USD = 10**8


def _addr(n: int) -> str:
    return to_checksum_address(f"0x{n:040x}")


WETH, USDC, DAI, LINK, WBTC = (_addr(n) for n in (1, 2, 3, 4, 5))
PRICES = {WETH: 3_000 * USD, USDC: USD, DAI: USD, LINK: 15 * USD, WBTC: 60_000 * USD}
DECIMALS = {WETH: 18, USDC: 6, DAI: 18, LINK: 18, WBTC: 8}


def _edge(a: str, b: str, fee: int, depth_usd: int) -> PoolEdge:
    """A full-range pool holding `depth_usd` per side: L = sqrt(x * y)."""
    x = depth_usd * 10 ** DECIMALS[a] * USD // PRICES[a]
    y = depth_usd * 10 ** DECIMALS[b] * USD // PRICES[b]
    t0, t1 = sorted((a, b), key=lambda t: int(t, 16))
    return PoolEdge(t0, t1, fee, _addr(1000 + fee), int((x * y) ** 0.5))


# USDC at the centre, plus WETH/DAI: the common mainnet shape.
HUB = PoolGraph(1, (
    _edge(WETH, USDC, 500, 10_000_000),
    _edge(WBTC, USDC, 3000, 10_000_000),
    _edge(LINK, USDC, 3000, 10_000_000),
    _edge(DAI, USDC, 100, 10_000_000),
    _edge(WETH, DAI, 3000, 5_000_000),
))


def test_depth_of_a_full_range_pool_is_its_value_per_side() -> None:
    edge = _edge(WETH, USDC, 500, 10_000_000)
    assert edge.depth_base(PRICES, DECIMALS) == pytest.approx(10_000_000 * USD, rel=1e-6)


def test_a_pair_without_a_pool_routes_through_every_reserve_both_join() -> None:
    paths = HUB.paths(LINK, DAI, prices_base=PRICES, decimals=DECIMALS)
    assert paths == [((LINK, USDC, DAI), (3000, 100))]
    # WBTC -> WETH: through USDC only (WETH/DAI exists, WBTC/DAI does not).
    assert HUB.paths(WBTC, WETH, prices_base=PRICES, decimals=DECIMALS) == [((WBTC, USDC, WETH), (3000, 500))]


def test_direct_pools_come_first_then_two_hops_deepest_first() -> None:
    paths = HUB.paths(WETH, USDC, prices_base=PRICES, decimals=DECIMALS)
    assert paths[0] == ((WETH, USDC), (500,))
    assert paths[1:] == [((WETH, DAI, USDC), (3000, 100))]


def test_three_hops_only_when_allowed_and_never_revisit_a_token() -> None:
    g = PoolGraph(1, (_edge(LINK, WETH, 3000, 1_000_000), _edge(WETH, USDC, 500, 9_000_000),
                      _edge(USDC, DAI, 100, 9_000_000)))
    assert g.paths(LINK, DAI, prices_base=PRICES, decimals=DECIMALS) == []
    three = g.paths(LINK, DAI, max_hops=3, prices_base=PRICES, decimals=DECIMALS)
    assert three == [((LINK, WETH, USDC, DAI), (3000, 500, 100))]


def test_the_bound_keeps_direct_pools_and_drops_the_shallowest_detours() -> None:
    g = PoolGraph(1, (_edge(LINK, DAI, 3000, 1_000), _edge(LINK, USDC, 3000, 9_000_000),
                      _edge(USDC, DAI, 100, 9_000_000), _edge(LINK, WETH, 3000, 50_000),
                      _edge(WETH, DAI, 3000, 9_000_000)))
    paths = g.paths(LINK, DAI, limit=2, prices_base=PRICES, decimals=DECIMALS)
    assert paths == [((LINK, DAI), (3000,)), ((LINK, USDC, DAI), (3000, 100))]


def test_the_same_token_is_not_a_swap() -> None:
    with pytest.raises(ValueError):
        HUB.paths(DAI, DAI)


def _route(out: int, gas: int, hops: int = 1) -> Route:
    tokens = (LINK, *([USDC] * (hops - 1)), DAI)
    return Route(tokens, (3000,) * hops, 10**18, out, gas)


def test_a_slightly_better_output_that_costs_more_gas_than_it_gains_loses() -> None:
    # 100 gwei, ETH at $3,000: 200k gas more = 0.02 ETH = $60 of DAI.
    direct, detour = _route(1_000 * 10**18, 100_000), _route(1_050 * 10**18, 300_000, hops=2)
    kw = {"gas_price_wei": 100 * 10**9, "native_price_base": 3_000 * USD, "out_price_base": USD,
          "out_decimals": 18}
    assert gas_in_token(200_000, 100 * 10**9, 3_000 * USD, USD, 18) == 60 * 10**18
    assert best_net_route([direct, detour], **kw) is direct
    richer = _route(1_100 * 10**18, 300_000, hops=2)
    assert best_net_route([direct, richer], **kw) is richer
    assert best_net_route([], **kw) is None


def test_auto_prefers_a_flash_loan_that_pays_and_falls_back_to_inventory() -> None:
    floor = 1 * USD
    assert choose_execution(50 * USD, 80 * USD, floor) == "flashloan"
    assert choose_execution(None, 80 * USD, floor) == "inventory"  # no route
    assert choose_execution(0, 80 * USD, floor) == "inventory"  # the flash loan's costs eat it
    assert choose_execution(50 * USD, None, floor) == "flashloan"
    assert choose_execution(None, None, floor) is None
    assert choose_execution(0, 0, floor) is None


def test_fair_output_is_the_oracle_value_less_each_hops_fee() -> None:
    # 1 WETH at $3,000 into USDC (6 decimals) through 0.3% then 0.01%.
    out = fair_out(10**18, (3000, 100), in_price_base=3_000 * USD, in_decimals=18, out_price_base=USD,
                   out_decimals=6)
    assert out == 3_000 * 10**6 * 997_000 // 1_000_000 * 999_900 // 1_000_000
    assert fair_out(10**18, (), in_price_base=1, in_decimals=18, out_price_base=0, out_decimals=6) == 0
