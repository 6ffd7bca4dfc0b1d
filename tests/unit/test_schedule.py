"""The re-check schedule: near the line every block, healthier accounts less often, unknown ones always."""

from __future__ import annotations

from keeper.health.schedule import DEFAULT_TIERS, LARGE_DEBT_BASE, due
from keeper.types import AccountHealth

WAD = 10**18


def _h(user: str, hf_wad: int, debt_base: int = 10_000 * 10**8) -> AccountHealth:
    return AccountHealth(user, 1, 2 * debt_base, debt_base, 0, 8000, 7500, hf_wad)


def _users(n: int) -> list[str]:
    return [f"0x{i:040x}" for i in range(n)]


def test_accounts_near_one_are_checked_every_block() -> None:
    users = _users(50)
    local = {u: _h(u, 103 * WAD // 100) for u in users}
    for block in range(20):
        assert due(block, local, users) == set(users)


def test_healthier_accounts_are_checked_once_per_period_each() -> None:
    users = _users(300)
    local = {u: _h(u, 115 * WAD // 100) for u in users}
    period = DEFAULT_TIERS[1].every_blocks
    seen: list[str] = []
    for block in range(period):
        batch = due(block, local, users)
        assert len(batch) < len(users)  # spread out, not all at once
        seen += batch
    assert sorted(seen) == sorted(users)  # each exactly once per period


def test_unknown_accounts_are_read_every_block_never_assumed_healthy() -> None:
    users = _users(10)
    local = {u: _h(u, 3 * WAD) for u in users[:5]}
    for block in range(1, 7):
        assert set(users[5:]) <= due(block, local, users)


def test_large_positions_move_up_one_tier() -> None:
    user = _users(1)
    small = {user[0]: _h(user[0], 115 * WAD // 100)}
    large = {user[0]: _h(user[0], 115 * WAD // 100, debt_base=LARGE_DEBT_BASE)}
    assert sum(bool(due(b, small, user)) for b in range(10)) == 1
    assert sum(bool(due(b, large, user)) for b in range(10)) == 10


def test_accounts_without_debt_are_not_read() -> None:
    users = _users(3)
    local = {u: AccountHealth(u, 1, 10**8, 0, 0, 0, 0, 2**256 - 1) for u in users}
    assert due(0, local, users) == set()
