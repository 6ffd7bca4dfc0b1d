"""Multicall3.aggregate3 on a real anvil; the wire shape checked on a fake node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

from keeper.chain.multicall import (
    AGGREGATE3_SELECTOR,
    MULTICALL3_ADDRESS,
    decode_aggregate3,
    encode_aggregate3,
    multicall,
)
from keeper.chain.rpc import RpcClient
from keeper.errors import ExecutionReverted, RpcError

if TYPE_CHECKING:
    from conftest import Chain, FakeNode

GET_ETH_BALANCE = keccak(text="getEthBalance(address)")[:4]
GET_CHAIN_ID = keccak(text="getChainId()")[:4]


def balance_call(addr: str) -> tuple[str, bytes]:
    return (MULTICALL3_ADDRESS, GET_ETH_BALANCE + encode(["address"], [addr]))


def test_aggregate3_selector_is_the_canonical_one() -> None:
    assert AGGREGATE3_SELECTOR.hex() == "82ad56cb"


def test_encode_then_decode_keeps_call_order() -> None:
    calls = [(MULTICALL3_ADDRESS, b"\x01\x02"), ("0x" + "11" * 20, b"")]
    data = encode_aggregate3(calls, allow_failure=False)
    assert data[:4] == AGGREGATE3_SELECTOR
    (decoded,) = decode(["(address,bool,bytes)[]"], data[4:])
    assert [(to_checksum_address(a), f, d) for a, f, d in decoded] == [
        (MULTICALL3_ADDRESS, False, b"\x01\x02"),
        (to_checksum_address("0x" + "11" * 20), False, b""),
    ]
    reply = encode(["(bool,bytes)[]"], [[(True, b"\xaa"), (False, b"")]])
    assert decode_aggregate3(reply) == [(True, b"\xaa"), (False, b"")]


async def test_results_come_back_in_call_order_across_chunks(rpc: RpcClient) -> None:
    addrs = [to_checksum_address(f"0x{n:040x}") for n in range(0x1000, 0x1000 + 11)]
    for n, a in enumerate(addrs):
        await rpc.call("anvil_setBalance", [a, hex(n + 1)])
    out = await multicall(rpc, [balance_call(a) for a in addrs], "latest", batch_size=3)
    assert [ok for ok, _ in out] == [True] * 11
    assert [decode(["uint256"], ret)[0] for _, ret in out] == list(range(1, 12))


async def test_failed_call_is_reported_in_place_with_its_revert_data(
    rpc: RpcClient, chain: Chain
) -> None:
    calls = [
        (chain.multicall3, GET_CHAIN_ID),
        (chain.reverter, b""),
        (chain.multicall3, GET_CHAIN_ID),
    ]
    out = await multicall(rpc, calls, batch_size=2)
    assert out[1] == (False, bytes.fromhex("deadbeef"))
    assert out[0][0] and out[2][0]
    assert decode(["uint256"], out[2][1])[0] == chain.chain_id


async def test_disallowed_failure_raises_execution_reverted(rpc: RpcClient, chain: Chain) -> None:
    with pytest.raises(ExecutionReverted):
        await multicall(rpc, [(chain.reverter, b"")], allow_failure=False)


async def test_thousand_calls_fit_when_gas_is_passed_explicitly(rpc: RpcClient) -> None:
    # Above anvil's 30M block gas limit in total; each 500-call chunk carries its own budget.
    head = await rpc.block_number()
    calls = [balance_call(f"0x{n:040x}") for n in range(1, 1001)]
    out = await multicall(rpc, calls, head, batch_size=500, gas_per_batch=50_000_000)
    assert len(out) == 1000 and all(ok for ok, _ in out)


async def test_too_little_gas_never_passes_as_success(rpc: RpcClient) -> None:
    calls = [balance_call(f"0x{n:040x}") for n in range(1, 51)]
    try:
        out = await multicall(rpc, calls, batch_size=50, gas_per_batch=250_000)
    except RpcError:
        return  # the whole aggregate3 ran out of gas: loud, fine
    assert not all(ok for ok, _ in out)


async def test_missing_multicall3_is_a_clear_error(rpc: RpcClient, chain: Chain) -> None:
    with pytest.raises(RpcError, match="Multicall3 deployed"):
        await multicall(rpc, [balance_call(chain.account)], address=chain.account)


async def test_chunks_travel_as_one_batch_with_explicit_gas(fake_node: FakeNode) -> None:
    def answer(item: dict[str, Any]) -> dict[str, Any]:
        return {"result": "0x" + encode(["(bool,bytes)[]"], [[(True, b"")] * 2]).hex()}

    fake_node.script = [fake_node.batch(answer)]
    calls = [balance_call(f"0x{n:040x}") for n in range(1, 7)]
    async with RpcClient(fake_node.url, timeout_s=1, max_retries=0) as rpc:
        out = await multicall(rpc, calls, 1234, batch_size=2, gas_per_batch=7_000_000)
    assert len(out) == 6
    assert len(fake_node.requests) == 1
    (post,) = fake_node.requests
    assert [i["method"] for i in post] == ["eth_call"] * 3
    for item in post:
        tx, block = item["params"]
        assert tx["to"] == MULTICALL3_ADDRESS and tx["gas"] == hex(7_000_000)
        assert block == hex(1234)


async def test_no_calls_means_no_request(fake_node: FakeNode) -> None:
    async with RpcClient(fake_node.url) as rpc:
        assert await multicall(rpc, []) == []
    assert fake_node.requests == []
