"""Uniswap V3 on the devnet: factory, SwapRouter, QuoterV2, position manager and priced pools.

Bytecode comes from the npm artifacts of @uniswap/v3-core 1.0.1 and v3-periphery 1.4.4, the
builds that went to mainnet. The periphery computes pool addresses from a hard-coded
POOL_INIT_CODE_HASH instead of asking the factory, so the core's pool creation code must hash
to exactly that value or every router and quoter call goes to an empty address; it is checked
before deploying and again per pool after (factory.getPool == the CREATE2 address).

Pools hold full-range liquidity worth `depth_usd` per side (scaled by each pool's weight)
at the oracle price read from the market's feeds when the pools are created. Full range makes
depth easy to reason about: selling x USD into a side of depth D moves the price by about
x / D, so a large liquidation in a shallow pool really does fail to pay.

After `seed.shock` moves an oracle, the pools keep their old price: nothing arbitrages them
on a devnet. A keeper selling collateral whose oracle price fell then gets the stale, higher
pool price (a windfall a mainnet keeper would not see), and the reverse after a rise. That is
deliberate and harmless for tests that compare quotes with what the swap pays; a test that
wants the pools at the new price should deploy them after the shock (or swap them there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from math import isqrt
from typing import Any

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from keeper.chain.multicall import multicall
from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import ASSETS, Deployment
from keeper.devnet.build import NODE_MODULES
from keeper.devnet.chain import DevChain, send_all_as, send_as
from keeper.devnet.seed import SEL_APPROVE, SEL_DEPOSIT, SEL_MINT, get_price
from keeper.errors import KeeperError
from keeper.log import get_logger
from keeper.protocol.aave_v3 import ALLOWANCE
from keeper.protocol.abi import fn

log = get_logger(__name__)

POOL_INIT_CODE_HASH = "0xe34f199b19b2b4f47f68442619d555527d244f78a3297ea89325f843f87b8b54"
_ARTIFACTS = {
    "UniswapV3Factory": "v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json",
    "UniswapV3Pool": "v3-core/artifacts/contracts/UniswapV3Pool.sol/UniswapV3Pool.json",
    "SwapRouter": "v3-periphery/artifacts/contracts/SwapRouter.sol/SwapRouter.json",
    "QuoterV2": "v3-periphery/artifacts/contracts/lens/QuoterV2.sol/QuoterV2.json",
    "NonfungiblePositionManager":
        "v3-periphery/artifacts/contracts/NonfungiblePositionManager.sol/NonfungiblePositionManager.json",
}
TICK_SPACING = {100: 1, 500: 10, 3000: 60, 10000: 200}
MAX_TICK = 887272
UINT256_MAX = 2**256 - 1
ZERO = "0x0000000000000000000000000000000000000000"

GET_POOL = fn("UniswapV3Factory", "getPool")
ENABLE_FEE_AMOUNT = fn("UniswapV3Factory", "enableFeeAmount")
_SEL_CREATE_POOL = keccak(text="createAndInitializePoolIfNecessary(address,address,uint24,uint160)")[:4]
_MINT_TYPES = "(address,address,uint24,int24,int24,uint256,uint256,uint256,uint256,address,uint256)"
_SEL_MINT_POSITION = keccak(text=f"mint({_MINT_TYPES})")[:4]
_SEL_MULTICALL = keccak(text="multicall(bytes[])")[:4]


class UniswapDeployError(KeeperError):
    """Uniswap V3 could not be deployed consistently (e.g. a pool init code hash mismatch)."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool to create: two devnet symbols, a fee tier and its share of `depth_usd`."""

    symbol_a: str
    symbol_b: str
    fee: int
    weight_bps: int = 10_000  # depth of this pool = depth_usd * weight_bps / 10_000


# Every collateral against USDC and WETH, plus WETH/USDC. Two tiers for WETH/USDC and WBTC/WETH
# with different depths, and LINK/USDC only in the 1% tier, so the tier (and the hop count) a
# router picks changes the output.
DEFAULT_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec("WETH", "USDC", 500),
    PoolSpec("WETH", "USDC", 3000, 2_500),
    PoolSpec("WBTC", "WETH", 500),
    PoolSpec("WBTC", "WETH", 3000, 3_000),
    PoolSpec("WBTC", "USDC", 3000, 5_000),
    PoolSpec("DAI", "USDC", 100),
    PoolSpec("DAI", "WETH", 3000, 5_000),
    PoolSpec("LINK", "WETH", 3000),
    PoolSpec("LINK", "USDC", 10000, 3_000),
)

