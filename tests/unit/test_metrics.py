"""Metrics on a private registry, fed by RpcClient, served over HTTP."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import REGISTRY

from keeper.chain.rpc import RpcClient
from keeper.metrics import Metrics, bound_port, serve, stop

if TYPE_CHECKING:
    from conftest import FakeNode


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_two_instances_have_independent_registries() -> None:
    a, b = Metrics(), Metrics()
    a.head_block.set(100)
    b.head_block.set(200)
    assert sample(a, "keeper_head_block") == 100
    assert sample(b, "keeper_head_block") == 200
    assert REGISTRY.get_sample_value("keeper_head_block") is None


def test_liquidation_outcomes_exist_at_zero_before_any_event() -> None:
    m = Metrics()
    for outcome in ("sent", "included", "reverted", "dry_run"):
        assert sample(m, "keeper_liquidations_total", outcome=outcome) == 0


def test_observe_rpc_counts_and_times_by_method_and_outcome() -> None:
    m = Metrics()
    m.observe_rpc("eth_call", 0.02, "ok")
    m.observe_rpc("eth_call", 0.5, "reverted")
    m.observe_rpc("eth_call", 0.03, "ok")
    assert sample(m, "keeper_rpc_requests_total", method="eth_call", outcome="ok") == 2
    assert sample(m, "keeper_rpc_requests_total", method="eth_call", outcome="reverted") == 1
    assert sample(m, "keeper_rpc_seconds_count", method="eth_call") == 3
    assert sample(m, "keeper_rpc_seconds_bucket", method="eth_call", le="0.025") == 1


def test_method_label_never_carries_a_url() -> None:
    m = Metrics()
    m.observe_rpc("https://eth.example.org/v3/APIKEY", 0.1, "ok")
    assert b"APIKEY" not in m.render()
    assert sample(m, "keeper_rpc_requests_total", method="other", outcome="ok") == 1


def test_profit_takes_decimal_and_ignores_losses() -> None:
    m = Metrics()
    m.add_profit_usd(Decimal("12.34"))
    m.add_profit_usd(Decimal("-5"))
    m.add_gas_spent_wei(21_000 * 10**9)
    assert sample(m, "keeper_profit_usd_total") == 12.34
    assert sample(m, "keeper_gas_spent_wei_total") == 21_000 * 10**9


async def test_rpc_client_feeds_the_metrics_observer(fake_node: FakeNode) -> None:
    m = Metrics()
    fake_node.script = [fake_node.http(429), fake_node.result("0x1")]
    async with RpcClient(fake_node.url, backoff_base_s=0.001, on_request=m.observe_rpc) as rpc:
        await rpc.chain_id()
    assert sample(m, "keeper_rpc_requests_total", method="eth_chainId", outcome="ok") == 1
    assert sample(m, "keeper_rpc_requests_total", method="eth_chainId", outcome="rate_limited") == 1


async def test_server_exposes_metrics_and_health_then_stops_quickly() -> None:
    m = Metrics()
    m.head_block.set(12345)
    healthy = True
    runner = await serve(m, "127.0.0.1", 0, healthy=lambda: healthy)
    try:
        base = f"http://127.0.0.1:{bound_port(runner)}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                assert "keeper_head_block 12345.0" in await resp.text()
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            healthy = False
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 503
    finally:
        t0 = time.monotonic()
        await stop(runner, timeout_s=5)
        assert time.monotonic() - t0 < 3
