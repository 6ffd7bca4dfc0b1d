"""The keeper's signing key and the one owner of its nonces.

There is exactly one `Signer` per key in a process. Nonces are handed out under
a lock from a counter that starts at the node's pending count; "nonce too low"
re-syncs it from the node instead of guessing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

from keeper.chain.rpc import RpcClient
from keeper.errors import ConfigError
from keeper.log import register_secret


class Signer:
    def __init__(self, private_key: SecretStr, chain_id: int) -> None:
        secret = private_key.get_secret_value()
        register_secret(secret)
        try:
            self._account: LocalAccount = Account.from_key(secret)
        except (ValueError, TypeError):
            raise ConfigError("KEEPER_PRIVATE_KEY: not a valid secp256k1 private key") from None
        self.chain_id = chain_id
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None

    @property
    def address(self) -> str:
        return self._account.address

    def __repr__(self) -> str:  # never show the key
        return f"Signer({self.address})"

    async def next_nonce(self, rpc: RpcClient) -> int:
        async with self._lock:
            if self._next_nonce is None:
                self._next_nonce = await rpc.get_transaction_count(self.address, "pending")
            nonce = self._next_nonce
            self._next_nonce += 1
            return nonce

    async def resync(self, rpc: RpcClient) -> None:
        async with self._lock:
            self._next_nonce = await rpc.get_transaction_count(self.address, "pending")

    async def release(self, nonce: int) -> None:
        """A nonce taken but never broadcast goes back, so no gap is left behind."""
        async with self._lock:
            if self._next_nonce == nonce + 1:
                self._next_nonce = nonce

    def sign(self, tx: dict[str, Any]) -> tuple[bytes, str]:
        signed = self._account.sign_transaction({**tx, "chainId": self.chain_id})
        return bytes(signed.raw_transaction), "0x" + signed.hash.hex().removeprefix("0x")
