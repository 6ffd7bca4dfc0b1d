"""Sign, broadcast once, and follow a transaction to its receipt.

`eth_sendRawTransaction` is never retried blindly: a transport error after the
bytes left may still mean the transaction is in a mempool, so the sender looks
for it by hash instead of sending a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from keeper.chain.rpc import RpcClient
from keeper.errors import TRANSIENT_ERRORS, ExecutionError, NonceTooLow, RpcError, RpcTimeout
from keeper.exec.fees import Fees, suggest_fees
from keeper.exec.signer import Signer
from keeper.log import get_logger
from keeper.types import Address

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SendResult:
    tx_hash: str
    nonce: int
    included: bool
    success: bool
    gas_used: int
    gas_cost_wei: int
    block: int | None


class Sender:
    def __init__(self, rpc: RpcClient, signer: Signer, *, max_fee_gwei: Decimal,
                 receipt_timeout_s: float = 120.0, poll_interval_s: float = 0.5) -> None:
        self.rpc = rpc
        self.signer = signer
        self.max_fee_gwei = max_fee_gwei
        self.receipt_timeout_s = receipt_timeout_s
        self.poll_interval_s = poll_interval_s

    async def fees(self) -> Fees:
        return await suggest_fees(self.rpc, max_fee_gwei=self.max_fee_gwei)

    async def send(self, to: Address, data: bytes, *, gas: int, value: int = 0,
                   fees: Fees | None = None) -> SendResult:
        fees = fees or await self.fees()
        tx_hash, nonce = await self._broadcast(to, data, gas, value, fees)
        log.info("exec.sent", tx=tx_hash, nonce=nonce, to=to, gas=gas,
                 max_fee_gwei=str(Decimal(fees.max_fee_per_gas) / 10**9))
        return await self.follow(tx_hash, nonce)

    async def _broadcast(self, to: Address, data: bytes, gas: int, value: int, fees: Fees) -> tuple[str, int]:
        for attempt in (1, 2):
            nonce = await self.signer.next_nonce(self.rpc)
            raw, tx_hash = self.signer.sign({
                "type": 2, "to": to, "data": data, "value": value, "gas": gas, "nonce": nonce,
                "maxFeePerGas": fees.max_fee_per_gas, "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            })
            try:
                await self.rpc.send_raw_transaction(raw)
                return tx_hash, nonce
            except NonceTooLow:
                # Nothing went out with this nonce: re-sync and sign again, once.
                await self.signer.resync(self.rpc)
                if attempt == 2:
                    raise
            except TRANSIENT_ERRORS as e:
                # The bytes may have reached the node; look for the hash, never resend.
                log.warning("exec.broadcast_uncertain", tx=tx_hash, error=type(e).__name__)
                return tx_hash, nonce
            except RpcError as e:
                await self.signer.release(nonce)
                raise ExecutionError(f"the node refused the transaction: {e}") from e
        raise ExecutionError("unreachable")

    async def follow(self, tx_hash: str, nonce: int) -> SendResult:
        try:
            receipt = await self.rpc.wait_for_receipt(tx_hash, timeout=self.receipt_timeout_s,
                                                      poll_interval=self.poll_interval_s)
        except RpcTimeout:
            log.warning("exec.no_receipt", tx=tx_hash, nonce=nonce, timeout_s=self.receipt_timeout_s)
            return SendResult(tx_hash, nonce, False, False, 0, 0, None)
        gas_used = int(receipt["gasUsed"], 16)
        price = int(receipt.get("effectiveGasPrice", "0x0"), 16)
        return SendResult(tx_hash, nonce, True, int(receipt["status"], 16) == 1, gas_used,
                          gas_used * price, int(receipt["blockNumber"], 16))
