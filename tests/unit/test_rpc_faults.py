"""RPC faults cost one request, not a cycle: hedged reads, failover, broadcast to all, partial reads.

Real anvil behind RpcProxy (keeper/devnet/proxy.py) for the faults; the fake node only where
a node must answer one specific request wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eth_account import Account

from keeper.chain.multicall import multicall, multicall_partial
from keeper.chain.rpc import RpcClient
from keeper.devnet.proxy import RpcProxy
from keeper.errors import ExecutionReverted, RpcError
from keeper.metrics import Metrics
from keeper.sim.upstream import ForkUpstream

if TYPE_CHECKING:
    from conftest import Chain, FakeNode

BALANCE_OF_ZERO = bytes.fromhex("70a08231") + bytes(32)  # balanceOf(0x0)


async def test_a_stalled_read_is_hedged_and_the_first_answer_wins(fake_node: FakeNode) -> None:
    # The first copy stalls (and would answer 0x0 after 5 s); the hedge answers 0x2a at once.
    fake_node.script = [fake_node.hang(5), fake_node.result("0x2a")]
    events: list[tuple[str, str]] = []
    async with RpcClient(fake_node.url, timeout_s=10, max_retries=0, read_deadline_s=0.1,
                         on_event=lambda e, ep: events.append((e, ep))) as rpc:
        assert await rpc.call("eth_blockNumber") == "0x2a"
    assert len(fake_node.requests) == 2
    assert events == [("hedged", "0")]


async def test_a_stalling_endpoint_is_hedged_on_another_one(chain: Chain) -> None:
    async with RpcProxy(chain.url, fault_rate=1.0, faults=["stall"], stall_s=5) as slow:
        events: list[tuple[str, str]] = []
        async with RpcClient([slow.url, chain.url], timeout_s=10, max_retries=0, read_deadline_s=0.2,
                             on_event=lambda e, ep: events.append((e, ep))) as rpc:
            assert await rpc.chain_id() == chain.chain_id
            out = await rpc.batch([("eth_chainId", []), ("eth_getBalance", [chain.account, "latest"])])
            assert int(out[0], 16) == chain.chain_id and int(out[1], 16) > 0
        assert ("hedged", "1") in events
        # Hedged reads never waited out the stall: the proxy counted each once.
        assert slow.stats()["http_requests"] >= 1


async def test_reads_fail_over_and_a_failing_endpoint_cools_off(chain: Chain) -> None:
    metrics = Metrics()
    async with RpcProxy(chain.url, fault_rate=1.0, faults=["503"]) as bad:
        secret_url = bad.url + "/v3/SECRET-API-KEY"
        async with RpcClient([secret_url, chain.url], max_retries=2, backoff_base_s=0.001,
                             on_event=metrics.count_rpc_event, on_health=metrics.observe_endpoint) as rpc:
            for _ in range(10):
                assert await rpc.block_number() >= 0
            # Every read failed over at once; after 3 failures in a row endpoint 0 cools off
            # and is no longer asked first.
            assert bad.stats()["http_requests"] == 3
            assert rpc.pool.endpoints[0].cooling()
            assert rpc.pool.pick().index == 1
    text = metrics.render().decode()
    assert 'keeper_rpc_endpoint_up{endpoint="0"} 0.0' in text
    assert 'keeper_rpc_endpoint_errors{endpoint="0"} 3.0' in text
    assert 'keeper_rpc_events_total{endpoint="1",event="failover"} 3.0' in text
    assert "SECRET" not in text and "127.0.0.1" not in text


async def test_a_transaction_is_broadcast_to_every_endpoint(chain: Chain) -> None:
    acct = Account.from_key(chain.key)
    async with RpcProxy(chain.url, fault_rate=1.0, faults=["503"]) as refusing, RpcProxy(chain.url) as ok:
        async with RpcClient([refusing.url, ok.url], max_retries=0) as rpc:
            nonce = await rpc.get_transaction_count(acct.address)
            tx = {"to": acct.address, "value": 1, "gas": 21_000, "maxFeePerGas": 10**11,
                  "maxPriorityFeePerGas": 1, "nonce": nonce, "chainId": chain.chain_id, "type": 2}
            signed = acct.sign_transaction(tx)
            tx_hash = await rpc.send_raw_transaction(signed.raw_transaction)
            assert tx_hash == "0x" + signed.hash.hex().removeprefix("0x")
            receipt = await rpc.wait_for_receipt(tx_hash, timeout=10, poll_interval=0.05)
            assert int(receipt["status"], 16) == 1
        assert refusing.counts().get("eth_sendRawTransaction") == 1
        assert ok.counts().get("eth_sendRawTransaction") == 1


async def test_a_failed_chunk_leaves_its_error_and_the_other_chunks_answer(chain: Chain) -> None:
    calls = [(chain.multicall3, bytes.fromhex("42cbb15c"))] * 40  # getBlockNumber()
    async with RpcClient(chain.url) as direct:
        block = await direct.block_number()
        expected = await multicall(direct, calls, block, batch_size=4)
    # One aggregate3 per POST; half the POSTs refused, no retries: some chunks fail for good.
    async with RpcProxy(chain.url, fault_rate=0.5, seed=3, faults=["503"]) as proxy:
        async with RpcClient(proxy.url, max_retries=0, max_batch=1) as rpc:
            out = await multicall_partial(rpc, calls, block, batch_size=4)
        faulted = proxy.stats()["faulted_http_requests"]
    failed = [i for i, r in enumerate(out) if isinstance(r, RpcError)]
    assert 0 < faulted < 10
    assert len(failed) == 4 * faulted  # whole chunks, and only the faulted ones
    assert all(out[i] == expected[i] for i in range(len(calls)) if i not in failed)


async def test_the_fork_upstream_answers_through_the_keepers_client(chain: Chain) -> None:
    async with RpcProxy(chain.url, fault_rate=0.5, seed=1, faults=["503", "429", "-32005"]) as proxy:
        async with RpcClient(proxy.url, max_retries=6, backoff_base_s=0.001) as keeper_rpc, \
                ForkUpstream(keeper_rpc) as upstream, \
                RpcClient(upstream.url, max_retries=0) as fork_side, RpcClient(chain.url) as direct:
            # What Anvil's fork sees: every answer right although half the provider's requests fail.
            for _ in range(10):
                assert await fork_side.get_balance(chain.account) == await direct.get_balance(chain.account)
            out = await fork_side.batch([("eth_chainId", []), ("eth_getCode", [chain.multicall3, "latest"])])
            assert int(out[0], 16) == chain.chain_id and len(out[1]) > 100
            try:
                await fork_side.eth_call(chain.reverter, b"")
            except ExecutionReverted as e:
                assert e.data == "0xdeadbeef"  # a node's answer passes through as it was
            else:
                raise AssertionError("the revert was lost")
        assert proxy.stats()["faulted_http_requests"] > 0



async def test_a_stalled_broadcast_is_never_hedged(fake_node: FakeNode) -> None:
    # A second copy could be answered "nonce too low" because the first one was mined, which
    # would read as "nothing went out": a broadcast waits for its own answer.
    tx_hash = "0x" + "cd" * 32
    fake_node.script = [fake_node.hang(0.5), fake_node.result(tx_hash)]
    async with RpcClient(fake_node.url, timeout_s=10, read_deadline_s=0.05) as rpc:
        assert await rpc.send_raw_transaction(b"\x02\x01") == "0x0"  # the stalled copy's answer
    assert len(fake_node.requests) == 1
