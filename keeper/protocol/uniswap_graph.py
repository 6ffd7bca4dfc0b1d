"""Which Uniswap V3 pools join a market's reserves, and the swap paths through them.

Discovery asks the factory for every reserve pair at every fee tier in one Multicall3 of
`getPool`, then reads `liquidity()` of the pools that exist in a second one: a pool with no
in-range liquidity is no route. The result is a `PoolGraph`, a plain value; which paths it
offers is pure (`PoolGraph.paths`). I/O here is reads only; when to refresh is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise, product
from math import isqrt

from eth_utils import to_checksum_address

from keeper.chain.multicall import MULTICALL3_ADDRESS, multicall
from keeper.chain.rpc import RpcClient
from keeper.log import get_logger
from keeper.protocol.abi import event, fn
from keeper.protocol.uniswap_v3 import FEE_TIERS, QUOTER_FACTORY, Route, candidate_paths, quote_paths
from keeper.types import Address

log = get_logger(__name__)

GET_POOL = fn("UniswapV3Factory", "getPool")
POOL_LIQUIDITY = fn("UniswapV3Pool", "liquidity")
POOL_CREATED = event("UniswapV3Factory", "PoolCreated")
_ZERO = "0x" + "00" * 20

Path = tuple[tuple[Address, ...], tuple[int, ...]]  # (tokens, fees), as uniswap_v3.encode_path takes


@dataclass(frozen=True, slots=True)
class PoolEdge:
    token0: Address  # the lower address, as the factory sorts them
    token1: Address
    fee: int
    address: Address
    liquidity: int  # in-range liquidity L when read; sqrt(x*y) in token units

    def depth_base(self, prices_base: Mapping[str, int], decimals: Mapping[str, int]) -> int:
        """About the base-currency value of one side: L * sqrt(P0 * P1) per smallest unit.

        A full-range pool holding $D per side has depth D; concentrated pools read higher
        (their liquidity is worth more near the price), which is how they trade too.
        """
        p0, p1 = prices_base.get(self.token0.lower(), 0), prices_base.get(self.token1.lower(), 0)
        d0, d1 = decimals.get(self.token0.lower(), 18), decimals.get(self.token1.lower(), 18)
        return self.liquidity * isqrt(p0 * p1 * 10 ** (36 - d0 - d1)) // 10**18


@dataclass(frozen=True)
class PoolGraph:
    """The live pools between a set of tokens, as read at `block`."""

    block: int
    edges: tuple[PoolEdge, ...]

    def __post_init__(self) -> None:
        adj: dict[str, dict[str, list[PoolEdge]]] = {}
        for e in self.edges:
            a, b = e.token0.lower(), e.token1.lower()
            adj.setdefault(a, {}).setdefault(b, []).append(e)
            adj.setdefault(b, {}).setdefault(a, []).append(e)
        object.__setattr__(self, "_adj", adj)

    def pools(self, a: Address, b: Address) -> list[PoolEdge]:
        return list(self._adj.get(a.lower(), {}).get(b.lower(), ()))  # type: ignore[attr-defined]

    def neighbours(self, a: Address) -> set[str]:
        return set(self._adj.get(a.lower(), {}))  # type: ignore[attr-defined]

    def paths(self, token_in: Address, token_out: Address, *, max_hops: int = 2, limit: int = 32,
              prices_base: Mapping[str, int] | None = None,
              decimals: Mapping[str, int] | None = None) -> list[Path]:
        """Every direct pool, then two-hop paths through any token, then (max_hops=3) three hops.

        At most `limit` paths: all direct ones first, then multi-hop ones deepest first (the
        depth of a path is its shallowest pool's, valued at `prices_base`), so the bound drops
        the paths least able to carry a large sale.
        """
        if token_in.lower() == token_out.lower():
            raise ValueError("token_in and token_out are the same token: nothing to swap")
        prices = {k.lower(): v for k, v in (prices_base or {}).items()}
        decs = {k.lower(): v for k, v in (decimals or {}).items()}
        direct = [((token_in, token_out), (e.fee,)) for e in self.pools(token_in, token_out)]
        multi: list[tuple[int, int, Path]] = []  # (hops, -depth, path)
        for hops in range(2, max_hops + 1):
            for mids in self._middles(token_in, token_out, hops):
                tokens = (token_in, *(to_checksum_address(m) for m in mids), token_out)
                legs = [self.pools(a, b) for a, b in pairwise(tokens)]
                for combo in product(*legs):
                    depth = min(e.depth_base(prices, decs) for e in combo)
                    multi.append((hops, -depth, (tokens, tuple(e.fee for e in combo))))
        multi.sort(key=lambda m: (m[0], m[1]))
        return (direct + [p for _, _, p in multi])[:limit]

    def _middles(self, token_in: Address, token_out: Address, hops: int) -> list[tuple[str, ...]]:
        ends = {token_in.lower(), token_out.lower()}
        if hops == 2:
            return [(m,) for m in sorted(self.neighbours(token_in) & self.neighbours(token_out) - ends)]
        out = []
        for m1 in sorted(self.neighbours(token_in) - ends):
            for m2 in sorted(self.neighbours(token_out) - ends - {m1}):
                if m2 in self.neighbours(m1):
                    out.append((m1, m2))
        return out


async def factory_of(rpc: RpcClient, periphery: Address) -> Address:
    """The factory a QuoterV2 or SwapRouter was deployed against (`factory()` on both)."""
    raw = await rpc.eth_call(periphery, QUOTER_FACTORY.encode())
    return to_checksum_address(QUOTER_FACTORY.decode_one(raw))


async def discover_pools(rpc: RpcClient, factory: Address, tokens: Sequence[Address], block: int | str, *,
                         fee_tiers: Sequence[int] = FEE_TIERS,
                         multicall_address: str = MULTICALL3_ADDRESS) -> PoolGraph:
    """Every pool between two of `tokens` at each tier that exists and holds liquidity, at `block`."""
    pairs = [(a, b, fee) for a, b in combinations(tokens, 2) for fee in fee_tiers]
    found = await multicall(rpc, [(factory, GET_POOL.encode(a, b, fee)) for a, b, fee in pairs], block,
                            address=multicall_address)
    exists = []
    for (a, b, fee), (ok, data) in zip(pairs, found, strict=True):
        pool = GET_POOL.decode_one(data) if ok and data else _ZERO
        if int(pool, 16):
            t0, t1 = sorted((a, b), key=lambda t: int(t, 16))
            exists.append((t0, t1, fee, to_checksum_address(pool)))
    liq = await multicall(rpc, [(p, POOL_LIQUIDITY.encode()) for *_, p in exists], block,
                          address=multicall_address)
    edges = []
    for (t0, t1, fee, pool), (ok, data) in zip(exists, liq, strict=True):
        liquidity = POOL_LIQUIDITY.decode_one(data) if ok and data else 0
        if liquidity > 0:
            edges.append(PoolEdge(to_checksum_address(t0), to_checksum_address(t1), fee, pool, liquidity))
    number = block if isinstance(block, int) else await rpc.block_number()
    return PoolGraph(number, tuple(edges))


async def pools_created(rpc: RpcClient, factory: Address, tokens: Sequence[Address], from_block: int,
                        to_block: int) -> list[tuple[Address, Address, int]]:
    """PoolCreated events in [from_block, to_block] whose two tokens are both in `tokens`."""
    if from_block > to_block:
        return []
    logs = await rpc.get_logs({"address": factory, "topics": [POOL_CREATED.topic],
                               "fromBlock": hex(from_block), "toBlock": hex(to_block)})
    ours = {t.lower() for t in tokens}
    out = []
    for entry in logs:
        ev = POOL_CREATED.decode(entry)
        if ev["token0"].lower() in ours and ev["token1"].lower() in ours:
            out.append((to_checksum_address(ev["token0"]), to_checksum_address(ev["token1"]), ev["fee"]))
    return out


class RouteFinder:
    """The pool graph of one market, kept current, and the quoted routes between two reserves.

    The graph is read at start (`ensure`), again every `refresh_blocks` blocks (liquidity
    moves), and at once when a `PoolCreated` event names two of the market's tokens. Hubs
    given explicitly (KEEPER_SWAP_HUBS) override the graph: then every tier direct and
    through each hub is quoted, as before discovery existed.
    """

    def __init__(self, rpc: RpcClient, quoter: Address, tokens: Sequence[Address], *,
                 hubs: Sequence[Address] = (), refresh_blocks: int = 300, max_hops: int = 2,
                 max_routes: int = 32, factory: Address | None = None,
                 multicall_address: str = MULTICALL3_ADDRESS) -> None:
        self.rpc = rpc
        self.quoter = quoter
        self.tokens = tuple(tokens)
        self.hubs = tuple(hubs)
        self.refresh_blocks = refresh_blocks
        self.max_hops = max_hops
        self.max_routes = max_routes
        self.factory = factory
        self.multicall_address = multicall_address
        self.graph: PoolGraph | None = None
        self._checked = -1  # last block whose PoolCreated events were read

    async def ensure(self, block: int) -> PoolGraph | None:
        """The graph, read or refreshed if due at `block` (None with explicit hubs)."""
        if self.hubs:
            return None
        if self.factory is None:
            self.factory = await factory_of(self.rpc, self.quoter)
        if self.graph is None or block - self.graph.block >= self.refresh_blocks:
            return await self._refresh(block, why="start" if self.graph is None else "interval")
        if block > self._checked:
            created = await pools_created(self.rpc, self.factory, self.tokens, self._checked + 1, block)
            self._checked = block
            if created:
                return await self._refresh(block, why="pool_created", created=created)
        return self.graph

    async def _refresh(self, block: int, *, why: str, **kv: object) -> PoolGraph:
        assert self.factory is not None
        self.graph = await discover_pools(self.rpc, self.factory, self.tokens, block,
                                          multicall_address=self.multicall_address)
        self._checked = block
        log.info("routes.pools_discovered", block=block, why=why, factory=self.factory,
                 pools=len(self.graph.edges), **kv)
        return self.graph

    def paths(self, token_in: Address, token_out: Address, *, prices_base: Mapping[str, int],
              decimals: Mapping[str, int]) -> list[Path]:
        if self.hubs or self.graph is None:
            return candidate_paths(token_in, token_out, via=self.hubs)
        return self.graph.paths(token_in, token_out, max_hops=self.max_hops, limit=self.max_routes,
                                prices_base=prices_base, decimals=decimals)

    async def quote(self, quote_rpc: RpcClient, token_in: Address, token_out: Address, amount_in: int, *,
                    prices_base: Mapping[str, int], decimals: Mapping[str, int],
                    block: int | str = "latest") -> list[Route]:
        """Every candidate path quoted in one Multicall3 call on `quote_rpc`; those that pay."""
        paths = self.paths(token_in, token_out, prices_base=prices_base, decimals=decimals)
        return await quote_paths(quote_rpc, self.quoter, paths, amount_in, block,
                                 multicall_address=self.multicall_address)

    async def requote(self, quote_rpc: RpcClient, route: Route, block: int | str = "latest") -> Route | None:
        """The same path and amount quoted again on `quote_rpc` (None if it no longer pays)."""
        found = await quote_paths(quote_rpc, self.quoter, [(route.tokens, route.fees)], route.amount_in,
                                  block, multicall_address=self.multicall_address)
        return found[0] if found else None
