"""Issue 10: prices as mainnet moves them, on a devnet priced through Chainlink proxies and aggregators,
a CAPO-style adapter with no events, and an L2 sequencer gate (`launch(oracle="chainlink")`).

Each move is applied to two mirrors bootstrapped at the same block: the mirror as it was before this
change (it listens to the address the oracle names, nothing else) and the tracker's (feeds resolved,
event-less reserves polled). The first must miss the move; the second must equal getUserAccountData
to the wei for every borrower, and find the newly liquidatable accounts in that same block with the
slow re-check tiers pinned so high that they never run.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_utils import keccak

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet import chainlink as cl
from keeper.devnet.chain import DevChain, send_as
from keeper.devnet.seed import get_price, set_price, shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet, launch
from keeper.health import mirror_sync
from keeper.health.mirror import HealthMirror
from keeper.health.schedule import Tier
from keeper.health.tracker import HealthTracker, HealthView
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import LIQUIDATION, discover_market, read_account_health
from keeper.types import Address, Market

# One tier, re-read once in a billion blocks: only the mirror can find a newly liquidatable account.
NO_SLOW_TIER = (Tier(2**256 - 1, 10**9),)
WAD = 10**18


@pytest.fixture(scope="module")
async def devnet() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=200, seed=10, oracle="chainlink", sequencer=True)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture
async def chain(devnet: Devnet) -> AsyncIterator[Devnet]:
    snap = await devnet.rpc.call("evm_snapshot", [])
    try:
        yield devnet
    finally:
        await devnet.rpc.call("evm_setIntervalMining", [0])
        await devnet.rpc.call("evm_setAutomine", [True])
        assert await devnet.rpc.call("evm_revert", [snap])
        await devnet.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])


class Pair:
    """The old mirror and the new tracker, side by side from one block."""

    def __init__(self, dn: Devnet, market: Market, old: HealthMirror, tracker: HealthTracker) -> None:
        self.dn, self.market, self.old, self.tracker = dn, market, old, tracker
        self.users = [p.address for p in dn.plans]

    @classmethod
    async def start(cls, dn: Devnet) -> Pair:
        market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
        users = [p.address for p in dn.plans]
        block = await dn.rpc.block_number()
        old = await mirror_sync.bootstrap(dn.rpc, market, users, block)
        tracker = HealthTracker(dn.rpc, market, tiers=NO_SLOW_TIER)
        await tracker.start(users, block)
        return cls(dn, market, old, tracker)

    async def after_move(self) -> tuple[list, list, HealthView, set[Address]]:
        """(old mirror's drift, new mirror's drift, the tracker's view, liquidatable on chain)."""
        rpc, block = self.dn.rpc, await self.dn.rpc.block_number()
        await mirror_sync.catch_up(rpc, self.old, block)
        old_drift = await mirror_sync.reconcile(rpc, self.old, self.users, block)
        view = await self.tracker.update(block)
        assert self.tracker.mirror is not None
        new_drift = await mirror_sync.reconcile(rpc, self.tracker.mirror, self.users, block)
        chain = await read_account_health(rpc, self.market, self.users, block)
        return old_drift, new_drift, view, {h.user for h in chain if h.liquidatable}

    async def step(self) -> HealthView:
        """Both mirrors follow the chain to its head, as a running keeper would block by block."""
        block = await self.dn.rpc.block_number()
        await mirror_sync.catch_up(self.dn.rpc, self.old, block)
        return await self.tracker.update(block)

    def old_liquidatable(self) -> set[Address]:
        return {u for u, h in self.old.recompute(self.users).items() if h.liquidatable}

    async def check(self, *, expect_liquidatable: bool = True) -> HealthView:
        old_drift, new_drift, view, on_chain = await self.after_move()
        assert old_drift, "the mirror before this change would have seen this move"
        assert new_drift == [], [(d.user, d.fields) for d in new_drift[:3]]
        assert view.drift == 0
        if expect_liquidatable:
            assert on_chain, "the move should make some account liquidatable"
            # Found in this block: with the slow tiers pinned, only the mirror could have named them.
            assert {h.user for h in view.liquidatable} == on_chain
            assert not on_chain <= self.old_liquidatable(), "the old mirror would have found them too"
        return view


async def test_feeds_resolve_proxies_to_aggregators_and_poll_the_capo_adapter(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    o = cl.oracle_of(chain.deployment)
    feeds = pair.tracker.feeds
    assert feeds is not None
    by_symbol = {s: feeds.feeds[a] for s, a in chain.deployment.assets.items()}
    for symbol in ("WETH", "USDC", "DAI", "LINK"):
        f = by_symbol[symbol]
        assert (f.kind, f.source, f.emitter) == ("proxy", o.proxies[symbol], o.aggregators[symbol])
    assert (by_symbol["WBTC"].kind, by_symbol["WBTC"].source) == ("polled", o.capo_adapter)
    assert feeds.polled == [chain.deployment.assets["WBTC"]]
    assert feeds.sentinel == o.sentinel and feeds.liquidation_allowed
    view = await pair.tracker.update(await chain.rpc.block_number())
    assert view.polled_reserves == 1 and view.liquidation_allowed


async def test_aggregator_update_through_a_proxy_reaches_the_mirror(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    await shock(chain.rpc, chain.deployment, "WETH", -15)  # a round on WETH's FluxAggregator
    await pair.check()


async def test_confirm_aggregator_swap_then_an_update_from_the_new_aggregator(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    o = cl.oracle_of(chain.deployment)
    price = await get_price(chain.rpc, chain.deployment, "WETH")
    dev = DevChain(chain.url)
    try:
        new = await cl.swap_aggregator(chain.rpc, chain.deployment, dev, "WETH", price)
    finally:
        await dev.close()
    await pair.step()  # the swap is seen: the new aggregator is watched
    assert pair.tracker.feeds is not None
    weth = chain.deployment.assets["WETH"]
    assert pair.tracker.feeds.feeds[weth].emitter == new
    await cl.submit_answer(chain.rpc, chain.deployment, new, price * 85 // 100)
    await pair.check()
    # The old aggregator no longer prices WETH: its rounds must not move the mirror.
    await cl.submit_answer(chain.rpc, chain.deployment, o.aggregators["WETH"], price * 2)
    _, new_drift, _, _ = await pair.after_move()
    assert new_drift == []


async def test_swap_and_update_in_one_block_are_both_caught(chain: Devnet) -> None:
    """The new aggregator's AnswerUpdated lands in the block of the swap, before its address is
    watched: the per-block aggregator() read re-resolves and re-reads the price in that block."""
    pair = await Pair.start(chain)
    price = await get_price(chain.rpc, chain.deployment, "WETH")
    dev = DevChain(chain.url)
    try:
        new = await cl.deploy_flux(dev, await cl.build_chainlink(), "WETH / USD v2", price)
    finally:
        await dev.close()
    proxy = cl.oracle_of(chain.deployment).proxies["WETH"]
    await chain.rpc.call("evm_setAutomine", [False])
    try:
        hashes = [await _send(chain, proxy, cl.SEL_PROPOSE + _addr(new)),
                  await _send(chain, proxy, cl.SEL_CONFIRM + _addr(new)),
                  await _send(chain, new, cl.SEL_SUBMIT + _uints(2, price * 85 // 100))]
        await chain.rpc.call("evm_mine", [])
    finally:
        await chain.rpc.call("evm_setAutomine", [True])
    receipts = [await chain.rpc.wait_for_receipt(h, timeout=30) for h in hashes]
    assert len({r["blockNumber"] for r in receipts}) == 1 and all(int(r["status"], 16) for r in receipts)
    await pair.check()


async def test_asset_source_swap_to_a_new_feed_then_its_update(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    price = await get_price(chain.rpc, chain.deployment, "WETH")
    dev = DevChain(chain.url)
    try:
        build = await cl.build_chainlink()
        agg = await cl.deploy_flux(dev, build, "WETH / USD (new)", price)
        proxy = await cl.deploy_proxy(dev, build, agg)
    finally:
        await dev.close()
    await cl.set_asset_source(chain.rpc, chain.deployment, "WETH", proxy)  # AssetSourceUpdated
    view = await pair.step()  # both mirrors re-read the price the new source gives
    assert view.drift == 0
    await cl.submit_answer(chain.rpc, chain.deployment, agg, price * 85 // 100)
    await pair.check()


async def test_capo_adapter_price_moves_with_no_event(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    tx = await set_price(chain.rpc, chain.deployment, "WBTC", 8_795_991_000000 * 80 // 100)
    receipt = await chain.rpc.wait_for_receipt(tx, timeout=30)
    assert receipt["logs"] == [], "the adapter's move must leave no log at all"
    view = await pair.check()
    assert view.polled_reserves == 1


async def test_sequencer_gate_holds_liquidations_until_the_grace_period_ends(chain: Devnet) -> None:
    """Interval-mined (1 s blocks), the price moving while the keeper runs."""
    rpc, d = chain.rpc, chain.deployment
    await cl.set_sequencer(rpc, d, up=False)
    await rpc.call("evm_setIntervalMining", [1])
    metrics = Metrics()
    app = App(load_settings(rpc_url=chain.url, pool_addresses_provider=d.pool_addresses_provider,
                            private_key=KEEPER_DEV_KEY, metrics_port=0, poll_interval_s=0.1,
                            db_path=Path(tempfile.mkdtemp()) / "keeper.db"), metrics)
    cycles = Cycles()
    task = asyncio.create_task(app.run(until=cycles, install_signals=False))
    try:
        await cycles.wait(1)
        # WETH -4%: seeded HFs start at 1.02, so every new victim sits in [0.95, 1), where the pool
        # itself refuses a liquidation while the sentinel says no.
        await shock(rpc, d, "WETH", -4)
        users = [p.address for p in chain.plans]
        market = await discover_market(rpc, d.pool_addresses_provider)
        victims = {h.user for h in await read_account_health(rpc, market, users, await rpc.block_number())
                   if h.liquidatable}
        assert victims
        await cycles.wait(3)
        await cl.set_sequencer(rpc, d, up=True)  # back up: the grace period starts now
        await cycles.wait(3)
        gated = list(app.reports)
        assert sum(r.skipped.get("sequencer_grace", 0) for r in gated) >= 2 * len(victims)
        assert not any(r.sent for r in gated), "nothing may be sent while the sentinel says no"
        assert metrics.skipped.labels(reason="sequencer_grace")._value.get() == sum(
            r.skipped.get("sequencer_grace", 0) for r in gated)
        assert metrics.liquidation_allowed._value.get() == 0
        await rpc.call("evm_increaseTime", [cl.SEQUENCER_GRACE_S + 1])
        for _ in range(120):
            health = await read_account_health(rpc, market, sorted(victims), await rpc.block_number())
            if not any(h.liquidatable for h in health):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the victims were not liquidated once the grace period ended")
        logs = await rpc.get_logs({"address": market.pool, "topics": [LIQUIDATION.topic],
                                   "fromBlock": gated[-1].block, "toBlock": "latest"})
        by_keeper = {LIQUIDATION.decode(x)["user"] for x in logs
                     if LIQUIDATION.decode(x)["liquidator"].lower() == KEEPER_ADDRESS.lower()}
        assert {v.lower() for v in victims} <= {u.lower() for u in by_keeper}
        assert metrics.liquidation_allowed._value.get() == 1
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)


async def test_while_gated_accounts_below_095_are_still_liquidated_as_the_pool_allows(chain: Devnet) -> None:
    """ValidationLogic asks the sentinel only at HF >= 0.95: below it the pool liquidates anyway, and so
    does the keeper; the rest wait with `sequencer_grace`."""
    rpc, d = chain.rpc, chain.deployment
    await cl.set_sequencer(rpc, d, up=False)
    await shock(rpc, d, "WETH", -15)
    market = await discover_market(rpc, d.pool_addresses_provider)
    users = [p.address for p in chain.plans]
    health = await read_account_health(rpc, market, users, await rpc.block_number())
    low = {h.user for h in health if h.health_factor_wad < 95 * WAD // 100}
    mid = {h.user for h in health if 95 * WAD // 100 <= h.health_factor_wad < WAD}
    assert low and mid
    await rpc.call("evm_setIntervalMining", [1])
    metrics = Metrics()
    app = App(load_settings(rpc_url=chain.url, pool_addresses_provider=d.pool_addresses_provider,
                            private_key=KEEPER_DEV_KEY, metrics_port=0, poll_interval_s=0.1,
                            db_path=Path(tempfile.mkdtemp()) / "keeper.db"), metrics)
    cycles = Cycles()
    task = asyncio.create_task(app.run(until=cycles, install_signals=False))
    try:
        for _ in range(120):
            await cycles.wait(1)
            now = await read_account_health(rpc, market, sorted(low), await rpc.block_number())
            if all(h.health_factor_wad >= 95 * WAD // 100 for h in now):
                break
        else:
            raise AssertionError("accounts under HF 0.95 were not liquidated while gated")
        await cycles.wait(2)
        still = await read_account_health(rpc, market, sorted(mid), await rpc.block_number())
        assert all(h.liquidatable for h in still), "an account the sentinel protects was liquidated"
        assert metrics.skipped.labels(reason="sequencer_grace")._value.get() > 0
        assert sum(r.reverted for r in app.reports) == 0
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)


class Cycles:
    """An App `until` callback that never stops the app but lets the test wait for n more cycles."""

    def __init__(self) -> None:
        self.count = 0
        self.ticked = asyncio.Event()

    def __call__(self, report: object) -> bool:
        self.count += 1
        self.ticked.set()
        return False

    async def wait(self, n: int, timeout_s: float = 60) -> None:
        target = self.count + n
        async with asyncio.timeout(timeout_s):
            while self.count < target:
                self.ticked.clear()
                await self.ticked.wait()


async def _send(dn: Devnet, to: str, data: bytes) -> str:
    tx = {"from": dn.deployment.deployer, "to": to, "data": "0x" + data.hex(), "gas": hex(500_000)}
    return await dn.rpc.call("eth_sendTransaction", [tx])


def _addr(a: str) -> bytes:
    return bytes(12) + bytes.fromhex(a[2:])


def _uints(*vs: int) -> bytes:
    return b"".join(v.to_bytes(32, "big") for v in vs)


async def test_default_devnet_feeds_emit_their_own_answers_and_nothing_is_polled(bare_chain: Devnet) -> None:
    """The default devnet is unchanged: its feeds emit AnswerUpdated themselves, no sentinel."""
    market = await discover_market(bare_chain.rpc, bare_chain.deployment.pool_addresses_provider)
    tracker = HealthTracker(bare_chain.rpc, market)
    await tracker.start([], await bare_chain.rpc.block_number())
    assert tracker.feeds is not None
    kinds = {a: (f.kind, f.emitter) for a, f in tracker.feeds.feeds.items()}
    d = bare_chain.deployment
    assert kinds == {d.assets[s]: ("emitter", d.feeds[s]) for s in d.assets}
    assert tracker.feeds.sentinel is None and tracker.feeds.polled == []
    view = await tracker.update(await bare_chain.rpc.block_number())
    assert view.liquidation_allowed and view.polled_reserves == 0


async def test_capo_ratio_above_its_growth_cap_is_priced_at_the_cap(chain: Devnet) -> None:
    pair = await Pair.start(chain)
    o = cl.oracle_of(chain.deployment)
    base = await get_price(chain.rpc, chain.deployment, "WBTC")  # ratio 1: the base feed's answer
    await send_as(chain.rpc, chain.deployment.deployer, o.capo_adapter,
                  cl.SEL_SET_RATIO + (2 * cl.RATIO_UNIT).to_bytes(32, "big"))  # +100%: far above the cap
    raw = await chain.rpc.eth_call(o.capo_adapter, keccak(text="getMaxRatio()")[:4])
    max_ratio = int.from_bytes(raw, "big")
    assert cl.RATIO_UNIT <= max_ratio < cl.RATIO_UNIT * 101 // 100
    assert await get_price(chain.rpc, chain.deployment, "WBTC") == base * max_ratio // cl.RATIO_UNIT
    _, new_drift, view, _ = await pair.after_move()
    assert new_drift == [] and view.drift == 0
