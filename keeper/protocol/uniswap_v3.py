"""Uniswap V3 on chain: packed paths and QuoterV2 quotes. Encoding and I/O only, no decisions.

QuoterV2 is not a view contract: it runs the real swap and reverts inside the swap callback,
then catches that revert and returns the amounts normally. Through eth_call (alone or inside
Multicall3.aggregate3, which uses CALL) nothing is written, so a quote is an ordinary read
that answers "what would exactInput return at this block".

A route through a pool that does not exist reverts (the quoter calls a non-contract): it is
dropped, not an error, so callers can ask for every tier without knowing which pools exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

from eth_utils import to_checksum_address

from keeper.chain.multicall import DEFAULT_GAS_PER_BATCH, MULTICALL3_ADDRESS, multicall
from keeper.chain.rpc import RpcClient
from keeper.protocol.abi import fn
from keeper.types import Address

QUOTE_EXACT_INPUT = fn("QuoterV2", "quoteExactInput")
QUOTER_FACTORY = fn("QuoterV2", "factory")
FEE_TIERS = (100, 500, 3000, 10000)
_ADDR, _FEE = 20, 3
# Quotes run real swaps; two hops that cross many ticks can take ~500k gas. Bounded so one
# aggregate3 of every candidate route stays far below any node's eth_call cap.
QUOTE_GAS_PER_ROUTE = 1_500_000


@dataclass(frozen=True, slots=True)
class QuoteResult:
    amount_out: int  # token_out units
    gas_estimate: int  # QuoterV2's estimate of the swap's gas


@dataclass(frozen=True, slots=True)
class Route:
    """One quoted way to sell `amount_in` of tokens[0] for tokens[-1]."""

    tokens: tuple[Address, ...]
    fees: tuple[int, ...]  # one per hop, in hundredths of a bip (3000 = 0.3%)
    amount_in: int
    amount_out: int
    gas_estimate: int

    @property
    def path(self) -> bytes:
        return encode_path(self.tokens, self.fees)

    @property
    def hops(self) -> int:
        return len(self.fees)


def encode_path(tokens: Sequence[Address], fees: Sequence[int]) -> bytes:
    """exactInput's packed path: token, (fee uint24, token) per hop."""
    if len(tokens) < 2 or len(fees) != len(tokens) - 1:
        raise ValueError(f"a path needs n tokens and n-1 fees, got {len(tokens)} and {len(fees)}")
    out = bytearray(bytes.fromhex(tokens[0].removeprefix("0x")))
    for fee, token in zip(fees, tokens[1:], strict=True):
        if not 0 < fee < 2**24:
            raise ValueError(f"fee {fee} is not a uint24 tier")
        out += fee.to_bytes(_FEE, "big") + bytes.fromhex(token.removeprefix("0x"))
    if len(out) != _ADDR + (len(tokens) - 1) * (_ADDR + _FEE):
        raise ValueError("every token must be a 20-byte address")
    return bytes(out)


def decode_path(path: bytes) -> tuple[tuple[Address, ...], tuple[int, ...]]:
    """The inverse of encode_path (for logs and checks)."""
    if len(path) < _ADDR + _FEE + _ADDR or (len(path) - _ADDR) % (_ADDR + _FEE):
        raise ValueError(f"not a packed Uniswap V3 path ({len(path)} bytes)")
    tokens = [to_checksum_address(path[:_ADDR])]
    fees = []
    for i in range(_ADDR, len(path), _ADDR + _FEE):
        fees.append(int.from_bytes(path[i : i + _FEE], "big"))
        tokens.append(to_checksum_address(path[i + _FEE : i + _FEE + _ADDR]))
    return tuple(tokens), tuple(fees)


def _decode_quote(data: bytes) -> QuoteResult:
    amount_out, _prices, _ticks, gas = QUOTE_EXACT_INPUT.decode(data)
    return QuoteResult(amount_out, gas)


