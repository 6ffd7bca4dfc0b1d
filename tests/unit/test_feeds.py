"""Feed resolution's pure parts: which runtime code emits AnswerUpdated, and reading an address result."""

from __future__ import annotations

from keeper.devnet.build import build_own
from keeper.health.feeds import _address, _emits_answer


async def test_only_code_that_emits_answer_updated_counts_as_an_emitter() -> None:
    own = await build_own(["contracts/DevnetPriceFeed.sol", "contracts/CapoPriceAdapter.sol"])
    assert _emits_answer(bytes.fromhex(own["DevnetPriceFeed"].deployed_bytecode))
    assert not _emits_answer(bytes.fromhex(own["CapoPriceAdapter"].deployed_bytecode))
    assert not _emits_answer(b"")


def test_a_zero_short_or_failed_address_result_is_no_address() -> None:
    word = bytes(12) + bytes.fromhex("11" * 20)
    assert _address((True, word)) == "0x" + "11" * 20
    assert _address((True, bytes(32))) is None
    assert _address((False, word)) is None
    assert _address((True, b"\x00" * 4)) is None
