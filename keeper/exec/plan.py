"""Turn a chosen opportunity into the exact transaction to simulate and send."""

from __future__ import annotations

from dataclasses import dataclass

from keeper.exec.executor import LiquidateParams, encode_liquidate
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


def flashloan_tx(opp: Opportunity, executor: Address, keeper: Address, *, swap_path: bytes, quoted_out: int,
                 slippage_bps: int, margin_bps: int, min_profit: int) -> LiquidationTx:
    """Borrow the debt asset, liquidate, sell the collateral along `swap_path`, repay; all in one call.

    The flash amount is the expected repayment plus a margin, because interest accrues until
    the transaction is mined; whatever is not used is repaid with the loan.
    """
    flash_amount = opp.expected_debt_repaid + opp.expected_debt_repaid * margin_bps // 10_000 + 1
    min_out = quoted_out - quoted_out * slippage_bps // 10_000 if swap_path else 0
    params = LiquidateParams(
        collateral_asset=opp.collateral_asset, debt_asset=opp.debt_asset, user=opp.user,
        debt_to_cover=opp.debt_to_cover, flash_amount=flash_amount, swap_path=swap_path,
        min_swap_out=min_out, min_profit=min_profit)
    tokens = tuple(dict.fromkeys((opp.collateral_asset, opp.debt_asset)))
    return LiquidationTx(tx=TxRequest(sender=keeper, to=executor, data=encode_liquidate(params)),
                         approvals=(), watch=tokens)
