"""Every keeper metric, registered in one place on a private CollectorRegistry.

No global registry: two Metrics (two tests, two apps in one process) never collide.
Labels are small closed sets (outcomes, reasons, RPC method names), never URLs,
addresses or secrets. Prometheus stores floats, so Decimal money becomes float only
here, at the export boundary.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

_RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 30, 60)
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

LIQUIDATION_OUTCOMES = ("sent", "included", "reverted", "cancelled", "expired", "dropped", "dry_run")
CANCEL_REASONS = ("lost", "gone", "timeout")
SIM_RESULTS = ("profitable", "unprofitable", "reverted", "error")
# keeper/chain/heads.py's reasons; the skip reasons an operator watches most (others appear when used).
RECONNECT_REASONS = ("stall", "closed", "error", "connect_failed", "subscribe_failed")
SKIP_REASONS = ("unprofitable", "sim_unprofitable", "sim_reverted", "sim_error", "paused", "breaker_open",
                "gas_balance_low")


class Metrics:
    """The keeper's metrics. Stages receive this object and touch only their own series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.up = Gauge("keeper_up", "1 while the keeper loop runs", registry=r)
        self.ready = Gauge(
            "keeper_ready", "1 once the backfill and the mirror bootstrap are done (/readyz)", registry=r
        )
        self.build = Info("keeper_build", "Keeper version", registry=r)
        self.head_block = Gauge("keeper_head_block", "Latest block seen", registry=r)
        self.indexed_block = Gauge("keeper_indexed_block", "Last block indexed", registry=r)
        self.head_lag_blocks = Gauge(
            "keeper_head_lag_blocks", "Newest head seen minus the block the last cycle processed", registry=r
        )
        self.borrowers_tracked = Gauge(
            "keeper_borrowers_tracked", "Borrowers with debt being watched", registry=r
        )
        self.borrowers_liquidatable = Gauge(
            "keeper_borrowers_liquidatable", "Borrowers with HF < 1 at head", registry=r
        )
        self.mirror_drift = Gauge(
            "keeper_mirror_drift", "Borrowers whose local HF disagreed with chain", registry=r
        )
        self.polled_reserves = Gauge(
            "keeper_polled_reserves", "Reserves whose price source emits no event: read every block",
            registry=r,
        )
        self.liquidation_allowed = Gauge(
            "keeper_liquidation_allowed", "0 while the pool's PriceOracleSentinel holds liquidations back",
            registry=r,
        )
        self.wallet_balance_wei = Gauge(
            "keeper_wallet_balance_wei", "Native balance of the keeper account", registry=r
        )
        self.heads_skipped = Gauge(
            "keeper_heads_skipped", "Heads dropped because a newer one arrived mid-cycle", registry=r
        )
        self.reconnects = Counter(
            "keeper_ws_reconnects", "Websocket reconnects by reason", ["reason"], registry=r
        )
        self.simulations = Counter(
            "keeper_simulations", "Fork simulations by result", ["result"], registry=r
        )
        self.liquidations = Counter(
            "keeper_liquidations", "Liquidations by outcome", ["outcome"], registry=r
        )
        self.skipped = Counter(
            "keeper_skipped", "Opportunities not sent, by reason", ["reason"], registry=r
        )
        self.no_route = Counter(
            "keeper_no_route", "Liquidations whose collateral had no swap route, by collateral/debt pair",
            ["pair"], registry=r,
        )
        self.profit_usd = Counter("keeper_profit_usd", "Realised net profit in USD", registry=r)
        self.gas_spent_wei = Counter(
            "keeper_gas_spent_wei", "Gas paid by sent transactions", registry=r
        )
        self.rpc_requests = Counter(
            "keeper_rpc_requests", "JSON-RPC requests", ["method", "outcome"], registry=r
        )
        self.rpc_seconds = Histogram(
            "keeper_rpc_seconds", "JSON-RPC latency", ["method"], buckets=_RPC_BUCKETS, registry=r
        )
        # Per endpoint, labelled by its index in KEEPER_RPC_URL + KEEPER_RPC_URLS (never its URL).
        self.rpc_endpoint_errors = Gauge(
            "keeper_rpc_endpoint_errors", "Consecutive transient failures of an RPC endpoint", ["endpoint"],
            registry=r,
        )
        self.rpc_endpoint_latency = Gauge(
            "keeper_rpc_endpoint_latency_seconds", "Latency EWMA of an RPC endpoint", ["endpoint"], registry=r
        )
        self.rpc_endpoint_up = Gauge(
            "keeper_rpc_endpoint_up", "0 while an RPC endpoint's last requests all failed", ["endpoint"],
            registry=r,
        )
        self.rpc_events = Counter(
            "keeper_rpc_events", "Hedged reads, failovers, re-broadcasts, broadcasts not accepted",
            ["event", "endpoint"], registry=r,
        )
        self.read_chunks_failed = Counter(
            "keeper_read_chunks_failed", "Read chunks that failed and were deferred to the next block",
            ["stage"], registry=r,
        )
        self.cycle_seconds = Histogram(
            "keeper_cycle_seconds",
            "One head-to-decision cycle",
            buckets=_CYCLE_BUCKETS,
            registry=r,
        )
        self.sim_seconds = Histogram(
            "keeper_sim_seconds", "One fork simulation", buckets=_CYCLE_BUCKETS, registry=r
        )
        # Sending (keeper/exec): replacement, cancellation, bundles, safety.
        self.attempts_in_flight = Gauge(
            "keeper_attempts_in_flight", "Liquidation attempts sent and not yet settled", registry=r
        )
        self.tx_replacements = Counter(
            "keeper_tx_replacements", "Transactions re-sent at the same nonce with higher fees", registry=r
        )
        self.tx_cancels = Counter(
            "keeper_tx_cancels", "Zero-value self-transfers sent to cancel an attempt, by reason",
            ["reason"], registry=r,
        )
        self.bundles_sent = Counter(
            "keeper_bundles_sent", "eth_sendBundle requests accepted by the relay", registry=r
        )
        self.sending_paused = Gauge(
            "keeper_sending_paused", "1 while the kill switch file exists", registry=r
        )
        self.breaker_open = Gauge(
            "keeper_breaker_open", "Circuit breaker: 0 closed, 0.5 half-open (one send allowed), 1 open",
            registry=r,
        )
        self.breaker_trips = Counter(
            "keeper_breaker_trips", "Times the circuit breaker halted sending", registry=r
        )
        # Known label values exist at 0 from the start, so rate() and alerts see them.
        for reason in CANCEL_REASONS:
            self.tx_cancels.labels(reason=reason)
        for outcome in LIQUIDATION_OUTCOMES:
            self.liquidations.labels(outcome=outcome)
        for result in SIM_RESULTS:
            self.simulations.labels(result=result)
        for reason in RECONNECT_REASONS:
            self.reconnects.labels(reason=reason)
        for reason in SKIP_REASONS:
            self.skipped.labels(reason=reason)

    def observe_rpc(self, method: str, seconds: float, outcome: str) -> None:
        """RpcClient observer: `RpcClient(url, on_request=metrics.observe_rpc)`."""
        method = method if _METHOD.match(method) else "other"  # never a URL or free text
        self.rpc_requests.labels(method=method, outcome=outcome).inc()
        self.rpc_seconds.labels(method=method).observe(seconds)

    def observe_endpoint(self, ep: Any) -> None:
        """RpcClient health hook: `on_health=metrics.observe_endpoint` (an Endpoint)."""
        self.rpc_endpoint_errors.labels(endpoint=ep.label).set(ep.consecutive_errors)
        self.rpc_endpoint_latency.labels(endpoint=ep.label).set(ep.latency_ewma_s)
        self.rpc_endpoint_up.labels(endpoint=ep.label).set(0 if ep.down else 1)

    def count_rpc_event(self, event: str, endpoint: str) -> None:
        """RpcClient event hook: `on_event=metrics.count_rpc_event`."""
        self.rpc_events.labels(event=event, endpoint=endpoint).inc()

    def add_profit_usd(self, usd: Decimal) -> None:
        if usd > 0:
            self.profit_usd.inc(float(usd))

    def add_gas_spent_wei(self, wei: int) -> None:
        if wei > 0:
            self.gas_spent_wei.inc(wei)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    healthy: Callable[[], bool] | None = None,
    routes: Sequence[web.RouteDef] = (),
) -> web.AppRunner:
    """Serve /metrics and /healthz; returns the runner for `stop(runner)`.

    `port=0` binds a free port (see `bound_port`). `/healthz` is 200 unless `healthy()`
    returns False (then 503), so an orchestrator can restart a stuck keeper. `routes` are served
    beside them and win over the plain `/healthz` (keeper/health_http.py: /healthz and /readyz).
    """

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.Response:
        ok = healthy() if healthy is not None else True
        return web.Response(text="ok\n" if ok else "unhealthy\n", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    if not any(r.path == "/healthz" for r in routes):
        app.router.add_get("/healthz", health_handler)
    app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the server actually listens on (useful with port=0)."""
    return int(runner.addresses[0][1])


async def stop(runner: web.AppRunner, timeout_s: float = 5.0) -> None:
    """Shut the metrics server down, giving up after `timeout_s` seconds."""
    async with asyncio.timeout(timeout_s):
        await runner.cleanup()
