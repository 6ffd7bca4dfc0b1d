"""Run a liquidation on an Anvil fork of the chain before anything is signed for real.

One Anvil `--fork-url` process lives as long as the daemon; each cycle re-points
it at the block the keeper read (`anvil_reset`), and each candidate runs between
`evm_snapshot`/`evm_revert` (under a millisecond). The keeper trusts what the
fork's balances say, not its own arithmetic: profit is the change in the
keeper's token and native balances, valued at the block's oracle prices.

A simulation is on the path from a price update to the send, so it costs three round
trips: the revert check and the balances before in one JSON-RPC batch, the send (the fork
impersonates every sender, so no impersonation calls), and the receipt with the balances
after in one batch. A rewind is skipped when nothing ran since the last snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keeper.chain.multicall import (
    DEFAULT_GAS_PER_BATCH,
    MULTICALL3_ADDRESS,
    decode_aggregate3,
    encode_aggregate3,
)
from keeper.chain.rpc import RpcClient, call_params
from keeper.devnet.anvil import Anvil, AnvilError, AnvilOptions
from keeper.errors import ExecutionReverted, RpcError, SimulationError
from keeper.log import get_logger
from keeper.protocol.aave_v3 import ALLOWANCE, APPROVE, BALANCE_OF, UINT256_MAX
from keeper.protocol.abi import decode_revert
from keeper.types import Address

log = get_logger(__name__)

FORK_START_ATTEMPTS = 3
FORK_RETRY_BASE_S = 0.5
SIM_GAS_LIMIT = 8_000_000  # the gas actually used comes from the receipt; the real tx gets that + margin


@dataclass(frozen=True, slots=True)
class TxRequest:
    """The transaction as it will be signed: same sender, target, data, value and gas."""

    sender: Address
    to: Address
    data: bytes
    value: int = 0
    gas: int | None = None  # None: estimate on the fork

    def as_rpc(self, gas: int) -> dict[str, Any]:
        return {"from": self.sender, "to": self.to, "data": "0x" + self.data.hex(),
                "value": hex(self.value), "gas": hex(gas)}


@dataclass(frozen=True, slots=True)
class ForkRun:
    success: bool
    gas_used: int
    gas_limit: int
    gas_cost_wei: int
    token_deltas: dict[Address, int]  # token -> signed change of the sender's balance
    native_delta_wei: int  # includes the gas paid
    revert_reason: str | None
    seconds: float


class ForkSimulator:
    """Owns the fork process. `async with ForkSimulator(url, anvil_path) as sim:`."""

    def __init__(self, upstream_url: str, anvil_path: Path, *, timeout_s: float = 30.0) -> None:
        self._upstream = upstream_url
        self._anvil_path = anvil_path
        self._timeout_s = timeout_s
        self._anvil: Anvil | None = None
        self._rpc: RpcClient | None = None
        self._block: int | None = None
        self._clean_snapshot: str | None = None
        self._dirty = False  # something ran on the fork since the clean snapshot

    async def __aenter__(self) -> ForkSimulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._rpc is not None:
            await self._rpc.close()
            self._rpc = None
        if self._anvil is not None:
            await self._anvil.stop()
            self._anvil = None

    async def at_block(self, block: int) -> None:
        """Point the fork at `block` (a new process the first time, `anvil_reset` after).

        The fork reads through the user's provider, which may refuse or stall a request just
        as the fork starts: a failed start or reset is retried with backoff, then raised as
        SimulationError (the cycle skips simulating at this block, the next block tries again)."""
        for attempt in range(1, FORK_START_ATTEMPTS + 1):
            try:
                return await self._at_block(block)
            except (AnvilError, RpcError) as e:
                if self._anvil is not None and self._anvil.proc is not None and self._anvil.proc.returncode:
                    await self.close()  # the process died: start a new one next time
                self._block = None
                if attempt == FORK_START_ATTEMPTS:
                    raise SimulationError(f"the fork could not be pointed at block {block}: {e}") from e
                delay = FORK_RETRY_BASE_S * 2 ** (attempt - 1)
                log.warning("sim.fork_retry", block=block, attempt=attempt, delay_s=delay, error=str(e))
                await asyncio.sleep(delay)

    async def _at_block(self, block: int) -> None:
        if self._anvil is None:
            anvil = Anvil(AnvilOptions(fork_url=self._upstream, fork_block=block), binary=self._anvil_path)
            await anvil.start(timeout_s=self._timeout_s)  # stops the process itself if it fails
            self._anvil = anvil
            self._rpc = RpcClient(self._anvil.url, timeout_s=self._timeout_s, max_retries=1)
            await self._rpc.start()
        elif self._block != block:
            await self.rpc.call("anvil_reset", [{"forking": {"jsonRpcUrl": self._upstream,
                                                            "blockNumber": block}}])
        self._block = block
        # Any sender may be simulated (the keeper, replayed pending transactions, approvals).
        await self.rpc.call("anvil_autoImpersonateAccount", [True])
        self._clean_snapshot = await self.rpc.call("evm_snapshot", [])
        self._dirty = False

    @property
    def rpc(self) -> RpcClient:
        if self._rpc is None:
            raise SimulationError("the fork is not started; call at_block() first")
        return self._rpc

    async def _rewind(self) -> None:
        """Back to the base state; a snapshot is consumed by revert, so take a new one."""
        if not self._dirty and self._clean_snapshot is not None:
            return  # nothing ran since the snapshot (a check that reverted, or a commit)
        if self._clean_snapshot is not None:
            await self.rpc.call("evm_revert", [self._clean_snapshot])
        self._clean_snapshot = await self.rpc.call("evm_snapshot", [])
        self._dirty = False

    async def commit(self) -> None:
        """Keep the last run's effects as the base for the next run.

        The keeper sends what it simulated, in order; later candidates in the same block
        must see the earlier ones (moved DEX prices, spent liquidity, liquidated borrowers).
        """
        self._clean_snapshot = await self.rpc.call("evm_snapshot", [])
        self._dirty = False

    async def replay_pending(self, sender: Address, pending: Sequence[tuple[int, TxRequest]]) -> int:
        """Apply `sender`'s transactions still pending at the fork's block, in nonce order, and keep
        them as the base: they precede anything sent now (lower nonces), so a cycle that runs while
        its predecessor's transactions wait must simulate on top of them (spent inventory,
        liquidated borrowers). Those already mined at the fork's block are skipped. Returns how
        many were applied."""
        if not pending:
            return 0
        mined = await self.rpc.get_transaction_count(sender, "latest")
        todo = sorted((n, tx) for n, tx in pending if n >= mined)
        if not todo:
            return 0
        self._dirty = True
        try:
            # Anvil mines each one as it arrives (the fork is on automine).
            hashes = [await self.rpc.call("eth_sendTransaction", [tx.as_rpc(tx.gas or SIM_GAS_LIMIT)])
                      for _, tx in todo]
            receipts = await self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        except RpcError as e:
            raise SimulationError(f"replaying pending transactions on the fork failed: {e}") from e
        reverted = [n for (n, _), r in zip(todo, receipts, strict=True)
                    if isinstance(r, dict) and int(r["status"], 16) == 0]
        if reverted:  # they will revert on the chain too (and be counted there); nothing to keep
            log.warning("sim.replay_reverted", nonces=reverted)
        await self.commit()
        return len(todo)

    async def ensure_allowance(self, owner: Address, token: Address, spender: Address, amount: int) -> None:
        """Inventory mode needs the pool approved; on the fork an approval is impersonated."""
        raw = await self.rpc.eth_call(token, ALLOWANCE.encode(owner, spender), "latest")
        if ALLOWANCE.decode_one(raw) >= amount:
            return
        await self._approve(owner, token, spender)

    async def run(self, tx: TxRequest, watch: Sequence[Address], *, setup: Sequence[tuple[Address, Address,
                  Address, int]] = ()) -> ForkRun:
        """Execute `tx` on the fork from `tx.sender` (impersonated) and measure its effects.

        `setup` is a list of (owner, token, spender, amount) approvals to make first
        (they stand for approvals the keeper makes once, before its first liquidation).
        """
        t0 = time.monotonic()
        await self._rewind()
        try:
            for owner, token, spender, amount in setup:
                await self.ensure_allowance(owner, token, spender, amount)
            gas = tx.gas or SIM_GAS_LIMIT
            # The eth_call first: a revert's reason comes back at once, and nothing is mined for it
            # (eth_estimateGas would cost ~60 ms of repeated executions; the receipt gives the gas).
            check, *before_raw = await self.rpc.batch(
                [("eth_call", [tx.as_rpc(gas), "latest"]), *self._balance_requests(tx.sender, watch)])
            if isinstance(check, ExecutionReverted):
                return ForkRun(False, 0, 0, 0, {}, 0, decode_revert(check.data), time.monotonic() - t0)
            if isinstance(check, RpcError):
                raise check
            before = self._balances(watch, before_raw)
            self._dirty = True
            tx_hash = await self.rpc.call("eth_sendTransaction", [tx.as_rpc(gas)])
            receipt, *after_raw = await self.rpc.batch(
                [("eth_getTransactionReceipt", [tx_hash]), *self._balance_requests(tx.sender, watch)])
            if not isinstance(receipt, dict):  # not mined yet when read: wait, then read again
                receipt = await self._receipt(tx_hash)
                after_raw = await self.rpc.batch(self._balance_requests(tx.sender, watch))
            after = self._balances(watch, after_raw)
        except RpcError as e:
            raise SimulationError(f"fork simulation failed: {e}") from e
        success = int(receipt["status"], 16) == 1
        gas_used = int(receipt["gasUsed"], 16)
        price = int(receipt.get("effectiveGasPrice", "0x0"), 16)
        deltas = {t: after[t] - before[t] for t in watch if after[t] != before[t]}
        reason = None if success else "reverted in the block but not in eth_call (out of gas?)"
        return ForkRun(success, gas_used, gas, gas_used * price, deltas,
                       after["native"] - before["native"], reason, time.monotonic() - t0)

    @staticmethod
    def _balance_requests(holder: Address, tokens: Sequence[Address]) -> list[tuple[str, list[Any]]]:
        """The holder's token balances (one Multicall3 call) and native balance, as batch items."""
        calls = [(t, BALANCE_OF.encode(holder)) for t in tokens]
        # Gas explicit, as multicall() passes it: a node's default for eth_call differs between nodes.
        return [("eth_call", call_params(MULTICALL3_ADDRESS, encode_aggregate3(calls), "latest",
                                         DEFAULT_GAS_PER_BATCH)),
                ("eth_getBalance", [holder, "latest"])]

    @staticmethod
    def _balances(tokens: Sequence[Address], replies: Sequence[Any]) -> dict[str, int]:
        tokens_raw, native = replies
        for reply in replies:
            if isinstance(reply, RpcError):
                raise reply
        results = decode_aggregate3(bytes.fromhex(tokens_raw.removeprefix("0x")))
        out: dict[str, int] = {}
        for token, (ok, data) in zip(tokens, results, strict=True):
            if not ok:
                raise SimulationError(f"balanceOf on {token} failed on the fork")
            out[token] = BALANCE_OF.decode_one(data)
        out["native"] = int(native, 16)
        return out

    async def _approve(self, owner: Address, token: Address, spender: Address) -> None:
        self._dirty = True
        tx = {"from": owner, "to": token, "data": "0x" + APPROVE.encode(spender, UINT256_MAX).hex(),
              "gas": hex(100_000)}
        receipt = await self._receipt(await self.rpc.call("eth_sendTransaction", [tx]))
        if int(receipt["status"], 16) != 1:
            raise SimulationError(f"fork approval of {token} for {spender} reverted")

    async def _receipt(self, tx_hash: str) -> dict:
        return await self.rpc.wait_for_receipt(tx_hash, timeout=self._timeout_s, poll_interval=0.005)
