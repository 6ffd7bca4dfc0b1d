"""Borrowers from the Pool's events, fetched in getLogs ranges that adapt to the node.

Every debt position starts with a `Borrow` event whose `onBehalfOf` is the
borrower (debt tokens cannot be transferred), so the set of `onBehalfOf`
addresses is every borrower the market ever had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from eth_utils import to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.errors import RpcRangeTooLarge, RpcTimeout
from keeper.log import get_logger
from keeper.protocol.aave_v3 import BORROW
from keeper.types import Address

log = get_logger(__name__)


@dataclass
class RangeSizer:
    """Halve the getLogs range on a node's refusal, grow it back after successes."""

    max_range: int = 10_000
    min_range: int = 1
    current: int = 0
    grow_after: int = 3
    _streak: int = 0

    def __post_init__(self) -> None:
        self.current = self.current or self.max_range

    def shrink(self) -> None:
        if self.current <= self.min_range:
            raise RpcRangeTooLarge(f"getLogs refused even a {self.min_range}-block range")
        self.current = max(self.min_range, self.current // 2)
        self._streak = 0

    def succeeded(self) -> None:
        self._streak += 1
        if self._streak >= self.grow_after and self.current < self.max_range:
            self.current = min(self.max_range, self.current * 2)
            self._streak = 0


@dataclass(frozen=True, slots=True)
class LogPage:
    from_block: int
    to_block: int
    logs: list[dict]


async def iter_logs(rpc: RpcClient, address: Address, topics: list, from_block: int, to_block: int,
                    sizer: RangeSizer) -> AsyncIterator[LogPage]:
    """Yield pages of logs over [from_block, to_block], splitting ranges the node refuses."""
    start = from_block
    while start <= to_block:
        end = min(to_block, start + sizer.current - 1)
        try:
            logs = await rpc.get_logs({"address": address, "topics": topics,
                                       "fromBlock": start, "toBlock": end})
        except (RpcRangeTooLarge, RpcTimeout) as e:
            sizer.shrink()
            log.debug("index.range_shrunk", from_block=start, to_block=end, size=sizer.current,
                      error=type(e).__name__)
            continue
        sizer.succeeded()
        yield LogPage(start, end, logs)
        start = end + 1


def borrowers_in(logs: list[dict]) -> set[Address]:
    return {to_checksum_address(BORROW.decode(entry)["onBehalfOf"]) for entry in logs
            if entry["topics"] and entry["topics"][0] == BORROW.topic and not entry.get("removed")}


async def backfill_borrowers(rpc: RpcClient, pool: Address, from_block: int, to_block: int,
                             sizer: RangeSizer | None = None,
                             on_page: Callable[[LogPage, int], None] | None = None) -> set[Address]:
    """Every borrower with a Borrow event in [from_block, to_block]."""
    sizer = sizer or RangeSizer()
    found: set[Address] = set()
    async for page in iter_logs(rpc, pool, [BORROW.topic], from_block, to_block, sizer):
        found |= borrowers_in(page.logs)
        if on_page is not None:
            on_page(page, len(found))
    return found
