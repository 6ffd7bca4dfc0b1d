"""The hand-written aggregate3 codec produces and reads exactly what eth-abi does."""

from __future__ import annotations

import random

import pytest
from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError

from keeper.chain.multicall import AGGREGATE3_SELECTOR, decode_aggregate3, encode_aggregate3
from keeper.protocol.aave_v3 import GET_USER_ACCOUNT_DATA


def _calls(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    return [("0x" + rng.randbytes(20).hex(), rng.randbytes(rng.choice((0, 4, 36, 68, 100, 131))))
            for _ in range(n)]


@pytest.mark.parametrize("allow_failure", [True, False])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 500])
def test_encode_aggregate3_is_byte_for_byte_eth_abi(n: int, allow_failure: bool) -> None:
    calls = _calls(random.Random(n), n)
    expected = AGGREGATE3_SELECTOR + encode(
        ["(address,bool,bytes)[]"], [[(t, allow_failure, d) for t, d in calls]])
    assert encode_aggregate3(calls, allow_failure) == expected


@pytest.mark.parametrize("n", [0, 1, 3, 500])
def test_decode_aggregate3_reads_what_eth_abi_wrote(n: int) -> None:
    rng = random.Random(n)
    results = [(rng.random() < 0.8, rng.randbytes(rng.choice((0, 32, 192, 45)))) for _ in range(n)]
    data = encode(["(bool,bytes)[]"], [results])
    assert decode_aggregate3(data) == results
    assert decode_aggregate3(data) == [(bool(a), bytes(b)) for a, b in decode(["(bool,bytes)[]"], data)[0]]


def test_decode_aggregate3_refuses_truncated_data() -> None:
    data = encode(["(bool,bytes)[]"], [[(True, bytes(192)), (False, b"\x01")]])
    with pytest.raises(DecodingError):
        decode_aggregate3(data[:100])


def test_get_user_account_data_calldata_by_hand_matches_the_abi_encoder() -> None:
    user = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    by_hand = GET_USER_ACCOUNT_DATA.selector + bytes(12) + bytes.fromhex(user[2:])
    assert by_hand == GET_USER_ACCOUNT_DATA.encode(user)
