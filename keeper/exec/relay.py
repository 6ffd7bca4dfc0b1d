"""Private submission: a private-transaction endpoint, or a Flashbots-style bundle relay.

- `PrivateTx` posts the raw transaction to KEEPER_PRIVATE_TX_URL, either as
  `eth_sendPrivateTransaction` ({tx, maxBlockNumber, preferences}) or as a plain
  `eth_sendRawTransaction` to a protect-style RPC (KEEPER_PRIVATE_TX_METHOD).
- `BundleRelay` posts `eth_sendBundle` ({txs, blockNumber}) to KEEPER_BUNDLE_RELAY_URL. The
  sender re-sends it for each of the next K blocks until it is included or stale.

Every request is signed as Flashbots specifies: header `X-Flashbots-Signature: <address>:<sig>`,
where <sig> is an EIP-191 personal_sign, with KEEPER_RELAY_SIGNING_KEY (a key that holds no
funds: it only builds the searcher's reputation), of the 0x-hex keccak256 of the request body.
The signing key and the signature are never logged; relay URLs are logged as host only.
Sends are never retried here: the sender decides what to send again and when.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from pydantic import SecretStr

from keeper.chain.rpc import classify_error
from keeper.errors import ConfigError, RpcTimeout, RpcTransportError
from keeper.log import get_logger, redact_url, register_secret

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Flashbots-Signature"
PRIVATE_METHODS = ("eth_sendPrivateTransaction", "eth_sendRawTransaction")


def relay_account(key: SecretStr) -> LocalAccount:
    secret = key.get_secret_value()
    register_secret(secret)
    try:
        return Account.from_key(secret)
    except (ValueError, TypeError):
        raise ConfigError("KEEPER_RELAY_SIGNING_KEY: not a valid secp256k1 private key") from None


def flashbots_signature(body: bytes, account: LocalAccount) -> str:
    """`address:signature` for the X-Flashbots-Signature header of this exact body."""
    digest = "0x" + keccak(body).hex()
    signed = account.sign_message(encode_defunct(text=digest))
    return f"{account.address}:0x{bytes(signed.signature).hex()}"


class _SignedJsonRpc:
    """One aiohttp session posting single JSON-RPC requests, signed when a key is given."""

    def __init__(self, url: str, *, account: LocalAccount | None, timeout_s: float) -> None:
        self._url = url
        self.endpoint = redact_url(url)
        self._account = account
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, params: list[Any]) -> Any:
        await self.start()
        assert self._session is not None
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                           "params": params}).encode()
        headers = {"Content-Type": "application/json"}
        if self._account is not None:
            headers[SIGNATURE_HEADER] = flashbots_signature(body, self._account)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.post(self._url, data=body, headers=headers) as resp:
                    status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise RpcTimeout(f"no answer within {self._timeout_s:g}s ({self.endpoint})",
                             method=method) from None
        except (aiohttp.ClientError, OSError) as e:
            raise RpcTransportError(f"{type(e).__name__} ({self.endpoint})", method=method) from None
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            raise classify_error(method, http_status=status if status != 200 else 502,
                                 message=raw[:120].decode("utf-8", "replace").strip())
        if reply.get("error") is not None:
            err = reply["error"] if isinstance(reply["error"], dict) else {"message": str(reply["error"])}
            raise classify_error(method, code=err.get("code"), message=str(err.get("message", "")),
                                 data=err.get("data"))
        return reply["result"]


class PrivateTx:
    """Raw transactions to a private-transaction endpoint instead of the public mempool."""

    def __init__(self, url: str, *, method: str = "eth_sendPrivateTransaction",
                 signing_key: SecretStr | None = None, timeout_s: float = 10.0) -> None:
        if method not in PRIVATE_METHODS:
            raise ConfigError(f"KEEPER_PRIVATE_TX_METHOD: must be one of {', '.join(PRIVATE_METHODS)}")
        self.method = method
        account = relay_account(signing_key) if signing_key is not None else None
        self._rpc = _SignedJsonRpc(url, account=account, timeout_s=timeout_s)
        self.endpoint = self._rpc.endpoint

    async def close(self) -> None:
        await self._rpc.close()

    async def send(self, raw: bytes, *, max_block: int | None = None) -> Any:
        tx = "0x" + raw.hex()
        if self.method == "eth_sendRawTransaction":
            return await self._rpc.call(self.method, [tx])
        params: dict[str, Any] = {"tx": tx, "preferences": {"fast": True}}
        if max_block is not None:
            params["maxBlockNumber"] = hex(max_block)
        return await self._rpc.call(self.method, [params])


class BundleRelay:
    """eth_sendBundle to a Flashbots-style relay, signed with the relay key."""

    def __init__(self, url: str, signing_key: SecretStr, *, timeout_s: float = 10.0) -> None:
        self.account = relay_account(signing_key)
        self._rpc = _SignedJsonRpc(url, account=self.account, timeout_s=timeout_s)
        self.endpoint = self._rpc.endpoint

    @property
    def address(self) -> str:
        """The reputation address the relay sees (never the keeper's wallet)."""
        return self.account.address

    def __repr__(self) -> str:
        return f"BundleRelay({self.endpoint}, signer={self.address})"

    async def close(self) -> None:
        await self._rpc.close()

    async def send_bundle(self, raws: list[bytes], target_block: int) -> str | None:
        """Offer `raws`, in order, for block `target_block`; returns the relay's bundle hash."""
        result = await self._rpc.call("eth_sendBundle", [{
            "txs": ["0x" + r.hex() for r in raws], "blockNumber": hex(target_block)}])
        return result.get("bundleHash") if isinstance(result, dict) else None


__all__ = ["SIGNATURE_HEADER", "BundleRelay", "PrivateTx", "flashbots_signature", "relay_account"]
