"""Where each reserve's price comes from, so the mirror hears every move: resolution and polling.

AaveOracle prices an asset with `source.latestAnswer()` (or its fallback oracle when that is not
positive). What emits the update is often not the source:
- a Chainlink `EACAggregatorProxy` forwards to its current `aggregator()`, which emits
  `AnswerUpdated`; the proxy can be re-pointed (`confirmAggregator`, no event on 0.6 proxies);
- a feed may emit `AnswerUpdated` itself (an aggregator named directly, this project's devnet feed);
- a CAPO or ratio adapter, or anything unknown, computes its price and emits nothing.

`resolve` turns each source into one of `Feed.kind`: "emitter" (the source's own AnswerUpdated),
"proxy" (the current aggregator's AnswerUpdated) or "polled". An address counts as an emitter only if
its runtime code holds the AnswerUpdated topic (solc pushes event topics as constants) AND the
source's `latestAnswer()` is the oracle's price for the asset; anything else is polled, never guessed.

Each block the tracker folds `poll_calls()` into the Multicall3 it already makes: one
`getAssetsPrices` for every polled reserve, each proxy's `aggregator()` (a swap re-resolves it), the
provider's `getPriceOracleSentinel()` and the sentinel's `isLiquidationAllowed()`. `apply_poll`
writes the polled prices into the mirror and says which assets moved. A source swapped by
`AssetSourceUpdated` (the mirror sees it) is re-resolved by `sync` after each catch-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_utils import to_checksum_address

from keeper.chain.multicall import Call, multicall
from keeper.chain.rpc import RpcClient
from keeper.health.mirror import HealthMirror
from keeper.health.mirror_events import ANSWER_UPDATED
from keeper.health.mirror_sync import GET_ASSET_PRICE, refresh_prices
from keeper.log import get_logger
from keeper.protocol.aave_v3 import GET_ASSETS_PRICES
from keeper.protocol.abi import Fn, fn
from keeper.types import AccountHealth, Address

log = get_logger(__name__)

AGGREGATOR = Fn("aggregator", (), ("address",))
LATEST_ANSWER = Fn("latestAnswer", (), ("int256",))
GET_SENTINEL = fn("PoolAddressesProvider", "getPriceOracleSentinel")
IS_LIQUIDATION_ALLOWED = Fn("isLiquidationAllowed", (), ("bool",))
ZERO = "0x0000000000000000000000000000000000000000"
# PUSH32 <AnswerUpdated topic>: how solc puts an emitted event's topic into runtime code.
_ANSWER_TOPIC_PUSH = "7f" + ANSWER_UPDATED.topic[2:].lower()


@dataclass(frozen=True, slots=True)
class Feed:
    asset: Address
    source: Address | None  # what the oracle names (None: no source, the fallback oracle prices it)
    kind: str  # "emitter" | "proxy" | "polled"
    emitter: Address | None = None  # whose AnswerUpdated carries the price
    proxy: Address | None = None  # the proxy whose aggregator() is watched


@dataclass(slots=True)
class PollResult:
    moved: set[Address] = field(default_factory=set)  # assets whose mirrored price changed
    liquidation_allowed: bool = True  # the pool's PriceOracleSentinel says liquidations may proceed
    reresolved: set[Address] = field(default_factory=set)  # proxies found re-pointed this block


class OracleFeeds:
    """Per-reserve feed resolution, the per-block poll, and the sequencer gate, for one mirror."""

    def __init__(self, rpc: RpcClient, mirror: HealthMirror, provider: Address) -> None:
        self.rpc, self.mirror, self.provider = rpc, mirror, to_checksum_address(provider)
        self.feeds: dict[Address, Feed] = {}
        self.sentinel: Address | None = None
        self.liquidation_allowed = True

    @property
    def polled(self) -> list[Address]:
        return sorted(a for a, f in self.feeds.items() if f.kind == "polled")

    @property
    def proxies(self) -> list[Feed]:
        return [f for f in self.feeds.values() if f.kind == "proxy"]

    # -- resolution -----------------------------------------------------------------------------

    async def start(self, block: int) -> None:
        """Resolve every reserve and find the sentinel, at `block` (the mirror's block)."""
        (res,) = await multicall(self.rpc, [(self.provider, GET_SENTINEL.encode())], block)
        self.sentinel = _address(res)
        await self.resolve(list(self.mirror.reserves), block)
        if self.sentinel is not None:
            (ok, data), = await multicall(self.rpc, [(self.sentinel, IS_LIQUIDATION_ALLOWED.encode())], block)
            self.liquidation_allowed = not ok or IS_LIQUIDATION_ALLOWED.decode_one(data)

    async def sync(self, block: int, *, everything: bool = False) -> set[Address]:
        """Re-resolve reserves whose source the oracle changed (AssetSourceUpdated), new reserves,
        and with `everything` all of them (after a re-bootstrap). Returns the re-resolved assets."""
        stale = [a for a, r in self.mirror.reserves.items()
                 if everything or a not in self.feeds or self.feeds[a].source != _source(r.price_source)]
        for gone in [a for a in self.feeds if a not in self.mirror.reserves]:
            self._unwire(self.feeds.pop(gone))
        if stale:
            await self.resolve(stale, block)
        return set(stale)

    async def resolve(self, assets: Sequence[Address], block: int) -> None:
        """Find what emits each asset's price updates and point the mirror's log filter at it."""
        sources = {a: _source(self.mirror.reserves[a].price_source) for a in assets}
        wired = [a for a in assets if sources[a] is not None]
        aggs = await multicall(self.rpc, [(sources[a], AGGREGATOR.encode()) for a in wired], block)
        candidate: dict[Address, tuple[Address, Address | None]] = {}  # asset -> (emitter, proxy)
        for a, res in zip(wired, aggs, strict=True):
            agg = _address(res)
            candidate[a] = (agg, sources[a]) if agg is not None else (sources[a], None)  # type: ignore[assignment]
        # The source's answer, not the aggregator's: mainnet aggregators restrict reads to allowed
        # callers, proxies do not, and a proxy's answer is its aggregator's by construction.
        checks = await multicall(self.rpc, [c for a in wired for c in (
            (sources[a], LATEST_ANSWER.encode()), (self.mirror.oracle, GET_ASSET_PRICE.encode(a))
        )], block)
        codes = {e: await self.rpc.get_code(e, block) for e in {c[0] for c in candidate.values()}}
        for a in assets:
            old = self.feeds.pop(a, None)
            if old is not None:
                self._unwire(old)
            feed = Feed(a, sources[a], "polled")
            if a in candidate:
                k = wired.index(a)
                emitter, proxy = candidate[a]
                (ok1, ans), (ok2, price) = checks[2 * k], checks[2 * k + 1]
                same = ok1 and ok2 and LATEST_ANSWER.decode_one(ans) == GET_ASSET_PRICE.decode_one(price) > 0
                if same and _emits_answer(codes[emitter]):
                    feed = Feed(a, sources[a], "proxy" if proxy else "emitter", emitter, proxy)
            self.feeds[a] = feed
            if feed.emitter is not None and feed.emitter != feed.source:
                self.mirror.add_price_emitter(feed.emitter, a)
            log.info("health.feed_resolved", asset=a, source=feed.source, kind=feed.kind,
                     emitter=feed.emitter)

    def _unwire(self, feed: Feed) -> None:
        if feed.emitter is not None and feed.emitter != feed.source:
            self.mirror.remove_price_emitter(feed.emitter, feed.asset)

    # -- the per-block poll ---------------------------------------------------------------------

    def poll_calls(self) -> list[Call]:
        """What to fold into this block's Multicall3 (see apply_poll for the order)."""
        calls: list[Call] = []
        if self.polled:
            calls.append((self.mirror.oracle, GET_ASSETS_PRICES.encode(self.polled)))
        calls += [(f.proxy, AGGREGATOR.encode()) for f in self.proxies]  # type: ignore[misc]
        calls.append((self.provider, GET_SENTINEL.encode()))
        if self.sentinel is not None:
            calls.append((self.sentinel, IS_LIQUIDATION_ALLOWED.encode()))
        return calls

    async def apply_poll(self, results: Sequence[tuple[bool, bytes]], block: int) -> PollResult:
        """Take `poll_calls()`'s results (read at `block`, the mirror's block) into the mirror."""
        out = PollResult()
        it = iter(results)
        polled, proxies = self.polled, self.proxies
        if polled:
            ok, data = next(it)
            if ok:
                for asset, price in zip(polled, GET_ASSETS_PRICES.decode_one(data), strict=True):
                    if self.mirror.reserves[asset].price_base != price:
                        self.mirror.set_price(asset, price)
                        out.moved.add(asset)
            else:  # a source reverts: so does the pool for its users, whose reads then fail loudly
                log.warning("health.feed_poll_failed", assets=polled, block=block)
        swapped = [f.asset for f in proxies if _address(next(it)) != f.emitter]
        sentinel = _address(next(it))
        allowed_res = next(it) if self.sentinel is not None else None
        if sentinel != self.sentinel:
            self.sentinel = sentinel
            allowed_res = None
            if sentinel is not None:
                (allowed_res,) = await multicall(self.rpc, [(sentinel, IS_LIQUIDATION_ALLOWED.encode())],
                                                 block)
        self.liquidation_allowed = allowed_res is None or not allowed_res[0] or \
            IS_LIQUIDATION_ALLOWED.decode_one(allowed_res[1])
        out.liquidation_allowed = self.liquidation_allowed
        if swapped:
            out.moved |= await self._reresolve(swapped, block)
            out.reresolved = set(swapped)
        return out

    async def _reresolve(self, assets: list[Address], block: int) -> set[Address]:
        """A proxy re-pointed at a new aggregator: watch the new one and re-read the price now (its
        AnswerUpdated in this very block came from an address the log filter did not yet hold)."""
        log.info("health.feed_aggregator_changed", assets=assets, block=block)
        await self.resolve(assets, block)
        before = {a: self.mirror.reserves[a].price_base for a in assets}
        await refresh_prices(self.rpc, self.mirror, assets, block)
        return {a for a in assets if self.mirror.reserves[a].price_base != before[a]}


def recompute_moved(mirror: HealthMirror, poll: PollResult, borrowers: set[Address],
                    local: dict[Address, AccountHealth], already_read: set[Address]) -> list[Address]:
    """Update `local` for the users of every asset the poll moved; return the ones to confirm on chain
    now (newly liquidatable by the mirror, or no longer computable), besides those `already_read`."""
    moved: set[Address] = set()
    for a in poll.moved:
        moved |= mirror.affected_by_price(a)
    moved &= borrowers
    fresh = mirror.recompute(moved)
    for u in moved:
        if u in fresh:
            local[u] = fresh[u]
        else:
            local.pop(u, None)
    return sorted(u for u in moved - already_read if u not in fresh or fresh[u].liquidatable)


def _source(source: Address | None) -> Address | None:
    return source if source is not None and int(source, 16) != 0 else None


def _address(result: tuple[bool, bytes]) -> Address | None:
    ok, data = result
    if not ok or len(data) != 32:
        return None
    addr = to_checksum_address(data[-20:])
    return None if addr == ZERO else addr


def _emits_answer(code: bytes) -> bool:
    return _ANSWER_TOPIC_PUSH in code.hex()
