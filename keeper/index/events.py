"""Borrowers from the Pool's events, fetched in getLogs ranges that adapt to the node.

Every debt position starts with a `Borrow` event whose `onBehalfOf` is the
borrower (debt tokens cannot be transferred), so the set of `onBehalfOf`
addresses is every borrower the market ever had. `Repay` and `LiquidationCall`
name the borrower whose debt changed (`user`); the index keeps them as activity.

Nodes cap eth_getLogs in different ways (block span, result count, response size,
time). All of them surface as RpcRangeTooLarge (see rpc.classify_error) or RpcTimeout;
`iter_logs` splits the range on either and `RangeSizer` grows it back after successes,
bisecting between the largest span that worked and the smallest one refused.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from eth_utils import to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.errors import RpcError, RpcRangeTooLarge, RpcTimeout
from keeper.log import get_logger
from keeper.protocol.aave_v3 import BORROW, LIQUIDATION, REPAY
from keeper.protocol.abi import Event
from keeper.types import Address

__all__ = [
    "ACTIVITY_TOPICS",
    "Activity",
    "LogPage",
    "RangeSizer",
    "backfill_borrowers",
    "borrowers_in",
    "iter_logs",
    "parse_activity",
    "range_hint",
]

log = get_logger(__name__)


@dataclass
class RangeSizer:
    """The getLogs span to ask for next: shrinks on a node's refusal, grows after successes.

    Growth doubles while nothing was refused; after a refusal it bisects between the
    largest span that worked and the smallest that was refused, and stops once those are
    within 1/16 of each other. The refused bound is forgotten after `relax_after`
    successes in a row, because result-count caps depend on how busy the blocks are.
    """

    max_range: int = 10_000
    min_range: int = 1
    current: int = 0
    grow_after: int = 3
    relax_after: int = 256
    _streak: int = field(default=0, init=False, repr=False)
    _since_refusal: int = field(default=0, init=False, repr=False)
    _good: int = field(default=0, init=False, repr=False)  # largest span that worked since the last relax
    _bad: int | None = field(default=None, init=False, repr=False)  # smallest span refused since then

    def __post_init__(self) -> None:
        self.max_range = max(1, self.max_range)
        self.min_range = max(1, min(self.min_range, self.max_range))
        self.current = min(self.current or self.max_range, self.max_range)

    def shrink(self, span: int | None = None, hint: int | None = None) -> None:
        """The node refused `span` blocks (default: the current size).

        `hint` is a span the node's error message suggested; it is used when smaller than
        the refused one. Raises RpcRangeTooLarge when not even `min_range` is accepted.
        """
        span = span or self.current
        if span <= self.min_range:
            raise RpcRangeTooLarge(f"getLogs refused even a {span}-block range", method="eth_getLogs")
        self._bad = span if self._bad is None else min(self._bad, span)
        if hint is not None and self.min_range <= hint < span:
            new = hint
        else:
            new = span // 2
            if self._good < span:
                new = max(new, self._good)
        self.current = max(self.min_range, min(new, self.max_range))
        self._streak = 0
        self._since_refusal = 0

    def succeeded(self, span: int | None = None) -> None:
        span = span or self.current
        self._good = max(self._good, span)
        self._streak += 1
        self._since_refusal += 1
        if self._bad is not None and self._since_refusal >= self.relax_after:
            self._bad, self._good = None, span
        if self._streak < self.grow_after or self.current >= self.max_range:
            return
        self._streak = 0
        if self._bad is None:
            self.current = min(self.max_range, self.current * 2)
            return
        ceiling = min(self.max_range, self._bad - 1)
        target = min(ceiling, (self.current + self._bad) // 2)
        if target - self.current >= max(1, self.current // 16):
            self.current = target


# "this block range should work: [0x1, 0x2a]" (Alchemy), "Try with this block range
# [0x.., 0x..]" (Infura): the node names a range that it will answer.
_HINT_PAIR = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")
# "exceed maximum block range: 1000" (geth forks/BSC), "eth_getLogs is limited to a
# 10,000 range" (QuickNode), "block range is too large, max 2000" and similar.
_HINT_NUMBER = (
    re.compile(r"block range[^0-9a-zA-Z\[\]]{1,3}(\d[\d,_]*)", re.IGNORECASE),
    re.compile(r"limited to (?:a )?(\d[\d,_]*)(?:[- ]block)? range", re.IGNORECASE),
    re.compile(r"(?:range|blocks?)[^0-9]{0,12}(?:max(?:imum)?|limit)[: ]+(\d[\d,_]*)", re.IGNORECASE),
)


def range_hint(message: str) -> int | None:
    """The block span a node's getLogs refusal suggests, if its message names one."""
    m = _HINT_PAIR.search(message)
    if m:
        lo, hi = int(m.group(1), 16), int(m.group(2), 16)
        return hi - lo + 1 if hi >= lo else None
    for pattern in _HINT_NUMBER:
        m = pattern.search(message)
        if m:
            value = int(re.sub(r"[,_]", "", m.group(1)))
            return value if value > 0 else None
    return None


