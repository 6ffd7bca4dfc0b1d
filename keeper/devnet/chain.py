"""A thin handle on a devnet Anvil for deploying and seeding: unlocked accounts, cheat codes.

Only the devnet uses this. The keeper itself never relies on unlocked accounts
or cheat codes; it talks to any node through `keeper.chain.rpc`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from eth_utils import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract

from keeper.chain.rpc import RpcClient
from keeper.devnet.build import Artifact
from keeper.errors import KeeperError

# Anvil's first default account (DEV_MNEMONIC); it deploys and owns the devnet market.
DEPLOYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


class DevnetTxFailed(KeeperError):
    """A devnet set-up transaction reverted."""


class DevChain:
    def __init__(self, url: str, *, sender: str = DEPLOYER, timeout_s: float = 120) -> None:
        self.url = url
        self.w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": timeout_s}))
        self.sender = to_checksum_address(sender)

    async def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        resp = await self.w3.provider.make_request(method, params or [])
        if "error" in resp:
            raise DevnetTxFailed(f"{method}: {resp['error']}")
        return resp["result"]

    def contract(self, artifact: Artifact, address: str) -> AsyncContract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)

    async def deploy(self, artifact: Artifact, *args: Any, libraries: dict[str, str] | None = None,
                     sender: str | None = None, gas: int = 60_000_000) -> AsyncContract:
        bytecode = "0x" + artifact.linked(libraries or {})
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=bytecode)
        tx = await factory.constructor(*args).build_transaction(
            {"from": sender or self.sender, "gas": gas}
        )
        receipt = await self._send(tx, f"deploy {artifact.name.rsplit(':', 1)[1]}")
        return self.contract(artifact, receipt["contractAddress"])

    async def transact(self, fn: Any, *, sender: str | None = None, value: int = 0,
                       gas: int = 30_000_000) -> dict:
        tx = await fn.build_transaction({"from": sender or self.sender, "gas": gas, "value": value})
        return await self._send(tx, fn.fn_name)

    async def _send(self, tx: dict, what: str) -> dict:
        tx_hash = await self.w3.eth.send_transaction(tx)
        receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise DevnetTxFailed(f"{what} reverted (tx {tx_hash.hex()})")
        return dict(receipt)

    async def set_code(self, address: str, runtime_hex: str) -> None:
        await self.rpc("anvil_setCode", [address, runtime_hex])

    async def set_balance(self, address: str, wei: int) -> None:
        await self.rpc("anvil_setBalance", [address, hex(wei)])

    async def snapshot(self) -> str:
        return await self.rpc("evm_snapshot")

    async def revert(self, snapshot_id: str) -> bool:
        return await self.rpc("evm_revert", [snapshot_id])

    async def mine(self, blocks: int = 1) -> None:
        await self.rpc("anvil_mine", [hex(blocks)])

    async def increase_time(self, seconds: int) -> None:
        await self.rpc("evm_increaseTime", [hex(seconds)])

    async def close(self) -> None:
        await self.w3.provider.disconnect()


async def send_as(rpc: RpcClient, sender: str, to: str | None, data: bytes, *, value: int = 0,
                  gas: int = 1_000_000, impersonate: bool = False, require_success: bool = True,
                  what: str | None = None) -> dict[str, Any]:
    """Send a devnet transaction from an unlocked (or, with `impersonate`, any) account; wait for it.

    With `require_success`, a reverted receipt raises DevnetTxFailed naming `what`.
    """
    tx = {"from": sender, "data": "0x" + data.hex(), "value": hex(value), "gas": hex(gas)}
    if to is not None:
        tx["to"] = to
    if impersonate:
        await rpc.call("anvil_impersonateAccount", [sender])
    try:
        tx_hash = await rpc.call("eth_sendTransaction", [tx])
        receipt = await rpc.wait_for_receipt(tx_hash, timeout=60, poll_interval=0.02)
    finally:
        if impersonate:
            await rpc.call("anvil_stopImpersonatingAccount", [sender])
    if require_success and int(receipt["status"], 16) != 1:
        label = what or f"call to {to} 0x{data[:4].hex()}"
        raise DevnetTxFailed(f"{label} reverted (tx {tx_hash})")
    return receipt


async def send_all_as(rpc: RpcClient, sender: str, txs: list[tuple[str, bytes, int]], *,
                      what: str) -> list[dict[str, Any]]:
    """Send (to, data, gas) transactions from an unlocked account one after another without waiting,
    then wait for every receipt: on a chain with a block time they share a block instead of taking
    one each. Submitted in order, so Anvil gives them consecutive nonces in that order."""
    hashes = [await rpc.call("eth_sendTransaction", [{"from": sender, "to": to, "data": "0x" + data.hex(),
                                                       "gas": hex(gas)}]) for to, data, gas in txs]
    receipts = await asyncio.gather(*(rpc.wait_for_receipt(h, timeout=60, poll_interval=0.02)
                                      for h in hashes))
    for h, receipt in zip(hashes, receipts, strict=True):
        if int(receipt["status"], 16) != 1:
            raise DevnetTxFailed(f"{what} reverted (tx {h})")
    return list(receipts)

