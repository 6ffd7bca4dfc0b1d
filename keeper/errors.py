"""The keeper's one exception tree.

    KeeperError
    ├── ConfigError            bad settings; str() is one line for the operator
    ├── RpcError               any JSON-RPC / HTTP failure (.code, .method, .data)
    │   ├── RpcTransportError  connection reset, bad gateway, HTTP 5xx    (transient; may have been handled)
    │   │   └── RpcRefused     connection refused / connect timeout, HTTP 503 (transient; never handled)
    │   ├── RpcTimeout         no answer within the per-request timeout  (transient; may have been handled)
    │   ├── RpcRateLimited     HTTP 429, -32005 "limit exceeded"         (transient; never handled)
    │   ├── TxNotAccepted      no endpoint took a broadcast before its deadline (nothing was sent)
    │   ├── RpcRangeTooLarge   getLogs range/result cap: split and retry the range
    │   ├── ExecutionReverted  eth_call/estimateGas revert (.data = revert hex)
    │   ├── NonceTooLow        the nonce was already used
    │   └── TxUnderpriced      fee below the node's floor or replacement too cheap
    ├── SimulationError        the fork could not run a simulation
    └── ExecutionError         a liquidation could not be signed/sent/confirmed

Only `TRANSIENT_ERRORS` may be caught and retried blindly; everything else
means the request itself is wrong and repeating it gives the same answer.
For a broadcast the split that matters is `NOT_ACCEPTED_ERRORS` (the node refused it before
handling it: re-sending the same signed bytes is safe and the RPC layer does so until the
deadline, then raises TxNotAccepted) versus any other transient error (the bytes may have
reached the node: the broadcast is "uncertain" and the sender follows the hash).
"""

from __future__ import annotations

from typing import Any


class KeeperError(Exception):
    """Root of every error the keeper raises on purpose."""


class ConfigError(KeeperError):
    """Settings are missing or invalid. The message names the env var, never a secret."""


class RpcError(KeeperError):
    """A JSON-RPC call failed. `code` is the JSON-RPC code or HTTP status, if any."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        method: str | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.method = method
        self.data = data

    def __str__(self) -> str:
        parts = [self.message]
        if self.method:
            parts.append(f"method={self.method}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, method={self.method})"


class RpcTransportError(RpcError):
    """The request never got a JSON answer: connection refused/reset, DNS, HTTP 5xx."""


class RpcRefused(RpcTransportError):
    """Refused before it was handled: connection refused or not established in time, HTTP 503."""


class RpcTimeout(RpcError):
    """No answer within the per-request timeout."""


class RpcRateLimited(RpcError):
    """The provider throttled us (HTTP 429 or -32005 / 'rate limit')."""


class RpcRangeTooLarge(RpcError):
    """eth_getLogs asked for too many blocks or results; the caller should split the range."""


class TxNotAccepted(RpcError):
    """No endpoint accepted a raw transaction before its deadline; every refusal was definite."""


class ExecutionReverted(RpcError):
    """The EVM reverted. `data` is the raw revert payload as 0x-hex ('0x' when empty)."""


class NonceTooLow(RpcError):
    """The node already has a transaction with this nonce."""


class TxUnderpriced(RpcError):
    """Fee below the node's minimum, or a replacement that does not bump enough."""


class SimulationError(KeeperError):
    """The fork could not be started, reset or read; not a revert of the liquidation itself."""


class ExecutionError(KeeperError):
    """Signing, sending or confirming a liquidation failed."""


# What the daemon loop (and RpcClient's own retry) may retry: the request was fine,
# the network or the provider was not.
TRANSIENT_ERRORS: tuple[type[RpcError], ...] = (RpcTransportError, RpcTimeout, RpcRateLimited)
# A request these answer was never handled by the node: safe to send again, even a broadcast.
NOT_ACCEPTED_ERRORS: tuple[type[RpcError], ...] = (RpcRefused, RpcRateLimited)
