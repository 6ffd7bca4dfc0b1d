"""RPC endpoints: one HTTP POST to one endpoint, and the pool that ranks endpoints by health.

Each endpoint keeps its health: consecutive transient failures, a latency EWMA, and a
cool-off after `errors_to_cool` failures in a row (doubling while it keeps failing). Reads go
to the best-ranked endpoint; a failed or stalled read moves to the next one.

`post` maps what went wrong by whether the node may have handled the request:
refused before sending (connection refused, connect timeout, HTTP 503, HTTP 429) is
RpcRefused / RpcRateLimited; a timeout after sending or a connection lost mid-answer is
RpcTimeout / RpcTransportError ("uncertain" for a broadcast).

URLs embed API keys: an endpoint is named by its index in metrics and by index and
redacted host in logs and errors, never by its URL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from keeper.chain.rpc_errors import classify_error
from keeper.errors import RpcRefused, RpcTimeout, RpcTransportError
from keeper.log import redact_url

__all__ = ["Endpoint", "EndpointPool", "post"]

_EWMA_ALPHA = 0.2


@dataclass(eq=False)
class Endpoint:
    index: int
    url: str = field(repr=False)  # secret: never logged
    consecutive_errors: int = 0
    latency_ewma_s: float = 0.0
    cool_until: float = 0.0  # monotonic time
    down: bool = False  # its last `errors_to_cool` requests failed (until one succeeds)
    requests: int = 0
    failures: int = 0

    @property
    def label(self) -> str:
        """The metric label: the index only."""
        return str(self.index)

    @property
    def name(self) -> str:
        """Safe for logs: index and scheme://host:port."""
        return f"#{self.index} {redact_url(self.url)}"

    def cooling(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) < self.cool_until


HealthHook = Callable[[Endpoint], None]


class EndpointPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        errors_to_cool: int = 3,
        cooloff_s: float = 5.0,
        max_cooloff_s: float = 60.0,
        on_health: HealthHook | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is needed")
        self.endpoints = [Endpoint(i, u) for i, u in enumerate(urls)]
        self._errors_to_cool = max(1, errors_to_cool)
        self._cooloff_s = cooloff_s
        self._max_cooloff_s = max_cooloff_s
        self._on_health = on_health

    def __len__(self) -> int:
        return len(self.endpoints)

    def ranked(self, exclude: Collection[Endpoint] = ()) -> list[Endpoint]:
        """Best first: not cooling, then fastest. Excluded ones last.

        A failure alone does not demote an endpoint (one 429 says little); `errors_to_cool`
        in a row do, for a cool-off that doubles while it keeps failing."""
        now = time.monotonic()
        return sorted(
            self.endpoints, key=lambda e: (e in exclude, e.cooling(now), e.latency_ewma_s, e.index)
        )

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint:
        return self.ranked(exclude)[0]

    def ok(self, ep: Endpoint, seconds: float) -> None:
        ep.requests += 1
        ep.consecutive_errors = 0
        ep.cool_until = 0.0
        ep.down = False
        self.sample(ep, seconds)

    def sample(self, ep: Endpoint, seconds: float) -> None:
        """A latency observation (also for a request abandoned as stalled)."""
        old = ep.latency_ewma_s
        ep.latency_ewma_s = seconds if old == 0 else old + _EWMA_ALPHA * (seconds - old)
        self._report(ep)

    def failed(self, ep: Endpoint) -> None:
        ep.requests += 1
        ep.failures += 1
        ep.consecutive_errors += 1
        over = ep.consecutive_errors - self._errors_to_cool
        ep.down = over >= 0
        if over >= 0 and len(self.endpoints) > 1:
            # Cooling only matters when there is somewhere else to go.
            ep.cool_until = time.monotonic() + min(self._max_cooloff_s, self._cooloff_s * 2 ** min(over, 6))
        self._report(ep)

    def _report(self, ep: Endpoint) -> None:
        if self._on_health is not None:
            self._on_health(ep)


async def post(
    session: aiohttp.ClientSession, ep: Endpoint, payload: Any, method: str, timeout_s: float
) -> Any:
    """POST once; return parsed JSON-RPC (a dict or a list) or raise a mapped RpcError."""
    where = f"({ep.name})"
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(ep.url, data=json.dumps(payload)) as resp:
                status = resp.status
                raw = await resp.read()
    except aiohttp.ConnectionTimeoutError:  # before TimeoutError: it is one, but nothing was sent
        raise RpcRefused(f"connect timeout {where}", method=method) from None
    except TimeoutError:
        raise RpcTimeout(f"no answer within {timeout_s:g}s {where}", method=method) from None
    except aiohttp.ClientConnectorError as e:
        # Connection refused / DNS: the request never left. `from None`: aiohttp's text has the URL.
        reason = getattr(getattr(e, "os_error", None), "strerror", None) or type(e).__name__
        raise RpcRefused(f"{reason} {where}", method=method) from None
    except (aiohttp.ClientError, OSError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
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
