"""Bids from the profit at stake: the tip share, the caps, and the >= 12.5% bump rule."""

from __future__ import annotations

import itertools

import pytest

from keeper.exec.fees import GWEI, Bid, Fees, bump_bid, cancel_bid, fee_cap, profit_bid

ETH = 10**18
CEILING = 500 * GWEI


def _market(base_gwei: float = 1, tip_gwei: float = 0.1) -> Fees:
    base, tip = int(base_gwei * GWEI), int(tip_gwei * GWEI)
    return Fees(max_fee_per_gas=2 * base + tip, max_priority_fee_per_gas=tip, next_base_fee=base)


def test_tip_is_the_configured_share_of_the_profit_left_after_the_base_fee() -> None:
    fees = _market(base_gwei=2)
    gas = 400_000
    profit = ETH // 10  # 0.1 ETH before gas
    bid = profit_bid(fees, gas_estimate=gas, gas_limit=gas * 13 // 10, profit_wei=profit,
                     share_bps=1_000, max_fee_wei=CEILING)
    assert bid is not None
    surplus = profit - gas * fees.next_base_fee
    assert bid.max_priority_fee_per_gas == surplus // 10 // gas
    assert bid.max_fee_per_gas == 2 * fees.next_base_fee + bid.max_priority_fee_per_gas


def test_a_small_profit_still_pays_the_market_tip() -> None:
    fees = _market(base_gwei=1, tip_gwei=2)
    bid = profit_bid(fees, gas_estimate=300_000, gas_limit=400_000, profit_wei=ETH // 1_000,
                     share_bps=100, max_fee_wei=CEILING)
    assert bid is not None and bid.max_priority_fee_per_gas == 2 * GWEI


@pytest.mark.parametrize("base_gwei, profit_milli_eth, share_bps, floor_milli_eth", list(itertools.product(
    (0.5, 5, 40, 120), (2, 30, 500, 5_000), (0, 1_000, 5_000, 10_000), (0, 1))))
def test_the_worst_case_cost_never_exceeds_the_profit_minus_the_floor_nor_the_ceiling(
        base_gwei: float, profit_milli_eth: int, share_bps: int, floor_milli_eth: int) -> None:
    fees = _market(base_gwei=base_gwei)
    profit, floor, limit = profit_milli_eth * ETH // 1_000, floor_milli_eth * ETH // 1_000, 520_000
    bid = profit_bid(fees, gas_estimate=400_000, gas_limit=limit, profit_wei=profit, floor_wei=floor,
                     share_bps=share_bps, max_fee_wei=CEILING)
    if bid is None:  # refused only when the next base fee is already unaffordable
        assert fee_cap(gas_limit=limit, profit_wei=profit, floor_wei=floor, max_fee_wei=CEILING) \
            < fees.next_base_fee
        return
    assert limit * bid.max_fee_per_gas <= profit - floor
    assert bid.max_fee_per_gas <= CEILING
    assert bid.max_priority_fee_per_gas <= bid.max_fee_per_gas
    assert bid.max_fee_per_gas >= fees.next_base_fee  # includable in the next block


def test_no_bid_when_the_next_base_fee_costs_more_than_the_profit() -> None:
    fees = _market(base_gwei=300)
    assert profit_bid(fees, gas_estimate=400_000, gas_limit=500_000, profit_wei=ETH // 100,
                      share_bps=1_000, max_fee_wei=CEILING) is None


def test_no_bid_when_the_next_base_fee_is_above_the_ceiling() -> None:
    fees = _market(base_gwei=600)
    assert profit_bid(fees, gas_estimate=400_000, gas_limit=500_000, profit_wei=100 * ETH,
                      share_bps=1_000, max_fee_wei=CEILING) is None


def test_without_a_gas_price_only_the_ceiling_caps_the_bid() -> None:
    fees = _market(base_gwei=300, tip_gwei=1)
    bid = profit_bid(fees, gas_estimate=400_000, gas_limit=500_000, profit_wei=None, share_bps=1_000,
                     max_fee_wei=CEILING)
    assert bid == Bid(max_fee_per_gas=CEILING, max_priority_fee_per_gas=GWEI)


def test_a_replacement_raises_both_fields_by_at_least_12_5_percent() -> None:
    prev = Bid(max_fee_per_gas=10 * GWEI + 1, max_priority_fee_per_gas=3 * GWEI + 1)
    bid = bump_bid(prev, _market(base_gwei=1, tip_gwei=0.1), cap=CEILING)
    assert bid is not None
    assert bid.max_fee_per_gas * 8 >= prev.max_fee_per_gas * 9
    assert bid.max_priority_fee_per_gas * 8 >= prev.max_priority_fee_per_gas * 9


def test_a_replacement_follows_a_base_fee_that_rose() -> None:
    prev = Bid(max_fee_per_gas=12 * GWEI, max_priority_fee_per_gas=10 * GWEI)
    bid = bump_bid(prev, _market(base_gwei=200), cap=CEILING)
    assert bid is not None
    assert bid.max_fee_per_gas == 2 * 200 * GWEI + bid.max_priority_fee_per_gas
    assert bid.price_at(200 * GWEI) > 0


def test_a_replacement_the_cap_cannot_afford_is_not_made() -> None:
    prev = Bid(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=10 * GWEI)
    assert bump_bid(prev, _market(base_gwei=1), cap=110 * GWEI) is None
    capped = bump_bid(prev, _market(base_gwei=200), cap=120 * GWEI)
    assert capped == Bid(max_fee_per_gas=120 * GWEI, max_priority_fee_per_gas=11_250_000_000)


def test_a_cancel_outbids_the_transaction_it_replaces_within_the_ceiling() -> None:
    prev = Bid(max_fee_per_gas=40 * GWEI, max_priority_fee_per_gas=20 * GWEI)
    bid = cancel_bid(prev, _market(base_gwei=5), max_fee_wei=CEILING)
    assert bid is not None
    assert bid.max_fee_per_gas >= 45 * GWEI and bid.max_priority_fee_per_gas >= 22_500_000_000
    assert cancel_bid(Bid(480 * GWEI, 20 * GWEI), _market(), max_fee_wei=CEILING) is None


def test_price_paid_is_base_plus_tip_up_to_the_max_fee_and_nothing_below_the_base() -> None:
    bid = Bid(max_fee_per_gas=30 * GWEI, max_priority_fee_per_gas=5 * GWEI)
    assert bid.price_at(10 * GWEI) == 15 * GWEI
    assert bid.price_at(28 * GWEI) == 30 * GWEI
    assert bid.price_at(31 * GWEI) == 0
