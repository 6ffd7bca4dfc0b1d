"""A failing read costs its chunk for one block, never the health refresh (real Aave on Anvil)."""

from __future__ import annotations

from keeper.chain.rpc import RpcClient
from keeper.devnet.proxy import RpcProxy
from keeper.devnet.seed import shock
from keeper.devnet.stack import Devnet
from keeper.health.tracker import HealthTracker
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import discover_market


async def test_a_failed_health_chunk_is_read_next_block_while_the_others_go_on(chain: Devnet) -> None:
    market = await discover_market(chain.rpc, chain.deployment.pool_addresses_provider)
    users = [p.address for p in chain.plans]
    truth = HealthTracker(chain.rpc, market, source="chain")
    await truth.start(users, await chain.rpc.block_number())
    await shock(chain.rpc, chain.deployment, "WETH", -20)
    block = await chain.rpc.block_number()
    expected = (await truth.update(block)).liquidatable
    assert len(expected) > 10

    metrics = Metrics()
    # Only eth_call can fail, one aggregate3 per POST, no retries: some chunks fail for good.
    async with RpcProxy(chain.url, fault_rate=0.4, seed=5, faults=["503"], only=["eth_call"]) as proxy:
        proxy.fault_rate = 0.0  # a clean start: the mirror is synced before the faults
        async with RpcClient(proxy.url, max_retries=0, max_batch=1) as rpc:
            tracker = HealthTracker(rpc, market, source="mirror", batch_size=5, metrics=metrics)
            await tracker.start(users, block - 1)
            proxy.fault_rate = 0.4
            view = await tracker.update(block)
            missed = tracker.unread | tracker.unrefreshed
            assert missed & {h.user for h in expected}, "the seeded faults should fail a liquidatable chunk"
            assert view.liquidatable, "the chunks that answered still count"
            found = {h.user for h in view.liquidatable}
            assert found == {h.user for h in expected} - missed
            # Next block (here: the same block again, faults gone) reads what was missed.
            proxy.fault_rate = 0.0
            again = await tracker.update(block)
    assert again.liquidatable == expected
    assert not tracker.unread and not tracker.unrefreshed
    text = metrics.render().decode()
    assert 'keeper_read_chunks_failed_total{stage="account_data"}' in text
