"""EIP-1559 fees from eth_feeHistory, capped by the operator's ceiling."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from keeper.chain.rpc import RpcClient

GWEI = 10**9


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    next_base_fee: int

    @property
    def expected_price(self) -> int:
        """What a transaction in the next block is expected to pay per gas."""
        return min(self.max_fee_per_gas, self.next_base_fee + self.max_priority_fee_per_gas)


async def suggest_fees(rpc: RpcClient, *, max_fee_gwei: Decimal, min_tip_wei: int = GWEI // 100,
                       blocks: int = 5) -> Fees:
    """Tip: median of recent blocks' 50th-percentile rewards; max fee: 2x next base + tip."""
    history = await rpc.fee_history(blocks, "latest", [50])
    next_base = int(history["baseFeePerGas"][-1], 16)  # the last entry is the next block's
    rewards = sorted(int(r[0], 16) for r in history.get("reward") or [] if r)
    tip = max(min_tip_wei, rewards[len(rewards) // 2] if rewards else 0)
    cap = int(max_fee_gwei * GWEI)
    return Fees(max_fee_per_gas=min(cap, 2 * next_base + tip), max_priority_fee_per_gas=min(cap, tip),
                next_base_fee=next_base)
