"""Following attempts in flight, block by block: settle, replace, cancel, re-offer bundles.

`Follower.run()` (a task in the app's TaskGroup) reads the head and, on each new one, takes
every attempt in flight one step:

1. a receipt for any version of it (original, replacement, cancel) settles it;
2. its nonce mined by a transaction that is none of ours settles it as dropped;
3. lost: a `LiquidationCall` for the same borrower by another liquidator, or the pending
   transaction no longer passes `eth_call` on the newest block (a re-simulation on the node):
   it is cancelled — a zero-value self-transfer at the same nonce with fees bumped >= 12.5%;
4. not included within `replace_after_blocks` of its newest broadcast: replaced at the same
   nonce, fees bumped >= 12.5%, the total cost still capped by the expected profit and the fee
   by the ceiling; `max_pending_blocks` after its first broadcast it is cancelled ("timeout").

Every age is counted from the chain's head at a broadcast (see exec/attempt.py), never from
the block the cycle decided on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from eth_abi import encode
from eth_utils import to_checksum_address

from keeper.chain.broadcast import already_known
from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionReverted,
    KeeperError,
    NonceTooLow,
    RpcError,
    TxNotAccepted,
    TxUnderpriced,
)
from keeper.exec.attempt import Attempt, SentTx, Status, gwei
from keeper.exec.broadcast import SenderCore
from keeper.exec.fees import Bid, Fees, bump_bid, cancel_bid, suggest_fees
from keeper.log import get_logger
from keeper.protocol.aave_v3 import LIQUIDATION

log = get_logger(__name__)



class Follower(SenderCore):
    async def fees(self) -> Fees:
        return await suggest_fees(self.rpc, max_fee_gwei=self.max_fee_gwei)

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
        self.saw_head(head)
        latest_nonce = await self.rpc.get_transaction_count(self.address, "latest")
        attempts = list(self.registry.inflight.values())
        # Receipts for every version of every attempt in one request (read after the nonce count):
        # on a chain with a block time most attempts settle here, and only the rest cost more reads.
        await self._check_mined_all(attempts)
        for attempt in attempts:
            if attempt.outcome is not None:
                continue
            try:
                await self._follow(attempt, head, latest_nonce)
            except KeeperError as e:
                log.warning("exec.follow_attempt_failed", borrower=attempt.key, nonce=attempt.nonce,
                            error=str(e))

    async def _follow(self, a: Attempt, head: int, latest_nonce: int) -> None:
        if latest_nonce > a.nonce:
            # The nonce is used, but by none of our hashes (checked before the count was read
            # and again now). A node can show the new nonce a moment before the receipt (Anvil
            # mid-block, two backends behind one RPC URL): only if that still holds at a later
            # block did another transaction from this key take it.
            if a.nonce_used_at is None:
                a.nonce_used_at = head
            elif head > a.nonce_used_at and not await self._check_mined(a):
                self._finish(a, "dropped", "nonce_used_elsewhere", head)
            return
        if a.route == "bundle":
            await self._follow_bundle(a, head)
            return
        if head <= a.last_sent:
            return  # broadcast at this head: not a block has passed, nothing to judge yet
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

    async def _offer_bundle(self, a: Attempt, target: int) -> None:
        try:
            await self._bundle(a.raw, target)
        except RpcError as e:
            log.warning("exec.bundle_refused", borrower=a.key, nonce=a.nonce, target=target, error=str(e))
            return
        a.target = target
        log.debug("exec.bundle_resent", borrower=a.key, nonce=a.nonce, target=target)

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
                     next_base_gwei=gwei(fees.next_base_fee), cap_gwei=gwei(a.cap))
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
                     replaced=live.tx_hash, max_fee_gwei=gwei(bid.max_fee_per_gas),
                     tip_gwei=gwei(bid.max_priority_fee_per_gas), blocks_waited=head - live.head)

    async def _cancel(self, a: Attempt, head: int, reason: str) -> None:
        a.cancel_reason = reason
        fees = await self.fees()
        if a.outcome is not None:
            return
        bid = cancel_bid(a.floor_bid, fees, max_fee_wei=self.policy.max_fee_wei,
                         bump_bps=self.policy.bump_bps)
        if bid is None:
            log.warning("exec.cancel_capped", borrower=a.key, nonce=a.nonce, reason=reason,
                        max_fee_gwei=gwei(self.policy.max_fee_wei))
            a.last_sent = head
            return
        if await self._resend(a, self._cancel_tx(a.nonce, bid), bid, "cancel", head):
            if self.metrics is not None:
                self.metrics.tx_cancels.labels(reason=reason).inc()
            log.info("exec.cancel_sent", borrower=a.key, nonce=a.nonce, reason=reason, tx=a.live.tx_hash,
                     max_fee_gwei=gwei(bid.max_fee_per_gas), sent_at=a.first_block, head=head)

    async def _resend(self, a: Attempt, tx: dict, bid: Bid, kind: Literal["liquidation", "cancel"],
                      head: int) -> bool:
        raw, tx_hash = self.signer.sign(tx)
        try:
            head = max(head, await self._broadcast(raw))
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
            if not already_known(e):
                log.warning("exec.replacement_failed", borrower=a.key, nonce=a.nonce, error=str(e))
                a.last_sent = head
                return False
        a.txs.append(SentTx(tx_hash, bid, kind, head))
        a.floor_bid = bid
        a.last_sent = head
        if kind == "liquidation":
            a.raw = raw
        return True
