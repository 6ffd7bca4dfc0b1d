"""RpcProxy in front of a real anvil: request counts, seeded faults, exemptions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from eth_account import Account

from keeper.chain.rpc import RpcClient
from keeper.devnet.proxy import RpcProxy
from keeper.errors import RpcRateLimited, RpcRefused, RpcTimeout, RpcTransportError, TxNotAccepted

if TYPE_CHECKING:
    from conftest import Chain


def client(url: str, timeout_s: float = 5.0) -> RpcClient:
    return RpcClient(url, timeout_s=timeout_s, max_retries=0)


async def test_counts_per_method_and_per_batch_item_then_reset(chain: Chain) -> None:
    async with RpcProxy(chain.url) as proxy, client(proxy.url) as rpc:
        assert await rpc.chain_id() == chain.chain_id
        await rpc.block_number()
        out = await rpc.batch([("eth_blockNumber", []), ("eth_getBalance", [chain.account, "latest"])] * 3)
        assert all(not isinstance(r, Exception) for r in out)
        assert proxy.counts() == {"eth_chainId": 1, "eth_blockNumber": 4, "eth_getBalance": 3}
        stats = proxy.stats()
        assert stats["http_requests"] == 3
        assert stats["requests"] == 8
        assert stats["faulted_http_requests"] == 0
        proxy.reset()
        assert proxy.counts() == {}
        assert proxy.stats()["http_requests"] == 0


@pytest.mark.parametrize("kind", ["503", "429", "-32005"])
async def test_refusals_never_reach_the_node(chain: Chain, kind: str) -> None:
    acct = Account.from_key(chain.key)
    async with client(chain.url) as direct:
        nonce = await direct.get_transaction_count(acct.address)
        tx = {"to": acct.address, "value": 1, "gas": 21_000, "maxFeePerGas": 10**11,
              "maxPriorityFeePerGas": 1, "nonce": nonce, "chainId": chain.chain_id, "type": 2}
        raw = acct.sign_transaction(tx).raw_transaction
        async with RpcProxy(chain.url, fault_rate=1.0, faults=[kind]) as proxy:
            async with RpcClient(proxy.url, max_retries=0, send_deadline_s=2.0) as rpc:
                with pytest.raises(TxNotAccepted):
                    await rpc.send_raw_transaction(raw)
                with pytest.raises(RpcRateLimited if kind != "503" else RpcRefused):
                    await rpc.block_number()
            assert set(proxy.stats()["faults"]) == {kind}
            assert proxy.counts()["eth_sendRawTransaction"] >= 2  # re-sent while refused
        # None of the refused copies reached the node's pool: the nonce did not move.
        assert await direct.get_transaction_count(acct.address, "pending") == nonce


async def test_stall_answers_late_and_a_short_deadline_times_out(chain: Chain) -> None:
    async with RpcProxy(chain.url, fault_rate=1.0, faults=["stall"], stall_s=0.5) as proxy:
        async with client(proxy.url) as rpc:
            assert await rpc.chain_id() == chain.chain_id  # the stalled answer is the real one
        async with client(proxy.url, timeout_s=0.1) as rpc:
            with pytest.raises(RpcTimeout):
                await rpc.chain_id()
        assert proxy.stats()["faults"] == {"stall": 2}


async def test_faults_are_seeded_and_near_the_rate(chain: Chain) -> None:
    sequences = []
    for _ in range(2):
        async with RpcProxy(chain.url, fault_rate=0.2, seed=7, faults=["503", "429", "-32005"]) as proxy:
            async with client(proxy.url) as rpc:
                seq = []
                for _ in range(200):
                    try:
                        await rpc.block_number()
                        seq.append("ok")
                    except (RpcTransportError, RpcRateLimited) as e:
                        seq.append(type(e).__name__)
            stats = proxy.stats()
        assert stats["http_requests"] == 200
        assert 20 <= stats["faulted_http_requests"] <= 60
        assert set(stats["faults"]) == {"503", "429", "-32005"}
        assert seq.count("ok") == 200 - stats["faulted_http_requests"]
        sequences.append(seq)
    assert sequences[0] == sequences[1]


async def test_exempt_methods_and_devnet_control_are_never_faulted(chain: Chain) -> None:
    async with RpcProxy(chain.url, fault_rate=1.0, faults=["503"], exempt=["eth_chainId"]) as proxy:
        async with client(proxy.url) as rpc:
            assert await rpc.chain_id() == chain.chain_id
            snap = await rpc.call("evm_snapshot", [])
            assert await rpc.call("evm_revert", [snap]) is True
            with pytest.raises(RpcTransportError):
                await rpc.block_number()
        assert proxy.stats()["faults"] == {"503": 1}
