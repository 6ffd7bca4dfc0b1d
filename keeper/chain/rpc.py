"""Async JSON-RPC over HTTP: one aiohttp session, one or more endpoints, hedged reads, real batches.

Roles: keeper/chain/endpoints.py (one POST, per-endpoint health and ranking),
keeper/chain/rpc_errors.py (error mapping), keeper/chain/broadcast.py (sending a signed
transaction), and this client: retries, hedging, batching, metrics hooks.

Reads: each attempt goes to the best-ranked endpoint. When it has not answered within the
read deadline (`read_deadline_s`, or 3x the method's usual latency if longer) the same
request is sent again (to another endpoint if there is one); the first answer wins and the
other is cancelled. A transient failure is retried on the next endpoint at once, and with
exponential backoff once every endpoint has failed, at most `max_retries` times.

Sends: eth_sendRawTransaction goes to every endpoint and is re-sent as the same bytes only
while every endpoint definitely refused it (broadcast.py). Other send methods are sent once.

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

from keeper.chain import endpoints as transport
from keeper.chain.broadcast import broadcast_raw
from keeper.chain.endpoints import Endpoint, EndpointPool
from keeper.chain.eth_methods import EthMethods, _hex_data, call_params
from keeper.chain.hedging import first_answer, latency_key
from keeper.chain.rpc_errors import (  # noqa: F401 (_OUTCOMES: re-exported)
    _OUTCOMES,
    SEND_METHODS,
    classify_error,
    outcome_of,
    transient_in,
)
from keeper.errors import TRANSIENT_ERRORS, RpcError
from keeper.log import get_logger, redact_url

__all__ = [
    "SEND_METHODS",
    "RpcClient",
    "RpcObserver",
    "call_params",
    "classify_error",
    "outcome_of",
    "redact_url",
]

log = get_logger(__name__)

_HEDGE_LATENCY_FACTOR = 3  # hedge a read only once it is this much slower than usual
_LATENCY_ALPHA = 0.2


class RpcObserver(Protocol):
    """Called once per JSON-RPC request (per item of a batch) when it finishes."""

    def __call__(self, method: str, seconds: float, outcome: str) -> None: ...


class RpcClient(EthMethods):
    """JSON-RPC client. Use `async with RpcClient(url) as rpc:` or `start()`/`close()`.

    `url` is one URL or a sequence of them (failover for reads, broadcast for sends).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 8.0,
        max_batch: int = 100,
        max_batch_bytes: int = 1_000_000,
        max_connections: int = 32,
        headers: dict[str, str] | None = None,
        read_deadline_s: float | None = None,
        send_deadline_s: float = 6.0,
        on_request: RpcObserver | Callable[[str, float, str], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
        on_health: Callable[[Endpoint], None] | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.pool = EndpointPool(urls, on_health=on_health)
        self.endpoint = ", ".join(redact_url(u) for u in urls)  # safe to log
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._max_batch = max(1, max_batch)
        # Nodes cap request bodies (Anvil refuses ~2 MB, geth 5 MB): split batches by size too.
        self._max_batch_bytes = max(1, max_batch_bytes)
        self._max_connections = max_connections
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self.read_deadline_s = read_deadline_s  # None: reads are never hedged
        self.send_deadline_s = send_deadline_s
        self._on_request = on_request
        self._on_event = on_event
        self._latency: dict[str, float] = {}  # usual latency per method (EWMA of winners)
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
                # A connect that times out never sent anything: mapped to RpcRefused.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout_s, 5.0)),
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
        if method == "eth_sendRawTransaction" and len(params) == 1:
            return await self.send_raw_transaction(params[0])
        send = method in SEND_METHODS
        # Every endpoint gets a chance at a read, whatever max_retries says.
        attempts = 1 if send else max(self.max_retries + 1, len(self.pool))
        tried: list[Endpoint] = []
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            try:
                body = await self._request(payload, method, timeout_s, hedge=not send, tried=tried)
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

    async def _request(
        self, payload: Any, method: str, timeout_s: float | None, *, hedge: bool, tried: list[Endpoint]
    ) -> Any:
        """One logical request: to the best endpoint not `tried` yet, hedged on another if it stalls.

        Appends the endpoints it uses to `tried`, so a retry goes elsewhere first."""
        timeout = timeout_s or self.timeout_s
        first = self.pool.pick(exclude=tried)
        if tried and first not in tried:
            self._event("failover", first.label)
        tried.append(first)
        if not hedge or self.read_deadline_s is None:
            return await self._attempt(first, payload, method, timeout)
        key = latency_key(payload)
        hedge_after = max(self.read_deadline_s, _HEDGE_LATENCY_FACTOR * self._latency.get(key, 0.0))
        if hedge_after >= timeout:
            return await self._attempt(first, payload, method, timeout)
        tasks = [asyncio.create_task(self._attempt(first, payload, method, timeout, key))]
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge_after)
            if not done:
                second = self.pool.pick(exclude=tried)
                tried.append(second)
                self._event("hedged", second.label)
                log.debug("rpc.hedged", method=method, after_s=round(hedge_after, 3), endpoint=second.name)
                tasks.append(asyncio.create_task(self._attempt(second, payload, method, timeout, key)))
            return await first_answer(tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(
        self, ep: Endpoint, payload: Any, method: str, timeout_s: float, key: str | None = None
    ) -> Any:
        """POST to `ep`, keeping its health. A transient error in the answer is raised here."""
        if self._session is None:
            raise RuntimeError("RpcClient not started: use `async with RpcClient(...)`")
        t0 = time.monotonic()
        try:
            body = await transport.post(self._session, ep, payload, method, timeout_s)
            err = transient_in(body, method)
            if err is not None and not isinstance(body, list):
                raise err
        except TRANSIENT_ERRORS:
            self.pool.failed(ep)
            raise
        except asyncio.CancelledError:
            self.pool.sample(ep, time.monotonic() - t0)  # abandoned as stalled: it was slow
            raise
        elapsed = time.monotonic() - t0
        if err is not None:  # a batch refused item by item: the items are retried by the caller
            self.pool.failed(ep)
            return body
        self.pool.ok(ep, elapsed)
        if key is not None:
            old = self._latency.get(key)
            self._latency[key] = elapsed if old is None else old + _LATENCY_ALPHA * (elapsed - old)
        return body

    async def send_raw_transaction(self, raw: bytes | str) -> str:
        """Broadcast to every endpoint (see keeper/chain/broadcast.py). Returns the tx hash."""
        raw_hex = _hex_data(raw)
        method = "eth_sendRawTransaction"

        async def send_one(ep: Endpoint) -> str:
            # Never hedged: a second copy answered "nonce too low" because the first copy was
            # already mined would read as "nothing went out" and the liquidation be signed twice.
            t0 = time.monotonic()
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": [raw_hex]}
            try:
                result = self._unwrap(await self._attempt(ep, payload, method, self.timeout_s), method)
            except RpcError as e:
                self._observe(method, time.monotonic() - t0, outcome_of(e))
                raise
            self._observe(method, time.monotonic() - t0, "ok")
            return str(result)

        return await broadcast_raw(self.pool, send_one, raw_hex, deadline_s=self.send_deadline_s,
                                   on_event=self._event)

    async def batch(
        self,
        calls: Sequence[tuple[str, Sequence[Any]]],
        *,
        timeout_s: float | None = None,
        partial: bool = False,
    ) -> list[Any]:
        """A real JSON-RPC batch: one POST per `max_batch` items, chunks sent concurrently.

        Returns results in request order; a failed item is an RpcError instance in its slot
        (not raised). Items failing transiently are re-sent (alone) with backoff; send
        methods never are. A whole POST that fails for good raises, or with `partial` puts its
        error in each of its items' slots so the other POSTs' answers are still used.
        """
        if not calls:
            return []
        chunks = self._split(calls)
        # return_exceptions: wait for every chunk (no orphaned requests), then raise the first.
        parts = await asyncio.gather(
            *(self._batch_chunk(c, timeout_s) for c in chunks), return_exceptions=True
        )
        out: list[Any] = []
        for chunk, part in zip(chunks, parts, strict=True):
            if isinstance(part, BaseException):
                if not (partial and isinstance(part, RpcError)):
                    raise part
                part = [part] * len(chunk)
            out.extend(part)
        return out

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
        attempts = max(self.max_retries + 1, len(self.pool))
        tried: list[Endpoint] = []
        for attempt in range(1, attempts + 1):
            sub = [calls[i] for i in pending]
            has_send = any(m in SEND_METHODS for m, _ in sub)
            try:
                out = await self._post_batch(sub, timeout_s, tried)
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
        self, calls: Sequence[tuple[str, Sequence[Any]]], timeout_s: float | None, tried: list[Endpoint]
    ) -> list[Any]:
        ids = [next(self._ids) for _ in calls]
        has_send = any(m in SEND_METHODS for m, _ in calls)
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        t0 = time.monotonic()
        try:
            body = await self._request(payload, "batch", timeout_s, hedge=not has_send, tried=tried)
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
        if attempt < len(self.pool):
            return  # another endpoint has not failed this request yet: fail over to it at once
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
        )
        await asyncio.sleep(delay)

    def _event(self, event: str, endpoint: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event, endpoint)
            except Exception:  # a broken metrics hook must never break RPC
                log.exception("rpc.observer_failed", event=event)

    def _observe(self, method: str, seconds: float, outcome: str) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(method, seconds, outcome)
        except Exception:  # a broken metrics hook must never break RPC
            log.exception("rpc.observer_failed", method=method)
