"""RpcClient: error mapping and retry policy (fake node), happy paths (real anvil)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from eth_account import Account

from keeper.chain.rpc import RpcClient, classify_error, outcome_of, redact_url
from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionReverted,
    NonceTooLow,
    RpcError,
    RpcRangeTooLarge,
    RpcRateLimited,
    RpcRefused,
    RpcTimeout,
    RpcTransportError,
    TxNotAccepted,
    TxUnderpriced,
)

if TYPE_CHECKING:
    from conftest import Chain, FakeNode

LOGGER_ADDRESS = "0x000000000000000000000000000000000000bEEF"
LOGGER_CODE = "0x60006000a000"  # PUSH1 0 PUSH1 0 LOG0 STOP: one empty log per call


def fast_client(url: str, **kw: Any) -> RpcClient:
    opts: dict[str, Any] = {"timeout_s": 0.3, "max_retries": 2, "backoff_base_s": 0.001}
    return RpcClient(url, **(opts | kw))


# -- pure mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://eth-mainnet.g.alchemy.com/v2/abcKEY123", "https://eth-mainnet.g.alchemy.com"),
        ("https://user:pass@rpc.example.org:8545/path?key=1", "https://rpc.example.org:8545"),
        ("wss://mainnet.infura.io/ws/v3/0123456789abcdef", "wss://mainnet.infura.io"),
        ("not a url", "<redacted-url>"),
    ],
)
def test_redact_url_keeps_scheme_and_host_only(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("kw", "cls"),
    [
        ({"http_status": 429}, RpcRateLimited),
        ({"http_status": 503}, RpcRefused),
        ({"http_status": 502}, RpcTransportError),
        ({"http_status": 504}, RpcTimeout),
        ({"http_status": 401}, RpcError),
        ({"code": -32005, "message": "limit exceeded"}, RpcRateLimited),
        ({"code": -32000, "message": "Your app has exceeded its compute units"}, RpcRateLimited),
        ({"code": 3, "message": "execution reverted", "data": "0x08c379a0"}, ExecutionReverted),
        ({"code": -32000, "message": "nonce too low: next nonce 5, tx nonce 4"}, NonceTooLow),
        ({"code": -32000, "message": "replacement transaction underpriced"}, TxUnderpriced),
        ({"code": -32000, "message": "max fee per gas less than block base fee"}, TxUnderpriced),
        ({"code": -32601, "message": "the method eth_foo does not exist"}, RpcError),
    ],
)
def test_classify_error_maps_into_the_tree(kw: dict[str, Any], cls: type[RpcError]) -> None:
    err = classify_error("eth_call", **kw)
    assert type(err) is cls
    assert err.method == "eth_call"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (-32005, "query returned more than 10000 results"),
        (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K"),
        (-32000, "block range is too wide"),
        (-32602, "range too large, max 5000 blocks"),
        (-32000, "exceed maximum block range: 50000"),
    ],
)
def test_getlogs_caps_map_to_range_too_large_not_rate_limited(code: int, message: str) -> None:
    err = classify_error("eth_getLogs", code=code, message=message)
    assert isinstance(err, RpcRangeTooLarge)
    assert not isinstance(err, TRANSIENT_ERRORS)


def test_revert_data_is_normalised_to_hex() -> None:
    nested = classify_error("eth_call", code=-32000, message="revert", data={"data": "0xABCD"})
    assert nested.data == "0xabcd"
    empty = classify_error("eth_call", code=-32000, message="execution reverted")
    assert empty.data == "0x"


def test_outcome_labels_distinguish_error_kinds() -> None:
    assert outcome_of(123) == "ok"
    assert outcome_of(RpcRateLimited("x")) == "rate_limited"
    assert outcome_of(ExecutionReverted("x")) == "reverted"
    assert outcome_of(RpcError("x")) == "error"


# -- retry policy on a fake node -------------------------------------------------------


async def test_http_429_is_retried_until_success(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.http(429), fake_node.http(429), fake_node.result("0x10")]
    seen: list[tuple[str, str]] = []
    async with fast_client(fake_node.url, on_request=lambda m, s, o: seen.append((m, o))) as rpc:
        assert await rpc.block_number() == 16
    assert len(fake_node.requests) == 3
    assert seen == [
        ("eth_blockNumber", "rate_limited"),
        ("eth_blockNumber", "rate_limited"),
        ("eth_blockNumber", "ok"),
    ]


async def test_rate_limit_retries_stop_after_max_retries(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.error(-32005, "limit exceeded")]
    async with fast_client(fake_node.url, max_retries=3) as rpc:
        with pytest.raises(RpcRateLimited):
            await rpc.block_number()
    assert len(fake_node.requests) == 4


async def test_hanging_node_raises_rpc_timeout_after_bounded_attempts(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.hang(5)]
    t0 = time.monotonic()
    async with fast_client(fake_node.url, timeout_s=0.2, max_retries=1) as rpc:
        with pytest.raises(RpcTimeout) as info:
            await rpc.chain_id()
    assert time.monotonic() - t0 < 2
    assert len(fake_node.requests) == 2
    assert "SECRET-API-KEY" not in str(info.value)


async def test_non_json_502_is_a_retried_transport_error(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.http(502, "<html>Bad Gateway</html>"), fake_node.result("0x1")]
    async with fast_client(fake_node.url) as rpc:
        assert await rpc.chain_id() == 1
    assert len(fake_node.requests) == 2


async def test_revert_sent_as_http_500_is_execution_reverted(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.error(3, "execution reverted", "0xdeadbeef", status=500)]
    async with fast_client(fake_node.url) as rpc:
        with pytest.raises(ExecutionReverted) as info:
            await rpc.eth_call("0x000000000000000000000000000000000000dEaD", b"")
    assert info.value.data == "0xdeadbeef"
    assert len(fake_node.requests) == 1  # not transient: no retry


async def test_getlogs_range_error_is_not_retried(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.error(-32005, "query returned more than 10000 results")]
    async with fast_client(fake_node.url) as rpc:
        with pytest.raises(RpcRangeTooLarge):
            await rpc.get_logs({"fromBlock": 0, "toBlock": 1_000_000})
    assert len(fake_node.requests) == 1
    assert fake_node.requests[0]["params"][0]["toBlock"] == hex(1_000_000)


@pytest.mark.parametrize("refusal", ["429", "503", "-32005"])
async def test_refused_broadcast_is_resent_as_the_same_bytes_until_accepted(
    fake_node: FakeNode, refusal: str
) -> None:
    if refusal == "-32005":
        refuse = fake_node.error(-32005, "limit exceeded")
    else:
        refuse = fake_node.http(int(refusal))
    fake_node.script = [refuse, refuse, fake_node.result("0x" + "ab" * 32)]
    async with fast_client(fake_node.url) as rpc:
        assert await rpc.send_raw_transaction(b"\x02\x01") == "0x" + "ab" * 32
    assert [r["params"] for r in fake_node.requests] == [["0x0201"]] * 3


async def test_broadcast_refused_until_its_deadline_is_not_accepted(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.http(429)]
    async with fast_client(fake_node.url, send_deadline_s=2.0) as rpc:
        with pytest.raises(TxNotAccepted) as info:
            await rpc.send_raw_transaction(b"\x02\x01")
    assert not isinstance(info.value, TRANSIENT_ERRORS)  # not "uncertain": nothing went out
    assert len(fake_node.requests) >= 2
    assert {json.dumps(r["params"]) for r in fake_node.requests} == {'["0x0201"]'}


async def test_broadcast_is_uncertain_only_when_it_may_have_reached_the_node(
    fake_node: FakeNode, dead_url: str
) -> None:
    # Refused before sending (nothing listens): not accepted, never uncertain.
    async with fast_client(dead_url, send_deadline_s=0.2) as rpc:
        with pytest.raises(TxNotAccepted):
            await rpc.send_raw_transaction(b"\x02\x01")
    # Sent, then no answer / connection lost mid-answer: uncertain (transient), sent once.
    for step, error in ((fake_node.hang(5), RpcTimeout), (fake_node.drop(), RpcTransportError)):
        fake_node.requests.clear()
        fake_node.script = [step]
        async with fast_client(fake_node.url, timeout_s=0.2) as rpc:
            with pytest.raises(error) as info:
                await rpc.send_raw_transaction(b"\x02\x01")
        assert not isinstance(info.value, RpcRefused)
        assert len(fake_node.requests) == 1


@pytest.mark.parametrize("failure", ["drop", "hang"])
async def test_send_methods_raise_transport_failures_immediately(
    fake_node: FakeNode, failure: str
) -> None:
    fake_node.script = [fake_node.drop() if failure == "drop" else fake_node.hang(5)]
    async with fast_client(fake_node.url, timeout_s=0.2, max_retries=4) as rpc:
        for method in ("eth_sendRawTransaction", "eth_sendBundle", "eth_sendPrivateTransaction"):
            with pytest.raises((RpcTransportError, RpcTimeout)):
                await rpc.call(method, ["0x00"])
    assert [r["method"] for r in fake_node.requests] == [
        "eth_sendRawTransaction",
        "eth_sendBundle",
        "eth_sendPrivateTransaction",
    ]


async def test_connection_refused_error_hides_the_url_path(dead_url: str) -> None:
    async with fast_client(dead_url, max_retries=1) as rpc:
        with pytest.raises(RpcTransportError) as info:
            await rpc.block_number()
    err = info.value
    assert "127.0.0.1" in str(err)
    assert "SECRET" not in f"{err} {err!r} {err.args}"
    assert err.__cause__ is None and err.__suppress_context__
    assert "SECRET" not in repr(rpc)


async def test_observer_failure_does_not_break_requests(fake_node: FakeNode) -> None:
    def broken(method: str, seconds: float, outcome: str) -> None:
        raise ValueError("metrics backend down")

    fake_node.script = [fake_node.result("0x5")]
    async with fast_client(fake_node.url, on_request=broken) as rpc:
        assert await rpc.block_number() == 5


async def test_call_before_start_raises_clearly() -> None:
    rpc = RpcClient("http://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="not started"):
        await rpc.block_number()


# -- batches on a fake node ------------------------------------------------------------


async def test_batch_is_one_post_with_results_in_request_order(fake_node: FakeNode) -> None:
    def answer(item: dict[str, Any]) -> dict[str, Any]:
        if item["method"] == "eth_getBalance":
            return {"error": {"code": -32602, "message": "invalid address"}}
        return {"result": item["params"][0]}

    fake_node.script = [fake_node.batch(answer, reverse=True)]
    calls = [("echo", ["a"]), ("eth_getBalance", ["0xzz"]), ("echo", ["c"]), ("echo", ["d"])]
    async with fast_client(fake_node.url) as rpc:
        out = await rpc.batch(calls)
    assert len(fake_node.requests) == 1 and isinstance(fake_node.requests[0], list)
    assert out[0] == "a" and out[2] == "c" and out[3] == "d"
    assert isinstance(out[1], RpcError) and out[1].code == -32602
    assert out[1].method == "eth_getBalance"


async def test_batch_is_split_so_no_post_exceeds_the_body_cap(fake_node: FakeNode) -> None:
    # Nodes refuse large bodies (Anvil near 2 MB): the client cuts batches by size, not only count.
    fake_node.script = [fake_node.batch(lambda item: {"result": item["params"][0][:4]})]
    calls = [("echo", ["0x" + f"{i:04x}" * 250]) for i in range(40)]  # ~1 kB each
    async with RpcClient(fake_node.url, max_batch=1000, max_batch_bytes=10_000, max_retries=0) as rpc:
        out = await rpc.batch(calls)
    assert out == [c[1][0][:4] for c in calls]
    assert len(fake_node.requests) >= 4
    assert all(len(json.dumps(r)) <= 10_000 + 1_100 for r in fake_node.requests)
    assert sum(len(r) for r in fake_node.requests) == 40


async def test_batch_resends_only_transiently_failed_items(fake_node: FakeNode) -> None:
    def first(item: dict[str, Any]) -> dict[str, Any]:
        if item["params"] == ["b"]:
            return {"error": {"code": -32005, "message": "rate limit"}}
        if item["params"] == ["c"]:
            return {"error": {"code": 3, "message": "execution reverted", "data": "0x"}}
        return {"result": item["params"][0]}

    fake_node.script = [
        fake_node.batch(first),
        fake_node.batch(lambda item: {"result": "B"}),
    ]
    calls = [("echo", ["a"]), ("echo", ["b"]), ("echo", ["c"]), ("eth_sendRawTransaction", ["d"])]
    async with fast_client(fake_node.url) as rpc:
        out = await rpc.batch(calls)
    assert out[0] == "a" and out[1] == "B" and out[3] == "d"
    assert isinstance(out[2], ExecutionReverted)
    retried = fake_node.requests[1]
    assert [(i["method"], i["params"]) for i in retried] == [("echo", ["b"])]


async def test_batch_item_retries_stop_and_leave_the_error_in_place(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.batch(lambda i: {"error": {"code": -32005, "message": "x"}})]
    async with fast_client(fake_node.url, max_retries=2) as rpc:
        out = await rpc.batch([("echo", [1]), ("echo", [2])])
    assert all(isinstance(r, RpcRateLimited) for r in out)
    assert len(fake_node.requests) == 3


async def test_batch_containing_a_send_is_not_retried_on_transport_error(
    fake_node: FakeNode,
) -> None:
    fake_node.script = [fake_node.drop(), fake_node.batch(lambda i: {"result": "0x1"})]
    async with fast_client(fake_node.url, max_retries=4) as rpc:
        with pytest.raises(RpcTransportError):
            await rpc.batch([("eth_blockNumber", []), ("eth_sendRawTransaction", ["0x00"])])
    assert len(fake_node.requests) == 1


async def test_whole_batch_rejection_raises_after_retries(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.error(-32005, "batch rate limit exceeded", status=200)]
    async with fast_client(fake_node.url, max_retries=1) as rpc:
        with pytest.raises(RpcRateLimited):
            await rpc.batch([("eth_blockNumber", []), ("eth_chainId", [])])
    assert len(fake_node.requests) == 2


async def test_large_batches_are_split_into_max_batch_posts(fake_node: FakeNode) -> None:
    fake_node.script = [fake_node.batch(lambda i: {"result": i["params"][0]})]
    async with fast_client(fake_node.url, max_batch=4) as rpc:
        out = await rpc.batch([("echo", [n]) for n in range(10)])
    assert out == list(range(10))
    assert sorted(len(r) for r in fake_node.requests) == [2, 4, 4]


async def test_empty_batch_sends_nothing(fake_node: FakeNode) -> None:
    async with fast_client(fake_node.url) as rpc:
        assert await rpc.batch([]) == []
    assert fake_node.requests == []


# -- real chain ------------------------------------------------------------------------


async def test_reads_head_and_chain_id_from_anvil(rpc: RpcClient) -> None:
    assert await rpc.chain_id() == 31337
    head = await rpc.block_number()
    block = await rpc.get_block(head)
    assert block is not None and int(block["number"], 16) == head
    by_hash = await rpc.get_block(block["hash"])
    assert by_hash is not None and by_hash["hash"] == block["hash"]


async def test_batch_on_anvil_returns_results_and_item_errors(rpc: RpcClient) -> None:
    out = await rpc.batch([("eth_chainId", []), ("eth_noSuchMethod", []), ("eth_blockNumber", [])])
    assert out[0] == hex(31337)
    assert isinstance(out[1], RpcError) and not isinstance(out[1], TRANSIENT_ERRORS)
    assert isinstance(out[2], str) and out[2].startswith("0x")


async def test_eth_call_revert_carries_revert_data(rpc: RpcClient, chain: Chain) -> None:
    with pytest.raises(ExecutionReverted) as info:
        await rpc.eth_call(chain.reverter, b"", gas=100_000)
    assert info.value.data == "0xdeadbeef"


async def test_balance_code_and_nonce_reads(rpc: RpcClient, chain: Chain) -> None:
    assert await rpc.get_balance(chain.account) > 10**21
    assert await rpc.get_code(chain.reverter) == bytes.fromhex(chain.reverter_code[2:])
    assert await rpc.get_code(chain.account) == b""
    assert await rpc.get_transaction_count(chain.account, "latest") >= 0


async def test_signed_transfer_is_mined_and_its_log_is_found(rpc: RpcClient, chain: Chain) -> None:
    await rpc.call("anvil_setCode", [LOGGER_ADDRESS, LOGGER_CODE])
    fees = await rpc.fee_history(1, "latest", [50])
    base_fee = int(fees["baseFeePerGas"][-1], 16)
    tx = {
        "chainId": 31337,
        "nonce": await rpc.get_transaction_count(chain.account),
        "to": LOGGER_ADDRESS,
        "value": 7,
        "gas": 60_000,
        "maxFeePerGas": 2 * base_fee + 10**9,
        "maxPriorityFeePerGas": 10**9,
        "type": 2,
    }
    signed = Account.sign_transaction(tx, chain.key)
    tx_hash = await rpc.send_raw_transaction(signed.raw_transaction)
    receipt = await rpc.wait_for_receipt(tx_hash, timeout=10, poll_interval=0.05)
    assert receipt["status"] == "0x1"
    block = int(receipt["blockNumber"], 16)
    logs = await rpc.get_logs({"fromBlock": block, "toBlock": block, "address": LOGGER_ADDRESS})
    assert [log["transactionHash"] for log in logs] == [tx_hash]
    assert await rpc.get_balance(LOGGER_ADDRESS) >= 7

    with pytest.raises(NonceTooLow):  # same nonce again
        await rpc.send_raw_transaction(Account.sign_transaction(tx, chain.key).raw_transaction)


async def test_wait_for_receipt_gives_up_at_the_deadline(rpc: RpcClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(RpcTimeout, match="no receipt"):
        await rpc.wait_for_receipt("0x" + "11" * 32, timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - t0 < 2
