"""Turn a chosen opportunity into the exact transaction to simulate and send."""

from __future__ import annotations

from dataclasses import dataclass

from keeper.protocol.aave_v3 import encode_liquidation_call
from keeper.sim.fork import TxRequest
from keeper.types import Address, Market, Opportunity


@dataclass(frozen=True, slots=True)
class LiquidationTx:
    tx: TxRequest
    approvals: tuple[tuple[Address, Address, Address, int], ...]  # (owner, token, spender, amount)
    watch: tuple[Address, ...]  # tokens whose balance change is the profit


def inventory_tx(opp: Opportunity, market: Market, keeper: Address) -> LiquidationTx:
    """Repay from the keeper's own balance with Pool.liquidationCall; receive the underlying."""
    data = encode_liquidation_call(opp.collateral_asset, opp.debt_asset, opp.user, opp.debt_to_cover)
    tokens = tuple(dict.fromkeys((opp.collateral_asset, opp.debt_asset)))
    return LiquidationTx(
        tx=TxRequest(sender=keeper, to=market.pool, data=data),
        approvals=((keeper, opp.debt_asset, market.pool, opp.expected_debt_repaid),),
        watch=tokens,
    )
