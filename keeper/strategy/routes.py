"""Pure choices about selling collateral: the best quoted route net of gas, and how to pay.

`best_net_route` weighs each quoted route's output against the gas its extra hops cost,
in the output token. `choose_execution` is KEEPER_EXECUTION=auto's rule: a flash loan where
it pays; the wallet's own inventory where the flash loan does not pay (no route, a route too
shallow, or premium + the executor's extra gas eat the profit) and the inventory one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from keeper.protocol.math import mul_div_ceil
from keeper.protocol.uniswap_v3 import Route
from keeper.strategy.profit import gas_cost_base
from keeper.types import Address, Reserve

Execution = Literal["flashloan", "inventory"]


def gas_in_token(gas_units: int, gas_price_wei: int, native_price_base: int, token_price_base: int,
                 token_decimals: int) -> int:
    """What `gas_units` at `gas_price_wei` cost, in units of a token priced `token_price_base`."""
    if token_price_base <= 0:
        return 0
    cost_base = gas_cost_base(gas_units, gas_price_wei, native_price_base)
    return mul_div_ceil(cost_base, 10**token_decimals, token_price_base)


def net_out(route: Route, *, gas_price_wei: int, native_price_base: int, out_price_base: int,
            out_decimals: int) -> int:
    """The route's output less the gas of its swap (QuoterV2's estimate), in the output token."""
    return route.amount_out - gas_in_token(route.gas_estimate, gas_price_wei, native_price_base,
                                           out_price_base, out_decimals)


def best_net_route(routes: Sequence[Route], *, gas_price_wei: int, native_price_base: int,
                   out_price_base: int, out_decimals: int, in_price_base: int = 0,
                   in_decimals: int = 18) -> Route | None:
    """The route paying the most net of gas; ties go to fewer hops. None when there is none.

    With the input's price, each route counts for no more than its oracle-fair output (less its
    pools' fees): a quote above that comes from a pool off the oracle in our favour, often one
    this cycle's own earlier sales moved on the fork, and arbitrage takes it back before the
    transaction lands. Routes win on depth and fees, not on windfalls that will not be there.
    """
    if not routes:
        return None

    def key(r: Route) -> tuple[int, int, int]:
        gas = gas_in_token(r.gas_estimate, gas_price_wei, native_price_base, out_price_base, out_decimals)
        net = r.amount_out - gas
        if in_price_base > 0 and out_price_base > 0:
            fair = fair_out(r.amount_in, r.fees, in_price_base=in_price_base, in_decimals=in_decimals,
                            out_price_base=out_price_base, out_decimals=out_decimals) - gas
            return min(net, fair), -r.hops, net
        return net, -r.hops, net

    return max(routes, key=key)


def choose_execution(flash_net_base: int | None, inventory_net_base: int | None,
                     min_profit_base: int) -> Execution | None:
    """auto mode: which way to pay for one liquidation, given each way's predicted net profit.

    None for a way means it is not possible (no route; the wallet lacks the debt asset).
    A flash loan is preferred whenever it pays: it needs no capital and leaves no collateral
    to carry. Inventory is used where the flash loan does not pay and inventory does.
    """
    if flash_net_base is not None and flash_net_base >= min_profit_base:
        return "flashloan"
    if inventory_net_base is not None and inventory_net_base >= min_profit_base:
        return "inventory"
    return None


def fair_out(amount_in: int, fees: Sequence[int], *, in_price_base: int, in_decimals: int,
             out_price_base: int, out_decimals: int) -> int:
    """What `amount_in` is worth in the output token at the oracle, less each hop's pool fee."""
    if out_price_base <= 0:
        return 0
    out = amount_in * in_price_base * 10**out_decimals // (out_price_base * 10**in_decimals)
    for fee in fees:
        out = out * (1_000_000 - fee) // 1_000_000
    return out


def pair_names(reserves: Sequence[Reserve], token_lists: Sequence[Sequence[Address]]) -> str:
    """"LINK/DAI" per distinct token list, comma-separated, by reserve symbol: for logs and metrics."""
    symbols = {r.asset.lower(): r.symbol for r in reserves}
    names = ("/".join(symbols.get(t.lower(), t) for t in tokens) for tokens in token_lists)
    return ",".join(dict.fromkeys(names))
