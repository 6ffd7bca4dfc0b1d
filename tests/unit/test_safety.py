"""The circuit breaker and the kill switch (the gas floor is checked on a devnet in test_sending)."""

from __future__ import annotations

from pathlib import Path

from keeper.exec.safety import BREAKER_OPEN, PAUSED, CircuitBreaker, KillSwitch, Safety
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
    breaker.record_failure("cancelled:lost")
    assert not breaker.is_open()
    assert metrics.breaker_open._value.get() == 0
    clock.now += 10
    breaker.record_failure("reverted")
    assert breaker.is_open()
    assert breaker.reason is not None and "reverted, cancelled:lost, reverted" in breaker.reason
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


def test_breaker_stays_open_until_restart_by_default() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(max_failures=1, window_s=60, clock=clock)
    breaker.record_failure("reverted")
    clock.now += 10**6
    assert breaker.is_open()


def test_breaker_with_a_reset_period_closes_after_it_and_forgets_old_failures() -> None:
    metrics = Metrics()
    clock = _Clock()
    breaker = CircuitBreaker(max_failures=2, window_s=600, reset_s=300, metrics=metrics, clock=clock)
    breaker.record_failure("reverted")
    breaker.record_failure("reverted")
    clock.now += 299
    assert breaker.is_open()
    clock.now += 1
    assert not breaker.is_open()
    assert metrics.breaker_open._value.get() == 0
    breaker.record_failure("reverted")  # one failure after the reset is not two
    assert not breaker.is_open()


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
    safety.record(True, "included")
    safety.record(False, "reverted")
    assert await safety.refusal(None, "0x" + "11" * 20) is None  # type: ignore[arg-type]
    safety.record(False, "expired:stale")
    assert await safety.refusal(None, "0x" + "11" * 20) == BREAKER_OPEN  # type: ignore[arg-type]
