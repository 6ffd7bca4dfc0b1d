"""The one owner of a signing key's nonces in this process.

The node is the truth; this counter only saves a round trip per send and keeps concurrent
sends from taking the same nonce. Rules:

- The first `reserve()` syncs from the node: the next nonce is the node's pending count. After
  a restart, transactions the last run left in the mempool are counted there, so the new run
  continues after them and leaves no gap (a dropped one leaves the pending count at its nonce,
  which the new run then fills).
- "nonce too low" from the node calls `resync()`: the counter jumps to the node's pending count,
  or past the nonces still in flight that the node does not see (bundles), whichever is higher.
- A nonce taken but never broadcast, or one whose transaction provably never landed (a stale
  bundle), goes back with `release()`. If later nonces were handed out meanwhile, it is kept
  aside and handed out before any new one, so the gap closes with the next send.
"""

from __future__ import annotations

import asyncio

from keeper.chain.rpc import RpcClient
from keeper.log import get_logger
from keeper.types import Address

log = get_logger(__name__)


class NonceManager:
    def __init__(self, rpc: RpcClient, address: Address) -> None:
        self.rpc = rpc
        self.address = address
        self._lock = asyncio.Lock()
        self._next: int | None = None
        self._free: set[int] = set()  # released below `_next`: handed out first
        self._outstanding: set[int] = set()  # handed out, not yet known mined or released
        self.recovered = 0  # transactions of an earlier run found pending at the first sync

    def __repr__(self) -> str:
        return f"NonceManager({self.address}, next={self._next}, free={sorted(self._free)})"

    @property
    def next_nonce(self) -> int | None:
        """What the next `reserve()` hands out when no released nonce is waiting (None before sync)."""
        return self._next

    @property
    def outstanding(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    async def reserve(self) -> int:
        async with self._lock:
            if self._next is None:
                await self._sync(first=True)
                assert self._next is not None
            if self._free:
                nonce = min(self._free)
                self._free.discard(nonce)
            else:
                nonce = self._next
                self._next += 1
            self._outstanding.add(nonce)
            return nonce

    async def release(self, nonce: int) -> None:
        """`nonce` will never be used by what reserved it: hand it out again."""
        async with self._lock:
            self._outstanding.discard(nonce)
            if self._next is None or nonce >= self._next:
                return
            self._free.add(nonce)
            # Released nonces at the top of the range simply move the counter back.
            while self._next - 1 in self._free:
                self._next -= 1
                self._free.discard(self._next)

    def mined(self, nonce: int) -> None:
        """A transaction at `nonce` is in a block (ours or not): it is no longer in flight."""
        self._outstanding.discard(nonce)
        self._free.discard(nonce)

    async def resync(self) -> int:
        """After "nonce too low": trust the node again. Returns the new next nonce."""
        async with self._lock:
            before = self._next
            await self._sync(first=False)
            log.warning("exec.nonce_resynced", address=self.address, was=before, now=self._next)
            assert self._next is not None
            return self._next

    async def _sync(self, *, first: bool) -> None:
        latest, pending = await asyncio.gather(
            self.rpc.get_transaction_count(self.address, "latest"),
            self.rpc.get_transaction_count(self.address, "pending"),
        )
        self._outstanding = {n for n in self._outstanding if n >= latest}
        in_flight = max(self._outstanding, default=-1) + 1
        self._next = max(latest, pending, in_flight)
        self._free = {n for n in self._free if latest <= n < self._next and n not in self._outstanding}
        if first and pending > latest:
            self.recovered = pending - latest
            log.info("exec.nonce_recovered", address=self.address, mined=latest, pending=pending,
                     in_mempool=self.recovered)
