"""The sender's core: its state, how a signed transaction goes out, and how an attempt settles.

`SenderCore` holds what every part of sending shares (the RPC, the signer and its one nonce
manager, the policy, the registry of attempts, the safety gate) and the steps they share:
building and broadcasting a transaction, reading the chain's head at the moment of a
broadcast, finding a receipt for any version of an attempt, and recording how it ended.
`follow.Follower` (replacement, cancellation) and `sender.Sender` (submit, plain sends) build
on it.

The head at a broadcast: `eth_blockNumber` is read alongside the broadcast itself (public
route: concurrently, so it adds no latency; private and bundle routes need it before, for the
target block). If that read fails or takes longer than `HEAD_READ_TIMEOUT_S`, the newest head
the sender has seen stands in (never the cycle's block alone, which may be blocks behind).
"""

from __future__ import annotations

import asyncio
from collections import deque
from decimal import Decimal
from typing import Any

from eth_utils import to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.errors import TRANSIENT_ERRORS, RpcError
from keeper.exec.attempt import (
    Attempt,
    Intent,
    Outcome,
    PendingTx,
    Registry,
    Route,
    SendPolicy,
    SentTx,
    Status,
    gwei,
)
from keeper.exec.fees import CANCEL_GAS, Bid, gwei_to_wei
from keeper.exec.nonces import NonceManager
from keeper.exec.relay import BundleRelay, PrivateTx
from keeper.exec.safety import Safety
from keeper.exec.signer import Signer
from keeper.log import get_logger
from keeper.metrics import Metrics

log = get_logger(__name__)

HISTORY = 1_000  # settled attempts kept for inspection
RECENT = 256  # settled attempts whose liquidation was mined, kept for the fork's replay
HEAD_READ_TIMEOUT_S = 2.0  # a broadcast's head read; past it, the newest head seen stands in


class SenderCore:
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
        self.registry = Registry()
        self.history: deque[Outcome] = deque(maxlen=HISTORY)  # the last settled attempts, oldest first
        self.recent: deque[Attempt] = deque(maxlen=RECENT)  # settled with their liquidation mined
        self.inherited: list[PendingTx] = []  # an earlier run's, pending at start (adopt_pending)
        self._wake = asyncio.Event()
        self._head = 0  # the newest head the sender has seen (its own reads, or a caller's)

    def saw_head(self, block: int) -> None:
        """Tell the sender about a head seen elsewhere (the head watcher): a floor for its own."""
        self._head = max(self._head, block)

    async def head_now(self) -> int:
        """The chain's head now: one `eth_blockNumber`, or the newest head seen if it fails."""
        try:
            head = await asyncio.wait_for(self.rpc.block_number(), HEAD_READ_TIMEOUT_S)
        except (TimeoutError, RpcError) as e:
            log.debug("exec.head_read_failed", error=type(e).__name__, using=self._head)
            return self._head
        self.saw_head(head)
        return self._head

    # -- building and broadcasting ----------------------------------------------------------

    def _call_tx(self, intent: Intent, nonce: int, bid: Bid) -> dict[str, Any]:
        return {"type": 2, "to": to_checksum_address(intent.to), "data": intent.data, "value": 0,
                "gas": intent.gas_limit, "nonce": nonce, **bid.fields()}

    def _cancel_tx(self, nonce: int, bid: Bid) -> dict[str, Any]:
        return {"type": 2, "to": self.address, "data": b"", "value": 0, "gas": CANCEL_GAS, "nonce": nonce,
                **bid.fields()}

    async def _broadcast(self, raw: bytes) -> int:
        """Send `raw` on the attempt's route; returns the chain's head at the broadcast."""
        if self.private is not None and self.route == "private":
            head = await self.head_now()
            await self.private.send(raw, max_block=head + self.policy.max_pending_blocks)
            return head
        reading = asyncio.ensure_future(self.head_now())
        try:
            await self.rpc.send_raw_transaction(raw)
        finally:
            head = await reading  # head_now never raises; awaited even when the send did
        return head

    async def _bundle(self, raw: bytes, target: int) -> None:
        assert self.bundles is not None
        await self.bundles.send_bundle([raw], target)
        if self.metrics is not None:
            self.metrics.bundles_sent.inc()

    # -- settling ---------------------------------------------------------------------------

    async def _check_mined(self, a: Attempt) -> bool:
        """Settle `a` if any version of it has a receipt. True when settled."""
        await self._check_mined_all([a])
        return a.outcome is not None

    async def _check_mined_all(self, attempts: list[Attempt]) -> None:
        """Settle every attempt that has a receipt for any of its versions: one batched request."""
        todo = [(a, t) for a in attempts if a.outcome is None for t in list(a.txs)]
        if not todo:
            return
        replies = await self.rpc.batch([("eth_getTransactionReceipt", [t.tx_hash]) for _, t in todo])
        for (a, sent), receipt in zip(todo, replies, strict=True):
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
        # A success starts no cooldown: a borrower still liquidatable after a capped (50%)
        # liquidation is taken again in the next block.
        if not outcome.success:
            self.registry.cooling[a.key] = now + self.policy.cooldown_blocks
        if self.safety is not None:
            self.safety.record(status, reason, probe=a.probe)
        self.history.append(outcome)
        if status in ("included", "reverted"):
            self.recent.append(a)
        self._gauge()
        event = {"included": "exec.included", "reverted": "exec.reverted"}.get(status, f"exec.{status}")
        (log.info if outcome.success else log.warning)(
            event, borrower=a.key, nonce=a.nonce, tx=outcome.tx_hash, first_tx=a.tx_hash, block=outcome.block,
            reason=reason, gas=gas_used, cost_wei=outcome.gas_cost_wei, replacements=outcome.replacements,
            route=a.route, sent_at=a.first_block, cooldown_blocks=None if outcome.success
            else self.policy.cooldown_blocks)
        a._settle(outcome)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.attempts_in_flight.set(len(self.registry.inflight))


__all__ = ["HISTORY", "SenderCore", "gwei"]
