"""A faulty JSON-RPC proxy: counts requests per method and injects the faults providers produce.

`RpcProxy(upstream_url)` serves HTTP on 127.0.0.1 (a free port) and forwards every POST to the
upstream node (Anvil). It is the stand-in for a real provider in tests and benches:

- counts: requests per JSON-RPC method (a batch counts each inner request) and HTTP requests,
  readable with `counts()` / `stats()` and cleared with `reset()`;
- faults: with probability `fault_rate`, one HTTP request gets one fault, drawn from `faults`
  with a seeded RNG (reproducible):
    "503"    HTTP 503, nothing forwarded (the node never saw the request)
    "429"    HTTP 429, nothing forwarded
    "-32005" a JSON-RPC error -32005 "limit exceeded" for every item, nothing forwarded
    "stall"  forwarded, answered after `stall_s` seconds (a slow or hung provider)
  Requests whose methods are all in `exempt` (and by default the test's own anvil_* / evm_*
  calls), or none in `only` when it is given, are never faulted.

    async with RpcProxy(anvil.url, fault_rate=0.2, seed=1) as proxy:
        rpc = RpcClient(proxy.url)
        ...
        proxy.counts()["eth_call"], proxy.stats()["faults"]

From the shell: `keeper devnet proxy --upstream URL --fault-rate 0.2`.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from keeper.log import get_logger, redact_url

__all__ = ["FAULT_KINDS", "RpcProxy"]

log = get_logger(__name__)

FAULT_KINDS = ("503", "429", "-32005", "stall")
# Test-control methods a proxy in front of a devnet should normally leave alone.
DEVNET_CONTROL_PREFIXES = ("anvil_", "evm_", "hardhat_")


def _methods(body: Any) -> list[str]:
    items = body if isinstance(body, list) else [body]
    return [str(it.get("method", "?")) if isinstance(it, dict) else "?" for it in items]


def _limit_error(body: Any) -> Any:
    def one(item: Any) -> dict[str, Any]:
        rid = item.get("id") if isinstance(item, dict) else None
        err = {"code": -32005, "message": "limit exceeded"}
        return {"jsonrpc": "2.0", "id": rid, "error": err}

    return [one(it) for it in body] if isinstance(body, list) else one(body)


class RpcProxy:
    """JSON-RPC HTTP proxy with request counts and seeded fault injection."""

    def __init__(
        self,
        upstream_url: str,
        *,
        fault_rate: float = 0.0,
        seed: int = 0,
        faults: Iterable[str] | Mapping[str, float] = FAULT_KINDS,
        stall_s: float = 3.0,
        exempt: Iterable[str] = (),
        exempt_devnet_control: bool = True,
        only: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout_s: float = 60.0,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        weights = dict(faults) if isinstance(faults, Mapping) else dict.fromkeys(faults, 1.0)
        unknown = set(weights) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.upstream_url = upstream_url
        self.fault_rate = fault_rate
        self.stall_s = stall_s
        self.exempt = frozenset(exempt)
        self.exempt_devnet_control = exempt_devnet_control
        self.only = frozenset(only) if only is not None else None  # None: every method may fail
        self._kinds = list(weights)
        self._weights = [weights[k] for k in self._kinds]
        self._rng = random.Random(seed)
        self._host = host
        self._port = port
        self._upstream_timeout = aiohttp.ClientTimeout(total=upstream_timeout_s)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""
        self._methods: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._faulted_methods: Counter[str] = Counter()
        self.http_requests = 0

    # -- counters ----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests per JSON-RPC method since start or the last reset (faulted ones included)."""
        return dict(self._methods)

    def stats(self) -> dict[str, Any]:
        """Everything counted: per method, HTTP requests, faults per kind and per method."""
        return {
            "methods": dict(self._methods),
            "requests": sum(self._methods.values()),
            "http_requests": self.http_requests,
            "faults": dict(self._faults),
            "faulted_http_requests": sum(self._faults.values()),
            "faulted_methods": dict(self._faulted_methods),
        }

    def reset(self) -> None:
        self._methods.clear()
        self._faults.clear()
        self._faulted_methods.clear()
        self.http_requests = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> Self:
        if self._runner is not None:
            return self
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=self._upstream_timeout
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        log.info("proxy.started", url=self.url, upstream=redact_url(self.upstream_url),
                 fault_rate=self.fault_rate)
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            async with asyncio.timeout(5):
                await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- serving -----------------------------------------------------------------------

    def _faultable(self, methods: list[str]) -> bool:
        def exempt(m: str) -> bool:
            return (
                m in self.exempt
                or (self.only is not None and m not in self.only)
                or (self.exempt_devnet_control and m.startswith(DEVNET_CONTROL_PREFIXES))
            )

        return not all(exempt(m) for m in methods)

    def _draw(self, methods: list[str]) -> str | None:
        """The fault for this HTTP request, or None. Always draws, so the sequence is seeded."""
        roll = self._rng.random()
        kind = self._rng.choices(self._kinds, self._weights)[0] if self._kinds else None
        if kind is None or roll >= self.fault_rate or not self._faultable(methods):
            return None
        return kind

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        methods = _methods(body)
        self.http_requests += 1
        self._methods.update(methods)
        fault = self._draw(methods)
        if fault is not None:
            self._faults[fault] += 1
            self._faulted_methods.update(methods)
        if fault == "503":
            return web.Response(status=503, text="service unavailable")
        if fault == "429":
            return web.Response(status=429, text="too many requests")
        if fault == "-32005":
            return web.json_response(_limit_error(body))
        status, answer = await self._forward(raw)
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
        return web.Response(status=status, body=answer, content_type="application/json")

    async def _forward(self, raw: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        try:
            async with self._session.post(
                self.upstream_url, data=raw, headers={"Content-Type": "application/json"}
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("proxy.upstream_failed", error=type(e).__name__)
            return 502, b'{"error": "upstream unavailable"}'


async def serve(
    upstream_url: str,
    *,
    port: int,
    fault_rate: float,
    seed: int,
    stall_s: float,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run a proxy until SIGINT/SIGTERM (or `stop` is set); return its stats."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with RpcProxy(upstream_url, fault_rate=fault_rate, seed=seed, stall_s=stall_s,
                            port=port) as proxy:
            print(proxy.url, flush=True)
            await stop.wait()
            return proxy.stats()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
