"""Typed Ethereum methods on top of `call` (a mixin of RpcClient), and their param encoders."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from keeper.errors import TRANSIENT_ERRORS, RpcTimeout
from keeper.log import get_logger

log = get_logger(__name__)


def _block_param(block: int | str | dict[str, Any]) -> Any:
    return hex(block) if isinstance(block, int) else block


def _hex_data(data: bytes | str) -> str:
    if isinstance(data, bytes | bytearray):
        return "0x" + bytes(data).hex()
    return data if data.startswith("0x") else "0x" + data


def _to_bytes(hex_str: str | None) -> bytes:
    return bytes.fromhex(hex_str[2:] if hex_str and hex_str.startswith("0x") else hex_str or "")


class EthMethods:
    """eth_* helpers; the class they are mixed into provides `call`."""

    async def call(self, method: str, params: Sequence[Any] = (), *, timeout_s: float | None = None) -> Any:
        raise NotImplementedError

    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId"), 16)

    async def get_block(
        self, tag_or_number: int | str = "latest", full: bool = False
    ) -> dict | None:
        if isinstance(tag_or_number, str) and len(tag_or_number) == 66:
            return await self.call("eth_getBlockByHash", [tag_or_number, full])
        return await self.call("eth_getBlockByNumber", [_block_param(tag_or_number), full])

    async def eth_call(
        self,
        to: str,
        data: bytes | str,
        block: int | str = "latest",
        gas: int | None = None,
        from_: str | None = None,
    ) -> bytes:
        """eth_call returning raw bytes; a revert raises ExecutionReverted(.data=revert hex)."""
        return _to_bytes(await self.call("eth_call", call_params(to, data, block, gas, from_)))

    async def get_logs(self, filter: dict[str, Any]) -> list[dict[str, Any]]:
        """Raises RpcRangeTooLarge when the provider wants a smaller range; split and retry."""
        f = dict(filter)
        for k in ("fromBlock", "toBlock"):
            if isinstance(f.get(k), int):
                f[k] = hex(f[k])
        return await self.call("eth_getLogs", [f])

    async def get_code(self, addr: str, block: int | str = "latest") -> bytes:
        return _to_bytes(await self.call("eth_getCode", [addr, _block_param(block)]))

    async def get_balance(self, addr: str, block: int | str = "latest") -> int:
        return int(await self.call("eth_getBalance", [addr, _block_param(block)]), 16)

    async def get_transaction_count(self, addr: str, block: int | str = "pending") -> int:
        return int(await self.call("eth_getTransactionCount", [addr, _block_param(block)]), 16)

    async def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return await self.call("eth_getTransactionReceipt", [tx_hash])

    async def fee_history(
        self,
        block_count: int,
        newest: int | str = "latest",
        reward_percentiles: Sequence[float] = (),
    ) -> dict[str, Any]:
        return await self.call(
            "eth_feeHistory", [hex(block_count), _block_param(newest), list(reward_percentiles)]
        )

    async def wait_for_receipt(
        self,
        tx_hash: str,
        timeout: float,  # noqa: ASYNC109 - a deadline for the whole wait, applied below
        poll_interval: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the receipt exists; RpcTimeout(method='wait_for_receipt') at the deadline.

        Transient errors while polling are ignored until the deadline.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        receipt = await self.get_transaction_receipt(tx_hash)
                    except TRANSIENT_ERRORS as e:
                        log.debug("rpc.receipt_poll_failed", tx=tx_hash, error=type(e).__name__)
                        receipt = None
                    if receipt is not None:
                        return receipt
                    await asyncio.sleep(poll_interval)
        except TimeoutError:
            raise RpcTimeout(
                f"no receipt for {tx_hash} within {timeout:g}s", method="wait_for_receipt"
            ) from None


def call_params(
    to: str,
    data: bytes | str,
    block: int | str = "latest",
    gas: int | None = None,
    from_: str | None = None,
) -> list[Any]:
    """eth_call params, shared by RpcClient.eth_call and batched callers (multicall)."""
    tx: dict[str, Any] = {"to": to, "data": _hex_data(data)}
    if gas is not None:
        tx["gas"] = hex(gas)
    if from_ is not None:
        tx["from"] = from_
    return [tx, _block_param(block)]
