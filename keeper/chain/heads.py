"""New chain heads: a websocket `newHeads` subscription with a stall watchdog, HTTP polling
as the fallback, and a newest-only hand-off slot between the watcher and the keeper's cycle.

    HeadWatcher ──publish──► LatestHead ──next(after=...)──► cycle (index, health, ...)

The slot holds one head. The watcher overwrites it; a cycle that is still running when
newer blocks arrive never finds a queue of work when it comes back, only the newest head.
Heads overwritten before anyone took them are counted in `LatestHead.skipped`.

Watchdog: if the socket delivers no head for `stall_timeout_s`, the watcher asks the HTTP
node for its latest block. A block there that the socket has not delivered within a short
grace (min(2 s, stall_timeout_s / 2)) means the socket is dead (a silent proxy, a half-open
TCP connection, a provider that stopped pushing): that head is published from HTTP and the
socket is reconnected, with backoff. An idle chain (Anvil on automine) is not a stall and
causes no reconnects. After
`ws_failures_before_poll` failed connections in a row the watcher polls over HTTP and
tries the socket again `ws_retry_after_s` later.

Hooks are plain callbacks so this module needs no metrics import: `on_head(head, source)`
with source "ws", "poll" or "resync" (an HTTP read after a (re)connect or a stall), and
`on_reconnect(reason)` with reason "stall", "closed", "error", "connect_failed" or
"subscribe_failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from keeper.chain.rpc import RpcClient
from keeper.errors import RpcError
from keeper.log import get_logger, redact_url

__all__ = ["Head", "HeadWatcher", "LatestHead", "fetch_head"]

log = get_logger(__name__)

OnHead = Callable[["Head", str], None]
OnReconnect = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Head:
    """One block header, as much of it as following the chain needs."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def from_json(cls, block: dict[str, Any]) -> Head:
        """From an eth_getBlockByNumber result or a newHeads notification."""
        return cls(
            number=int(block["number"], 16),
            hash=block["hash"],
            parent_hash=block["parentHash"],
            timestamp=int(block["timestamp"], 16),
        )


async def fetch_head(rpc: RpcClient, block: int | str = "latest") -> Head:
    """The header of `block` (default: latest) over HTTP."""
    raw = await rpc.get_block(block)
    if raw is None:
        raise RpcError(f"block {block} not found", method="eth_getBlockByNumber")
    return Head.from_json(raw)


