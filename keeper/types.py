"""Plain values handed from one stage to the next.

Amounts are integers in the unit their name carries: `*_base` is the market's
base currency (USD with 8 decimals on Aave V3), `*_wad` has 18 decimals, `*_ray`
27, `*_bps` is basis points (1e4 = 100%), token amounts are in the token's units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Address = str  # checksummed 0x-address


@dataclass(frozen=True, slots=True)
class Reserve:
    """One listed asset and the risk parameters liquidation depends on."""

    asset: Address
    symbol: str
    decimals: int
    a_token: Address
    variable_debt_token: Address
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int  # e.g. 10500 = 5% bonus
    liquidation_protocol_fee_bps: int  # share of the bonus kept by the protocol
    usage_as_collateral_enabled: bool
    borrowing_enabled: bool
    active: bool
    frozen: bool
    paused: bool
    price_source: Address | None = None  # Chainlink-style feed behind the oracle
    reserve_id: int = -1  # the pool's id: its bit pair in UserConfiguration and eMode bitmaps
    stable_debt_token: Address | None = None  # v3.0-v3.1 markets: the reserve's StableDebtToken
    emode_category: int = 0  # v3.0-v3.1: the one eMode category the asset belongs to (config bits 168-175)


@dataclass(frozen=True, slots=True)
class Rules:
    """Which pool rules apply, read at start from POOL_REVISION and the pool's tell-tales (protocol/rules.py).

    `sizing`: "v3.3" (close factor on total debt with the $2,000 floor, $1,000 dust rule, deficit),
    "v3.0" (50% of the reserve's debt per call, 100% below HF 0.95, no dust rule, no deficit), or
    "simulate" (an unknown revision: debtToCover is searched on the fork, nothing is assumed).
    """

    revision: int
    sizing: str = "v3.3"
    # "v3.2": getEModeCategoryCollateralConfig + bitmaps; "v3.0": getEModeCategoryData
    emode_getters: str = "v3.2"
    stable_debt: bool = False  # stable-rate debt counts toward health (v3.0-v3.1)

    @property
    def name(self) -> str:
        if self.sizing == "simulate":
            return "unknown-revision:simulate"
        stable = "+stable-debt" if self.stable_debt else ""
        return f"sizing-{self.sizing}+emode-{self.emode_getters}{stable}"

    @property
    def legacy_math(self) -> bool:
        """The v3.0-v3.2 GenericLogic roundings (half-up balances, floored debt value, percentMul HF)."""
        return self.emode_getters == "v3.0"


@dataclass(frozen=True, slots=True)
class Market:
    """An Aave V3 market as discovered on chain from its PoolAddressesProvider."""

    chain_id: int
    provider: Address
    pool: Address
    oracle: Address
    data_provider: Address
    reserves: tuple[Reserve, ...]
    base_currency_unit: int  # 1e8 for USD-based markets
    flash_loan_premium_bps: int
    rules: Rules = Rules(revision=0)

    def reserve(self, asset: Address) -> Reserve:
        for r in self.reserves:
            if r.asset.lower() == asset.lower():
                return r
        raise KeyError(asset)


@dataclass(frozen=True, slots=True)
class AccountHealth:
    """`Pool.getUserAccountData` of one borrower at one block."""

    user: Address
    block: int
    total_collateral_base: int
    total_debt_base: int
    available_borrows_base: int
    current_liquidation_threshold_bps: int
    ltv_bps: int
    health_factor_wad: int

    @property
    def liquidatable(self) -> bool:
        return self.total_debt_base > 0 and self.health_factor_wad < 10**18


@dataclass(frozen=True, slots=True)
class ReservePosition:
    """A borrower's balances in one reserve (token units, interest included)."""

    asset: Address
    collateral: int  # aToken balance
    debt: int  # variable debt balance
    collateral_enabled: bool


@dataclass(frozen=True, slots=True)
class Position:
    """Everything about one borrower that sizing a liquidation needs."""

    user: Address
    block: int
    health: AccountHealth
    reserves: tuple[ReservePosition, ...]
    prices_base: dict[Address, int] = field(default_factory=dict)  # oracle price per asset


@dataclass(frozen=True, slots=True)
class Opportunity:
    """A liquidation the strategy would send, priced before simulation."""

    user: Address
    block: int
    collateral_asset: Address
    debt_asset: Address
    debt_to_cover: int  # debt-asset units passed to liquidationCall
    expected_debt_repaid: int
    expected_collateral_seized: int  # collateral units the liquidator receives
    expected_protocol_fee: int  # collateral units sent to the treasury
    gross_profit_base: int  # value(collateral received) - value(debt repaid)
    cost_base: int  # gas + flash premium + swap cost, base currency
    net_profit_base: int


@dataclass(frozen=True, slots=True)
class SimResult:
    """What the fork says the liquidation does to the keeper's balances."""

    opportunity: Opportunity
    success: bool
    gas_used: int
    gas_cost_wei: int
    balance_deltas: dict[Address, int]  # token -> signed change for the keeper
    profit_base: int  # valued at the fork block's oracle prices, gas included
    revert_reason: str | None = None
