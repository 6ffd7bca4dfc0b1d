"""Every borrower's health, current at each head: the exact mirror, confirmed on chain where it matters.

Two sources, one answer:
- `mirror`: the local mirror (keeper/health/mirror.py) recomputes every borrower from logs;
  the tiered schedule re-reads some on chain each block, and every account the mirror calls
  liquidatable is confirmed with getUserAccountData before anything is simulated.
- `chain`: getUserAccountData for everyone, every block (simple, and the reference).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from keeper.chain.multicall import multicall
from keeper.chain.rpc import RpcClient
from keeper.errors import RpcError
from keeper.health import mirror_sync
from keeper.health.feeds import OracleFeeds, PollResult, recompute_moved
from keeper.health.mirror import HealthMirror
from keeper.health.schedule import DEFAULT_TIERS, Tier, due
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import account_data_calls, decode_account_data, read_account_health
from keeper.types import AccountHealth, Address, Market

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HealthView:
    block: int
    tracked: int  # borrowers with debt
    liquidatable: list[AccountHealth]  # read on chain at `block`, largest debt first
    checked_on_chain: int
    drift: int  # accounts where the mirror disagreed with the chain at this block
    mirror_seconds: float = 0.0
    liquidation_allowed: bool = True  # the pool's PriceOracleSentinel (L2 sequencer gate), if any
    polled_reserves: int = 0  # reserves whose source emits no price event: read every block


class HealthTracker:
    def __init__(
        self,
        rpc: RpcClient,
        market: Market,
        *,
        source: str = "mirror",
        batch_size: int = 500,
        gas_per_batch: int = 50_000_000,
        tiers: tuple[Tier, ...] = DEFAULT_TIERS,
        metrics: Metrics | None = None,
        recheck_per_block: int = 0,
    ) -> None:
        self.rpc, self.market, self.source = rpc, market, source
        self.batch_size, self.gas, self.tiers = batch_size, gas_per_batch, tiers
        self.metrics = metrics
        self.recheck_per_block = recheck_per_block  # 0: every account the schedule says is due
        self.mirror: HealthMirror | None = None
        self.feeds: OracleFeeds | None = None
        self.borrowers: set[Address] = set()
        self.checked_at: dict[Address, int] = {}  # last block each account was read on chain
        # Reads whose request failed for good: retried next block while the rest goes on.
        self.unread: set[Address] = set()  # getUserAccountData
        self.unrefreshed: set[Address] = set()  # the mirror's per-user state

    async def start(self, borrowers: Iterable[Address], block: int) -> None:
        self.borrowers = set(borrowers)
        if self.source == "mirror":
            self.mirror = await mirror_sync.bootstrap(
                self.rpc, self.market, sorted(self.borrowers), block, batch_size=self.batch_size
            )
            self.feeds = OracleFeeds(self.rpc, self.mirror, self.market.provider)
            await self.feeds.start(block)

    async def update(
        self,
        block: int,
        *,
        added: Iterable[Address] = (),
        removed: Iterable[Address] = (),
        reorg: bool = False,
        timestamp: int | None = None,
    ) -> HealthView:
        added, removed = set(added), set(removed)
        self.borrowers = (self.borrowers | added) - removed
        for u in removed:
            self.checked_at.pop(u, None)
        unread, self.unread = self.unread, set()  # last block's failed reads are read again now
        if self.mirror is None or self.feeds is None:
            return await self._all_on_chain(block)
        t0 = time.monotonic()
        moved: set[Address] = set()  # accounts whose balances changed in these blocks
        if reorg or block < self.mirror.block:
            # The mirror is not reorg-aware: rebuild it from the chain as it now is.
            await self.start(self.borrowers, block)
        else:
            not_refreshed: list[Address] = []
            caught = await mirror_sync.catch_up(self.rpc, self.mirror, block, failed=not_refreshed,
                                                timestamp=timestamp)
            self._deferred("mirror_refresh", not_refreshed, block)
            await self.feeds.sync(block, everything=caught.rebootstrapped)
            moved = caught.applied.users & self.borrowers
            new = (added - set(self.mirror.users)) | (self.unrefreshed & self.borrowers)
            await self._refresh(sorted(new - set(not_refreshed)), block, keep=set(not_refreshed))
        local = self.mirror.recompute(self.borrowers)
        mirror_s = time.monotonic() - t0
        # Read on chain: the schedule's tiers, everything the mirror calls liquidatable, and every
        # account that changed in these blocks (a borrower liquidated by 50% is confirmed at once,
        # whatever the mirror thinks, so a second round is never left to a later tier), and
        # whatever the mirror could not re-read or the chain could not answer last block.
        # Only the schedule's re-checks are budgeted (KEEPER_RECHECK_PER_BLOCK); the rest is always read.
        must = {u for u, h in local.items() if h.liquidatable} | moved
        must |= (unread | self.unrefreshed) & self.borrowers
        to_read = must | self._budget(due(block, local, self.borrowers, self.tiers) - must)
        chain, poll = await self._read_and_poll(sorted(to_read), block)
        self.checked_at.update(dict.fromkeys(to_read, block))
        if poll.moved:  # an event-less price moved: its users are recomputed and confirmed this block
            confirm = recompute_moved(self.mirror, poll, self.borrowers, local, to_read)
            chain += await self._read(confirm, block)
            self.checked_at.update(dict.fromkeys(confirm, block))
        drifted = [h.user for h in chain if _differs(local.get(h.user), h)]
        if drifted:
            log.warning("health.mirror_drift", block=block, users=len(drifted), sample=drifted[:3])
            await self._refresh(drifted, block, keep=set(self.unrefreshed))
        tracked = sum(1 for h in local.values() if h.total_debt_base) + sum(
            1 for h in chain if h.user not in local and h.total_debt_base
        )
        return HealthView(
            block, tracked, _liquidatable(chain), len(chain), sum(1 for u in drifted if u in local), mirror_s,
            liquidation_allowed=poll.liquidation_allowed, polled_reserves=len(self.feeds.polled),
        )

    def _budget(self, scheduled: set[Address]) -> set[Address]:
        """The schedule's re-checks, capped per block: the least recently read first, so each is
        read within a few blocks while a block costs one Multicall3 call, not one per 500 due."""
        if not self.recheck_per_block or len(scheduled) <= self.recheck_per_block:
            return scheduled
        oldest = sorted(scheduled, key=lambda u: self.checked_at.get(u, -1))
        return set(oldest[: self.recheck_per_block])

    async def _all_on_chain(self, block: int) -> HealthView:
        chain = await self._read(sorted(self.borrowers), block)
        return HealthView(
            block, sum(1 for h in chain if h.total_debt_base), _liquidatable(chain), len(chain), 0
        )

    async def _read_and_poll(self, users: list[Address],
                             block: int) -> tuple[list[AccountHealth], PollResult]:
        """The block's one Multicall3: getUserAccountData for `users`, then the oracle poll folded in."""
        assert self.mirror is not None and self.feeds is not None
        calls = account_data_calls(self.market.pool, users)
        results = await multicall(self.rpc, calls + self.feeds.poll_calls(), block,
                                  batch_size=self.batch_size, gas_per_batch=self.gas, partial=True)
        polled = results[len(users):]
        for r in polled:
            if isinstance(r, RpcError):
                raise r  # the oracle poll is one small chunk: without it, skip the block
        poll = await self.feeds.apply_poll(polled, block)
        failed: list[Address] = []
        healths = decode_account_data(users, results[: len(users)], block, failed=failed)
        self.unread |= set(failed)
        self._deferred("account_data", failed, block)
        return healths, poll

    async def _read(self, users: list[Address], block: int) -> list[AccountHealth]:
        failed: list[Address] = []
        out = await read_account_health(
            self.rpc, self.market, users, block, batch_size=self.batch_size, gas_per_batch=self.gas,
            failed=failed,
        )
        self.unread |= set(failed)
        self._deferred("account_data", failed, block)
        return out

    async def _refresh(self, users: list[Address], block: int, keep: set[Address] | None = None) -> None:
        failed: list[Address] = []
        await mirror_sync.refresh_users(self.rpc, self.mirror, users, block, batch_size=self.batch_size,
                                        failed=failed)
        self.unrefreshed = (keep or set()) | set(failed)
        self._deferred("mirror_refresh", failed, block)

    def _deferred(self, stage: str, users: list[Address], block: int) -> None:
        if not users:
            return
        log.warning("health.chunk_failed", stage=stage, block=block, users=len(users), retry="next_block")
        if self.metrics is not None:
            self.metrics.read_chunks_failed.labels(stage=stage).inc()


def _differs(local: AccountHealth | None, chain: AccountHealth) -> bool:
    """A mismatch in any number the pool reports; an account the mirror could not compute is not drift."""
    if local is None:
        return False
    return (local.total_collateral_base, local.total_debt_base, local.health_factor_wad) != (
        chain.total_collateral_base,
        chain.total_debt_base,
        chain.health_factor_wad,
    )


def _liquidatable(healths: list[AccountHealth]) -> list[AccountHealth]:
    return sorted((h for h in healths if h.liquidatable), key=lambda h: -h.total_debt_base)
