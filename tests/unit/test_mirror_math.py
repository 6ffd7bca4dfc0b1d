"""The mirror's pure parts: interest math (also against the pool's own answers), exact scaled-amount
recovery, log decoding and event routing."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from eth_abi import encode

from keeper.devnet.aave import ASSETS
from keeper.devnet.stack import Devnet, launch
from keeper.health import mirror_events as ev
from keeper.health.mirror import EModeCategory, HealthMirror, ReserveState, UserState
from keeper.protocol.aave_v3 import GET_RESERVE_DATA
from keeper.protocol.abi import fn
from keeper.protocol.math import (
    RAY,
    SECONDS_PER_YEAR,
    AccountReserve,
    account_data,
    compounded_interest_ray,
    linear_interest_ray,
    normalized_debt_ray,
    normalized_income_ray,
    scaled_from_balance,
)
from keeper.protocol.math import a_token_balance as a_balance
from keeper.protocol.math import v_token_balance as v_balance

# --- MathUtils, by hand -----------------------------------------------------------------------


def test_linear_interest_is_rate_times_elapsed_share_of_a_year() -> None:
    assert linear_interest_ray(RAY // 10, 1_000, 1_000 + SECONDS_PER_YEAR // 2) == RAY + RAY // 20
    assert linear_interest_ray(7, 0, 1) == RAY  # 7 * 1 / 31536000 floors to 0


def test_compounded_interest_is_the_three_term_binomial_in_ray_half_up() -> None:
    # x = 0.1 ray; x/2 + rayMul(x, x/6) = 5e25 + 1666666666666666666666667; rayMul(x, that) rounds up.
    assert compounded_interest_ray(RAY // 10, 0, SECONDS_PER_YEAR) == 1_105_166_666_666_666_666_666_666_667
    assert compounded_interest_ray(RAY, 5, 5) == RAY


def test_normalized_values_are_the_stored_index_when_no_time_passed() -> None:
    assert normalized_income_ray(RAY + 123, RAY, 50, 50) == RAY + 123
    assert normalized_debt_ray(RAY + 456, RAY, 50, 50) == RAY + 456
    with pytest.raises(ValueError):
        normalized_debt_ray(RAY, RAY, 50, 49)


def test_scaled_amount_is_recovered_exactly_from_any_balance() -> None:
    rng = random.Random(1)
    for _ in range(20_000):
        index = RAY + rng.randrange(0, 3 * RAY)
        scaled = rng.choice([0, 1, rng.randrange(10**6), rng.randrange(10**30)])
        assert scaled_from_balance(a_balance(scaled, index), index, debt=False) == scaled
        assert scaled_from_balance(v_balance(scaled, index), index, debt=True) == scaled


def test_a_balance_no_scaled_amount_can_have_is_refused() -> None:
    # At index 3 every scaled unit is worth exactly 3: balances 1 and 2 are unreachable.
    assert scaled_from_balance(1, 3 * RAY, debt=False) is None
    assert scaled_from_balance(2, 3 * RAY, debt=True) is None
    assert scaled_from_balance(6, 3 * RAY, debt=True) == 2
    assert scaled_from_balance(5, RAY - 1, debt=False) is None  # an index below 1 never exists


# --- a mirror built by hand -------------------------------------------------------------------

POOL, ORACLE, CONFIGURATOR = (f"0x{i:040X}" for i in (1, 2, 3))
A_TOKEN, V_TOKEN, SOURCE = "0x" + "10" * 20, "0x" + "11" * 20, "0x" + "20" * 20
B_A_TOKEN, B_V_TOKEN, B_SOURCE = "0x" + "12" * 20, "0x" + "13" * 20, "0x" + "21" * 20
ASSET_A, ASSET_B = "0x" + "AA" * 20, "0x" + "BB" * 20
ALICE, STRANGER = "0x" + "A1" * 20, "0x" + "5E" * 20


def _checksum(a: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(a)


@pytest.fixture
def mirror() -> HealthMirror:
    m = HealthMirror(pool=POOL, oracle=ORACLE, configurator=CONFIGURATOR, block=10, timestamp=1_000)
    m.set_reserve(ReserveState(_checksum(ASSET_A), 0, _checksum(A_TOKEN), _checksum(V_TOKEN), 18, 7500, 8000,
                               RAY + RAY // 20, RAY + RAY // 10, RAY // 25, RAY // 12, 900,
                               2_000 * 10**8, _checksum(SOURCE)))
    m.set_reserve(ReserveState(_checksum(ASSET_B), 1, _checksum(B_A_TOKEN), _checksum(B_V_TOKEN), 6,
                               7700, 7800, RAY, RAY + RAY // 7, RAY // 100, RAY // 20, 990, 10**8,
                               _checksum(B_SOURCE)))
    m.set_emode_category(EModeCategory(1, 9000, 9300, 10200, collateral_bitmap=0b01))
    m.set_user(_checksum(ALICE), UserState(collateral_mask=0b01, a_scaled={0: 10 * 10**18},
                                           v_scaled={1: 9_000 * 10**6}, a_index={0: RAY}))
    return m


def _log_base(emitter: str, block: int = 11, ts: int | None = 1_100) -> tuple:
    return (_checksum(emitter), block, 0, ts)


def test_health_agrees_with_the_generic_logic_port_in_protocol_math(mirror: HealthMirror) -> None:
    rng = random.Random(3)
    alice = _checksum(ALICE)
    for _ in range(300):
        s = UserState(collateral_mask=rng.randrange(4), emode=rng.choice([0, 1]),
                      a_scaled={0: rng.randrange(10**22), 1: rng.randrange(10**12)},
                      v_scaled={0: rng.randrange(10**20), 1: rng.randrange(10**10)})
        mirror.set_user(alice, s)
        ts = rng.randrange(1_000, 10**8)
        got = mirror.health(alice, ts)
        reserves = []
        for r in mirror.reserves.values():
            emode = s.emode == 1 and r.id == 0
            reserves.append(AccountReserve(
                collateral=a_balance(s.a_scaled[r.id], r.normalized_income_ray(ts)),
                debt=v_balance(s.v_scaled[r.id], r.normalized_debt_ray(ts)), price_base=r.price_base,
                decimals=r.decimals, ltv_bps=9000 if emode else r.ltv_bps,
                liquidation_threshold_bps=9300 if emode else r.liquidation_threshold_bps,
                collateral_enabled=bool(s.collateral_mask >> r.id & 1), borrowing=True))
        want = account_data(reserves)
        assert (got.total_collateral_base, got.total_debt_base, got.health_factor_wad,
                got.ltv_bps, got.current_liquidation_threshold_bps) == (
            want.total_collateral_base, want.total_debt_base, want.hf_wad, want.avg_ltv_bps,
            want.avg_liquidation_threshold_bps)


def test_event_from_an_address_that_may_not_emit_it_is_ignored(mirror: HealthMirror) -> None:
    before = mirror.health(_checksum(ALICE))
    spoofed = ev.ReserveDataUpdated(*_log_base(STRANGER), _checksum(ASSET_B), 0, 0, 5 * RAY, 5 * RAY)
    mint = ev.ScaledMint(*_log_base(STRANGER), _checksum(ALICE), _checksum(ALICE), 10**30, 0, RAY)
    applied = mirror.apply_all([spoofed, mint])
    assert applied.ignored == 2 and not applied.users and not applied.reserves
    assert mirror.health(_checksum(ALICE)) == before


def test_mint_whose_interest_does_not_fit_the_mirrored_balance_marks_the_user_dirty(
        mirror: HealthMirror) -> None:
    alice = _checksum(ALICE)
    index = RAY + RAY // 20
    honest_increase = a_balance(10 * 10**18, index) - a_balance(10 * 10**18, RAY)
    wrong = ev.ScaledMint(*_log_base(A_TOKEN), alice, alice, 10**18 + honest_increase + 1,
                          honest_increase + 1, index)
    applied = mirror.apply(wrong)
    assert applied.dirty_users == {alice} and mirror.health(alice) is None
    assert mirror.users[alice].a_scaled[0] == 10 * 10**18  # untouched, to be re-read


def test_mint_and_burn_move_the_scaled_balance_by_the_exact_amount(mirror: HealthMirror) -> None:
    alice, index = _checksum(ALICE), RAY + RAY // 20 + 12_345
    old = 10 * 10**18
    increase = a_balance(old, index) - a_balance(old, RAY)
    added = 3 * 10**18 + 7
    value = a_balance(old + added, index) - a_balance(old, RAY)
    mirror.apply(ev.ScaledMint(*_log_base(A_TOKEN), alice, alice, value, increase, index))
    assert mirror.users[alice].a_scaled[0] == old + added
    # A burn of `taken` scaled units one block later at a higher index, target irrelevant.
    index2, taken = index + 10**20, 5 * 10**18 + 1
    s = old + added
    previous = a_balance(s, index)
    nxt = a_balance(s - taken, index2)
    increase2 = a_balance(s, index2) - previous
    mirror.apply(ev.ScaledBurn(*_log_base(A_TOKEN), alice, alice, previous - nxt, increase2, index2))
    assert mirror.users[alice].a_scaled[0] == s - taken and mirror.users[alice].a_index[0] == index2


def test_non_positive_answer_makes_the_price_unknown_until_re_read(mirror: HealthMirror) -> None:
    alice, asset = _checksum(ALICE), _checksum(ASSET_A)
    applied = mirror.apply(ev.AnswerUpdated(*_log_base(SOURCE), 0, 7, 1_100))
    assert applied.dirty_prices == {asset} and mirror.reserves[asset].price_base is None
    assert mirror.health(alice) is None
    mirror.set_price(asset, 1_900 * 10**8)
    assert mirror.health(alice) is not None and not mirror.dirty_prices


def test_price_exposure_follows_collateral_bits_and_debt(mirror: HealthMirror) -> None:
    alice, a, b = _checksum(ALICE), _checksum(ASSET_A), _checksum(ASSET_B)
    assert mirror.affected_by_price(a) == {alice} and mirror.affected_by_price(b) == {alice}
    mirror.apply(ev.CollateralToggled(*_log_base(POOL), a, alice, False))
    assert mirror.affected_by_price(a) == set() and mirror.affected_by_price(b) == {alice}


def test_unknown_user_is_marked_for_a_read_and_a_listing_change_for_a_rebootstrap(
        mirror: HealthMirror) -> None:
    stranger = _checksum(STRANGER)
    applied = mirror.apply(ev.UserEModeSet(*_log_base(POOL), stranger, 1))
    assert applied.dirty_users == {stranger}
    mirror.apply(ev.ReserveListChanged(*_log_base(CONFIGURATOR), _checksum(STRANGER), "initialized"))
    assert mirror.needs_rebootstrap


def test_reserve_update_without_timestamp_is_refused(mirror: HealthMirror) -> None:
    from keeper.health.mirror import MirrorError

    with pytest.raises(MirrorError):
        mirror.apply(ev.ReserveDataUpdated(*_log_base(POOL, ts=None), _checksum(ASSET_A), 0, 0, RAY, RAY))


@pytest.mark.parametrize("legacy", [False, True])
def test_receive_a_token_liquidation_updates_the_collateral_reserve_only_after_v3_0(
        mirror: HealthMirror, legacy: bool) -> None:
    """v3.6 `executeLiquidationCall` runs updateState on the collateral reserve without an event;
    v3.0's `_liquidateATokens` only moves aTokens, so the pool's collateral indexes stay put."""
    mirror.legacy = legacy
    r = mirror.reserves[_checksum(ASSET_A)]
    before = (r.liquidity_index_ray, r.variable_borrow_index_ray, r.last_update_timestamp)
    mirror.apply(ev.LiquidationCall(*_log_base(POOL, ts=5_000), _checksum(ASSET_A), _checksum(ASSET_B),
                                    _checksum(ALICE), 10**6, 10**15, _checksum(STRANGER), True))
    after = (r.liquidity_index_ray, r.variable_borrow_index_ray, r.last_update_timestamp)
    if legacy:
        assert after == before
    else:
        assert after[2] == 5_000 and after[0] > before[0] and after[1] > before[1]


# --- decoding ---------------------------------------------------------------------------------


def _topic_addr(a: str) -> str:
    return "0x" + a[2:].lower().rjust(64, "0")


def test_answer_updated_decodes_a_negative_int256_topic() -> None:
    log = {"address": SOURCE, "blockNumber": "0x5", "logIndex": "0x2", "blockTimestamp": "0x64",
           "topics": [ev.ANSWER_UPDATED.topic, "0x" + "f" * 64, "0x" + "0" * 63 + "9"],
           "data": "0x" + encode(["uint256"], [100]).hex()}
    e = ev.decode_log(log)
    assert isinstance(e, ev.AnswerUpdated)
    assert (e.answer, e.round_id, e.updated_at, e.block, e.log_index, e.timestamp) == (-1, 9, 100, 5, 2, 100)


def test_logs_are_applied_in_block_and_log_index_order_and_removed_ones_dropped() -> None:
    def rdu(block: int, idx: int, removed: bool = False) -> dict:
        return {"address": POOL, "blockNumber": hex(block), "logIndex": hex(idx), "removed": removed,
                "topics": [ev.RESERVE_DATA_UPDATED.topic, _topic_addr(ASSET_A)],
                "data": "0x" + encode(["uint256"] * 5, [1, 0, 2, RAY + block, RAY + idx]).hex()}

    events = ev.decode_logs([rdu(9, 1), rdu(8, 4), rdu(9, 0), rdu(9, 2, removed=True)], {8: 80, 9: 90})
    assert [(e.block, e.log_index, e.timestamp) for e in events] == [(8, 4, 80), (9, 0, 90), (9, 1, 90)]
    assert ev.blocks_missing_timestamps([rdu(9, 1)]) == {9}


def test_emode_category_added_decodes_its_label() -> None:
    data = encode(["uint256", "uint256", "uint256", "address", "string"],
                  [9000, 9300, 10200, "0x" + "00" * 20, "stables"])
    log = {"address": CONFIGURATOR, "blockNumber": "0x1", "logIndex": "0x0",
           "topics": [ev.EMODE_CATEGORY_ADDED.topic, "0x" + "0" * 63 + "1"], "data": "0x" + data.hex()}
    e = ev.decode_log(log)
    assert isinstance(e, ev.EModeCategorySet)
    assert (e.category_id, e.ltv_bps, e.liquidation_threshold_bps, e.liquidation_bonus_bps, e.label) == (
        1, 9000, 9300, 10200, "stables")


# --- against the pool -------------------------------------------------------------------------

NORMALIZED_INCOME = fn("Pool", "getReserveNormalizedIncome")
NORMALIZED_DEBT = fn("Pool", "getReserveNormalizedVariableDebt")
WITHDRAW = fn("Pool", "withdraw")
TOTAL_SUPPLY = fn("ERC20", "totalSupply")
BALANCE_OF = fn("ERC20", "balanceOf")


@pytest.fixture(scope="module")
async def busy_devnet() -> AsyncIterator[Devnet]:
    """A devnet whose deployer pulled its seed liquidity: high utilization, double-digit rates."""
    dn = await launch(borrowers=30, seed=3)
    try:
        rpc, d = dn.rpc, dn.deployment
        for spec in ASSETS:
            a_token, v_token = d.a_tokens[spec.symbol], d.debt_tokens[spec.symbol]
            supplied = TOTAL_SUPPLY.decode_one(await rpc.eth_call(a_token, TOTAL_SUPPLY.encode()))
            debt = TOTAL_SUPPLY.decode_one(await rpc.eth_call(v_token, TOTAL_SUPPLY.encode()))
            own = BALANCE_OF.decode_one(await rpc.eth_call(a_token, BALANCE_OF.encode(d.deployer)))
            amount = min(own - 1, supplied - debt * 100 // 97)
            tx = {"from": d.deployer, "to": d.pool, "gas": hex(2_000_000),
                  "data": "0x" + WITHDRAW.encode(d.assets[spec.symbol], amount, d.deployer).hex()}
            receipt = await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=10)
            assert int(receipt["status"], 16) == 1
        yield dn
    finally:
        await dn.close()


@pytest.mark.parametrize("seconds", [1, 13, 86_400, 400 * 86_400, 5 * 365 * 86_400])
async def test_normalized_income_and_debt_equal_the_pools_after_a_time_jump(
        busy_devnet: Devnet, seconds: int) -> None:
    rpc, d = busy_devnet.rpc, busy_devnet.deployment
    block = await rpc.block_number()
    data = {s: GET_RESERVE_DATA.decode_one(await rpc.eth_call(d.pool, GET_RESERVE_DATA.encode(a), block))
            for s, a in d.assets.items()}
    await rpc.call("evm_increaseTime", [hex(seconds)])
    await rpc.call("evm_mine", [])
    head = block + 1
    ts = int((await rpc.get_block(head))["timestamp"], 16)
    for symbol, asset in d.assets.items():
        r = data[symbol]
        assert r[2] > 0 and r[4] > RAY // 1000, "the reserve should pay rates where compounding shows"
        income, debt = [f.decode_one(await rpc.eth_call(d.pool, f.encode(asset), head))
                        for f in (NORMALIZED_INCOME, NORMALIZED_DEBT)]
        assert normalized_income_ray(r[1], r[2], r[6], ts) == income, symbol
        assert normalized_debt_ray(r[3], r[4], r[6], ts) == debt, symbol
