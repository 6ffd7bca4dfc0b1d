"""Many view calls in few round trips via Multicall3.aggregate3, encoded with eth-abi directly.

This is the hot path of every health cycle (thousands of getUserAccountData per block),
so it skips web3 contract objects: one selector, one abi encode, one decode per chunk.

Why gas is passed explicitly on every chunk: an eth_call without `gas` gets the node's
default, which is the RPC gas cap on geth (50M) but the block gas limit on others (30M
on anvil and many L2 nodes), and providers differ again. getUserAccountData costs ~46k
gas on a large market, so 1,000 of them is ~46M: above some defaults, and Multicall3
with allowFailure turns a subcall that runs out of gas into a quiet (False, b"") instead
of an error. A fixed `gas_per_batch` (<= the node's cap; geth clamps anything above its
cap) plus a `batch_size` sized to fit it makes the budget deterministic everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils import keccak

from keeper.chain.rpc import RpcClient, call_params
from keeper.errors import RpcError

MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
AGGREGATE3_SELECTOR = keccak(text="aggregate3((address,bool,bytes)[])")[:4]  # 0x82ad56cb
DEFAULT_GAS_PER_BATCH = 50_000_000  # geth's default RPC gas cap

Call = tuple[str, bytes]  # (target address, calldata)


def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def encode_aggregate3(calls: Sequence[Call], allow_failure: bool = True) -> bytes:
    """Calldata for aggregate3(Call3[]) with the same allowFailure for every call.

    Encoded by hand (the hot path of every cycle; eth-abi's generic encoder was half of the
    health stage's CPU in the profile): byte for byte what eth-abi produces, which a unit
    test checks.
    """
    flag = _word(1 if allow_failure else 0)
    heads, tails, offset = [], [], 32 * len(calls)
    for target, data in calls:
        data = bytes(data)
        pad = -len(data) % 32
        tail = b"".join((bytes(12), bytes.fromhex(target[2:]), flag, _word(96), _word(len(data)),
                         data, bytes(pad)))
        heads.append(_word(offset))
        tails.append(tail)
        offset += len(tail)
    return AGGREGATE3_SELECTOR + b"".join((_word(32), _word(len(calls)), *heads, *tails))


def decode_aggregate3(data: bytes) -> list[tuple[bool, bytes]]:
    """aggregate3's return value: one (success, returnData) per call, in call order.

    Decoded by hand like encode_aggregate3; malformed data raises DecodingError as eth-abi's would.
    """
    try:
        base = int.from_bytes(data[0:32], "big")
        n = int.from_bytes(data[base : base + 32], "big")
        start = base + 32
        if start + 32 * n > len(data):
            raise DecodingError("aggregate3 result: array runs past the data")
        out = []
        for i in range(n):
            at = start + int.from_bytes(data[start + 32 * i : start + 32 * i + 32], "big")
            ok = int.from_bytes(data[at : at + 32], "big")
            rel = int.from_bytes(data[at + 32 : at + 64], "big")
            size = int.from_bytes(data[at + rel : at + rel + 32], "big")
            ret = data[at + rel + 32 : at + rel + 32 + size]
            if ok > 1 or len(ret) != size or at + 64 > len(data):
                raise DecodingError("aggregate3 result: malformed element")
            out.append((ok == 1, bytes(ret)))
        return out
    except (IndexError, ValueError) as e:
        raise DecodingError(f"aggregate3 result: {e}") from None


async def multicall(
    rpc: RpcClient,
    calls: Sequence[Call],
    block: int | str = "latest",
    *,
    batch_size: int = 500,
    gas_per_batch: int = DEFAULT_GAS_PER_BATCH,
    allow_failure: bool = True,
    address: str = MULTICALL3_ADDRESS,
    partial: bool = False,
) -> list[Any]:
    """Run `calls` at `block`, `batch_size` per aggregate3, all chunks in one JSON-RPC batch.

    Returns (success, returnData) per call in input order. A failed call is (False, revert
    data), not an exception. Raises the chunk's RpcError if a whole aggregate3 fails
    (e.g. gas_per_batch too small for batch_size, or allow_failure=False and a call
    reverted), and RpcError if Multicall3 is missing at `address` on this chain.
    Pin `block` to a number so every chunk reads the same state.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not calls:
        return []
    chunks = [calls[i : i + batch_size] for i in range(0, len(calls), batch_size)]
    requests: list[tuple[str, Sequence[Any]]] = [
        (
            "eth_call",
            call_params(address, encode_aggregate3(c, allow_failure), block, gas_per_batch),
        )
        for c in chunks
    ]
    replies = await rpc.batch(requests, partial=partial)

    out: list[Any] = []
    for chunk, reply in zip(chunks, replies, strict=True):
        if isinstance(reply, RpcError):
            if not partial:
                raise reply
            out.extend([reply] * len(chunk))
            continue
        raw = bytes.fromhex(reply[2:] if reply.startswith("0x") else reply)
        try:
            results = decode_aggregate3(raw)
        except DecodingError:
            raise RpcError(
                f"undecodable aggregate3 reply ({len(raw)} bytes): is Multicall3 deployed at "
                f"{address} at block {block}?",
                method="eth_call",
            ) from None
        if len(results) != len(chunk):
            raise RpcError(f"aggregate3 returned {len(results)} results for {len(chunk)} calls")
        out.extend(results)
    return out


async def multicall_partial(
    rpc: RpcClient,
    calls: Sequence[Call],
    block: int | str = "latest",
    *,
    batch_size: int = 500,
    gas_per_batch: int = DEFAULT_GAS_PER_BATCH,
) -> list[tuple[bool, bytes] | RpcError]:
    """`multicall`, except that a chunk whose request failed for good leaves its RpcError in
    each of its calls' slots instead of raising: the caller uses the other chunks' answers and
    retries the failed calls later (one failing request never costs the whole read)."""
    return await multicall(rpc, calls, block, batch_size=batch_size, gas_per_batch=gas_per_batch,
                           partial=True)
