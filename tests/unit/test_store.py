"""The index file: atomic pages, contiguity, rewind, binding, the kv slot, and the RangeSizer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keeper.errors import ConfigError, RpcRangeTooLarge
from keeper.index.events import RangeSizer, range_hint
from keeper.index.store import Checkpoint, EventRow, Store, StoreError, read_checkpoint

A, B, C = ("0x" + c * 40 for c in "abc")


def ev(block: int, idx: int, who: str, kind: str = "borrow") -> EventRow:
    return EventRow(block, idx, f"0x{block:064x}", who, kind)


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "keeper.db")
    try:
        yield s
    finally:
        await s.close()


async def test_page_and_checkpoint_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keeper.db"
    async with await Store.open(path) as s:
        new = await s.commit_page(10, 19, [ev(12, 0, A), ev(15, 3, B, "repay")], to_hash="0x" + "1" * 64)
        assert new == {A}
    async with await Store.open(path) as s:
        assert await s.checkpoint() == Checkpoint(19, "0x" + "1" * 64)
        assert await s.borrowers() == {A}
        assert [e.kind for e in await s.events()] == ["borrow", "repay"]
        assert await s.block_hashes() == {19: "0x" + "1" * 64}
    assert read_checkpoint(path) == Checkpoint(19, "0x" + "1" * 64)


async def test_file_uses_wal_journal(store: Store) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_page_not_following_checkpoint_is_refused(store: Store) -> None:
    await store.commit_page(0, 9, [ev(3, 0, A)])
    with pytest.raises(StoreError, match="checkpoint is 9"):
        await store.commit_page(5, 14, [ev(6, 0, B)])  # would re-read blocks 5..9
    with pytest.raises(StoreError):
        await store.commit_page(11, 14, [])  # would skip block 10
    assert await store.checkpoint() == Checkpoint(9, None)
    assert await store.borrowers() == {A}


async def test_failed_page_writes_nothing(store: Store) -> None:
    await store.commit_page(0, 9, [])
    with pytest.raises(StoreError, match="outside page"):
        await store.commit_page(10, 19, [ev(12, 0, A), ev(25, 0, B)])
    assert await store.checkpoint() == Checkpoint(9, None)
    assert await store.borrowers() == set()
    assert await store.events() == []


async def test_borrower_counted_once_with_first_block(store: Store) -> None:
    new1 = await store.commit_page(0, 9, [ev(2, 0, A), ev(2, 1, A), ev(7, 0, B, "repay")])
    new2 = await store.commit_page(10, 19, [ev(11, 0, A), ev(12, 0, B)])
    assert (new1, new2) == ({A}, {B})
    assert await store.borrowers_with_first_block() == {A: 2, B: 12}
    assert (await store.counts())["events"] == 5


async def test_rewind_drops_borrowers_first_seen_after_fork(store: Store) -> None:
    hashes = {n: f"0x{n:064x}" for n in range(20, 30)}
    await store.commit_page(0, 19, [ev(5, 0, A)])
    await store.commit_page(20, 29, [ev(22, 0, B), ev(27, 0, A), ev(28, 0, C, "repay")],
                            to_hash=hashes[29], block_hashes=hashes)
    removed = await store.rewind(25)
    assert removed == set()  # B borrowed at 22 <= 25, A long before
    removed = await store.rewind(21)
    assert removed == {B}
    assert await store.borrowers() == {A}
    assert await store.checkpoint() == Checkpoint(21, hashes[21])
    assert max(await store.block_hashes()) == 21
    assert all(e.block <= 21 for e in await store.events())
    # Reading the new branch continues right after the fork point.
    assert await store.commit_page(22, 23, [ev(23, 0, C)]) == {C}


async def test_old_block_hashes_are_pruned(store: Store) -> None:
    hashes = {n: f"0x{n:064x}" for n in range(0, 300)}
    await store.commit_page(0, 299, [], to_hash=hashes[299], block_hashes=hashes, keep_blocks=128)
    kept = await store.block_hashes()
    assert min(kept) == 299 - 127 and max(kept) == 299


async def test_file_of_another_market_is_refused(store: Store) -> None:
    await store.bind(1, A)
    await store.bind(1, A.upper().replace("0X", "0x"))  # same pool, other spelling
    with pytest.raises(ConfigError, match="KEEPER_DB_PATH"):
        await store.bind(31337, A)
    with pytest.raises(ConfigError):
        await store.bind(1, B)


async def test_kv_slot_round_trips_bytes_and_json(store: Store) -> None:
    assert await store.get("mirror") is None
    await store.put("blob", b"\x00\xff")
    await store.put_json("mirror", {"block": 5, "users": [A]})
    await store.put_json("mirror", {"block": 6, "users": [A, B]})
    assert await store.get("blob") == b"\x00\xff"
    assert await store.get_json("mirror") == {"block": 6, "users": [A, B]}
    await store.delete("blob")
    assert await store.get("blob") is None


# -- RangeSizer ---------------------------------------------------------------------------


def test_sizer_uses_node_hint_and_settles_below_the_cap() -> None:
    s = RangeSizer(max_range=10_000)
    s.shrink(10_000, hint=1_000)
    assert s.current == 1_000
    for _ in range(20):
        s.succeeded(s.current)
    assert s.current < 10_000  # never probes back past the refused span in a row


def test_sizer_bisects_towards_an_unnamed_cap() -> None:
    cap = 1_000
    s = RangeSizer(max_range=10_000)
    refused_at = []
    for i in range(200):
        if s.current > cap:
            s.shrink(s.current)
            refused_at.append(i)
        else:
            s.succeeded(s.current)
    assert cap * 15 // 16 <= s.current <= cap
    assert len(refused_at) < 10 and max(refused_at) < 50  # settles, then stops probing


def test_sizer_grows_back_after_successes() -> None:
    s = RangeSizer(max_range=8_000, grow_after=2)
    s.shrink(8_000)
    s.shrink(4_000)
    assert s.current == 2_000
    for _ in range(400):
        s.succeeded(s.current)
    assert s.current == 8_000  # the refused bound is forgotten after relax_after successes


def test_sizer_gives_up_below_min_range() -> None:
    s = RangeSizer(max_range=4, min_range=1)
    with pytest.raises(RpcRangeTooLarge):
        s.shrink(1)


@pytest.mark.parametrize(
    ("message", "span"),
    [
        ("exceed maximum block range: 1000", 1000),
        ("eth_getLogs is limited to a 10,000 range", 10_000),
        ("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range "
         "and no limit on the response size, or you can request any block range with a cap of 10K logs "
         "in the response. Based on your parameters, this block range should work: [0x10, 0x3f7]", 1000),
        ("query returned more than 10000 results. Try with this block range [0x1E8480, 0x1E8866].", 999),
        ("query returned more than 10000 results", None),
        ("block range is too wide", None),
    ],
)
def test_range_hint_reads_provider_messages(message: str, span: int | None) -> None:
    assert range_hint(message) == span
