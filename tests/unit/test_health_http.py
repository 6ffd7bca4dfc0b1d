"""/healthz and /readyz over HTTP, driven by the state the app feeds (heads, RPC outcomes, the breaker).

The chain-driven cases (a devnet that stops mining, a backfill in progress) are in
tests/integration/test_operations.py; these cover the reasons a chain cannot easily produce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from keeper.exec.safety import CircuitBreaker
from keeper.health_http import RPC_FAILING_AFTER, HealthState, routes
from keeper.metrics import Metrics, bound_port, serve, stop


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthState, Clock, str]]:
    clock = Clock()
    state = HealthState(30, clock=clock)
    runner = await serve(Metrics(), "127.0.0.1", 0, routes=routes(state))
    try:
        yield state, clock, f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await stop(runner)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, http.get(url) as r:
        return r.status, await r.text()


async def test_not_ready_during_start_but_alive_and_head_age_counts_from_ready(served) -> None:
    state, clock, url = served
    state.set_phase("backfill")
    assert await get(url + "/readyz") == (503, "not ready\nstarting: backfill\n")
    clock.now += 3_600  # an hour of backfill is not a stale head
    assert await get(url + "/healthz") == (200, "ok\n")
    state.mark_ready()
    assert await get(url + "/readyz") == (200, "ready\n")
    clock.now += 31
    status, body = await get(url + "/healthz")
    assert status == 503 and "head stale: no new head for 31 s (max 30 s)" in body
    state.head_seen(100)
    assert await get(url + "/healthz") == (200, "ok\n")
    clock.now += 20
    state.head_seen(100)  # the same head again is not progress
    clock.now += 20
    assert (await get(url + "/healthz"))[0] == 503


async def test_rpc_failing_after_consecutive_failures_but_not_for_reverts(served) -> None:
    state, _, url = served
    state.mark_ready()
    for _ in range(RPC_FAILING_AFTER * 3):
        state.observe_rpc("eth_call", 0.01, "reverted")  # the node answered: a simulation said no
    assert (await get(url + "/healthz"))[0] == 200
    for _ in range(RPC_FAILING_AFTER):
        state.observe_rpc("eth_blockNumber", 10.0, "timeout")
    status, body = await get(url + "/healthz")
    want = f"rpc failing: {RPC_FAILING_AFTER} requests in a row failed, last eth_blockNumber timeout"
    assert status == 503 and want in body
    state.observe_rpc("eth_blockNumber", 0.01, "ok")
    assert (await get(url + "/healthz"))[0] == 200


async def test_breaker_open_is_unhealthy_unless_the_probe_ignores_it(served) -> None:
    state, _, url = served
    state.mark_ready()
    breaker = CircuitBreaker(max_failures=2, window_s=60)
    state.breaker = lambda: breaker.reason if breaker.is_open() else None
    breaker.record_failure("reverted")
    assert (await get(url + "/healthz"))[0] == 200
    breaker.record_failure("lost")
    status, body = await get(url + "/healthz")
    assert status == 503 and "breaker open: 2 failed sends within 60s: reverted, lost" in body
    assert await get(url + "/healthz?ignore=breaker_open") == (200, "ok\n")
    assert (await get(url + "/healthz?ignore=breaker"))[0] == 400  # a typo must not silence a check


async def test_shutting_down_fails_both(served) -> None:
    state, _, url = served
    state.mark_ready()
    state.stopping = lambda: True
    assert await get(url + "/healthz") == (503, "unhealthy\nshutting down\n")
    assert await get(url + "/readyz") == (503, "not ready\nshutting down\n")
