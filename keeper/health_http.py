"""What `/healthz` and `/readyz` answer: whether a running keeper is really following the chain.

`/healthz` (liveness) is 200 `ok` unless one of these holds; then 503, `unhealthy` and one line each:

- `head stale`: no new head processed for more than KEEPER_HEALTH_MAX_HEAD_AGE_S. Counted from the
  moment the keeper became ready, so a first backfill that takes minutes is not a stale head.
- `rpc failing`: the last RPC_FAILING_AFTER requests in a row failed (timeout, transport, rate limit,
  other node error). A reverted `eth_call` or a refused getLogs range is the node answering, not failing.
- `breaker open`: the circuit breaker halts sending (keeper/exec/safety.py).
- `shutting down`: SIGTERM or SIGINT was received.

`/healthz?ignore=breaker_open` leaves a check out. A Kubernetes liveness probe uses it: a restart
closes the breaker (its failures live in memory), so restarting on it would re-arm a keeper that
was losing money. The breaker pages through the `KeeperCircuitBreakerOpen` alert instead.

`/readyz` (readiness) is 200 `ready` once the borrower backfill and the mirror bootstrap are done,
503 with the phase in hand before (`backfill`, `mirror bootstrap`) and once shutting down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from keeper.chain.rpc import RpcObserver

RPC_FAILING_AFTER = 5
# Outcomes that mean the node answered: the request did what it should or was refused on purpose.
_ANSWERED = frozenset({"ok", "reverted", "range_too_large", "nonce_too_low", "underpriced"})
CHECKS = ("shutting_down", "head_stale", "rpc_failing", "breaker_open")


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()

    def response(self, good: str, bad: str) -> web.Response:
        lines = [good] if self.ok else [bad, *self.reasons]
        return web.Response(text="\n".join(lines) + "\n", status=200 if self.ok else 503)


class HealthState:
    """Fed by the app (phase, heads, RPC outcomes); read by the HTTP handlers. No I/O."""

    def __init__(self, max_head_age_s: float, *, rpc_failing_after: int = RPC_FAILING_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_head_age_s = max_head_age_s
        self.rpc_failing_after = rpc_failing_after
        self.clock = clock
        self.phase = "starting"
        self.ready = False
        self.stopping: Callable[[], bool] = lambda: False
        # Returns why the breaker is open, or None while it is closed (set by the app when it sends).
        self.breaker: Callable[[], str | None] = lambda: None
        self._head: int | None = None
        self._advanced_at: float | None = None
        self._rpc_failures = 0
        self._rpc_last_failure = ""

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def mark_ready(self) -> None:
        self.ready, self.phase = True, "running"
        if self._advanced_at is None:
            self._advanced_at = self.clock()  # the head age counts from here

    def head_seen(self, number: int) -> None:
        if self._head is None or number > self._head:
            self._head, self._advanced_at = number, self.clock()

    def head_age_s(self) -> float | None:
        return None if self._advanced_at is None else self.clock() - self._advanced_at

    def observe_rpc(self, method: str, seconds: float, outcome: str) -> None:
        if outcome in _ANSWERED:
            self._rpc_failures = 0
        else:
            self._rpc_failures += 1
            self._rpc_last_failure = f"{method} {outcome}"

    def rpc_observer(self, then: RpcObserver) -> RpcObserver:
        """An RpcClient `on_request` that feeds this state and then `then` (the metrics)."""

        def observe(method: str, seconds: float, outcome: str) -> None:
            self.observe_rpc(method, seconds, outcome)
            then(method, seconds, outcome)

        return observe

    def liveness(self, ignore: frozenset[str] = frozenset()) -> Verdict:
        reasons = [r for name, check in self._checks() if name not in ignore and (r := check()) is not None]
        return Verdict(not reasons, tuple(reasons))

    def readiness(self) -> Verdict:
        if self.stopping():
            return Verdict(False, ("shutting down",))
        return Verdict(True) if self.ready else Verdict(False, (f"starting: {self.phase}",))

    def _checks(self) -> list[tuple[str, Callable[[], str | None]]]:
        return [("shutting_down", self._shutting_down), ("head_stale", self._head_stale),
                ("rpc_failing", self._rpc_failing), ("breaker_open", self._breaker_open)]

    def _shutting_down(self) -> str | None:
        return "shutting down" if self.stopping() else None

    def _head_stale(self) -> str | None:
        age = self.head_age_s() if self.ready else None
        if age is None or age <= self.max_head_age_s:
            return None
        return (f"head stale: no new head for {age:.0f} s (max {self.max_head_age_s:g} s), "
                f"last {self._head if self._head is not None else 'none'}")

    def _rpc_failing(self) -> str | None:
        if self._rpc_failures < self.rpc_failing_after:
            return None
        return f"rpc failing: {self._rpc_failures} requests in a row failed, last {self._rpc_last_failure}"

    def _breaker_open(self) -> str | None:
        why = self.breaker()
        return None if why is None else f"breaker open: {why}"


def routes(state: HealthState) -> list[web.RouteDef]:
    """GET /healthz and /readyz for `keeper.metrics.serve(..., routes=...)`."""

    async def healthz(request: web.Request) -> web.Response:
        ignore = frozenset(n.strip() for n in request.query.get("ignore", "").split(",") if n.strip())
        unknown = ignore - set(CHECKS)
        if unknown:
            return web.Response(text=f"unknown check {', '.join(sorted(unknown))}; "
                                     f"known: {', '.join(CHECKS)}\n", status=400)
        return state.liveness(ignore).response("ok", "unhealthy")

    async def readyz(_: web.Request) -> web.Response:
        return state.readiness().response("ready", "not ready")

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
