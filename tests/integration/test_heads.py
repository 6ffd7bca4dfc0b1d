"""New heads from a real Anvil: websocket subscription, stall watchdog, polling fallback,
and the newest-only hand-off. The only stand-in is a websocket proxy in front of Anvil's
own ws endpoint that can go silent or refuse connections (what a dying provider does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from keeper.chain.heads import Head, HeadWatcher, LatestHead, fetch_head
from keeper.chain.rpc import RpcClient
from keeper.devnet.anvil import Anvil

WAIT_S = 20.0  # generous upper bound for anything that should happen "soon"


@pytest.fixture(scope="module")
async def anvil() -> AsyncIterator[Anvil]:
    async with Anvil() as node:
        yield node


@pytest.fixture
async def rpc(anvil: Anvil) -> AsyncIterator[RpcClient]:
    async with RpcClient(anvil.url, timeout_s=5, max_retries=1) as client:
        yield client


def ws_url_of(anvil: Anvil) -> str:
    return anvil.url.replace("http://", "ws://")


# -- a websocket proxy that can go silent or refuse ---------------------------------------


@dataclass
class _Conn:
    silent: bool = False


@dataclass
class WsProxy:
    upstream: str
    refuse: int = 0  # answer the next N upgrades with HTTP 503
    conns: list[_Conn] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return web.Response(status=503, text="upstream unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = _Conn()
        self.conns.append(conn)
        async with aiohttp.ClientSession() as session, session.ws_connect(self.upstream) as up:

            async def downstream() -> None:
                async for msg in up:
                    if msg.type == aiohttp.WSMsgType.TEXT and not conn.silent:
                        await ws.send_str(msg.data)

            async def upstream() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await up.send_str(msg.data)

            tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    def go_silent(self) -> None:
        """Every open connection stops forwarding notifications; new ones work."""
        for c in self.conns:
            c.silent = True


@pytest.fixture
async def ws_proxy(anvil: Anvil) -> AsyncIterator[WsProxy]:
    proxy = WsProxy(ws_url_of(anvil))
    app = web.Application()
    app.router.add_get("/", proxy.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        proxy.url = f"ws://127.0.0.1:{runner.addresses[0][1]}"
        yield proxy
    finally:
        async with asyncio.timeout(10):
            await runner.cleanup()


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Seen:
    heads: list[tuple[Head, str]] = field(default_factory=list)
    reconnects: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_head(self, head: Head, source: str) -> None:
        self.heads.append((head, source))
        self.changed.set()

    def on_reconnect(self, reason: str) -> None:
        self.reconnects.append(reason)
        self.changed.set()

    async def until(self, predicate, timeout: float = WAIT_S) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(watcher: HeadWatcher) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def mining(rpc: RpcClient, every_s: float = 0.05) -> AsyncIterator[None]:
    """Mine a block every `every_s` until the block ends (a chain that keeps moving)."""

    async def loop() -> None:
        while True:
            await rpc.call("evm_mine", [])
            await asyncio.sleep(every_s)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def watcher_for(rpc: RpcClient, seen: Seen, **kw) -> HeadWatcher:
    defaults = dict(stall_timeout_s=5.0, poll_interval_s=0.05, backoff_base_s=0.05, backoff_max_s=0.2,
                    connect_timeout_s=5.0)
    return HeadWatcher(rpc, on_head=seen.on_head, on_reconnect=seen.on_reconnect, **{**defaults, **kw})


# -- tests ---------------------------------------------------------------------------------


async def test_websocket_heads_reach_the_slot(rpc: RpcClient, anvil: Anvil) -> None:
    seen = Seen()
    watcher = watcher_for(rpc, seen, ws_url=ws_url_of(anvil))
    async with running(watcher):
        await seen.until(lambda: seen.heads)  # the resync read after subscribing
        start = (await fetch_head(rpc)).number
        for _ in range(3):
            await rpc.call("evm_mine", [])
        await seen.until(lambda: any(h.number == start + 3 and s == "ws" for h, s in seen.heads))
    ws_numbers = [h.number for h, s in seen.heads if s == "ws"]
    assert ws_numbers == [start + 1, start + 2, start + 3]
    assert watcher.slot.head is not None and watcher.slot.head.number == start + 3
    latest = await fetch_head(rpc)
    assert watcher.slot.head == latest  # hash, parent and timestamp parsed from the notification
    assert seen.reconnects == []


async def test_silent_websocket_is_reconnected_by_the_watchdog(rpc: RpcClient, ws_proxy: WsProxy) -> None:
    seen = Seen()
    watcher = watcher_for(rpc, seen, ws_url=ws_proxy.url, stall_timeout_s=0.5)
    async with running(watcher):
        await seen.until(lambda: seen.heads)  # subscribed (the resync read comes right after)
        await rpc.call("evm_mine", [])
        await seen.until(lambda: any(s == "ws" for _, s in seen.heads))
        ws_proxy.go_silent()
        silent_from = (await fetch_head(rpc)).number
        async with mining(rpc):
            await seen.until(lambda: "stall" in seen.reconnects)
            await seen.until(lambda: any(s == "ws" and h.number > silent_from for h, s in seen.heads))
    assert seen.reconnects[0] == "stall"
    assert len(ws_proxy.conns) >= 2  # a new socket carried the later heads
    assert watcher.reconnects >= 1


async def test_idle_chain_is_not_mistaken_for_a_dead_socket(anvil: Anvil) -> None:
    checks = asyncio.Event()
    calls = 0

    def on_request(method: str, _s: float, _o: str) -> None:
        nonlocal calls
        if method == "eth_getBlockByNumber":
            calls += 1
            if calls >= 4:  # the resync read plus three watchdog checks
                checks.set()

    seen = Seen()
    async with RpcClient(anvil.url, timeout_s=5, max_retries=1, on_request=on_request) as rpc:
        watcher = watcher_for(rpc, seen, ws_url=ws_url_of(anvil), stall_timeout_s=0.2)
        async with running(watcher):
            async with asyncio.timeout(WAIT_S):
                await checks.wait()
            assert seen.reconnects == []  # automine, no transactions: no blocks, and that is fine
            # The same socket still delivers once the chain moves.
            await rpc.call("evm_mine", [])
            await seen.until(lambda: any(s == "ws" for _, s in seen.heads))
    assert seen.reconnects == []
    assert watcher.mode == "ws"


async def test_polls_over_http_without_a_ws_url(rpc: RpcClient) -> None:
    seen = Seen()
    watcher = watcher_for(rpc, seen, ws_url=None)
    async with running(watcher):
        await seen.until(lambda: seen.heads)
        first = seen.heads[0][0].number
        await rpc.call("evm_mine", [])
        await seen.until(lambda: any(h.number > first for h, _ in seen.heads))
    assert {s for _, s in seen.heads} == {"poll"}
    assert watcher.mode == "poll"


async def test_falls_back_to_polling_then_returns_to_websocket(rpc: RpcClient, ws_proxy: WsProxy) -> None:
    ws_proxy.refuse = 2
    seen = Seen()
    watcher = watcher_for(rpc, seen, ws_url=ws_proxy.url, ws_failures_before_poll=2, ws_retry_after_s=0.3)
    async with running(watcher), mining(rpc, every_s=0.05):
        await seen.until(lambda: any(s == "poll" for _, s in seen.heads))
        await seen.until(lambda: any(s == "ws" for _, s in seen.heads))
    sources = [s for _, s in seen.heads]
    assert sources.index("poll") < sources.index("ws")
    assert seen.reconnects[:2] == ["connect_failed", "connect_failed"]
    assert ws_proxy.refused == 2


async def test_slow_consumer_gets_only_the_newest_head(rpc: RpcClient, anvil: Anvil) -> None:
    seen = Seen()
    watcher = watcher_for(rpc, seen, ws_url=ws_url_of(anvil))
    processed: list[Head] = []
    async with running(watcher):
        await seen.until(lambda: seen.heads)
        first = await watcher.slot.next(after=None, timeout=WAIT_S)
        assert first is not None
        processed.append(first)
        # The consumer is "busy" while ten blocks arrive.
        for _ in range(10):
            await rpc.call("evm_mine", [])
        final = (await fetch_head(rpc)).number
        await seen.until(lambda: watcher.slot.head is not None and watcher.slot.head.number == final)
        while True:
            head = await watcher.slot.next(after=processed[-1], timeout=0.5)
            if head is None:
                break
            processed.append(head)
    numbers = [h.number for h in processed]
    assert numbers == [first.number, final]  # no backlog: straight to the newest
    assert watcher.slot.skipped >= 9


def _head(n: int, tag: str = "a") -> Head:
    return Head(n, f"0x{tag}{n:063x}", f"0x{tag}{n - 1:063x}", 1_700_000_000 + n)


async def test_slot_never_hands_out_a_stale_head() -> None:
    slot = LatestHead()
    for n in range(1, 6):
        assert slot.publish(_head(n))
    assert await slot.next(after=None, timeout=1) == _head(5)
    assert slot.skipped == 4
    assert not slot.publish(_head(3))  # late, lower head: ignored
    assert not slot.publish(_head(5))  # duplicate (ws and resync): ignored
    assert await slot.next(after=_head(5), timeout=0.05) is None
    reorged = _head(5, "b")  # same height, other hash
    assert slot.publish(reorged)
    assert await slot.next(after=_head(5), timeout=1) == reorged
    assert await slot.next(after=5, timeout=0.05) is None  # by number, a same-height head is not new
    assert slot.skipped == 4


async def test_waiting_consumer_wakes_on_publish() -> None:
    slot = LatestHead()
    waiter = asyncio.create_task(slot.next(after=7, timeout=WAIT_S))
    await asyncio.sleep(0)
    slot.publish(_head(7))  # not past `after`
    await asyncio.sleep(0)
    assert not waiter.done()
    slot.publish(_head(8))
    assert await waiter == _head(8)
    assert slot.skipped == 1  # head 7 was replaced before anyone took it
