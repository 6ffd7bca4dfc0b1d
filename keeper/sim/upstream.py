"""The fork's upstream: a local JSON-RPC endpoint answered through the keeper's own RpcClient.

The simulation fork (Anvil `--fork-url`) reads the chain's state lazily, one small request per
storage slot, hundreds per simulation. Pointed straight at a provider that refuses or stalls
some requests, Anvil waits out every stall and backs off on every 429/503 by itself, so one
simulation can take a minute. Pointed at this endpoint instead, every such read gets what the
keeper's reads get: the short read deadline and hedging, immediate failover between
KEEPER_RPC_URLS, bounded retries, and the per-endpoint health and metrics.

Only 127.0.0.1 listens; the provider's URL (and its API key) never reaches the fork's command line.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Self

from aiohttp import web

from keeper.chain.rpc import RpcClient
from keeper.errors import RpcError
from keeper.log import get_logger

__all__ = ["ForkUpstream"]

log = get_logger(__name__)

_INTERNAL_ERROR = -32603


def _answer(request: Any, result: Any) -> dict[str, Any]:
    rid = request.get("id") if isinstance(request, dict) else None
    if not isinstance(result, RpcError):
        return {"jsonrpc": "2.0", "id": rid, "result": result}
    code = result.code if isinstance(result.code, int) and result.code < 0 else _INTERNAL_ERROR
    error: dict[str, Any] = {"code": code, "message": result.message}
    if result.data is not None:
        error["data"] = result.data
    return {"jsonrpc": "2.0", "id": rid, "error": error}


class ForkUpstream:
    """`async with ForkUpstream(rpc) as up: ForkSimulator(up.url, ...)`."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            async with asyncio.timeout(5):
                await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response(_answer({}, RpcError("parse error", code=-32700)))
        if isinstance(body, list):
            calls = [(str(it.get("method")), it.get("params") or []) for it in body if isinstance(it, dict)]
            try:
                results: list[Any] = await self.rpc.batch(calls)
            except RpcError as e:
                results = [e] * len(calls)
            return web.json_response([_answer(it, r) for it, r in zip(body, results, strict=False)])
        if not isinstance(body, dict):
            return web.json_response(_answer({}, RpcError("invalid request", code=-32600)))
        try:
            result = await self.rpc.call(str(body.get("method")), body.get("params") or [])
        except RpcError as e:
            log.debug("sim.upstream_failed", method=body.get("method"), error=type(e).__name__)
            result = e
        return web.json_response(_answer(body, result))
