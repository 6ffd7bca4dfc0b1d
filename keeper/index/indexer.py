"""The persistent borrower index: resume, backfill, follow heads, undo reorgs.

    start()          bind the file to (chain, pool), load the checkpoint, backfill to head
    advance(head)    index up to `head`; detect and undo a reorg first; -> IndexUpdate
    borrowers()      every address with a Borrow event on the canonical chain

Two ways to read blocks:

* Backfill (far behind): getLogs pages over [checkpoint+1, head-confirmations], each page
  committed with the checkpoint in one transaction. Those blocks are assumed final; only
  the last page's end hash is recorded.
* Live (near the head): every new block's header is fetched (one batch) and checked to
  link to the stored checkpoint hash and to each other; every log must carry the hash of
  the header read for its block. Hashes of the last `keep_blocks` blocks are stored.

A reorg shows as the checkpoint's block having another hash (or none) on the chain. The
fork point is the highest stored block whose hash the chain still has; everything after it
is deleted (`Store.rewind`) and read again from the new branch, in the same `advance`.
Borrowers whose every Borrow was on the dropped branch are reported as removed. If the
chain changes while a step runs (a log or header from another branch), the step is
retried; after `max_attempts` it raises ChainMoved and the caller tries on the next head.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from keeper.chain.heads import Head, fetch_head
from keeper.chain.rpc import RpcClient
from keeper.errors import KeeperError, RpcError
from keeper.index.events import ACTIVITY_TOPICS, Activity, RangeSizer, iter_logs, parse_activity
from keeper.index.store import Checkpoint, EventRow, Store
from keeper.log import get_logger
from keeper.types import Address

__all__ = ["BorrowerIndex", "ChainMoved", "IndexUpdate", "should_show_progress"]

log = get_logger(__name__)

OnPage = Callable[[int, int, int], None]  # (from_block, to_block, borrowers_total)


class ChainMoved(KeeperError):
    """The chain kept changing under an index step; try again on the next head."""


@dataclass(frozen=True, slots=True)
class IndexUpdate:
    """What one `advance` (or `start`) changed."""

    block: int  # the index covers every block up to this one
    block_hash: str | None
    new_borrowers: frozenset[Address] = frozenset()
    removed_borrowers: frozenset[Address] = frozenset()  # their borrows were on a dropped branch
    active: frozenset[Address] = frozenset()  # Borrow/Repay/LiquidationCall in the blocks read
    fork_point: int | None = None  # last block shared with the dropped branch, if a reorg was undone
    reorg_depth: int = 0  # blocks dropped (old checkpoint - fork point)
    blocks_read: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.new_borrowers or self.removed_borrowers or self.fork_point is not None)


@dataclass
class _Changes:
    """Accumulates one advance's effects (it may rewind and read again several times)."""

    was_member: dict[Address, bool] = field(default_factory=dict)
    active: set[Address] = field(default_factory=set)
    fork_point: int | None = None
    reorg_depth: int = 0
    blocks_read: int = 0

    def touch(self, addresses: Iterable[Address], members: set[Address]) -> None:
        for a in addresses:
            self.was_member.setdefault(a, a in members)


class _Retry(Exception):
    """Internal: the checkpoint moved (rewind); run the step again from it."""


