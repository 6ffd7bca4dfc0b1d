"""Async JSON-RPC over HTTP: one aiohttp session, timeouts, bounded retries, real batches.

Retry policy: only `TRANSIENT_ERRORS` (transport, timeout, rate limit) are retried, with
exponential backoff and jitter, at most `max_retries` times. Methods that broadcast a
transaction are sent exactly once: a "failed" send may still have reached the mempool,
and resending is the sender's decision (same nonce, new fees), not the transport's.

The URL is never logged or put in an exception in full: provider URLs embed API keys.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp

from keeper.errors import (
    TRANSIENT_ERRORS,
    ExecutionReverted,
    NonceTooLow,
    RpcError,
    RpcRangeTooLarge,
    RpcRateLimited,
    RpcTimeout,
    RpcTransportError,
    TxUnderpriced,
)
from keeper.log import get_logger, redact_url

__all__ = [
    "SEND_METHODS",
    "RpcClient",
    "RpcObserver",
    "classify_error",
    "outcome_of",
    "redact_url",
]

log = get_logger(__name__)

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


class RpcObserver(Protocol):
    """Called once per JSON-RPC request (per item of a batch) when it finishes."""

    def __call__(self, method: str, seconds: float, outcome: str) -> None: ...


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
    (RpcTransportError, "transport"),
    (RpcRateLimited, "rate_limited"),
    (RpcRangeTooLarge, "range_too_large"),
    (ExecutionReverted, "reverted"),
    (NonceTooLow, "nonce_too_low"),
    (TxUnderpriced, "underpriced"),
)


def outcome_of(result: Any) -> str:
    """Metric outcome label for a result or error: ok / timeout / transport / ... / error."""
    if not isinstance(result, BaseException):
        return "ok"
    for cls, name in _OUTCOMES:
        if isinstance(result, cls):
            return name
    return "error"


def _block_param(block: int | str | dict[str, Any]) -> Any:
    return hex(block) if isinstance(block, int) else block


def _hex_data(data: bytes | str) -> str:
    if isinstance(data, bytes | bytearray):
        return "0x" + bytes(data).hex()
    return data if data.startswith("0x") else "0x" + data


def _to_bytes(hex_str: str | None) -> bytes:
    return bytes.fromhex(hex_str[2:] if hex_str and hex_str.startswith("0x") else hex_str or "")


class RpcClient:
    """JSON-RPC client. Use `async with RpcClient(url) as rpc:` or `start()`/`close()`."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 8.0,
        max_batch: int = 100,
        max_batch_bytes: int = 1_000_000,
        max_connections: int = 32,
        headers: dict[str, str] | None = None,
        on_request: RpcObserver | Callable[[str, float, str], None] | None = None,
    ) -> None:
        self._url = url
        self.endpoint = redact_url(url)  # safe to log
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._max_batch = max(1, max_batch)
        # Nodes cap request bodies (Anvil refuses ~2 MB, geth 5 MB): split batches by size too.
        self._max_batch_bytes = max(1, max_batch_bytes)
        self._max_connections = max_connections
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._on_request = on_request
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RpcClient({self.endpoint})"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> Self:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers=self._headers,
            )
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- core --------------------------------------------------------------------------

    async def call(
        self, method: str, params: Sequence[Any] = (), *, timeout_s: float | None = None
    ) -> Any:
        """One request; raises the mapped RpcError. Transient errors are retried (not sends)."""
        attempts = 1 if method in SEND_METHODS else self.max_retries + 1
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            try:
                body = await self._post(
                    {
                        "jsonrpc": "2.0",
                        "id": next(self._ids),
                        "method": method,
                        "params": list(params),
                    },
                    method,
                    timeout_s,
                )
                result = self._unwrap(body, method)
            except RpcError as e:
                self._observe(method, time.monotonic() - t0, outcome_of(e))
                if not isinstance(e, TRANSIENT_ERRORS) or attempt == attempts:
                    raise
                await self._backoff(method, attempt, e)
                continue
            self._observe(method, time.monotonic() - t0, "ok")
            return result
        raise AssertionError("unreachable")

    async def batch(
        self, calls: Sequence[tuple[str, Sequence[Any]]], *, timeout_s: float | None = None
    ) -> list[Any]:
        """A real JSON-RPC batch: one POST per `max_batch` items, chunks sent concurrently.

        Returns results in request order; a failed item is an RpcError instance in its slot
        (not raised). Items failing transiently are re-sent (alone) with backoff; send
        methods never are. Raises only if a whole POST fails and cannot be retried.
        """
        if not calls:
            return []
        chunks = self._split(calls)
        # return_exceptions: wait for every chunk (no orphaned requests), then raise the first.
        parts = await asyncio.gather(
            *(self._batch_chunk(c, timeout_s) for c in chunks), return_exceptions=True
        )
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return [r for part in parts for r in part]  # type: ignore[union-attr]

    def _split(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Sequence[tuple[str, Sequence[Any]]]]:
        """Chunks of at most `max_batch` items and about `max_batch_bytes` of JSON each."""
        chunks: list[list[tuple[str, Sequence[Any]]]] = []
        size = 0
        for call in calls:
            item = len(json.dumps(call[1])) + len(call[0]) + 48  # params + method + envelope
            if not chunks or len(chunks[-1]) >= self._max_batch or size + item > self._max_batch_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(call)
            size += item
        return chunks

    async def _batch_chunk(
        self, calls: Sequence[tuple[str, Sequence[Any]]], timeout_s: float | None
    ) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            sub = [calls[i] for i in pending]
            has_send = any(m in SEND_METHODS for m, _ in sub)
            try:
                out = await self._post_batch(sub, timeout_s)
            except TRANSIENT_ERRORS as e:
                if has_send or attempt == attempts:
                    raise
                await self._backoff("batch", attempt, e)
                continue
            retry = []
            for i, r in zip(pending, out, strict=True):
                results[i] = r
                if isinstance(r, TRANSIENT_ERRORS) and calls[i][0] not in SEND_METHODS:
                    retry.append(i)
            pending = retry
            if not pending or attempt == attempts:
                break
            await self._backoff("batch", attempt, results[pending[0]])
        return results

    async def _post_batch(
        self, calls: Sequence[tuple[str, Sequence[Any]]], timeout_s: float | None
    ) -> list[Any]:
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        t0 = time.monotonic()
        try:
            body = await self._post(payload, "batch", timeout_s)
        except RpcError as e:
            elapsed = time.monotonic() - t0
            for m, _ in calls:
                self._observe(m, elapsed, outcome_of(e))
            raise
        elapsed = time.monotonic() - t0
        if isinstance(body, dict):  # whole batch refused with one error object
            err = self._unwrap_error(body, "batch")
            for m, _ in calls:
                self._observe(m, elapsed, outcome_of(err))
            raise err
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        out: list[Any] = []
        for i, (m, _) in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None:
                r: Any = RpcError("no response for batch item", method=m)
            else:
                try:
                    r = self._unwrap(item, m)
                except RpcError as e:
                    r = e
            self._observe(m, elapsed, outcome_of(r))
            out.append(r)
        return out

    async def _post(self, payload: Any, method: str, timeout_s: float | None) -> Any:
        """POST once; return parsed JSON or raise a mapped RpcError. No retries here."""
        if self._session is None:
            raise RuntimeError("RpcClient not started: use `async with RpcClient(...)`")
        where = f"({self.endpoint})"
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                async with self._session.post(self._url, data=json.dumps(payload)) as resp:
                    status = resp.status
                    raw = await resp.read()
        except TimeoutError:
            raise RpcTimeout(
                f"no answer within {timeout_s or self.timeout_s:g}s {where}", method=method
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            # `from None`: aiohttp exceptions can carry the full URL in their text.
            reason = getattr(getattr(e, "os_error", None), "strerror", None) or type(e).__name__
            raise RpcTransportError(f"{reason} {where}", method=method) from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        jsonrpc_shaped = isinstance(body, list) or (
            isinstance(body, dict) and ("result" in body or "error" in body)
        )
        if status == 429 or (status != 200 and not jsonrpc_shaped):
            snippet = raw[:120].decode("utf-8", "replace").strip() if status != 429 else ""
            raise classify_error(method, http_status=status, message=snippet)
        if not jsonrpc_shaped:
            raise RpcTransportError(f"non JSON-RPC response {where}", method=method)
        return body

    @staticmethod
    def _unwrap_error(body: dict[str, Any], method: str) -> RpcError:
        err = body.get("error")
        if not isinstance(err, dict):
            return RpcError(f"malformed error: {str(err)[:120]}", method=method)
        return classify_error(
            method, code=err.get("code"), message=str(err.get("message", "")), data=err.get("data")
        )

    def _unwrap(self, body: Any, method: str) -> Any:
        if not isinstance(body, dict):
            raise RpcError("malformed JSON-RPC response", method=method)
        if body.get("error") is not None:
            raise self._unwrap_error(body, method)
        if "result" not in body:
            raise RpcError("JSON-RPC response without result", method=method)
        return body["result"]

    async def _backoff(self, method: str, attempt: int, error: BaseException) -> None:
        # Exponential with "equal jitter": half fixed, half random, so retries from many
        # tasks don't arrive at the provider in lockstep.
        delay = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        log.warning(
            "rpc.retry",
            method=method,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=type(error).__name__,
            endpoint=self.endpoint,
        )
        await asyncio.sleep(delay)

    def _observe(self, method: str, seconds: float, outcome: str) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(method, seconds, outcome)
        except Exception:  # a broken metrics hook must never break RPC
            log.exception("rpc.observer_failed", method=method)

    # -- typed helpers -----------------------------------------------------------------

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

    async def send_raw_transaction(self, raw: bytes | str) -> str:
        """Broadcast once (never retried). Returns the tx hash as 0x-hex."""
        return await self.call("eth_sendRawTransaction", [_hex_data(raw)])

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
