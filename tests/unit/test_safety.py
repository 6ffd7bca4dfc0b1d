"""The circuit breaker and the kill switch (the gas floor is checked on a devnet in test_sending)."""

from __future__ import annotations

from pathlib import Path

from keeper.exec.safety import (
    BREAKER_OPEN,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PAUSED,
    CircuitBreaker,
    KillSwitch,
    Safety,
)
from keeper.metrics import Metrics


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_trips_on_the_nth_failure_within_the_window_and_says_why() -> None:
    metrics = Metrics()
    clock = _Clock()
    breaker = CircuitBreaker(max_failures=3, window_s=60, metrics=metrics, clock=clock)
    breaker.record_failure("reverted")
    clock.now += 10
    breaker.record_failure("reverted")
    assert not breaker.is_open()
    assert metrics.breaker_open._value.get() == 0
    clock.now += 10
    breaker.record_failure("reverted")
    assert breaker.is_open()
    assert breaker.reason is not None and "reverted, reverted, reverted" in breaker.reason
    assert metrics.breaker_open._value.get() == 1
    assert metrics.breaker_trips._value.get() == 1


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(max_failures=2, window_s=60, clock=clock)
    breaker.record_failure("reverted")
    clock.now += 61
    breaker.record_failure("reverted")
    assert not breaker.is_open()
    assert breaker.failures == 1


def test_breaker_with_no_cooldown_stays_open_until_restart() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(max_failures=1, window_s=60, cooldown_s=0, clock=clock)
    breaker.record_failure("reverted")
    clock.now += 10**6
    assert breaker.is_open() and breaker.permit() is None


def test_breaker_goes_half_open_after_its_cooldown_and_closes_after_a_successful_send() -> None:
    metrics = Metrics()
    clock = _Clock()
    safety = Safety(breaker=CircuitBreaker(max_failures=2, window_s=600, cooldown_s=300, metrics=metrics,
                                           clock=clock))
    breaker = safety.breaker
    safety.record("reverted")
    safety.record("reverted")
    assert breaker.state == OPEN and metrics.breaker_open._value.get() == 1
    clock.now += 299
    assert breaker.is_open() and breaker.permit() is None
    clock.now += 1
    assert breaker.state == HALF_OPEN and metrics.breaker_open._value.get() == 0.5
    assert not breaker.is_open()
    assert breaker.permit() == "probe"  # one send is allowed...
    assert breaker.is_open() and breaker.permit() is None  # ...and only one
    safety.record("included", probe=True)
    assert breaker.state == CLOSED and metrics.breaker_open._value.get() == 0
    assert breaker.permit() == "closed" and breaker.failures == 0
    safety.record("reverted")  # one failure after closing is not two
    assert breaker.state == CLOSED
    assert metrics.breaker_trips._value.get() == 1


def test_a_reverted_probe_opens_the_breaker_again_and_an_inconclusive_one_lets_another_go() -> None:
    metrics = Metrics()
    clock = _Clock()
    safety = Safety(breaker=CircuitBreaker(max_failures=1, window_s=600, cooldown_s=60, metrics=metrics,
                                           clock=clock))
    breaker = safety.breaker
    safety.record("reverted")
    clock.now += 60
    assert breaker.permit() == "probe"
    safety.record("cancelled", "timeout", probe=True)  # cost no liquidation gas, proved nothing
    assert breaker.state == HALF_OPEN and breaker.permit() == "probe"
    breaker.release_probe()  # that send never went out
    assert breaker.permit() == "probe"
    safety.record("reverted", probe=True)
    assert breaker.state == OPEN and metrics.breaker_open._value.get() == 1
    assert breaker.trips == 2 and metrics.breaker_trips._value.get() == 2
    assert breaker.reason is not None and "probe" in breaker.reason


def test_cancels_timeouts_expired_bundles_and_dropped_nonces_never_trip_it() -> None:
    safety = Safety(breaker=CircuitBreaker(max_failures=1, window_s=3_600))
    for status, reason in [("cancelled", "timeout"), ("cancelled", "lost"), ("cancelled", "gone"),
                           ("expired", "stale"), ("cancelled", "stale"), ("dropped", "nonce_used_elsewhere")]:
        for _ in range(5):
            safety.record(status, reason)
    assert safety.breaker.state == CLOSED and safety.breaker.failures == 0
    safety.record("reverted")
    assert safety.breaker.state == OPEN


async def test_kill_switch_file_pauses_sending_while_it_exists(tmp_path: Path) -> None:
    metrics = Metrics()
    switch = tmp_path / "pause"
    safety = Safety(breaker=CircuitBreaker(max_failures=3, window_s=60),
                    kill_switch=KillSwitch(switch, metrics), metrics=metrics)
    assert await safety.refusal(None, "0x" + "11" * 20) is None  # type: ignore[arg-type]
    switch.touch()
    assert await safety.refusal(None, "0x" + "11" * 20) == PAUSED  # type: ignore[arg-type]
    assert metrics.sending_paused._value.get() == 1
    switch.unlink()
    assert await safety.refusal(None, "0x" + "11" * 20) is None  # type: ignore[arg-type]
    assert metrics.sending_paused._value.get() == 0


async def test_an_open_breaker_refuses_and_failures_are_recorded_through_the_gate() -> None:
    safety = Safety(breaker=CircuitBreaker(max_failures=2, window_s=60))
    safety.record("included")
    safety.record("reverted")
    safety.record("expired", "stale")
    assert await safety.refusal(None, "0x" + "11" * 20) is None  # type: ignore[arg-type]
    safety.record("reverted")
    assert await safety.refusal(None, "0x" + "11" * 20) == BREAKER_OPEN  # type: ignore[arg-type]
