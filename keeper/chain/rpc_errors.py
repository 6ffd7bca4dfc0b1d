"""Error mapping for JSON-RPC: one place turns HTTP statuses and error objects into errors.py.

A JSON-RPC error body wins over the HTTP status (some nodes send reverts as HTTP 500).
`outcome_of` gives the metric label of a result or error.
"""

from __future__ import annotations

from typing import Any

from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionReverted,
    NonceTooLow,
    RpcError,
    RpcRangeTooLarge,
    RpcRateLimited,
    RpcRefused,
    RpcTimeout,
    RpcTransportError,
    TxNotAccepted,
    TxUnderpriced,
)

__all__ = ["SEND_METHODS", "classify_error", "outcome_of", "transient_in"]

SEND_METHODS = frozenset(
    {
        "eth_sendRawTransaction",
        "eth_sendTransaction",
        "eth_sendBundle",
        "eth_sendPrivateTransaction",
    }
)
_LOG_METHODS = frozenset({"eth_getLogs", "eth_getFilterLogs"})
# Provider phrasings of "your getLogs asked for too much" (geth, Infura, Alchemy, Ankr, ...).
_RANGE_PHRASES = (
    "block range",
    "range too large",
    "range is too large",
    "too wide",
    "more than",
    "max results",
    "maximum block range",
    "response size",
    "range limit",
    "is limited to",
    "too many blocks",
    "exceeds max",
)
_RATE_PHRASES = ("rate limit", "limit exceeded", "too many requests", "exceeded its", "capacity")
_UNDERPRICED_PHRASES = (
    "underpriced",
    "fee too low",
    "less than block base fee",
    "max fee per gas less than",
    "gas price too low",
)
_NONCE_PHRASES = ("nonce too low", "nonce has already been used", "invalid nonce")


def _revert_data(data: Any) -> str:
    """Normalise the many shapes nodes use for revert data into 0x-hex ('0x' if none)."""
    if isinstance(data, dict):
        return _revert_data(data.get("data") or data.get("result"))
    if isinstance(data, str):
        s = data.strip()
        if s.startswith("Reverted "):  # Nethermind
            s = s[len("Reverted ") :]
        if s.startswith("0x") and all(c in "0123456789abcdefABCDEF" for c in s[2:]):
            return s.lower()
    return "0x"


def classify_error(
    method: str,
    *,
    code: int | None = None,
    message: str = "",
    data: Any = None,
    http_status: int | None = None,
) -> RpcError:
    """Map one JSON-RPC error object or bare HTTP status into the errors.py tree.

    A JSON-RPC error body wins over the HTTP status (some nodes send reverts as HTTP 500).
    """
    msg = (message or "").lower()
    kw: dict[str, Any] = {"code": code if code is not None else http_status, "method": method}
    if code is None and http_status is not None:
        text = f"HTTP {http_status}" + (f": {message}" if message else "")
        if http_status == 429:
            return RpcRateLimited(text, **kw)
        if http_status == 503:  # the node (or its gateway) did not take the request
            return RpcRefused(text, **kw)
        if http_status in (408, 504):
            return RpcTimeout(text, **kw)
        if http_status >= 500:
            return RpcTransportError(text, **kw)
        if http_status in (401, 403):
            return RpcError(text + " (check the RPC URL's API key)", **kw)
        return RpcError(text, **kw)

    text = message or f"JSON-RPC error {code}"
    if code == 3 or "revert" in msg:
        return ExecutionReverted(text, code=code, method=method, data=_revert_data(data))
    if any(p in msg for p in _NONCE_PHRASES):
        return NonceTooLow(text, data=data, **kw)
    if any(p in msg for p in _UNDERPRICED_PHRASES):
        return TxUnderpriced(text, data=data, **kw)
    # Range before rate: Infura's getLogs cap is -32005 "query returned more than 10000 results".
    if method in _LOG_METHODS and any(p in msg for p in _RANGE_PHRASES):
        return RpcRangeTooLarge(text, data=data, **kw)
    if code == -32005 or code == 429 or any(p in msg for p in _RATE_PHRASES):
        return RpcRateLimited(text, data=data, **kw)
    return RpcError(text, data=data, **kw)


_OUTCOMES: tuple[tuple[type[RpcError], str], ...] = (
    (RpcTimeout, "timeout"),
    (RpcRefused, "refused"),
    (RpcTransportError, "transport"),
    (RpcRateLimited, "rate_limited"),
    (RpcRangeTooLarge, "range_too_large"),
    (ExecutionReverted, "reverted"),
    (NonceTooLow, "nonce_too_low"),
    (TxUnderpriced, "underpriced"),
    (TxNotAccepted, "not_accepted"),
)


def outcome_of(result: Any) -> str:
    """Metric outcome label for a result or error: ok / timeout / transport / ... / error."""
    if not isinstance(result, BaseException):
        return "ok"
    for cls, name in _OUTCOMES:
        if isinstance(result, cls):
            return name
    return "error"


def transient_in(body: Any, method: str) -> RpcError | None:
    """A transient error answered for the whole request (a single call, or every batch item)."""
    items = body if isinstance(body, list) else [body]
    errs = [it.get("error") for it in items if isinstance(it, dict)]
    if not items or len(errs) != len(items) or not all(isinstance(e, dict) for e in errs):
        return None
    e0 = errs[0]
    err = classify_error(method, code=e0.get("code"), message=str(e0.get("message", "")), data=e0.get("data"))
    if not isinstance(err, TRANSIENT_ERRORS):
        return None
    if isinstance(body, list):  # every item must be transient too, else the batch answer stands
        for e in errs[1:]:
            c = classify_error(method, code=e.get("code"), message=str(e.get("message", "")))
            if not isinstance(c, TRANSIENT_ERRORS):
                return None
    return err