# Server-side query timeouts that come back as a JSON-RPC error rather than a slow answer
# ("query timeout exceeded", "context deadline exceeded", Nethermind's "eth_getLogs request
# was canceled due to enabled timeout"): the range was too heavy, like a refusal.
_QUERY_TIMEOUT = ("timeout", "timed out", "deadline exceeded")


def _asked_too_much(e: RpcError) -> bool:
    if isinstance(e, RpcRangeTooLarge | RpcTimeout):
        return True
    return type(e) is RpcError and any(p in e.message.lower() for p in _QUERY_TIMEOUT)


@dataclass(frozen=True, slots=True)
class LogPage:
    from_block: int
    to_block: int
    logs: list[dict]


async def iter_logs(rpc: RpcClient, address: Address, topics: list, from_block: int, to_block: int,
                    sizer: RangeSizer) -> AsyncIterator[LogPage]:
    """Yield consecutive pages of logs covering [from_block, to_block], splitting ranges the
    node refuses (RpcRangeTooLarge) or cannot answer in time (RpcTimeout, or a server-side
    "query timeout exceeded" error).

    A timeout on a `min_range` span is re-raised: the node is down, not overloaded.
    """
    start = from_block
    while start <= to_block:
        end = min(to_block, start + sizer.current - 1)
        span = end - start + 1
        try:
            logs = await rpc.get_logs({"address": address, "topics": topics,
                                       "fromBlock": start, "toBlock": end})
        except RpcError as e:
            if not _asked_too_much(e) or span <= sizer.min_range:
                raise
            hint = range_hint(e.message) if isinstance(e, RpcRangeTooLarge) else None
            sizer.shrink(span, hint)
            log.info("index.range_shrunk", from_block=start, to_block=end, size=sizer.current,
                     hint=hint, error=type(e).__name__)
            continue
        sizer.succeeded(span)
        yield LogPage(start, end, logs)
        start = end + 1


# -- decoding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Activity:
    """One Borrow/Repay/LiquidationCall naming the borrower whose debt it changed."""

    block: int
    log_index: int
    tx: str
    block_hash: str
    borrower: Address
    kind: str  # "borrow" | "repay" | "liquidation"


def _topic_position(ev: Event, name: str) -> int:
    return 1 + [n for n, _ in ev.indexed].index(name)


# topic0 -> (kind, position of the borrower's topic)
_KINDS: dict[str, tuple[str, int]] = {
    BORROW.topic: ("borrow", _topic_position(BORROW, "onBehalfOf")),
    REPAY.topic: ("repay", _topic_position(REPAY, "user")),
    LIQUIDATION.topic: ("liquidation", _topic_position(LIQUIDATION, "user")),
}
# One getLogs filter for all three (topic0 is any of them).
ACTIVITY_TOPICS: list = [[BORROW.topic, REPAY.topic, LIQUIDATION.topic]]


def parse_activity(entry: dict) -> Activity | None:
    """Decode a log into an Activity; None for other events and for `removed` logs."""
    topics = entry.get("topics") or []
    if not topics or entry.get("removed"):
        return None
    kind = _KINDS.get(topics[0].lower())
    if kind is None or len(topics) <= kind[1]:
        return None
    name, pos = kind
    return Activity(
        block=int(entry["blockNumber"], 16),
        log_index=int(entry["logIndex"], 16),
        tx=entry["transactionHash"],
        block_hash=entry["blockHash"],
        borrower=to_checksum_address("0x" + topics[pos][-40:]),
        kind=name,
    )


def borrowers_in(logs: list[dict]) -> set[Address]:
    """`onBehalfOf` of every Borrow log (other events and `removed` logs are skipped)."""
    pos = _KINDS[BORROW.topic][1]
    return {to_checksum_address("0x" + e["topics"][pos][-40:]) for e in logs
            if len(e.get("topics") or ()) > pos and e["topics"][0].lower() == BORROW.topic
            and not e.get("removed")}


async def backfill_borrowers(rpc: RpcClient, pool: Address, from_block: int, to_block: int,
                             sizer: RangeSizer | None = None,
                             on_page: Callable[[LogPage, int], None] | None = None) -> set[Address]:
    """Every borrower with a Borrow event in [from_block, to_block] (no persistence)."""
    sizer = sizer or RangeSizer()
    found: set[Address] = set()
    async for page in iter_logs(rpc, pool, [BORROW.topic], from_block, to_block, sizer):
        found |= borrowers_in(page.logs)
        if on_page is not None:
            on_page(page, len(found))
    return found
