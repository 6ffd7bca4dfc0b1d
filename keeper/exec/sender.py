"""Sign, broadcast, and follow each liquidation until it lands, is replaced, or is cancelled.

`Sender.submit(intent, fees)` bids, signs and broadcasts once, registers the attempt and
returns at once; `Sender.run()` (a task in the app's TaskGroup) follows every attempt in
flight, block by block:

1. a receipt for any version of it (original, replacement, cancel) settles it;
2. its nonce mined by a transaction that is none of ours settles it as dropped;
3. lost: a `LiquidationCall` for the same borrower by another liquidator, or the pending
   transaction no longer passes `eth_call` on the newest block (a re-simulation on the node):
   it is cancelled — a zero-value self-transfer at the same nonce with fees bumped >= 12.5%;
4. not included within `replace_after_blocks`: replaced at the same nonce, fees bumped
   >= 12.5%, the total cost still capped by the expected profit and the fee by the ceiling;
   after `max_pending_blocks` it is cancelled (reason "timeout").

Routes: public (eth_sendRawTransaction on the keeper's node), private (relay.PrivateTx:
replacements and cancels go the same way) or bundle (relay.BundleRelay: the same signed
transaction is offered for each of the next `bundle_blocks` blocks; a stale bundle never
reached a mempool, so its nonce is released, not cancelled).

One attempt per key (the borrower) is in flight at a time. A settled attempt that did not
succeed starts a cooldown of `cooldown_blocks` for its key and counts as a failure for the
circuit breaker (exec/safety.py), which, with the kill switch and the gas floor, may refuse
a submit. `eth_sendRawTransaction` is never retried blindly: the RPC layer re-sends the same
bytes only while every node refused them (TxNotAccepted at its deadline); after a failure that
may have reached a node the bytes may be in a mempool, so the attempt is followed by hash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from eth_abi import encode
from eth_utils import to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionError,
    ExecutionReverted,
    KeeperError,
    NonceTooLow,
    RpcError,
    RpcTimeout,
    TxNotAccepted,
    TxUnderpriced,
)
from keeper.exec.fees import (
    CANCEL_GAS,
    MIN_BUMP_BPS,
    Bid,
    Fees,
    bump_bid,
    cancel_bid,
    fee_cap,
    gwei_to_wei,
    profit_bid,
    suggest_fees,
)
from keeper.exec.nonces import NonceManager
from keeper.exec.relay import BundleRelay, PrivateTx
from keeper.exec.safety import BREAKER_OPEN, PAUSED, Safety
from keeper.exec.signer import Signer
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import LIQUIDATION
from keeper.types import Address

if TYPE_CHECKING:
    from keeper.config import Settings

log = get_logger(__name__)

Route = Literal["public", "private", "bundle"]
Status = Literal["included", "reverted", "cancelled", "expired", "dropped"]
_ALREADY_KNOWN = ("already known", "already imported", "known transaction")
HISTORY = 1_000  # settled attempts kept for inspection


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
        self.first_block = first.head
        self.last_sent = first.head
        self.scan_from = intent.block + 1  # next block to look for others' LiquidationCall in
        self.target = first.head + 1  # bundles: the block the last offer was for
        self.cancel_reason: str | None = None
        self.floor_bid: Bid = first.bid  # replacements bump from here (raised by refusals)
        self.outcome: Outcome | None = None
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
class SendResult:
    tx_hash: str
    nonce: int
    included: bool
    success: bool
    gas_used: int
    gas_cost_wei: int
    block: int | None


@dataclass
class _Registry:
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


class Sender:
    def __init__(self, rpc: RpcClient, signer: Signer, *, max_fee_gwei: Decimal,
                 receipt_timeout_s: float = 120.0, poll_interval_s: float = 0.5,
                 policy: SendPolicy | None = None, safety: Safety | None = None,
                 metrics: Metrics | None = None, private: PrivateTx | None = None,
                 bundles: BundleRelay | None = None) -> None:
        self.rpc = rpc
        self.signer = signer
        self.address = signer.address
        self.nonces = NonceManager(rpc, signer.address)  # the one nonce owner for this key
        self.max_fee_gwei = max_fee_gwei
        self.receipt_timeout_s = receipt_timeout_s
        self.poll_interval_s = poll_interval_s
        self.policy = policy or SendPolicy(max_fee_wei=gwei_to_wei(max_fee_gwei))
        self.safety = safety
        self.metrics = metrics
        self.private = private
        self.bundles = bundles
        self.route: Route = "bundle" if bundles else "private" if private else "public"
        self.registry = _Registry()
        self.history: deque[Outcome] = deque(maxlen=HISTORY)  # the last settled attempts, oldest first
        self._wake = asyncio.Event()
        self._head = 0

    async def close(self) -> None:
        for relay in (self.private, self.bundles):
            if relay is not None:
                await relay.close()

    async def fees(self) -> Fees:
        return await suggest_fees(self.rpc, max_fee_gwei=self.max_fee_gwei)

    # -- liquidations: submit, settle, follow -------------------------------------------

    def in_flight(self, key: str) -> bool:
        return key in self.registry.inflight or key in self.registry.reserving

    def cooling(self, key: str, block: int) -> bool:
        return self.registry.cooling_until(key, block) is not None

    def blocked(self, key: str, block: int) -> str | None:
        """Why `key` may not be sent at `block`, checked without any RPC (a cycle can ask this
        before simulating): in_flight, cooldown, paused or breaker_open; None if it may."""
        if self.in_flight(key):
            return "in_flight"
        if self.cooling(key, block):
            return "cooldown"
        if self.safety is not None:
            if self.safety.kill_switch.engaged():
                return PAUSED
            if self.safety.breaker.is_open():
                return BREAKER_OPEN
        return None

    async def submit(self, intent: Intent, fees: Fees) -> Attempt:
        """Bid, sign and broadcast `intent`; the attempt is then followed by `run()`.

        Raises SendRefused (in_flight, cooldown, paused, breaker_open, gas_balance_low,
        fees_exceed_profit) without sending anything, or ExecutionError if the node refused it.
        """
        key = intent.key
        self._head = max(self._head, intent.block)
        if (blocked := self.blocked(key, intent.block)) is not None:
            detail = f"until block {self.registry.cooling[key]}" if blocked == "cooldown" else ""
            raise SendRefused(blocked, detail)
        self.registry.reserving.add(key)
        try:
            if self.safety is not None and (reason := await self.safety.refusal(self.rpc, self.address)):
                raise SendRefused(reason)
            cap = fee_cap(gas_limit=intent.gas_limit, profit_wei=intent.profit_wei,
                          floor_wei=intent.floor_wei, max_fee_wei=self.policy.max_fee_wei)
            bid = profit_bid(fees, gas_estimate=intent.gas_estimate, gas_limit=intent.gas_limit,
                             profit_wei=intent.profit_wei, floor_wei=intent.floor_wei,
                             share_bps=self.policy.share_bps, max_fee_wei=self.policy.max_fee_wei)
            if bid is None:
                raise SendRefused("fees_exceed_profit",
                                  f"next base fee {fees.next_base_fee} above the affordable {cap} wei/gas")
            head = intent.block
            if self.route == "bundle":
                head = await self.rpc.block_number()
            nonce, tx_hash, raw = await self._send_first(intent, bid, head)
        finally:
            self.registry.reserving.discard(key)
        first = SentTx(tx_hash, bid, "liquidation", head)
        attempt = Attempt(intent, nonce, self.route, first, raw, cap)
        self.registry.inflight[key] = attempt
        self._gauge()
        self._wake.set()
        log.info("exec.sent", borrower=key, tx=tx_hash, nonce=nonce, route=self.route, gas=intent.gas_limit,
                 max_fee_gwei=_gwei(bid.max_fee_per_gas), tip_gwei=_gwei(bid.max_priority_fee_per_gas),
                 cap_gwei=_gwei(cap), profit_wei=intent.profit_wei)
        return attempt

    async def settle(self, attempt: Attempt, timeout_s: float, poll_s: float = 0.02) -> Outcome | None:
        """Wait up to `timeout_s` for the attempt to be mined (on automine: at once)."""
        try:
            async with asyncio.timeout(timeout_s):
                while attempt.outcome is None:
                    if await self._check_mined(attempt):
                        break
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            pass
        except RpcError as e:
            log.debug("exec.settle_poll_failed", tx=attempt.tx_hash, error=type(e).__name__)
        return attempt.outcome

    async def run(self) -> None:
        """Follow attempts in flight until cancelled (the app's TaskGroup owns this task)."""
        last = -1
        failures = 0
        while True:
            if not self.registry.inflight:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5.0)
                continue
            try:
                head = await self.rpc.block_number()
                if head > last:
                    await self.follow_block(head)
                    last = head
                failures = 0
            except KeeperError as e:
                failures += 1
                log.warning("exec.follow_failed", error=str(e), retry_in_s=min(30.0, 0.5 * 2**failures))
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            await asyncio.sleep(self.poll_interval_s)

    async def follow_block(self, head: int) -> None:
        """One step for every attempt in flight at block `head`."""
        self._head = max(self._head, head)
        latest_nonce = await self.rpc.get_transaction_count(self.address, "latest")
        for attempt in list(self.registry.inflight.values()):
            if attempt.outcome is not None:
                continue
            try:
                await self._follow(attempt, head, latest_nonce)
            except KeeperError as e:
                log.warning("exec.follow_attempt_failed", borrower=attempt.key, nonce=attempt.nonce,
                            error=str(e))

    async def _follow(self, a: Attempt, head: int, latest_nonce: int) -> None:
        if await self._check_mined(a):
            return
        if latest_nonce > a.nonce:
            # The nonce is used, but by none of our hashes (checked before the count was read
            # and again now): another transaction from this key took it.
            if not await self._check_mined(a):
                self._finish(a, "dropped", "nonce_used_elsewhere", head)
            return
        if a.route == "bundle":
            await self._follow_bundle(a, head)
            return
        if a.cancel_reason is None:
            reason = await self._lost(a, head)
            if reason is None and head - a.first_block >= self.policy.max_pending_blocks:
                reason = "timeout"
            if reason is not None:
                await self._cancel(a, head, reason)
                return
        if head - a.last_sent >= self.policy.replace_after_blocks:
            await self._replace(a, head)

    async def _follow_bundle(self, a: Attempt, head: int) -> None:
        if a.cancel_reason is None:
            a.cancel_reason = await self._lost(a, head)
            if a.cancel_reason is not None:
                log.info("exec.bundle_stopped", borrower=a.key, nonce=a.nonce, reason=a.cancel_reason)
        last_target = a.first_block + self.policy.bundle_blocks
        if a.cancel_reason is None and head + 1 <= last_target:
            if head + 1 > a.target:  # a new block was mined without it: offer it for the next one
                await self._offer_bundle(a, head + 1)
            return
        if head >= a.target:
            # The last block it was offered for has passed without it, and it never reached a mempool.
            await self.nonces.release(a.nonce)
            status: Status = "cancelled" if a.cancel_reason else "expired"
            self._finish(a, status, a.cancel_reason or "stale", head, released=True)

    async def _lost(self, a: Attempt, head: int) -> str | None:
        """"lost" if someone else liquidated the borrower, "gone" if the transaction would revert now."""
        it = a.intent
        if it.watch_pool is not None and a.scan_from <= head:
            user_topic = "0x" + encode(["address"], [to_checksum_address(it.key)]).hex()
            topics = [LIQUIDATION.topic, None, None, user_topic]
            logs = await self.rpc.get_logs({"address": it.watch_pool, "fromBlock": a.scan_from,
                                            "toBlock": head, "topics": topics})
            a.scan_from = head + 1
            ours = {to_checksum_address(x) for x in (self.address, *it.ours)}
            for entry in logs:
                liquidator = to_checksum_address(LIQUIDATION.decode(entry)["liquidator"])
                if liquidator not in ours:
                    log.info("exec.lost_race", borrower=it.key, winner=liquidator,
                             tx=entry.get("transactionHash"), block=int(entry["blockNumber"], 16))
                    return "lost"
        try:
            await self.rpc.call("eth_call", [{"from": self.address, "to": it.to, "data": "0x" + it.data.hex(),
                                              "gas": hex(it.gas_limit)}, "latest"])
        except ExecutionReverted as e:
            log.info("exec.no_longer_pays", borrower=it.key, block=head, revert=e.data)
            return "gone"
        return None

    # -- replacement and cancellation ---------------------------------------------------

    async def _replace(self, a: Attempt, head: int) -> None:
        fees = await self.fees()
        if a.outcome is not None:
            return
        live = a.live
        cap = self.policy.max_fee_wei if live.kind == "cancel" else a.cap
        bid = bump_bid(a.floor_bid, fees, cap=cap, bump_bps=self.policy.bump_bps)
        if bid is None:
            log.info("exec.replace_capped", borrower=a.key, nonce=a.nonce, kind=live.kind,
                     next_base_gwei=_gwei(fees.next_base_fee), cap_gwei=_gwei(a.cap))
            a.last_sent = head  # look again after another N blocks
            return
        if live.kind == "cancel":
            sent = await self._resend(a, self._cancel_tx(a.nonce, bid), bid, "cancel", head)
        else:
            tx = self._call_tx(a.intent, a.nonce, bid)
            sent = await self._resend(a, tx, bid, "liquidation", head)
            if sent and self.metrics is not None:
                self.metrics.tx_replacements.inc()
        if sent:
            log.info("exec.replaced", borrower=a.key, nonce=a.nonce, kind=live.kind, tx=a.live.tx_hash,
                     replaced=live.tx_hash, max_fee_gwei=_gwei(bid.max_fee_per_gas),
                     tip_gwei=_gwei(bid.max_priority_fee_per_gas), blocks_waited=head - live.head)

    async def _cancel(self, a: Attempt, head: int, reason: str) -> None:
        a.cancel_reason = reason
        fees = await self.fees()
        if a.outcome is not None:
            return
        bid = cancel_bid(a.floor_bid, fees, max_fee_wei=self.policy.max_fee_wei,
                         bump_bps=self.policy.bump_bps)
        if bid is None:
            log.warning("exec.cancel_capped", borrower=a.key, nonce=a.nonce, reason=reason,
                        max_fee_gwei=_gwei(self.policy.max_fee_wei))
            a.last_sent = head
            return
        if await self._resend(a, self._cancel_tx(a.nonce, bid), bid, "cancel", head):
            if self.metrics is not None:
                self.metrics.tx_cancels.labels(reason=reason).inc()
            log.info("exec.cancel_sent", borrower=a.key, nonce=a.nonce, reason=reason, tx=a.live.tx_hash,
                     max_fee_gwei=_gwei(bid.max_fee_per_gas))

    async def _resend(self, a: Attempt, tx: dict[str, Any], bid: Bid, kind: Literal["liquidation", "cancel"],
                      head: int) -> bool:
        raw, tx_hash = self.signer.sign(tx)
        try:
            await self._broadcast(raw, head)
        except NonceTooLow:
            return False  # some version is mined: the next step finds its receipt
        except TxUnderpriced as e:
            # Not enough for this node: bump from what was refused next time.
            a.floor_bid = bid
            a.last_sent = head
            log.info("exec.replacement_refused", borrower=a.key, nonce=a.nonce, error=str(e))
            return False
        except TxNotAccepted as e:
            # Every endpoint refused the same bytes until the deadline: nothing replaced the live one.
            log.warning("exec.broadcast_not_accepted", borrower=a.key, nonce=a.nonce, tx=tx_hash,
                        error=str(e))
            a.last_sent = head
            return False
        except TRANSIENT_ERRORS as e:
            log.warning("exec.broadcast_uncertain", tx=tx_hash, error=type(e).__name__)
        except RpcError as e:
            if not any(p in str(e).lower() for p in _ALREADY_KNOWN):
                log.warning("exec.replacement_failed", borrower=a.key, nonce=a.nonce, error=str(e))
                a.last_sent = head
                return False
        a.txs.append(SentTx(tx_hash, bid, kind, head))
        a.floor_bid = bid
        a.last_sent = head
        if kind == "liquidation":
            a.raw = raw
        return True

    # -- broadcasting ---------------------------------------------------------------------

    def _call_tx(self, intent: Intent, nonce: int, bid: Bid) -> dict[str, Any]:
        return {"type": 2, "to": to_checksum_address(intent.to), "data": intent.data, "value": 0,
                "gas": intent.gas_limit, "nonce": nonce, **bid.fields()}

    def _cancel_tx(self, nonce: int, bid: Bid) -> dict[str, Any]:
        return {"type": 2, "to": self.address, "data": b"", "value": 0, "gas": CANCEL_GAS, "nonce": nonce,
                **bid.fields()}

    async def _send_first(self, intent: Intent, bid: Bid, head: int) -> tuple[int, str, bytes]:
        for attempt in (1, 2):
            nonce = await self.nonces.reserve()
            raw, tx_hash = self.signer.sign(self._call_tx(intent, nonce, bid))
            try:
                if self.route == "bundle":
                    await self._bundle(raw, head + 1)
                else:
                    await self._broadcast(raw, head)
                return nonce, tx_hash, raw
            except NonceTooLow:
                # Nothing went out with this nonce: re-sync and sign again, once.
                await self.nonces.resync()
                if attempt == 2:
                    raise ExecutionError("the node keeps refusing the nonce as too low") from None
            except TxNotAccepted as e:
                # No node took the bytes (the RPC layer re-sent them until its deadline): the nonce is free.
                await self.nonces.release(nonce)
                raise ExecutionError(f"no endpoint accepted the transaction: {e}") from e
            except TRANSIENT_ERRORS as e:
                # The bytes may have reached the node; follow the hash, never send twice.
                log.warning("exec.broadcast_uncertain", tx=tx_hash, error=type(e).__name__)
                return nonce, tx_hash, raw
            except RpcError as e:
                await self.nonces.release(nonce)
                raise ExecutionError(f"the node refused the transaction: {e}") from e
        raise AssertionError("unreachable")

    async def _broadcast(self, raw: bytes, head: int) -> None:
        if self.private is not None and self.route == "private":
            await self.private.send(raw, max_block=head + self.policy.max_pending_blocks)
        else:
            await self.rpc.send_raw_transaction(raw)

    async def _bundle(self, raw: bytes, target: int) -> None:
        assert self.bundles is not None
        await self.bundles.send_bundle([raw], target)
        if self.metrics is not None:
            self.metrics.bundles_sent.inc()

    async def _offer_bundle(self, a: Attempt, target: int) -> None:
        try:
            await self._bundle(a.raw, target)
        except RpcError as e:
            log.warning("exec.bundle_refused", borrower=a.key, nonce=a.nonce, target=target, error=str(e))
            return
        a.target = target
        log.debug("exec.bundle_resent", borrower=a.key, nonce=a.nonce, target=target)

    # -- settling ---------------------------------------------------------------------

    async def _check_mined(self, a: Attempt) -> bool:
        """Settle `a` if any version of it has a receipt. True when settled."""
        if a.outcome is not None:
            return True
        txs = list(a.txs)
        replies = await self.rpc.batch([("eth_getTransactionReceipt", [t.tx_hash]) for t in txs])
        for sent, receipt in zip(txs, replies, strict=True):
            if isinstance(receipt, RpcError):
                if isinstance(receipt, TRANSIENT_ERRORS):
                    continue
                raise receipt
            if receipt is None or a.outcome is not None:
                continue
            ok = int(receipt["status"], 16) == 1
            if sent.kind == "cancel":
                status: Status = "cancelled"
            else:
                status = "included" if ok else "reverted"
            self._finish(a, status, a.cancel_reason if status == "cancelled" else None,
                         int(receipt["blockNumber"], 16), receipt=receipt, sent=sent)
            return True
        return a.outcome is not None

    def _finish(self, a: Attempt, status: Status, reason: str | None, block: int, *,
                receipt: dict[str, Any] | None = None, sent: SentTx | None = None,
                released: bool = False) -> None:
        if a.outcome is not None:
            return
        gas_used = int(receipt["gasUsed"], 16) if receipt else 0
        price = int(receipt.get("effectiveGasPrice", "0x0"), 16) if receipt else 0
        outcome = Outcome(key=a.key, status=status, reason=reason, nonce=a.nonce, first_tx=a.tx_hash,
                          tx_hash=sent.tx_hash if sent else None, block=block if receipt else None,
                          gas_used=gas_used, gas_cost_wei=gas_used * price,
                          max_fee_per_gas=sent.bid.max_fee_per_gas if sent else 0,
                          replacements=a.replacements, profit_wei=a.intent.profit_wei, route=a.route)
        if not released:
            self.nonces.mined(a.nonce)
        if self.registry.inflight.get(a.key) is a:
            del self.registry.inflight[a.key]
        now = max(block, self._head)
        for key in [k for k, until in self.registry.cooling.items() if until <= now]:
            del self.registry.cooling[key]  # expired cooldowns of borrowers never seen again
        if not outcome.success:
            self.registry.cooling[a.key] = now + self.policy.cooldown_blocks
        if self.safety is not None:
            self.safety.record(outcome.success, status if reason is None else f"{status}:{reason}")
        self.history.append(outcome)
        self._gauge()
        event = {"included": "exec.included", "reverted": "exec.reverted"}.get(status, f"exec.{status}")
        (log.info if outcome.success else log.warning)(
            event, borrower=a.key, nonce=a.nonce, tx=outcome.tx_hash, first_tx=a.tx_hash, block=outcome.block,
            reason=reason, gas=gas_used, cost_wei=outcome.gas_cost_wei, replacements=outcome.replacements,
            route=a.route, cooldown_blocks=None if outcome.success else self.policy.cooldown_blocks)
        a._settle(outcome)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.attempts_in_flight.set(len(self.registry.inflight))

    # -- plain sends (approvals and other one-off transactions) -------------------------

    async def send(self, to: Address, data: bytes, *, gas: int, value: int = 0,
                   fees: Fees | None = None) -> SendResult:
        """Sign, broadcast once (publicly) and wait for the receipt. No replacement."""
        fees = fees or await self.fees()
        bid = Bid(fees.max_fee_per_gas, fees.max_priority_fee_per_gas)
        intent = Intent(key="", to=to, data=data, gas_limit=gas, gas_estimate=gas, profit_wei=None)
        tx_hash, nonce = await self._send_plain(intent, value, bid)
        log.info("exec.sent", tx=tx_hash, nonce=nonce, to=to, gas=gas,
                 max_fee_gwei=_gwei(bid.max_fee_per_gas))
        return await self.follow(tx_hash, nonce)

    async def _send_plain(self, intent: Intent, value: int, bid: Bid) -> tuple[str, int]:
        for attempt in (1, 2):
            nonce = await self.nonces.reserve()
            tx = {**self._call_tx(intent, nonce, bid), "value": value}
            raw, tx_hash = self.signer.sign(tx)
            try:
                await self.rpc.send_raw_transaction(raw)
                return tx_hash, nonce
            except NonceTooLow:
                await self.nonces.resync()
                if attempt == 2:
                    raise ExecutionError("the node keeps refusing the nonce as too low") from None
            except TxNotAccepted as e:
                await self.nonces.release(nonce)
                raise ExecutionError(f"no endpoint accepted the transaction: {e}") from e
            except TRANSIENT_ERRORS as e:
                log.warning("exec.broadcast_uncertain", tx=tx_hash, error=type(e).__name__)
                return tx_hash, nonce
            except RpcError as e:
                await self.nonces.release(nonce)
                raise ExecutionError(f"the node refused the transaction: {e}") from e
        raise AssertionError("unreachable")

    async def follow(self, tx_hash: str, nonce: int) -> SendResult:
        try:
            receipt = await self.rpc.wait_for_receipt(tx_hash, timeout=self.receipt_timeout_s,
                                                      poll_interval=self.poll_interval_s)
        except RpcTimeout:
            log.warning("exec.no_receipt", tx=tx_hash, nonce=nonce, timeout_s=self.receipt_timeout_s)
            return SendResult(tx_hash, nonce, False, False, 0, 0, None)
        self.nonces.mined(nonce)
        gas_used = int(receipt["gasUsed"], 16)
        price = int(receipt.get("effectiveGasPrice", "0x0"), 16)
        return SendResult(tx_hash, nonce, True, int(receipt["status"], 16) == 1, gas_used,
                          gas_used * price, int(receipt["blockNumber"], 16))


def _gwei(wei: int) -> str:
    return str(Decimal(wei) / 10**9)