# The common mainnet shape with USDC at the centre: every asset against USDC, plus WETH/DAI.
# WBTC/WETH, LINK/DAI and the like have no pool: they trade in two hops (through USDC or WETH).
USDC_HUB_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec("WETH", "USDC", 500),
    PoolSpec("WBTC", "USDC", 3000),
    PoolSpec("LINK", "USDC", 3000),
    PoolSpec("DAI", "USDC", 100),
    PoolSpec("WETH", "DAI", 3000, 5_000),
)
LAYOUTS: dict[str, tuple[PoolSpec, ...]] = {"default": DEFAULT_POOLS, "usdc_hub": USDC_HUB_POOLS}


@dataclass(frozen=True, slots=True)
class UniswapPool:
    address: str
    token0: str
    token1: str
    fee: int
    symbol0: str
    symbol1: str
    depth_usd: int  # per side, at the price the pool was created with


@dataclass(frozen=True)
class UniswapDeployment:
    factory: str
    router: str  # SwapRouter (periphery 1.x, with a deadline in its params)
    quoter: str  # QuoterV2
    position_manager: str
    weth: str
    pools: tuple[UniswapPool, ...]

    def pool(self, symbol_a: str, symbol_b: str, fee: int) -> UniswapPool:
        pair = {symbol_a, symbol_b}
        for p in self.pools:
            if {p.symbol0, p.symbol1} == pair and p.fee == fee:
                return p
        raise KeyError(f"no {symbol_a}/{symbol_b} {fee} pool")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> UniswapDeployment:
        pools = tuple(UniswapPool(**p) for p in data["pools"])
        return cls(**{**data, "pools": pools})


@cache
def artifact(name: str) -> dict:
    path = NODE_MODULES / "@uniswap" / _ARTIFACTS[name]
    if not path.exists():
        raise UniswapDeployError(f"{path} is missing: run `make setup` (npm ci) first")
    return json.loads(path.read_text())


def check_init_code_hash() -> None:
    """The core's pool creation code must hash to the periphery's hard-coded constant."""
    got = "0x" + keccak(hexstr=artifact("UniswapV3Pool")["bytecode"]).hex()
    if got != POOL_INIT_CODE_HASH:
        raise UniswapDeployError(f"UniswapV3Pool init code hash {got} != periphery's {POOL_INIT_CODE_HASH}")
    factory_code = artifact("UniswapV3Factory")["deployedBytecode"]
    if artifact("UniswapV3Pool")["bytecode"].removeprefix("0x") not in factory_code:
        raise UniswapDeployError("the factory artifact embeds a different UniswapV3Pool build")


def pool_address(factory: str, token_a: str, token_b: str, fee: int) -> str:
    """The CREATE2 address the periphery (PoolAddress.computeAddress) expects."""
    t0, t1 = sorted((token_a, token_b), key=lambda a: int(a, 16))
    salt = keccak(encode(["address", "address", "uint24"], [t0, t1, fee]))
    raw = keccak(b"\xff" + bytes.fromhex(factory[2:]) + salt + bytes.fromhex(POOL_INIT_CODE_HASH[2:]))
    return to_checksum_address(raw[12:])


