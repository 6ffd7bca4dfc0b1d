"""Sign, broadcast, and follow each liquidation until it lands, is replaced, or is cancelled.

`Sender.submit(intent, fees)` bids, signs and broadcasts once, registers the attempt and
returns at once; `Sender.run()` (exec/follow.py) follows every attempt in flight block by
block: settles it on a receipt, replaces it when it waits, cancels it when it is lost, no
longer pays, or is still pending `max_pending_blocks` after its broadcast.

The parts: exec/attempt.py (Intent, Attempt, Outcome, SendPolicy: the values), exec/broadcast.py
(state, broadcasting, the head at a broadcast, settling), exec/follow.py (following, replacing,
cancelling), this module (the gate in front of a send, the first broadcast, plain sends).

Routes: public (eth_sendRawTransaction on the keeper's node), private (relay.PrivateTx:
replacements and cancels go the same way) or bundle (relay.BundleRelay: the same signed
transaction is offered for each of the next `bundle_blocks` blocks; a stale bundle never
reached a mempool, so its nonce is released, not cancelled).

One attempt per key (the borrower) is in flight at a time. A settled attempt that did not
succeed starts a cooldown of `cooldown_blocks` for its key; a success starts none (a borrower
still liquidatable after a capped liquidation is taken again in the next block). Outcomes go
to the safety gate (exec/safety.py): only a reverted transaction counts against the circuit
breaker. With the kill switch and the gas floor, it may refuse a submit.
`eth_sendRawTransaction` is never retried blindly: the RPC layer re-sends the same bytes only
while every node refused them (TxNotAccepted at its deadline: the nonce is released); after a
failure that may have reached a node the bytes may be in a mempool, so the attempt is followed
by hash instead of sent twice.
"""

from __future__ import annotations

import asyncio

from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionError,
    NonceTooLow,
    RpcError,
    RpcTimeout,
    TxNotAccepted,
)
from keeper.exec.attempt import (
    Attempt,
    Intent,
    Outcome,
    PendingTx,
    Route,
    SendPolicy,
    SendRefused,
    SendResult,
    SentTx,
    Status,
    gwei,
)
from keeper.exec.broadcast import HISTORY
from keeper.exec.fees import Bid, Fees, fee_cap, profit_bid
from keeper.exec.follow import Follower
from keeper.exec.safety import BREAKER_OPEN, PAUSED
from keeper.log import get_logger
from keeper.types import Address

log = get_logger(__name__)

__all__ = ["HISTORY", "Attempt", "Intent", "Outcome", "Route", "SendPolicy", "SendRefused", "SendResult",
           "Sender", "SentTx", "Status"]