class LatestHead:
    """A one-slot mailbox that keeps only the newest head.

    `publish` (producer) never blocks and never queues; `next` (consumer) returns the
    newest head that differs from the one it last processed. A head is accepted when it
    is higher than the one held, or at the same height with another hash (a reorg that
    kept the height). Lower heads are ignored: the next block of the new branch follows.
    """

    def __init__(self) -> None:
        self._head: Head | None = None
        self._taken: Head | None = None  # the last head handed to a consumer
        self._changed = asyncio.Event()
        self.skipped = 0  # heads overwritten before any consumer took them
        self.published = 0  # heads accepted

    @property
    def head(self) -> Head | None:
        return self._head

    def publish(self, head: Head) -> bool:
        """Offer a head; True when it replaced the slot's content."""
        cur = self._head
        if cur is not None and (
            head.number < cur.number or (head.number == cur.number and head.hash == cur.hash)
        ):
            return False
        if cur is not None and cur is not self._taken:
            self.skipped += 1
        self._head = head
        self.published += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def next(self, after: Head | int | None = None, timeout: float = 30.0) -> Head | None:  # noqa: ASYNC109
        """The newest head past `after`, waiting up to `timeout` seconds (None on timeout).

        `after` is the head (or block number) the caller processed last. With a Head, a
        same-height head with another hash counts as new (reorg); with a number, only a
        higher block does.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    head = self._head
                    if head is not None and _is_past(head, after):
                        self._taken = head
                        return head
                    await self._changed.wait()
        except TimeoutError:
            return None


def _is_past(head: Head, after: Head | int | None) -> bool:
    if after is None:
        return True
    if isinstance(after, Head):
        return head.number > after.number or (head.number == after.number and head.hash != after.hash)
    return head.number > after


class _WsEnded(Exception):
    """The websocket session ended; `reason` says why (used for on_reconnect)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class HeadWatcher:
    """Publishes new heads into `slot` until cancelled. Run it as a task: `await watcher.run()`."""

    def __init__(
        self,
        rpc: RpcClient,
        *,
        ws_url: str | None = None,
        slot: LatestHead | None = None,
        stall_timeout_s: float = 30.0,
        poll_interval_s: float = 2.0,
        ws_failures_before_poll: int = 3,
        ws_retry_after_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 15.0,
        on_head: OnHead | None = None,
        on_reconnect: OnReconnect | None = None,
    ) -> None:
        self.rpc = rpc
        self.ws_url = ws_url
        self.slot = slot or LatestHead()
        self.stall_timeout_s = stall_timeout_s
        self.poll_interval_s = poll_interval_s
        self.ws_failures_before_poll = max(1, ws_failures_before_poll)
        self.ws_retry_after_s = ws_retry_after_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_head = on_head
        self.on_reconnect = on_reconnect
        self.mode = "ws" if ws_url else "poll"
        self.reconnects = 0
        self.ws_failures = 0  # failed websocket sessions in a row
        self._endpoint = redact_url(ws_url) if ws_url else ""
        self._ids = 0

    # -- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the chain until cancelled. Never returns on its own."""
        if not self.ws_url:
            log.info("heads.polling", interval_s=self.poll_interval_s, reason="no ws url")
            await self._poll(until=None)
            return
        async with aiohttp.ClientSession() as session:
            while True:
                self.mode = "ws"
                try:
                    await self._ws_session(session)
                    reason, detail = "closed", ""  # _ws_session only returns on a clean close
                except _WsEnded as e:
                    reason, detail = e.reason, e.detail
                self.ws_failures += 1
                self.reconnects += 1
                log.warning("heads.ws_reconnect", reason=reason, detail=detail, failures=self.ws_failures,
                            endpoint=self._endpoint)
                self._hook(self.on_reconnect, reason)
                if self.ws_failures >= self.ws_failures_before_poll:
                    self.mode = "poll"
                    log.warning("heads.fallback_poll", failures=self.ws_failures,
                                retry_ws_in_s=self.ws_retry_after_s, endpoint=self._endpoint)
                    await self._poll(until=time.monotonic() + self.ws_retry_after_s)
                    self.ws_failures = 0
                else:
                    await asyncio.sleep(self._backoff(self.ws_failures))

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    # -- publishing ----------------------------------------------------------------------

    def _publish(self, head: Head, source: str) -> bool:
        if not self.slot.publish(head):
            return False
        log.debug("heads.new", number=head.number, block_hash=head.hash, source=source)
        self._hook(self.on_head, head, source)
        return True

    @staticmethod
    def _hook(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # an observer must never stop the chain follower
            log.exception("heads.hook_failed")

    # -- HTTP polling --------------------------------------------------------------------

    async def _poll(self, until: float | None) -> None:
        while until is None or time.monotonic() < until:
            try:
                self._publish(await fetch_head(self.rpc), "poll")
            except RpcError as e:  # RpcClient already retried the transient ones
                log.warning("heads.poll_failed", error=type(e).__name__, detail=str(e))
            await asyncio.sleep(self.poll_interval_s)

    # -- websocket -----------------------------------------------------------------------

    async def _ws_session(self, session: aiohttp.ClientSession) -> None:
        assert self.ws_url is not None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await session.ws_connect(
                    self.ws_url, autoping=True, max_msg_size=16 * 2**20,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _WsEnded("connect_failed", type(e).__name__) from None
        try:
            sub_id = await self._subscribe(ws)
            log.info("heads.ws_subscribed", endpoint=self._endpoint)
            known = await self._resync()
            await self._receive(ws, sub_id, known)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close()

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        self._ids += 1
        req_id = self._ids
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await ws.send_str(json.dumps(
                    {"jsonrpc": "2.0", "id": req_id, "method": "eth_subscribe", "params": ["newHeads"]}
                ))
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise _WsEnded("subscribe_failed", f"socket {msg.type.name.lower()}")
                    body = _loads(msg.data)
                    if isinstance(body, dict) and body.get("id") == req_id:
                        if body.get("error") or not isinstance(body.get("result"), str):
                            raise _WsEnded("subscribe_failed", str(body.get("error"))[:120])
                        return body["result"]
        except TimeoutError:
            raise _WsEnded("subscribe_failed", "no answer") from None
        except (aiohttp.ClientError, OSError) as e:
            raise _WsEnded("error", type(e).__name__) from None

    async def _resync(self) -> Head | None:
        """Heads that arrived while disconnected are not replayed; read the newest over HTTP."""
        try:
            head = await fetch_head(self.rpc)
        except RpcError as e:
            log.warning("heads.resync_failed", error=type(e).__name__)
            return None
        self._publish(head, "resync")
        return head

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sub_id: str, known: Head | None) -> None:
        """Publish the socket's heads; raise _WsEnded when it closes, fails or stalls.

        Watchdog: after `stall_timeout_s` without a head, ask HTTP. If HTTP has a block the
        socket did not deliver, the socket gets a short grace (a notification may be in
        flight), then the HTTP head is published and the socket is dropped ("stall").
        """
        grace = min(2.0, self.stall_timeout_s / 2)
        deadline = time.monotonic() + self.stall_timeout_s
        suspect: Head | None = None  # a head HTTP has and the socket has not delivered
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if suspect is not None:
                    self._publish(suspect, "resync")
                    detail = f"no head for {self.stall_timeout_s:g}s, node at {suspect.number}"
                    raise _WsEnded("stall", detail)
                try:
                    latest = await fetch_head(self.rpc)
                except RpcError as e:
                    raise _WsEnded("stall", f"no head, and HTTP failed too ({type(e).__name__})") from None
                if _newer(latest, known):
                    suspect, deadline = latest, time.monotonic() + grace
                else:  # the chain is idle, not the socket
                    deadline = time.monotonic() + self.stall_timeout_s
                continue
            try:
                msg = await ws.receive(timeout=wait)
            except TimeoutError:
                continue
            except (aiohttp.ClientError, OSError) as e:
                raise _WsEnded("error", type(e).__name__) from None
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise _WsEnded("closed", "by peer")
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise _WsEnded("error", type(ws.exception()).__name__)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            body = _loads(msg.data)
            if not isinstance(body, dict) or body.get("method") != "eth_subscription":
                continue
            params = body.get("params") or {}
            if params.get("subscription") != sub_id:
                continue
            try:
                head = Head.from_json(params["result"])
            except (KeyError, TypeError, ValueError):
                log.warning("heads.bad_notification", data=str(params)[:200])
                continue
            known, suspect = head, None
            deadline = time.monotonic() + self.stall_timeout_s
            self.ws_failures = 0
            self._publish(head, "ws")


def _newer(head: Head, than: Head | None) -> bool:
    if than is None:
        return True
    return head.number > than.number or (head.number == than.number and head.hash != than.hash)


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
