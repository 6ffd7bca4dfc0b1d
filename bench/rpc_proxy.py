"""A recording JSON-RPC proxy for the benchmarks: forwards to Anvil, counts every request.

One proxy per client (the keeper, the naive poller), so each one's bill is its own. A JSON-RPC
batch counts as one HTTP request and as one request per method inside it; providers bill the
latter. Each `eth_sendRawTransaction` is stamped (perf_counter) with the hash of its bytes, so
the benchmark can time a broadcast against the block that caused it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from eth_utils import keccak


@dataclass
class Recording:
    methods: Counter[str] = field(default_factory=Counter)
    http_requests: int = 0
    sends: list[tuple[float, str]] = field(default_factory=list)  # (perf_counter, tx hash)

    @property
    def requests(self) -> int:
        return sum(self.methods.values())


class RecordingProxy:
    """`async with RecordingProxy(upstream) as p:` then point a client at `p.url`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rec = Recording()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RecordingProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def snapshot(self) -> tuple[int, Counter[str]]:
        return self.rec.requests, Counter(self.rec.methods)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(await request.json())
        assert self._session is not None
        async with self._session.post(self.upstream, data=body,
                                      headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    def _record(self, payload: object) -> None:
        self.rec.http_requests += 1
        for call in payload if isinstance(payload, list) else [payload]:
            if not isinstance(call, dict):
                continue
            method = str(call.get("method"))
            self.rec.methods[method] += 1
            if method == "eth_sendRawTransaction":
                raw = bytes.fromhex(str(call["params"][0]).removeprefix("0x"))
                self.rec.sends.append((time.perf_counter(), "0x" + keccak(raw).hex()))
