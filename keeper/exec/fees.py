"""EIP-1559 fees: the market from eth_feeHistory, the keeper's bid from the profit at stake.

Pure functions except `suggest_fees`. All amounts are wei (per gas unless named `_wei` total).

The rules a bid keeps, whatever the market does:
- the priority fee is a share (`share_bps`) of the profit left after the base fee, and never
  less than the market's tip;
- `gas_limit * max_fee_per_gas` never exceeds the expected profit minus the floor the operator
  wants to keep: whatever the block charges, the transaction cannot cost more than it earns;
- `max_fee_per_gas` never exceeds the operator's ceiling (KEEPER_MAX_FEE_GWEI);
- a replacement or a cancel raises both fee fields by at least `bump_bps` (12.5% by default,
  what nodes require to replace a transaction at the same nonce) or is not made.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from keeper.chain.rpc import RpcClient

GWEI = 10**9
MIN_BUMP_BPS = 1250  # geth's default price bump is 10%; 12.5% clears every common client
CANCEL_GAS = 21_000


@dataclass(frozen=True, slots=True)
class Fees:
    """The market: what the next block is expected to charge and to need as a tip."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    next_base_fee: int

    @property
    def expected_price(self) -> int:
        """What a transaction in the next block is expected to pay per gas."""
        return min(self.max_fee_per_gas, self.next_base_fee + self.max_priority_fee_per_gas)


@dataclass(frozen=True, slots=True)
class Bid:
    """The two EIP-1559 fee fields of one signed transaction."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def price_at(self, base_fee: int) -> int:
        """Per-gas price paid in a block with this base fee (0 if it cannot be included)."""
        if base_fee > self.max_fee_per_gas:
            return 0
        return min(self.max_fee_per_gas, base_fee + self.max_priority_fee_per_gas)

    def fields(self) -> dict[str, int]:
        return {"maxFeePerGas": self.max_fee_per_gas, "maxPriorityFeePerGas": self.max_priority_fee_per_gas}


async def suggest_fees(rpc: RpcClient, *, max_fee_gwei: Decimal, min_tip_wei: int = GWEI // 100,
                       blocks: int = 5) -> Fees:
    """Tip: median of recent blocks' 50th-percentile rewards; max fee: 2x next base + tip."""
    history = await rpc.fee_history(blocks, "latest", [50])
    next_base = int(history["baseFeePerGas"][-1], 16)  # the last entry is the next block's
    rewards = sorted(int(r[0], 16) for r in history.get("reward") or [] if r)
    tip = max(min_tip_wei, rewards[len(rewards) // 2] if rewards else 0)
    cap = gwei_to_wei(max_fee_gwei)
    return Fees(max_fee_per_gas=min(cap, 2 * next_base + tip), max_priority_fee_per_gas=min(cap, tip),
                next_base_fee=next_base)


def gwei_to_wei(gwei: Decimal) -> int:
    return int(gwei * GWEI)


def _ceil_bump(value: int, bump_bps: int) -> int:
    return -(-value * (10_000 + bump_bps) // 10_000)


def fee_cap(*, gas_limit: int, profit_wei: int | None, floor_wei: int, max_fee_wei: int) -> int:
    """The highest max fee per gas allowed: the ceiling, and profit minus floor over the gas limit."""
    if profit_wei is None:  # no price for gas in the market's currency: only the ceiling holds
        return max_fee_wei
    budget = profit_wei - floor_wei
    return max(0, min(max_fee_wei, budget // max(1, gas_limit)))


def profit_bid(fees: Fees, *, gas_estimate: int, gas_limit: int, profit_wei: int | None, floor_wei: int = 0,
               share_bps: int, max_fee_wei: int) -> Bid | None:
    """The first bid for a transaction expected to earn `profit_wei` before gas.

    `gas_estimate` is the gas the fork measured (what the tip is spread over); `gas_limit`
    bounds the worst case. None when the transaction cannot pay the next base fee within
    the profit (or the ceiling): sending it would lose money or never be included.
    """
    cap = fee_cap(gas_limit=gas_limit, profit_wei=profit_wei, floor_wei=floor_wei, max_fee_wei=max_fee_wei)
    if cap < fees.next_base_fee or cap <= 0:
        return None
    tip = fees.max_priority_fee_per_gas
    if profit_wei is not None and gas_estimate > 0:
        surplus = profit_wei - gas_estimate * fees.next_base_fee
        tip = max(tip, surplus * share_bps // 10_000 // gas_estimate)
    max_fee = min(cap, 2 * fees.next_base_fee + tip)
    return Bid(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))


def bump_bid(prev: Bid, fees: Fees, *, cap: int, bump_bps: int = MIN_BUMP_BPS) -> Bid | None:
    """A replacement for `prev` at the same nonce: both fields up by at least `bump_bps`,
    the max fee also at least 2x the next base fee plus the tip; None if `cap` forbids it."""
    min_tip = _ceil_bump(prev.max_priority_fee_per_gas, bump_bps)
    min_max = _ceil_bump(prev.max_fee_per_gas, bump_bps)
    tip = max(min_tip, fees.max_priority_fee_per_gas)
    max_fee = min(cap, max(min_max, 2 * fees.next_base_fee + tip))
    if max_fee < min_max:
        return None
    tip = min(tip, max_fee)
    if tip < min_tip:
        return None
    return Bid(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)


def cancel_bid(prev: Bid, fees: Fees, *, max_fee_wei: int, bump_bps: int = MIN_BUMP_BPS) -> Bid | None:
    """Fees for a zero-value self-transfer replacing `prev`: only the ceiling caps it
    (21,000 gas at most costs `21_000 * max_fee_wei`)."""
    return bump_bid(prev, fees, cap=max_fee_wei, bump_bps=bump_bps)