def sqrt_price_x96(price0_e8: int, decimals0: int, price1_e8: int, decimals1: int) -> int:
    """sqrt(token1 units per token0 unit) in Q64.96, from two USD prices."""
    return isqrt(price0_e8 * 10**decimals1 * 2**192 // (price1_e8 * 10**decimals0))


def full_range(fee: int) -> tuple[int, int]:
    spacing = TICK_SPACING[fee]
    top = MAX_TICK // spacing * spacing
    return -top, top


async def deploy_uniswap(rpc_or_chain: RpcClient | DevChain, deployment: Deployment, *,
                         depth_usd: int = 10_000_000, pools: Sequence[PoolSpec] = DEFAULT_POOLS,
                         ) -> UniswapDeployment:
    """Deploy Uniswap V3 from the market's deployer (an unlocked devnet account) and seed pools.

    Each pool gets full-range liquidity worth `depth_usd * weight_bps / 10_000` per side at the
    current oracle prices. Call it again for an independent second Uniswap (new factory).
    """
    if isinstance(rpc_or_chain, DevChain):
        async with RpcClient(rpc_or_chain.url, timeout_s=120) as rpc:
            return await _deploy(rpc, deployment, depth_usd, pools)
    return await _deploy(rpc_or_chain, deployment, depth_usd, pools)


async def _deploy(rpc: RpcClient, d: Deployment, depth_usd: int,
                  specs: Sequence[PoolSpec]) -> UniswapDeployment:
    check_init_code_hash()
    tx = _Sender(rpc, d.deployer)
    weth = d.assets["WETH"]
    factory = await tx.deploy("UniswapV3Factory")
    # The 1.0.1 factory ships with 500/3000/10000; governance enabled 0.01% later on mainnet.
    await tx.send(factory, ENABLE_FEE_AMOUNT.encode(100, TICK_SPACING[100]))
    router = await tx.deploy("SwapRouter", factory, weth)
    quoter = await tx.deploy("QuoterV2", factory, weth)
    npm = await tx.deploy("NonfungiblePositionManager", factory, weth, ZERO)  # no NFT metadata
    created = await _seed_pools(rpc, tx, d, factory, npm, specs, depth_usd)
    out = UniswapDeployment(factory, router, quoter, npm, weth, tuple(created))
    log.info("devnet.uniswap_deployed", factory=factory, router=router, quoter=quoter,
             pools=len(created), depth_usd=depth_usd)
    return out


async def add_pools(rpc: RpcClient, d: Deployment, uni: UniswapDeployment, specs: Sequence[PoolSpec], *,
                    depth_usd: int) -> UniswapDeployment:
    """Create and fund more pools on an existing Uniswap (each emits the factory's PoolCreated)."""
    created = await _seed_pools(rpc, _Sender(rpc, d.deployer), d, uni.factory, uni.position_manager, specs,
                                depth_usd)
    return UniswapDeployment(uni.factory, uni.router, uni.quoter, uni.position_manager, uni.weth,
                             (*uni.pools, *created))


async def _seed_pools(rpc: RpcClient, tx: _Sender, d: Deployment, factory: str, npm: str,
                      specs: Sequence[PoolSpec], depth_usd: int) -> list[UniswapPool]:
    prices = {s.symbol: await get_price(rpc, d, s.symbol) for s in ASSETS}
    decimals = {s.symbol: s.decimals for s in ASSETS}
    amounts = [_pool_amounts(s, depth_usd, prices, decimals) for s in specs]
    await _fund_lp(rpc, tx, d, npm, amounts)
    created = []
    for spec, amount in zip(specs, amounts, strict=True):
        depth = depth_usd * spec.weight_bps // 10_000
        created.append(await _create_pool(tx, d, factory, npm, spec, amount, prices, decimals, depth))
    await _check_pool_addresses(rpc, factory, created)
    return created


def _pool_amounts(spec: PoolSpec, depth_usd: int, prices: dict[str, int],
                  decimals: dict[str, int]) -> dict[str, int]:
    usd = depth_usd * spec.weight_bps // 10_000
    return {s: usd * 10**8 * 10 ** decimals[s] // prices[s] for s in (spec.symbol_a, spec.symbol_b)}


async def _fund_lp(rpc: RpcClient, tx: _Sender, d: Deployment, npm: str,
                   amounts: Sequence[dict[str, int]]) -> None:
    """Mint (or wrap) every token the pools need to the deployer and approve the position manager."""
    totals: dict[str, int] = {}
    for amount in amounts:
        for sym, a in amount.items():
            totals[sym] = totals.get(sym, 0) + a
    for sym, total in totals.items():
        token = d.assets[sym]
        if sym == "WETH":
            balance = await rpc.get_balance(d.deployer)
            await rpc.call("anvil_setBalance", [d.deployer, hex(balance + total + 10**18)])
            await tx.send(token, SEL_DEPOSIT, value=total)
        else:  # TestnetERC20: the deployer is its owner and may mint
            await tx.send(token, SEL_MINT + encode(["address", "uint256"], [d.deployer, total]))
        await tx.send(token, SEL_APPROVE + encode(["address", "uint256"], [npm, UINT256_MAX]))


async def _create_pool(tx: _Sender, d: Deployment, factory: str, npm: str, spec: PoolSpec,
                       amount: dict[str, int], prices: dict[str, int], decimals: dict[str, int],
                       depth: int) -> UniswapPool:
    a, b = spec.symbol_a, spec.symbol_b
    s0, s1 = (a, b) if int(d.assets[a], 16) < int(d.assets[b], 16) else (b, a)
    t0, t1 = d.assets[s0], d.assets[s1]
    sqrt_price = sqrt_price_x96(prices[s0], decimals[s0], prices[s1], decimals[s1])
    lower, upper = full_range(spec.fee)
    create = _SEL_CREATE_POOL + encode(["address", "address", "uint24", "uint160"],
                                       [t0, t1, spec.fee, sqrt_price])
    mint = _SEL_MINT_POSITION + encode(
        [_MINT_TYPES],
        [(t0, t1, spec.fee, lower, upper, amount[s0], amount[s1], 0, 0, d.deployer, 2**64)],
    )
    # One transaction per pool: NonfungiblePositionManager.multicall([create, mint]).
    await tx.send(npm, _SEL_MULTICALL + encode(["bytes[]"], [[create, mint]]), gas=8_000_000)
    return UniswapPool(pool_address(factory, t0, t1, spec.fee), t0, t1, spec.fee, s0, s1, depth)


async def _check_pool_addresses(rpc: RpcClient, factory: str, pools: Sequence[UniswapPool]) -> None:
    results = await multicall(rpc, [(factory, GET_POOL.encode(p.token0, p.token1, p.fee)) for p in pools])
    for p, (ok, data) in zip(pools, results, strict=True):
        actual = to_checksum_address(GET_POOL.decode_one(data)) if ok else None
        if actual != p.address:
            raise UniswapDeployError(
                f"{p.symbol0}/{p.symbol1} {p.fee}: factory says {actual}, periphery expects {p.address} "
                "(POOL_INIT_CODE_HASH mismatch?)"
            )


class _Sender:
    """Sends devnet set-up transactions from an unlocked account and checks each receipt."""

    def __init__(self, rpc: RpcClient, sender: str) -> None:
        self.rpc = rpc
        self.sender = sender

    async def deploy(self, name: str, *args: str) -> str:
        art = artifact(name)
        ctor = next((e for e in art["abi"] if e["type"] == "constructor"), {"inputs": []})
        data = bytes.fromhex(art["bytecode"].removeprefix("0x"))
        data += encode([i["type"] for i in ctor["inputs"]], list(args))
        receipt = await send_as(self.rpc, self.sender, None, data, gas=10_000_000,
                                what=f"uniswap set-up: deploy {name}")
        return to_checksum_address(receipt["contractAddress"])

    async def send(self, to: str, data: bytes, *, value: int = 0, gas: int = 500_000) -> dict[str, Any]:
        return await send_as(self.rpc, self.sender, to, data, value=value, gas=gas,
                             what=f"uniswap set-up: call {to} 0x{data[:4].hex()}")


SLOT0 = fn("UniswapV3Pool", "slot0")
_EXACT_INPUT_SINGLE_TYPES = "(address,address,uint24,address,uint256,uint256,uint256,uint160)"
_SEL_EXACT_INPUT_SINGLE = keccak(text=f"exactInputSingle({_EXACT_INPUT_SINGLE_TYPES})")[:4]
_ARB_AMOUNT = 10**40  # "as much as it takes": the price limit stops the swap


async def align_pools(rpc: RpcClient, d: Deployment, uni: UniswapDeployment, *,
                      tolerance_bps: int = 1) -> int:
    """Arbitrage every pool back to the oracle price, as searchers would after a move.

    Without this a devnet pool keeps its old price after `shock`, and a keeper selling
    seized collateral there gets a windfall no mainnet keeper would see. Returns the
    number of pools moved.
    """
    prices = {s.symbol: await get_price(rpc, d, s.symbol) for s in ASSETS}
    decimals = {s.symbol: s.decimals for s in ASSETS}
    approvals: dict[str, bytes] = {}
    swaps: list[tuple[str, bytes, int]] = []
    for pool in uni.pools:
        current = SLOT0.decode(await rpc.eth_call(pool.address, SLOT0.encode()))[0]
        target = sqrt_price_x96(prices[pool.symbol0], decimals[pool.symbol0], prices[pool.symbol1],
                                decimals[pool.symbol1])
        # Price is sqrtP²: a 1 bp price gap is about a 0.5 bp gap in sqrtP.
        if abs(target - current) * 20_000 <= current * tolerance_bps:
            continue
        zero_for_one = target < current  # selling token0 lowers its price
        token_in, token_out = (pool.token0, pool.token1) if zero_for_one else (pool.token1, pool.token0)
        await rpc.call("anvil_dealERC20", [d.deployer, token_in, hex(_ARB_AMOUNT)])
        allowed = ALLOWANCE.decode_one(await rpc.eth_call(token_in, ALLOWANCE.encode(d.deployer, uni.router)))
        if allowed < _ARB_AMOUNT:
            approvals[token_in] = SEL_APPROVE + encode(["address", "uint256"], [uni.router, UINT256_MAX])
        params = (token_in, token_out, pool.fee, d.deployer, 2**64, _ARB_AMOUNT, 0, target)
        swaps.append((uni.router, _SEL_EXACT_INPUT_SINGLE + encode([_EXACT_INPUT_SINGLE_TYPES], [params]),
                      2_000_000))
    # All in one go, not one receipt after another: on a chain with a block time the searchers'
    # swaps land together in the next block, as a real arbitrageur's would.
    txs = [(token, data, 500_000) for token, data in approvals.items()] + swaps
    if txs:
        await send_all_as(rpc, d.deployer, txs, what="devnet arbitrage")
    moved = len(swaps)
    log.info("devnet.pools_aligned", moved=moved)
    return moved


async def arbitrage_loop(rpc: RpcClient, d: Deployment, uni: UniswapDeployment, stop: asyncio.Event, *,
                         period_s: float = 0.5, tolerance_bps: int = 10) -> None:
    """Devnet searchers: pull pools back to the oracle after liquidators' sales move them."""
    while not stop.is_set():
        await align_pools(rpc, d, uni, tolerance_bps=tolerance_bps)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
