"""The health stage: the mirror-backed tracker agrees with reading every borrower, and repairs drift."""

from __future__ import annotations

from keeper.devnet.seed import shock
from keeper.devnet.stack import Devnet
from keeper.health.schedule import due
from keeper.health.tracker import HealthTracker
from keeper.protocol.aave_v3 import discover_market


async def _trackers(dn: Devnet) -> tuple[HealthTracker, HealthTracker, int]:
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    block = await dn.rpc.block_number()
    users = [p.address for p in dn.plans]
    mirror = HealthTracker(dn.rpc, market, source="mirror")
    chain = HealthTracker(dn.rpc, market, source="chain")
    await mirror.start(users, block)
    await chain.start(users, block)
    return mirror, chain, block


async def test_mirror_tracker_finds_exactly_the_borrowers_the_chain_says_are_liquidatable(
    chain: Devnet,
) -> None:
    mirror, everyone, _ = await _trackers(chain)
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    block = await chain.rpc.block_number()
    by_mirror = await mirror.update(block)
    by_chain = await everyone.update(block)
    assert by_chain.liquidatable, "the shock should make borrowers liquidatable"
    assert by_mirror.liquidatable == by_chain.liquidatable  # same accounts, same numbers, same order
    assert by_mirror.drift == 0
    assert by_mirror.tracked == by_chain.tracked == len(chain.plans)
    # The point of the mirror: far fewer on-chain reads than borrowers.
    assert by_mirror.checked_on_chain < by_chain.checked_on_chain


async def test_a_drifted_mirror_is_caught_on_chain_and_repaired(chain: Devnet) -> None:
    mirror, _, _ = await _trackers(chain)
    # Pick a borrower near the line and double its mirrored debt: it looks riskier, so it is
    # re-read this very block, and the mismatch is seen and repaired.
    near = min(chain.plans, key=lambda p: p.target_hf_bps).address
    state = mirror.mirror.users[near]
    rid = next(iter(state.v_scaled))
    true_scaled = state.v_scaled[rid]
    state.v_scaled[rid] *= 2
    await chain.rpc.call("evm_mine", [])
    first = await mirror.update(await chain.rpc.block_number())
    assert first.drift == 1
    await chain.rpc.call("evm_mine", [])
    second = await mirror.update(await chain.rpc.block_number())
    assert second.drift == 0
    assert mirror.mirror.users[near].v_scaled[rid] == true_scaled


async def test_drift_that_flatters_an_account_is_caught_within_its_tier_period(chain: Devnet) -> None:
    mirror, _, _ = await _trackers(chain)
    # Halving the debt makes the account look healthy, so it drops to a slower tier; it is still
    # read on chain within that tier's period (at most 100 blocks).
    near = min(chain.plans, key=lambda p: p.target_hf_bps).address
    state = mirror.mirror.users[near]
    rid = next(iter(state.v_scaled))
    true_scaled = state.v_scaled[rid]
    state.v_scaled[rid] //= 2
    drift = 0
    for _ in range(100):
        await chain.rpc.call("evm_mine", [])
        drift += (await mirror.update(await chain.rpc.block_number())).drift
        if drift:
            break
    assert drift == 1
    assert mirror.mirror.users[near].v_scaled[rid] == true_scaled


async def test_a_reorg_rebuilds_the_mirror_from_the_chain(chain: Devnet) -> None:
    mirror, everyone, _ = await _trackers(chain)
    snapshot = await chain.rpc.call("evm_snapshot", [])
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    shocked = await chain.rpc.block_number()
    assert (await mirror.update(shocked)).liquidatable
    await chain.rpc.call("evm_revert", [snapshot])  # the shock's block is gone
    await chain.rpc.call("evm_mine", [])
    head = await chain.rpc.block_number()
    view = await mirror.update(head, reorg=True)
    assert view.liquidatable == (await everyone.update(head)).liquidatable == []
    assert view.drift == 0


async def test_a_recheck_budget_caps_each_block_and_reaches_every_due_account_in_turn(chain: Devnet) -> None:
    market = await discover_market(chain.rpc, chain.deployment.pool_addresses_provider)
    users = [p.address for p in chain.plans]
    capped = HealthTracker(chain.rpc, market, source="mirror", recheck_per_block=10)
    await capped.start(users, await chain.rpc.block_number())
    await chain.rpc.call("evm_mine", [])
    block = await chain.rpc.block_number()
    scheduled = due(block, capped.mirror.recompute(users), users)
    assert len(scheduled) > 20, "the 200-borrower devnet has a few dozen accounts near the line"
    # Nothing moves: each block reads the budget (plus any liquidatable account), least recently
    # read first, so the accounts due at every block are all read within a few rounds of the budget.
    near_line = {u for u in scheduled if capped.mirror.recompute([u])[u].health_factor_wad < 105 * 10**16}
    assert near_line
    view = await capped.update(block)
    rounds = 1
    while not near_line <= set(capped.checked_at):
        assert view.checked_on_chain == 10 + len(view.liquidatable)
        assert rounds < 3 * -(-len(scheduled) // 10), "the budget starves accounts near the line"
        await chain.rpc.call("evm_mine", [])
        view = await capped.update(await chain.rpc.block_number())
        rounds += 1
