"""What the sender keeps per liquidation: the intent, each broadcast version, the outcome.

Block bookkeeping on an `Attempt` is always in terms of the chain's head *at the moment a
transaction was broadcast* (`SentTx.head`), never the block the cycle decided on
(`Intent.block`): a cycle may run several blocks behind the chain, and a transaction sent at
head N has waited zero blocks at head N, whatever block its decision was made at.

- `first_block`: the head when the first version was broadcast; `max_pending_blocks` (the
  timeout cancel) counts from it.
- `last_sent`: the head when the newest version (replacement or cancel) was broadcast;
  `replace_after_blocks` counts from it.
- `target`: bundles, the block the newest offer was for (head at the offer + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from keeper.errors import ExecutionError
from keeper.exec.fees import MIN_BUMP_BPS, Bid, gwei_to_wei
from keeper.log import get_logger
from keeper.types import Address

if TYPE_CHECKING:
    from keeper.config import Settings

log = get_logger(__name__)

Route = Literal["public", "private", "bundle"]
Status = Literal["included", "reverted", "cancelled", "expired", "dropped"]


class SendRefused(ExecutionError):
    """Not sent, on purpose: `reason` is a short label (in_flight, cooldown, paused, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SendPolicy:
    max_fee_wei: int
    share_bps: int = 1_000  # priority fee: this share of the profit left after the base fee
    replace_after_blocks: int = 3
    bump_bps: int = MIN_BUMP_BPS
    max_pending_blocks: int = 25
    cooldown_blocks: int = 3
    bundle_blocks: int = 3

    @classmethod
    def from_settings(cls, s: Settings) -> SendPolicy:
        return cls(max_fee_wei=gwei_to_wei(s.max_fee_gwei), share_bps=s.priority_fee_share_bps,
                   replace_after_blocks=s.replace_after_blocks, bump_bps=s.fee_bump_bps,
                   max_pending_blocks=s.max_pending_blocks, cooldown_blocks=s.cooldown_blocks,
                   bundle_blocks=s.bundle_blocks)


@dataclass(frozen=True, slots=True)
class Intent:
    """A transaction the pipeline decided to send, and what it is worth."""

    key: str  # one attempt in flight per key: the borrower
    to: Address
    data: bytes
    gas_limit: int
    gas_estimate: int  # gas the fork measured
    profit_wei: int | None  # expected profit before gas, in wei; None: no profit cap (ceiling only)
    floor_wei: int = 0  # profit to keep whatever the fees (KEEPER_MIN_PROFIT_USD in wei)
    block: int = 0  # the block the decision was made at
    watch_pool: Address | None = None  # a LiquidationCall on this pool for `key` by others means lost
    ours: tuple[Address, ...] = ()  # liquidators that are the keeper (its wallet, its executor)


@dataclass(frozen=True, slots=True)
class SentTx:
    tx_hash: str
    bid: Bid
    kind: Literal["liquidation", "cancel"]
    head: int  # newest block when it was sent


@dataclass(frozen=True, slots=True)
class Outcome:
    key: str
    status: Status
    reason: str | None  # why it was cancelled/dropped/expired
    nonce: int
    first_tx: str
    tx_hash: str | None  # the transaction of ours that was mined, if any
    block: int | None
    gas_used: int
    gas_cost_wei: int
    max_fee_per_gas: int  # of the mined transaction (0 if none)
    replacements: int
    profit_wei: int | None
    route: Route

    @property
    def success(self) -> bool:
        return self.status == "included"


class Attempt:
    """One nonce's worth of trying: the liquidation, its replacements and maybe a cancel."""

    def __init__(self, intent: Intent, nonce: int, route: Route, first: SentTx, raw: bytes,
                 cap: int) -> None:
        self.intent = intent
        self.nonce = nonce
        self.route = route
        self.txs: list[SentTx] = [first]
        self.raw = raw  # the live liquidation's signed bytes (bundles re-send them)
        self.cap = cap  # highest max fee per gas the profit allows
        self.first_block = first.head  # head at the first broadcast: the timeout counts from here
        self.last_sent = first.head  # head at the newest broadcast: replacements count from here
        self.scan_from = intent.block + 1  # next block to look for others' LiquidationCall in
        self.target = first.head + 1  # bundles: the block the last offer was for
        self.cancel_reason: str | None = None
        self.probe = False  # sent as the half-open circuit breaker's one trial
        self.floor_bid: Bid = first.bid  # replacements bump from here (raised by refusals)
        self.outcome: Outcome | None = None
        self.nonce_used_at: int | None = None  # first head at which the nonce was used without our receipt
        self._callbacks: list[Callable[[Outcome], None]] = []

    @property
    def key(self) -> str:
        return self.intent.key

    @property
    def tx_hash(self) -> str:
        return self.txs[0].tx_hash

    @property
    def bid(self) -> Bid:
        return self.txs[0].bid

    @property
    def live(self) -> SentTx:
        return self.txs[-1]

    @property
    def replacements(self) -> int:
        return sum(1 for t in self.txs[1:] if t.kind == "liquidation")

    def add_done_callback(self, fn: Callable[[Outcome], None]) -> None:
        """`fn(outcome)` once settled (at once if it already is). Exceptions are logged, not raised."""
        if self.outcome is not None:
            _call(fn, self.outcome)
        else:
            self._callbacks.append(fn)

    def _settle(self, outcome: Outcome) -> None:
        self.outcome = outcome
        for fn in self._callbacks:
            _call(fn, outcome)
        self._callbacks.clear()


def _call(fn: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        fn(outcome)
    except Exception:
        log.exception("exec.callback_failed", key=outcome.key)


@dataclass(frozen=True, slots=True)
class PendingTx:
    """A transaction of this key found pending at start, sent by an earlier run."""

    nonce: int
    to: Address
    data: bytes
    gas: int


@dataclass(frozen=True, slots=True)
class SendResult:
    tx_hash: str
    nonce: int
    included: bool
    success: bool
    gas_used: int
    gas_cost_wei: int
    block: int | None


@dataclass
class Registry:
    """Attempts in flight and cooldowns, by key."""

    inflight: dict[str, Attempt] = field(default_factory=dict)
    cooling: dict[str, int] = field(default_factory=dict)  # key -> first block it may be tried again
    reserving: set[str] = field(default_factory=set)

    def cooling_until(self, key: str, block: int) -> int | None:
        until = self.cooling.get(key)
        if until is None:
            return None
        if block >= until:
            del self.cooling[key]
            return None
        return until


def gwei(wei: int) -> str:
    return str(Decimal(wei) / 10**9)
