"""Uniswap V3 on the devnet and the keeper's quoting: real factory, router, QuoterV2 and pools on Anvil."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from eth_abi import encode

from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import ASSETS
from keeper.devnet.seed import SEL_APPROVE, get_price
from keeper.devnet.stack import KEEPER_ADDRESS, Devnet, launch
from keeper.devnet.uniswap import (
    POOL_INIT_CODE_HASH,
    UniswapDeployment,
    check_init_code_hash,
    deploy_uniswap,
    pool_address,
)
from keeper.protocol.aave_v3 import BALANCE_OF
from keeper.protocol.abi import fn
from keeper.protocol.uniswap_v3 import (
    best_route,
    decode_path,
    encode_path,
    quote_exact_input,
    quote_routes,
)

SLOT0 = fn("UniswapV3Pool", "slot0")
GET_POOL = fn("UniswapV3Factory", "getPool")
EXACT_INPUT = fn("SwapRouter", "exactInput")
DECIMALS = {s.symbol: s.decimals for s in ASSETS}
Net = tuple[Devnet, UniswapDeployment]


@pytest.fixture(scope="module")
async def uni_net() -> AsyncIterator[Net]:
    dn = await launch(borrowers=0)
    try:
        uni = await deploy_uniswap(dn.rpc, dn.deployment, depth_usd=10_000_000)
        yield dn, uni
    finally:
        await dn.close()


@pytest.fixture
async def uni_fresh(uni_net: Net) -> AsyncIterator[Net]:
    """Each test that writes runs in an evm snapshot, reverted afterwards."""
    dn, _ = uni_net
    snap = await dn.rpc.call("evm_snapshot")
    try:
        yield uni_net
    finally:
        assert await dn.rpc.call("evm_revert", [snap])


def _via(dn: Devnet) -> tuple[str, str]:
    return dn.deployment.assets["WETH"], dn.deployment.assets["USDC"]


async def _send(rpc: RpcClient, sender: str, to: str, data: bytes) -> dict:
    tx = {"from": sender, "to": to, "data": "0x" + data.hex(), "gas": hex(1_000_000)}
    receipt = await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=30,
                                         poll_interval=0.02)
    assert int(receipt["status"], 16) == 1
    return receipt


# -- pure encoding ---------------------------------------------------------------------


def test_path_packs_token_fee_token_and_decodes_back() -> None:
    a, b, c = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
    path = encode_path([a, b, c], [500, 3000])
    assert len(path) == 20 + 23 * 2
    assert path[20:23] == (500).to_bytes(3, "big")
    tokens, fees = decode_path(path)
    assert [t.lower() for t in tokens] == [a, b, c] and fees == (500, 3000)


@pytest.mark.parametrize(("tokens", "fees"), [
    (["0x" + "11" * 20], []),
    (["0x" + "11" * 20, "0x" + "22" * 20], [500, 3000]),
    (["0x" + "11" * 20, "0x" + "22" * 20], [2**24]),
    (["0x" + "11" * 19, "0x" + "22" * 20], [500]),
])
def test_malformed_paths_are_refused(tokens: list[str], fees: list[int]) -> None:
    with pytest.raises(ValueError):
        encode_path(tokens, fees)


# -- deployment ------------------------------------------------------------------------


async def test_every_pool_sits_where_the_periphery_computes_it(uni_net: Net) -> None:
    dn, uni = uni_net
    check_init_code_hash()  # core artifact hashes to the periphery's constant
    assert POOL_INIT_CODE_HASH == "0xe34f199b19b2b4f47f68442619d555527d244f78a3297ea89325f843f87b8b54"
    for p in uni.pools:
        reply = await dn.rpc.eth_call(uni.factory, GET_POOL.encode(p.token1, p.token0, p.fee))
        expected = pool_address(uni.factory, p.token0, p.token1, p.fee)
        assert GET_POOL.decode_one(reply).lower() == p.address.lower() == expected.lower()
        assert await dn.rpc.get_code(p.address)


async def test_every_collateral_has_a_usdc_and_a_weth_pool(uni_net: Net) -> None:
    _, uni = uni_net
    pairs = {frozenset((p.symbol0, p.symbol1)) for p in uni.pools}
    for spec in ASSETS:
        for hub in ("USDC", "WETH"):
            if spec.symbol != hub:
                assert frozenset((spec.symbol, hub)) in pairs, f"{spec.symbol}/{hub}"
    assert len({p.fee for p in uni.pools}) >= 2


async def test_pools_start_at_the_oracle_price(uni_net: Net) -> None:
    dn, uni = uni_net
    for p in uni.pools:
        sqrt_price = SLOT0.decode(await dn.rpc.eth_call(p.address, SLOT0.encode()))[0]
        p0 = await get_price(dn.rpc, dn.deployment, p.symbol0)
        p1 = await get_price(dn.rpc, dn.deployment, p.symbol1)
        # token1 units per token0 unit, both sides scaled to compare in integers
        pool_e18 = sqrt_price**2 * 10**18 * 10 ** DECIMALS[p.symbol0] // (2**192 * 10 ** DECIMALS[p.symbol1])
        oracle_e18 = p0 * 10**18 // p1
        assert abs(pool_e18 - oracle_e18) * 10_000 <= oracle_e18, (p.symbol0, p.symbol1, p.fee)


def test_deployment_survives_a_json_round_trip() -> None:
    d = UniswapDeployment("0x1", "0x2", "0x3", "0x4", "0x5", ())
    assert UniswapDeployment.from_json(d.to_json()) == d


async def test_deployment_json_round_trip_keeps_pools(uni_net: Net) -> None:
    _, uni = uni_net
    again = UniswapDeployment.from_json(json.loads(json.dumps(uni.to_json())))
    assert again == uni and again.pool("USDC", "WETH", 500).fee == 500


# -- quoting ---------------------------------------------------------------------------


async def test_quote_equals_what_the_router_pays(uni_fresh: Net) -> None:
    dn, uni = uni_fresh
    weth, usdc = dn.deployment.assets["WETH"], dn.deployment.assets["USDC"]
    amount = 25 * 10**18
    approve = SEL_APPROVE + encode(["address", "uint256"], [uni.router, 2**256 - 1])
    await _send(dn.rpc, KEEPER_ADDRESS, weth, approve)
    block = await dn.rpc.block_number()
    route = await best_route(dn.rpc, uni.quoter, weth, usdc, amount, block, via=_via(dn))
    assert route is not None
    single = await quote_exact_input(dn.rpc, uni.quoter, route.path, amount, block)
    assert single.amount_out == route.amount_out and single.gas_estimate > 0

    before = BALANCE_OF.decode_one(await dn.rpc.eth_call(usdc, BALANCE_OF.encode(KEEPER_ADDRESS)))
    await _send(dn.rpc, KEEPER_ADDRESS, uni.router,
                EXACT_INPUT.encode((route.path, KEEPER_ADDRESS, 2**40, amount, route.amount_out)))
    after = BALANCE_OF.decode_one(await dn.rpc.eth_call(usdc, BALANCE_OF.encode(KEEPER_ADDRESS)))
    assert after - before == route.amount_out


async def test_best_route_takes_the_deeper_fee_tier(uni_net: Net) -> None:
    dn, uni = uni_net
    weth, usdc = dn.deployment.assets["WETH"], dn.deployment.assets["USDC"]
    block = await dn.rpc.block_number()
    routes = await quote_routes(dn.rpc, uni.quoter, weth, usdc, 100 * 10**18, block, via=_via(dn))
    direct = {r.fees[0]: r.amount_out for r in routes if r.hops == 1}
    assert set(direct) == {500, 3000}  # tiers without a pool are dropped, not errors
    assert routes[0].fees == (500,) and routes[0].amount_out == max(direct.values())


async def test_two_hops_beat_a_shallow_direct_pool(uni_net: Net) -> None:
    dn, uni = uni_net
    link, usdc, weth = (dn.deployment.assets[s] for s in ("LINK", "USDC", "WETH"))
    block = await dn.rpc.block_number()
    routes = await quote_routes(dn.rpc, uni.quoter, link, usdc, 20_000 * 10**18, block, via=_via(dn))
    direct = next(r for r in routes if r.hops == 1)
    assert direct.fees == (10000,)
    assert routes[0].tokens == (link, weth, usdc) and routes[0].amount_out > direct.amount_out


async def test_route_without_direct_pool_goes_through_weth(uni_net: Net) -> None:
    dn, uni = uni_net
    link, dai, weth = (dn.deployment.assets[s] for s in ("LINK", "DAI", "WETH"))
    route = await best_route(dn.rpc, uni.quoter, link, dai, 1_000 * 10**18, "latest", via=(weth,))
    assert route is not None and route.tokens == (link, weth, dai)
    assert decode_path(route.path) == (route.tokens, route.fees)


async def test_all_candidate_routes_are_quoted_in_one_request(uni_net: Net) -> None:
    dn, uni = uni_net
    seen: list[str] = []
    async with RpcClient(dn.url, on_request=lambda m, s, o: seen.append(m)) as rpc:
        wbtc, dai = dn.deployment.assets["WBTC"], dn.deployment.assets["DAI"]
        routes = await quote_routes(rpc, uni.quoter, wbtc, dai, 10**8, "latest", via=_via(dn))
    assert seen == ["eth_call"]
    assert len(routes) >= 3  # direct pools do not exist; via WETH and via USDC do


async def test_no_route_for_a_token_without_pools(uni_net: Net) -> None:
    dn, uni = uni_net
    a_weth = dn.deployment.a_tokens["WETH"]
    assert await best_route(dn.rpc, uni.quoter, a_weth, dn.deployment.assets["USDC"], 10**18, "latest",
                            via=_via(dn)) is None


async def test_selling_more_gets_a_worse_price(uni_net: Net) -> None:
    dn, uni = uni_net
    wbtc, usdc = dn.deployment.assets["WBTC"], dn.deployment.assets["USDC"]
    small = await best_route(dn.rpc, uni.quoter, wbtc, usdc, 10**8, "latest", via=_via(dn))
    large = await best_route(dn.rpc, uni.quoter, wbtc, usdc, 100 * 10**8, "latest", via=_via(dn))
    assert small is not None and large is not None
    # 100 BTC (~$8.8M) into pools $10M deep: well over 10% worse per coin than 1 BTC.
    assert large.amount_out * 10 < small.amount_out * 100 * 9
