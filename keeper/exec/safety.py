"""What may stop the keeper from sending, while it keeps indexing and deciding.

- Kill switch: while the file KEEPER_KILL_SWITCH_FILE exists, nothing is sent (`touch` it to
  pause, `rm` it to resume; checked before every send, so it acts within one cycle).
- Circuit breaker: KEEPER_BREAKER_MAX_FAILURES reverted transactions (gas paid for nothing:
  a stale view, or a race lost after paying gas) within KEEPER_BREAKER_WINDOW_S seconds halt
  sending. Cancels of transactions that never mined, timeouts, expired bundles and dropped
  nonces cost nothing or almost nothing and go to metrics only. After
  KEEPER_BREAKER_COOLDOWN_S (default 300 s; 0: until a restart) it goes half-open: one send
  is let through, its success closes the breaker, its revert opens it again. Every change is
  logged (safety.breaker_tripped / _half_open / _closed) and shown in `keeper_breaker_open`
  (0 closed, 0.5 half-open, 1 open).
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

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
GAUGE = {CLOSED: 0.0, HALF_OPEN: 0.5, OPEN: 1.0}  # keeper_breaker_open
BREAKER_FAILURES = frozenset({"reverted"})  # attempt statuses that count against the breaker


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
    """Closed → open after `max_failures` failures within `window_s` seconds; open → half-open
    after `cooldown_s` (0: stays open until a restart); half-open lets one send through (the
    probe): its success closes the breaker, its failure re-opens it, a neutral end (cancelled,
    timed out, expired) lets another probe go.

    Only failures count: what the sender's safety gate calls one (a reverted transaction).
    `keeper_breaker_open` is 0 closed, 0.5 half-open, 1 open.
    """

    def __init__(self, *, max_failures: int, window_s: float, cooldown_s: float = 300.0,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.metrics = metrics
        self.clock = clock
        self._failures: deque[_Failure] = deque()
        self._state = CLOSED
        self._probing = False  # half-open: the one send is out
        self.opened_at: float | None = None
        self.reason: str | None = None
        self.trips = 0

    @property
    def state(self) -> str:
        if self._state == OPEN and self.cooldown_s > 0 and self.clock() - self.opened_at >= self.cooldown_s:
            self._set(HALF_OPEN, "safety.breaker_half_open", after_s=self.cooldown_s, reason=self.reason)
        return self._state

    def is_open(self) -> bool:
        """True while no send may go out (open, or half-open with its probe already out)."""
        state = self.state
        return state == OPEN or (state == HALF_OPEN and self._probing)

    def permit(self) -> str | None:
        """Take permission for one send: "closed", "probe" (half-open's one send), or None."""
        state = self.state
        if state == CLOSED:
            return CLOSED
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            log.info("safety.breaker_probe")
            return "probe"
        return None

    def release_probe(self) -> None:
        """The probe was never sent: another send may be the probe."""
        self._probing = False

    @property
    def failures(self) -> int:
        self._expire()
        return len(self._failures)

    def record_success(self, *, probe: bool = False) -> None:
        if self.state == HALF_OPEN:
            self._failures.clear()
            self._set(CLOSED, "safety.breaker_closed", probe=probe)

    def record_neutral(self, reason: str, *, probe: bool = False) -> None:
        if probe and self.state == HALF_OPEN:
            self._probing = False
            log.info("safety.breaker_probe_inconclusive", reason=reason)

    def record_failure(self, reason: str, *, probe: bool = False) -> None:
        now = self.clock()
        self._failures.append(_Failure(now, reason))
        self._expire()
        state = self.state
        if state == HALF_OPEN:
            self._trip(now, f"the half-open probe failed: {reason}")
        elif state == CLOSED and len(self._failures) >= self.max_failures:
            self._trip(now, f"{len(self._failures)} failed sends within {self.window_s:g}s: "
                       + ", ".join(f.reason for f in self._failures))

    def _trip(self, now: float, reason: str) -> None:
        self.opened_at = now
        self.trips += 1
        self.reason = reason
        if self.metrics is not None:
            self.metrics.breaker_trips.inc()
        self._set(OPEN, "safety.breaker_tripped", reason=reason, failures=len(self._failures),
                  window_s=self.window_s, cooldown_s=self.cooldown_s or None, level="error")

    def _set(self, state: str, event: str, level: str = "info", **kv: object) -> None:
        self._state, self._probing = state, False
        if self.metrics is not None:
            self.metrics.breaker_open.set(GAUGE[state])
        getattr(log, level)(event, state=state, **kv)

    def _expire(self) -> None:
        horizon = self.clock() - self.window_s
        while self._failures and self._failures[0].at < horizon:
            self._failures.popleft()


class Safety:
    """The gate in front of every liquidation send."""

    def __init__(self, *, breaker: CircuitBreaker, kill_switch: KillSwitch | None = None,
                 min_balance_wei: int = 0, metrics: Metrics | None = None) -> None:
        self.breaker = breaker
        self.kill_switch = kill_switch or KillSwitch(None)
        self.min_balance_wei = min_balance_wei
        self.metrics = metrics
        self._low_logged = False
        self._balance_at: tuple[Address, int, int] | None = None  # (wallet, head, balance) last read

    async def refusal(self, rpc: RpcClient, address: Address, head: int | None = None) -> str | None:
        """Why sending must not happen now, or None. Reads the wallet balance (one call), once per
        `head` when the caller knows it: the balance only changes when a block is mined, and in a
        crash a cycle sends hundreds of liquidations on one head."""
        if self.kill_switch.engaged():
            return PAUSED
        if self.breaker.is_open():
            return BREAKER_OPEN
        if self.min_balance_wei > 0:
            cached = self._balance_at
            if head is not None and cached is not None and cached[:2] == (address, head):
                balance = cached[2]
            else:
                balance = await rpc.get_balance(address, "latest")
                self._balance_at = (address, head, balance) if head is not None else None
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

    def record(self, status: str, reason: str | None = None, *, probe: bool = False) -> None:
        """An attempt's end (exec/sender.py `Status`). Only what cost gas and proved the keeper
        wrong counts against the breaker: a reverted transaction (a race lost after paying gas
        reverts too). Cancels of transactions that never mined, timeouts, expired bundles and
        dropped nonces are counted in metrics by the sender, not here."""
        label = status if reason is None else f"{status}:{reason}"
        if status in BREAKER_FAILURES:
            self.breaker.record_failure(label, probe=probe)
        elif status == "included":
            self.breaker.record_success(probe=probe)
        else:
            self.breaker.record_neutral(label, probe=probe)