class Sender(Follower):
    async def close(self) -> None:
        for relay in (self.private, self.bundles):
            if relay is not None:
                await relay.close()

    async def adopt_pending(self) -> int:
        """Find the transactions an earlier run of this key left pending (a restart mid-liquidation).

        Each cycle's fork replays them before simulating (`inherited`), so the restarted
        keeper never sends again what they already do; a second liquidation of the same borrower
        would revert and pay gas. Read from the node's pending block; a node without one (or with
        nothing of ours in it) leaves the list empty, and the fork's revert check still stands."""
        latest = await self.rpc.get_transaction_count(self.address, "latest")
        pending = await self.rpc.get_transaction_count(self.address, "pending")
        if pending <= latest:
            return 0
        block = await self.rpc.call("eth_getBlockByNumber", ["pending", True])
        ours = [t for t in (block or {}).get("transactions", [])
                if isinstance(t, dict) and str(t.get("from", "")).lower() == self.address.lower()
                and t.get("to") and latest <= int(t["nonce"], 16) < pending]
        self.inherited = sorted((PendingTx(int(t["nonce"], 16), t["to"], bytes.fromhex(t["input"][2:]),
                                           int(t["gas"], 16)) for t in ours), key=lambda t: t.nonce)
        log.info("exec.adopted_pending", mined=latest, pending=pending, found=len(self.inherited),
                 nonces=[t.nonce for t in self.inherited])
        return len(self.inherited)

    # -- the gate -------------------------------------------------------------------------

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

    def replayable(self) -> list[Attempt]:
        """Liquidations that may have landed after a given block, in nonce order: those in flight
        (unless being cancelled) and the recently settled ones whose liquidation was mined. A
        cycle at block N replays those not mined at N on its fork (nonces tell which)."""
        live = [a for a in self.registry.inflight.values() if a.outcome is None and a.cancel_reason is None]
        return sorted([*self.recent, *live], key=lambda a: a.nonce)

    async def _admit(self) -> bool:
        """Raise SendRefused if the safety gate says no; True when this send is the breaker's probe."""
        if self.safety is None:
            return False
        if reason := await self.safety.refusal(self.rpc, self.address, self._head):
            raise SendRefused(reason)
        permit = self.safety.breaker.permit()
        if permit is None:
            raise SendRefused(BREAKER_OPEN)
        return permit == "probe"

    # -- liquidations ---------------------------------------------------------------------

    async def submit(self, intent: Intent, fees: Fees) -> Attempt:
        """Bid, sign and broadcast `intent`; the attempt is then followed by `run()`.

        Raises SendRefused (in_flight, cooldown, paused, breaker_open, gas_balance_low,
        fees_exceed_profit) without sending anything, or ExecutionError if the node refused it.
        """
        key = intent.key
        self.saw_head(intent.block)
        if (blocked := self.blocked(key, intent.block)) is not None:
            detail = f"until block {self.registry.cooling[key]}" if blocked == "cooldown" else ""
            raise SendRefused(blocked, detail)
        self.registry.reserving.add(key)
        probe = False
        try:
            probe = await self._admit()
            cap = fee_cap(gas_limit=intent.gas_limit, profit_wei=intent.profit_wei,
                          floor_wei=intent.floor_wei, max_fee_wei=self.policy.max_fee_wei)
            bid = profit_bid(fees, gas_estimate=intent.gas_estimate, gas_limit=intent.gas_limit,
                             profit_wei=intent.profit_wei, floor_wei=intent.floor_wei,
                             share_bps=self.policy.share_bps, max_fee_wei=self.policy.max_fee_wei)
            if bid is None:
                raise SendRefused("fees_exceed_profit",
                                  f"next base fee {fees.next_base_fee} above the affordable {cap} wei/gas")
            nonce, tx_hash, raw, head = await self._send_first(intent, bid)
        except BaseException:
            if probe and self.safety is not None:
                self.safety.breaker.release_probe()  # nothing went out: the probe is still to come
            raise
        finally:
            self.registry.reserving.discard(key)
        first = SentTx(tx_hash, bid, "liquidation", head)
        attempt = Attempt(intent, nonce, self.route, first, raw, cap)
        attempt.probe = probe
        self.registry.inflight[key] = attempt
        self._gauge()
        self._wake.set()
        log.info("exec.sent", borrower=key, tx=tx_hash, nonce=nonce, route=self.route, gas=intent.gas_limit,
                 max_fee_gwei=gwei(bid.max_fee_per_gas), tip_gwei=gwei(bid.max_priority_fee_per_gas),
                 cap_gwei=gwei(cap), profit_wei=intent.profit_wei, decided_at=intent.block, head=head,
                 probe=probe or None)
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

    async def settle_all(self, attempts: list[Attempt], timeout_s: float, poll_s: float = 0.02) -> None:
        """Wait up to `timeout_s` in all for `attempts` to settle: one batched receipt request per poll."""
        try:
            async with asyncio.timeout(timeout_s):
                while any(a.outcome is None for a in attempts):
                    await self._check_mined_all(attempts)
                    if all(a.outcome is not None for a in attempts):
                        break
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            pass
        except RpcError as e:
            log.debug("exec.settle_poll_failed", attempts=len(attempts), error=type(e).__name__)

    async def _send_first(self, intent: Intent, bid: Bid) -> tuple[int, str, bytes, int]:
        """Broadcast the first version: (nonce, hash, signed bytes, the chain's head at the broadcast)."""
        for attempt in (1, 2):
            nonce = await self.nonces.reserve()
            raw, tx_hash = self.signer.sign(self._call_tx(intent, nonce, bid))
            try:
                if self.route == "bundle":
                    head = await self.head_now()
                    await self._bundle(raw, head + 1)
                else:
                    head = await self._broadcast(raw)
                return nonce, tx_hash, raw, head
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
                return nonce, tx_hash, raw, self._head
            except RpcError as e:
                await self.nonces.release(nonce)
                raise ExecutionError(f"the node refused the transaction: {e}") from e
        raise AssertionError("unreachable")

    # -- plain sends (approvals and other one-off transactions) -------------------------

    async def send(self, to: Address, data: bytes, *, gas: int, value: int = 0,
                   fees: Fees | None = None) -> SendResult:
        """Sign, broadcast once (publicly) and wait for the receipt. No replacement."""
        fees = fees or await self.fees()
        bid = Bid(fees.max_fee_per_gas, fees.max_priority_fee_per_gas)
        intent = Intent(key="", to=to, data=data, gas_limit=gas, gas_estimate=gas, profit_wei=None)
        tx_hash, nonce = await self._send_plain(intent, value, bid)
        log.info("exec.sent", tx=tx_hash, nonce=nonce, to=to, gas=gas,
                 max_fee_gwei=gwei(bid.max_fee_per_gas))
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