def should_show_progress(stream: TextIO, blocks: int, page_blocks: int, min_pages: int = 20) -> bool:
    """A progress bar only for long backfills, and only for a person watching a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and blocks >= max(1, page_blocks) * min_pages


class BorrowerIndex:
    def __init__(
        self,
        rpc: RpcClient,
        store: Store,
        pool: Address,
        *,
        start_block: int = 0,
        confirmations: int = 12,
        max_range: int = 10_000,
        keep_blocks: int = 128,
        live_window: int = 64,
        max_attempts: int = 3,
        progress: bool | None = None,
        on_page: OnPage | None = None,
    ) -> None:
        self.rpc = rpc
        self.store = store
        self.pool = pool
        self.start_block = start_block
        self.confirmations = max(0, confirmations)
        self.keep_blocks = max(keep_blocks, self.confirmations + 2, live_window + 2)
        self.live_window = max(1, live_window)
        self.max_attempts = max(1, max_attempts)
        self.progress = progress
        self.on_page = on_page
        self.sizer = RangeSizer(max_range=max_range)
        self._cp = Checkpoint(start_block - 1, None)
        self._borrowers: set[Address] = set()
        self._lock = asyncio.Lock()
        self._started = False

    # -- public --------------------------------------------------------------------------

    def borrowers(self) -> set[Address]:
        return set(self._borrowers)

    @property
    def checkpoint(self) -> Checkpoint:
        return self._cp

    async def start(self, head: Head | None = None) -> IndexUpdate:
        """Bind the store to this chain and pool, resume from its checkpoint (or
        `start_block`) and index up to `head` (default: the node's latest block)."""
        chain_id = await self.rpc.chain_id()
        await self.store.bind(chain_id, self.pool)
        self._cp = await self.store.checkpoint() or Checkpoint(self.start_block - 1, None)
        self._borrowers = await self.store.borrowers()
        self._started = True
        head = head or await fetch_head(self.rpc)
        log.info("index.resume", from_block=self._cp.block + 1, head=head.number,
                 borrowers=len(self._borrowers))
        return await self.advance(head)

    async def advance(self, head: Head) -> IndexUpdate:
        """Index every block up to `head.number`, undoing a reorg first if there was one."""
        if not self._started:
            raise KeeperError("BorrowerIndex.advance before start()")
        async with self._lock:
            changes = _Changes()
            for attempt in range(1, self.max_attempts + 1):
                try:
                    # The head in hand is trusted only on the first try; a retry re-reads headers.
                    await self._step(head.number, changes, head if attempt == 1 else None)
                    break
                except ChainMoved as e:
                    log.warning("index.chain_moved", attempt=attempt, detail=str(e))
                    if attempt == self.max_attempts:
                        raise
                    await asyncio.sleep(0.1 * attempt)
            return self._update(changes)

    # -- one step --------------------------------------------------------------------------

    async def _step(self, target: int, ch: _Changes, known: Head | None = None) -> None:
        # Retried internally after a rewind; bounded because each rewind lowers the checkpoint
        # and a step that finds nothing to undo finishes.
        for _ in range(self.keep_blocks + 2):
            try:
                await self._step_once(target, ch, known)
                return
            except _Retry:
                continue
        raise ChainMoved("too many reorgs in one step")

    async def _step_once(self, target: int, ch: _Changes, known: Head | None = None) -> None:
        cp = self._cp
        safe = target - self.confirmations
        if target - cp.block > self.live_window and safe > cp.block:
            await self._check_checkpoint(ch)
            await self._backfill(safe, ch)
            cp = self._cp
        have_base = cp.block >= self.start_block
        if (known is not None and known.number == target == cp.block + 1 and cp.hash is not None
                and known.parent_hash == cp.hash):
            # The next block, and it links to the checkpoint: no header to read (steady state).
            headers, have_base = {target: known}, False
        else:
            numbers = ([cp.block] if have_base else []) + list(range(cp.block + 1, target + 1))
            headers = await self._headers(numbers)
        if have_base:
            base = headers.get(cp.block)
            if base is None or (cp.hash is not None and base.hash != cp.hash):
                await self._undo_reorg(min(cp.block, target), ch)
                raise _Retry
            if cp.hash is None:  # resumed from a mid-backfill checkpoint: learn its hash
                await self.store.set_block_hash(cp.block, base.hash)
                self._cp = cp = Checkpoint(cp.block, base.hash)
        if target <= cp.block:
            return
        for n in range(cp.block + 1, target + 1):
            h, parent = headers.get(n), headers.get(n - 1)
            if h is None:
                raise ChainMoved(f"block {n} vanished while reading headers")
            if parent is not None and h.parent_hash != parent.hash:
                raise ChainMoved(f"block {n} does not link to block {n - 1}")
        acts: list[Activity] = []
        async for page in iter_logs(self.rpc, self.pool, ACTIVITY_TOPICS, cp.block + 1, target, self.sizer):
            acts += [a for a in map(parse_activity, page.logs) if a is not None]
        for a in acts:
            if a.block_hash != headers[a.block].hash:
                raise ChainMoved(f"log of block {a.block} is from another branch")
        await self._commit(cp.block + 1, target, acts, ch, to_hash=headers[target].hash,
                           block_hashes={n: headers[n].hash for n in range(cp.block + 1, target + 1)})

    async def _commit(self, from_block: int, to_block: int, acts: Sequence[Activity], ch: _Changes, *,
                      to_hash: str | None, block_hashes: dict[int, str] | None = None) -> None:
        rows = [EventRow(a.block, a.log_index, a.tx, a.borrower, a.kind) for a in acts]
        touched = {a.borrower for a in acts}
        ch.touch(touched, self._borrowers)
        new = await self.store.commit_page(from_block, to_block, rows, to_hash=to_hash,
                                           block_hashes=block_hashes, keep_blocks=self.keep_blocks)
        self._borrowers |= new
        ch.active |= touched
        ch.blocks_read += to_block - from_block + 1
        self._cp = Checkpoint(to_block, to_hash)
        if self.on_page is not None:
            try:
                self.on_page(from_block, to_block, len(self._borrowers))
            except Exception:
                log.exception("index.on_page_failed")

    # -- backfill ------------------------------------------------------------------------

    async def _backfill(self, safe: int, ch: _Changes) -> None:
        first = self._cp.block + 1
        total = safe - first + 1
        if total <= 0:
            return
        end_head = await fetch_head(self.rpc, safe)
        show = self.progress if self.progress is not None else should_show_progress(
            sys.stderr, total, self.sizer.current)
        log.info("index.backfill_start", from_block=first, to_block=safe, blocks=total,
                 range=self.sizer.current)
        t0 = time.monotonic()
        pages = 0
        bar = _Progress(total, len(self._borrowers)) if show else None
        try:
            async for page in iter_logs(self.rpc, self.pool, ACTIVITY_TOPICS, first, safe, self.sizer):
                acts = [a for a in map(parse_activity, page.logs) if a is not None]
                final = page.to_block == safe
                await self._commit(page.from_block, page.to_block, acts, ch,
                                   to_hash=end_head.hash if final else None)
                pages += 1
                log.debug("index.backfill_page", from_block=page.from_block, to_block=page.to_block,
                          events=len(acts), borrowers=len(self._borrowers))
                if bar is not None:
                    bar.advance(page.to_block - page.from_block + 1, len(self._borrowers))
        finally:
            if bar is not None:
                bar.close()
        log.info("index.backfill_done", to_block=self._cp.block, pages=pages, borrowers=len(self._borrowers),
                 seconds=round(time.monotonic() - t0, 2))

    # -- reorgs --------------------------------------------------------------------------

    async def _check_checkpoint(self, ch: _Changes) -> None:
        cp = self._cp
        if cp.block < self.start_block or cp.hash is None:
            return
        headers = await self._headers([cp.block])
        h = headers.get(cp.block)
        if h is None or h.hash != cp.hash:
            await self._undo_reorg(cp.block, ch)
            raise _Retry

    async def _undo_reorg(self, limit: int, ch: _Changes) -> None:
        """Find the fork point at or below `limit`, rewind the store to it."""
        old = self._cp
        stored = await self.store.block_hashes()
        candidates = sorted((n for n in stored if n <= limit), reverse=True)
        fork: int | None = None
        for i in range(0, len(candidates), 32):
            chunk = candidates[i : i + 32]
            headers = await self._headers(chunk)
            fork = next((n for n in chunk if (h := headers.get(n)) is not None and h.hash == stored[n]), None)
            if fork is not None:
                break
        if fork is None:
            lowest = candidates[-1] if candidates else min(limit, old.block)
            fork = max(self.start_block - 1, lowest - 1)
            log.error("index.deep_reorg", checkpoint=old.block, rewound_to=fork, stored_blocks=len(stored))
        before = set(self._borrowers)
        removed = await self.store.rewind(fork)
        ch.touch(removed, before)
        self._borrowers -= removed
        self._cp = await self.store.checkpoint() or Checkpoint(self.start_block - 1, None)
        ch.fork_point = fork if ch.fork_point is None else min(ch.fork_point, fork)
        ch.reorg_depth = max(ch.reorg_depth, old.block - fork)
        log.warning("index.reorg", old_checkpoint=old.block, fork_point=fork, depth=old.block - fork,
                    removed=len(removed))

    # -- helpers -------------------------------------------------------------------------

    async def _headers(self, numbers: Sequence[int]) -> dict[int, Head]:
        """Canonical headers by number (one batch); missing blocks are left out."""
        if not numbers:
            return {}
        results = await self.rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        out: dict[int, Head] = {}
        for n, r in zip(numbers, results, strict=True):
            if isinstance(r, RpcError):
                raise r
            if r is not None:
                out[n] = Head.from_json(r)
        return out

    def _update(self, ch: _Changes) -> IndexUpdate:
        now = self._borrowers
        new = frozenset(a for a, was in ch.was_member.items() if not was and a in now)
        removed = frozenset(a for a, was in ch.was_member.items() if was and a not in now)
        return IndexUpdate(
            block=self._cp.block, block_hash=self._cp.hash, new_borrowers=new, removed_borrowers=removed,
            active=frozenset(ch.active), fork_point=ch.fork_point,
            reorg_depth=ch.reorg_depth, blocks_read=ch.blocks_read,
        )


class _Progress:
    """A rich progress bar on stderr for a long backfill."""

    def __init__(self, total_blocks: int, borrowers: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]backfill"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"),
            TextColumn("{task.fields[borrowers]} borrowers"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._task: Any = self._progress.add_task("backfill", total=total_blocks, borrowers=borrowers)
        self._progress.start()

    def advance(self, blocks: int, borrowers: int) -> None:
        self._progress.update(self._task, advance=blocks, borrowers=borrowers)

    def close(self) -> None:
        self._progress.stop()