async def quote_exact_input(rpc: RpcClient, quoter: Address, path: bytes, amount_in: int,
                            block: int | str) -> QuoteResult:
    """QuoterV2.quoteExactInput at `block`; a revert (no pool, no liquidity) raises ExecutionReverted."""
    data = await rpc.eth_call(quoter, QUOTE_EXACT_INPUT.encode(path, amount_in), block)
    return _decode_quote(data)


def candidate_paths(token_in: Address, token_out: Address, *, fee_tiers: Sequence[int] = FEE_TIERS,
                    via: Sequence[Address] = ()) -> list[tuple[tuple[Address, ...], tuple[int, ...]]]:
    """Every single hop at each tier, and every two-hop route through each `via` token."""
    if token_in.lower() == token_out.lower():
        raise ValueError("token_in and token_out are the same token: nothing to swap")
    out: list[tuple[tuple[Address, ...], tuple[int, ...]]] = [
        ((token_in, token_out), (fee,)) for fee in fee_tiers
    ]
    for mid in via:
        if mid.lower() in (token_in.lower(), token_out.lower()):
            continue
        out += [((token_in, mid, token_out), (f1, f2)) for f1, f2 in product(fee_tiers, repeat=2)]
    return out


async def quote_routes(rpc: RpcClient, quoter: Address, token_in: Address, token_out: Address,
                       amount_in: int, block: int | str, *, fee_tiers: Sequence[int] = FEE_TIERS,
                       via: Sequence[Address] = (), multicall_address: str = MULTICALL3_ADDRESS
                       ) -> list[Route]:
    """Quote every candidate route in one Multicall3 call; the ones that exist, best output first.

    Ties on output go to fewer hops, then lower gas estimate. Gas is not netted against the
    output here: what a unit of gas is worth in token_out is the strategy's call.
    """
    paths = candidate_paths(token_in, token_out, fee_tiers=fee_tiers, via=via)
    return await quote_paths(rpc, quoter, paths, amount_in, block, multicall_address=multicall_address)


async def quote_paths(rpc: RpcClient, quoter: Address,
                      paths: Sequence[tuple[Sequence[Address], Sequence[int]]], amount_in: int,
                      block: int | str, *, multicall_address: str = MULTICALL3_ADDRESS) -> list[Route]:
    """Quote the given (tokens, fees) paths in one Multicall3 call; the ones that pay, best first."""
    if not paths:
        return []
    calls = [(quoter, QUOTE_EXACT_INPUT.encode(encode_path(t, f), amount_in)) for t, f in paths]
    gas = min(QUOTE_GAS_PER_ROUTE * len(calls), DEFAULT_GAS_PER_BATCH)
    results = await multicall(rpc, calls, block, batch_size=len(calls), gas_per_batch=gas,
                              address=multicall_address)
    routes = []
    for (tokens, fees), (ok, data) in zip(paths, results, strict=True):
        if not ok or not data:
            continue
        q = _decode_quote(data)
        if q.amount_out > 0:
            tokens_cs = tuple(to_checksum_address(t) for t in tokens)
            routes.append(Route(tokens_cs, tuple(fees), amount_in, q.amount_out, q.gas_estimate))
    routes.sort(key=lambda r: (-r.amount_out, r.hops, r.gas_estimate))
    return routes


async def best_route(rpc: RpcClient, quoter: Address, token_in: Address, token_out: Address,
                     amount_in: int, block: int | str, *, fee_tiers: Sequence[int] = FEE_TIERS,
                     via: Sequence[Address] = (), multicall_address: str = MULTICALL3_ADDRESS
                     ) -> Route | None:
    """The route with the largest output, or None when no pool connects the two tokens.

    `via` is the list of hub tokens for two-hop routes; pass the market's WETH (and USDC).
    """
    routes = await quote_routes(rpc, quoter, token_in, token_out, amount_in, block, fee_tiers=fee_tiers,
                                via=via, multicall_address=multicall_address)
    return routes[0] if routes else None
