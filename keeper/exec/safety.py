"""What may stop the keeper from sending, while it keeps indexing and deciding.

- Kill switch: while the file KEEPER_KILL_SWITCH_FILE exists, nothing is sent (`touch` it to
  pause, `rm` it to resume; checked before every send, so it acts within one cycle).
- Circuit breaker: KEEPER_BREAKER_MAX_FAILURES reverted or losing sends (reverted, cancelled
  because someone else won or the opportunity vanished, expired bundles, nonces taken by
  another transaction) within KEEPER_BREAKER_WINDOW_S seconds halt sending. It stays open for
  KEEPER_BREAKER_RESET_S seconds, or until the keeper restarts when that is 0 (the default).
- Gas floor: sending is refused while the wallet's native balance is below
  KEEPER_MIN_GAS_BALANCE_ETH (the app also refuses to start below it).

Each refusal is a reason string the pipeline counts in `keeper_skipped{reason}`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keeper.chain.rpc import RpcClient
from keeper.log import get_logger
from keeper.metrics import Metrics
from keeper.types import Address

log = get_logger(__name__)

PAUSED = "paused"
BREAKER_OPEN = "breaker_open"
GAS_BALANCE_LOW = "gas_balance_low"


class KillSwitch:
    """Sending is paused while `path` exists. Transitions are logged once each."""

    def __init__(self, path: Path | None, metrics: Metrics | None = None) -> None:
        self.path = path
        self.metrics = metrics
        self._engaged = False

    def engaged(self) -> bool:
        now = self.path is not None and self.path.exists()
        if now != self._engaged:
            self._engaged = now
            if self.metrics is not None:
                self.metrics.sending_paused.set(1 if now else 0)
            if now:
                log.warning("safety.paused", kill_switch=str(self.path))
            else:
                log.info("safety.resumed", kill_switch=str(self.path))
        return now


@dataclass(frozen=True, slots=True)
class _Failure:
    at: float
    reason: str


class CircuitBreaker:
    """Opens after `max_failures` failures within `window_s` seconds."""

    def __init__(self, *, max_failures: int, window_s: float, reset_s: float = 0.0,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.reset_s = reset_s
        self.metrics = metrics
        self.clock = clock
        self._failures: deque[_Failure] = deque()
        self.opened_at: float | None = None
        self.reason: str | None = None
        self.trips = 0

    def is_open(self) -> bool:
        if self.opened_at is None:
            return False
        if self.reset_s > 0 and self.clock() - self.opened_at >= self.reset_s:
            log.info("safety.breaker_reset", after_s=self.reset_s, reason=self.reason)
            self.opened_at, self.reason = None, None
            self._failures.clear()
            self._gauge(0)
            return False
        return True

    @property
    def failures(self) -> int:
        self._expire()
        return len(self._failures)

    def record_failure(self, reason: str) -> None:
        now = self.clock()
        self._failures.append(_Failure(now, reason))
        self._expire()
        if self.opened_at is None and len(self._failures) >= self.max_failures:
            self.opened_at = now
            self.trips += 1
            self.reason = (f"{len(self._failures)} failed sends within {self.window_s:g}s: "
                           + ", ".join(f.reason for f in self._failures))
            self._gauge(1)
            if self.metrics is not None:
                self.metrics.breaker_trips.inc()
            log.error("safety.breaker_tripped", reason=self.reason, failures=len(self._failures),
                      window_s=self.window_s, reset_s=self.reset_s or None)

    def _expire(self) -> None:
        horizon = self.clock() - self.window_s
        while self._failures and self._failures[0].at < horizon:
            self._failures.popleft()

    def _gauge(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.breaker_open.set(value)


class Safety:
    """The gate in front of every liquidation send."""

    def __init__(self, *, breaker: CircuitBreaker, kill_switch: KillSwitch | None = None,
                 min_balance_wei: int = 0, metrics: Metrics | None = None) -> None:
        self.breaker = breaker
        self.kill_switch = kill_switch or KillSwitch(None)
        self.min_balance_wei = min_balance_wei
        self.metrics = metrics
        self._low_logged = False

    async def refusal(self, rpc: RpcClient, address: Address) -> str | None:
        """Why sending must not happen now, or None. Reads the wallet balance (one call)."""
        if self.kill_switch.engaged():
            return PAUSED
        if self.breaker.is_open():
            return BREAKER_OPEN
        if self.min_balance_wei > 0:
            balance = await rpc.get_balance(address, "latest")
            if self.metrics is not None:
                self.metrics.wallet_balance_wei.set(balance)
            if balance < self.min_balance_wei:
                if not self._low_logged:
                    log.error("safety.gas_balance_low", address=address, balance_wei=balance,
                              floor_wei=self.min_balance_wei)
                    self._low_logged = True
                return GAS_BALANCE_LOW
            self._low_logged = False
        return None

    def record(self, success: bool, reason: str) -> None:
        if not success:
            self.breaker.record_failure(reason)
