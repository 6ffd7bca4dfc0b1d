"""The keeper's signing key. Nonces live in keeper/exec/nonces.py (one NonceManager per key,
owned by the Sender the app builds once); this object only signs, and never shows the key.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

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

    @property
    def address(self) -> str:
        return self._account.address

    def __repr__(self) -> str:  # never show the key
        return f"Signer({self.address})"

    def sign(self, tx: dict[str, Any]) -> tuple[bytes, str]:
        """Sign an EIP-1559 (or legacy) transaction dict; returns (raw bytes, 0x tx hash)."""
        signed = self._account.sign_transaction({**tx, "chainId": self.chain_id})
        return bytes(signed.raw_transaction), "0x" + signed.hash.hex().removeprefix("0x")
