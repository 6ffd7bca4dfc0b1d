"""The logs that move the health mirror's state, decoded into plain values. No I/O, no state.

What each event carries (aave-v3-origin 3.6.0) and why it is enough:

- `Pool.ReserveDataUpdated(reserve, liquidityRate, 0, variableBorrowRate, liquidityIndex,
  variableBorrowIndex)`: emitted by `ReserveLogic.updateInterestRatesAndVirtualBalance`, which every
  state-changing flow calls after `updateState` in the same transaction, so the reserve's
  `lastUpdateTimestamp` is the log's block timestamp. The one flow that updates a reserve's indexes
  WITHOUT this event is a liquidation with `receiveAToken = true` (the collateral reserve gets
  `updateState` only); `LiquidationCall.receiveAToken` tells the mirror to replay that update.
- aToken / variable debt token `Mint(caller, onBehalfOf, value, balanceIncrease, index)` and
  `Burn(from, target, value, balanceIncrease, index)` (ScaledBalanceTokenBase): `value` and
  `balanceIncrease` are unscaled and relative to the user's *previous* index, but their difference is
  exact: `balance(s_new, index) = balance(s_old, index) + value - balanceIncrease` (Mint) or
  `... - value - balanceIncrease` (Burn). With index >= 1 ray, `balance(., index)` is injective, so
  `s_new` is recovered exactly from the mirror's `s_old` (see `mirror.scaled_from_balance`).
- aToken `BalanceTransfer(from, to, value, index)`: `value` IS the scaled amount moved (transfers,
  `transferOnLiquidation`). The interest `Mint`s that precede it have `value == balanceIncrease`.
- ERC20 `Transfer` is not needed: it accompanies each of the above and carries only the unscaled amount.
- `ReserveUsedAsCollateralEnabled/Disabled(reserve, user)`: emitted by `UserConfiguration.
  setUsingAsCollateral`, the only writer of the collateral bit. The borrowing bit is not mirrored:
  it is set iff the scaled debt is non-zero, and a zero debt adds nothing to the account data.
- `UserEModeSet(user, categoryId)`; PoolConfigurator `EModeCategoryAdded`, `AssetCollateralInEModeChanged`,
  `AssetLtvzeroInEModeChanged`, `AssetBorrowableInEModeChanged`, `CollateralConfigurationChanged`
  (LT/LTV/bonus as stored; also emitted by freeze / ltv-zero), `ReserveInitialized` / `ReserveDropped`.
- AaveOracle `AssetSourceUpdated(asset, source)`, `FallbackOracleUpdated`; each source's Chainlink-style
  `AnswerUpdated(current, roundId, updatedAt)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi import decode
from eth_utils import keccak, to_checksum_address

from keeper.protocol.abi import event
from keeper.types import Address

# Pool
RESERVE_DATA_UPDATED = event("Pool", "ReserveDataUpdated")
COLLATERAL_ENABLED = event("Pool", "ReserveUsedAsCollateralEnabled")
COLLATERAL_DISABLED = event("Pool", "ReserveUsedAsCollateralDisabled")
USER_EMODE_SET = event("Pool", "UserEModeSet")
LIQUIDATION_CALL = event("Pool", "LiquidationCall")
# aToken and VariableDebtToken (same signatures on both)
SCALED_MINT = event("AToken", "Mint")
SCALED_BURN = event("AToken", "Burn")
BALANCE_TRANSFER = event("AToken", "BalanceTransfer")
# PoolConfigurator
COLLATERAL_CONFIGURATION_CHANGED = event("PoolConfigurator", "CollateralConfigurationChanged")
EMODE_CATEGORY_ADDED = event("PoolConfigurator", "EModeCategoryAdded")
ASSET_COLLATERAL_IN_EMODE_CHANGED = event("PoolConfigurator", "AssetCollateralInEModeChanged")
ASSET_LTVZERO_IN_EMODE_CHANGED = event("PoolConfigurator", "AssetLtvzeroInEModeChanged")
ASSET_BORROWABLE_IN_EMODE_CHANGED = event("PoolConfigurator", "AssetBorrowableInEModeChanged")
RESERVE_INITIALIZED = event("PoolConfigurator", "ReserveInitialized")
RESERVE_DROPPED = event("PoolConfigurator", "ReserveDropped")
# AaveOracle and price sources
ASSET_SOURCE_UPDATED = event("AaveOracle", "AssetSourceUpdated")
FALLBACK_ORACLE_UPDATED = event("AaveOracle", "FallbackOracleUpdated")
ANSWER_UPDATED = event("DevnetPriceFeed", "AnswerUpdated")

# v3.0-v3.1 only: StableDebtToken balances and an asset's single eMode category.
def _topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


STABLE_MINT_TOPIC = _topic("Mint(address,address,uint256,uint256,uint256,uint256,uint256,uint256)")
STABLE_BURN_TOPIC = _topic("Burn(address,uint256,uint256,uint256,uint256,uint256)")
EMODE_ASSET_CATEGORY_CHANGED_TOPIC = _topic("EModeAssetCategoryChanged(address,uint8,uint8)")

assert SCALED_MINT.topic == event("VariableDebtToken", "Mint").topic
assert SCALED_BURN.topic == event("VariableDebtToken", "Burn").topic

POOL_TOPICS = (RESERVE_DATA_UPDATED, COLLATERAL_ENABLED, COLLATERAL_DISABLED, USER_EMODE_SET,
               LIQUIDATION_CALL)
TOKEN_TOPICS = (SCALED_MINT, SCALED_BURN, BALANCE_TRANSFER)
CONFIGURATOR_TOPICS = (COLLATERAL_CONFIGURATION_CHANGED, EMODE_CATEGORY_ADDED,
                       ASSET_COLLATERAL_IN_EMODE_CHANGED, ASSET_LTVZERO_IN_EMODE_CHANGED,
                       ASSET_BORROWABLE_IN_EMODE_CHANGED, RESERVE_INITIALIZED, RESERVE_DROPPED)
ORACLE_TOPICS = (ASSET_SOURCE_UPDATED, FALLBACK_ORACLE_UPDATED)
SOURCE_TOPICS = (ANSWER_UPDATED,)


def mirror_topics() -> list[str]:
    """topic0 of every event the mirror consumes: the `topics[0]` OR-list for one eth_getLogs."""
    return [e.topic for e in (*POOL_TOPICS, *TOKEN_TOPICS, *CONFIGURATOR_TOPICS, *ORACLE_TOPICS,
                              *SOURCE_TOPICS)] + [STABLE_MINT_TOPIC, STABLE_BURN_TOPIC,
                                                  EMODE_ASSET_CATEGORY_CHANGED_TOPIC]


# --- decoded values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorEvent:
    emitter: Address
    block: int
    log_index: int
    timestamp: int | None  # block timestamp, when the node (or the caller) supplied it


@dataclass(frozen=True, slots=True)
class ReserveDataUpdated(MirrorEvent):
    asset: Address
    liquidity_rate_ray: int
    variable_borrow_rate_ray: int
    liquidity_index_ray: int
    variable_borrow_index_ray: int


@dataclass(frozen=True, slots=True)
class CollateralToggled(MirrorEvent):
    asset: Address
    user: Address
    enabled: bool


@dataclass(frozen=True, slots=True)
class UserEModeSet(MirrorEvent):
    user: Address
    category_id: int


@dataclass(frozen=True, slots=True)
class LiquidationCall(MirrorEvent):
    collateral_asset: Address
    debt_asset: Address
    user: Address
    debt_to_cover: int
    liquidated_collateral: int
    liquidator: Address
    receive_a_token: bool


@dataclass(frozen=True, slots=True)
class ScaledMint(MirrorEvent):
    """`emitter` is the aToken or variable debt token."""

    caller: Address
    on_behalf_of: Address
    value: int
    balance_increase: int
    index_ray: int


@dataclass(frozen=True, slots=True)
class ScaledBurn(MirrorEvent):
    user: Address
    target: Address
    value: int
    balance_increase: int
    index_ray: int


@dataclass(frozen=True, slots=True)
class BalanceTransfer(MirrorEvent):
    sender: Address
    recipient: Address
    scaled_amount: int
    index_ray: int


@dataclass(frozen=True, slots=True)
class CollateralConfigChanged(MirrorEvent):
    asset: Address
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int


@dataclass(frozen=True, slots=True)
class EModeCategorySet(MirrorEvent):
    category_id: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    label: str


@dataclass(frozen=True, slots=True)
class EModeAssetFlag(MirrorEvent):
    """One bit of an eMode category bitmap: `kind` is collateral, ltvzero or borrowable."""

    asset: Address
    category_id: int
    kind: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class ReserveListChanged(MirrorEvent):
    asset: Address
    kind: str  # "initialized" | "dropped"


@dataclass(frozen=True, slots=True)
class AssetSourceUpdated(MirrorEvent):
    asset: Address
    source: Address


@dataclass(frozen=True, slots=True)
class FallbackOracleUpdated(MirrorEvent):
    fallback_oracle: Address


@dataclass(frozen=True, slots=True)
class AnswerUpdated(MirrorEvent):
    """`emitter` is the price source; `answer` is signed (Chainlink int256)."""

    answer: int
    round_id: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class StableDebtMoved(MirrorEvent):
    """A v3.0 StableDebtToken Mint or Burn: the user's principal, rate and timestamp all change
    (a burn smaller than the accrued interest even emits a Mint); the mirror re-reads the user."""

    user: Address


# --- decoding ---------------------------------------------------------------------------------


def _addr(topic: str) -> Address:
    return to_checksum_address("0x" + topic[-40:])


def _words(data: str) -> list[int]:
    raw = data[2:] if data.startswith("0x") else data
    return [int(raw[i : i + 64], 16) for i in range(0, len(raw) - 63, 64)]


def _word_addr(word: int) -> Address:
    return to_checksum_address(f"0x{word:040x}")


def _int256(topic: str) -> int:
    v = int(topic, 16)
    return v - (1 << 256) if v >> 255 else v


def _hex_int(v: Any) -> int:
    return int(v, 16) if isinstance(v, str) else int(v)


def decode_log(log: Mapping[str, Any], timestamp: int | None = None) -> MirrorEvent | None:
    """One raw eth_getLogs entry as a MirrorEvent; None for logs the mirror does not consume
    (unknown topic, removed by a reorg, anonymous). Routing by emitter is the mirror's job:
    a Pool event from any other address must be ignored, and decoding cannot know addresses.
    """
    topics = log.get("topics") or []
    if not topics or log.get("removed"):
        return None
    t0 = topics[0].lower()
    if timestamp is None and log.get("blockTimestamp") is not None:
        timestamp = _hex_int(log["blockTimestamp"])
    base = (to_checksum_address(log["address"]), _hex_int(log["blockNumber"]), _hex_int(log["logIndex"]),
            timestamp)
    try:
        return _decode(t0, topics, log.get("data") or "0x", base)
    except (ValueError, IndexError):  # a log with our topic0 but another layout
        return None


def _decode(t0: str, topics: list[str], data: str, base: tuple) -> MirrorEvent | None:
    if t0 == SCALED_MINT.topic:
        value, increase, index = _words(data)[:3]
        return ScaledMint(*base, _addr(topics[1]), _addr(topics[2]), value, increase, index)
    if t0 == SCALED_BURN.topic:
        value, increase, index = _words(data)[:3]
        return ScaledBurn(*base, _addr(topics[1]), _addr(topics[2]), value, increase, index)
    if t0 == BALANCE_TRANSFER.topic:
        value, index = _words(data)[:2]
        return BalanceTransfer(*base, _addr(topics[1]), _addr(topics[2]), value, index)
    if t0 == RESERVE_DATA_UPDATED.topic:
        lr, _stable, vr, li, vi = _words(data)[:5]
        return ReserveDataUpdated(*base, _addr(topics[1]), lr, vr, li, vi)
    if t0 == COLLATERAL_ENABLED.topic:
        return CollateralToggled(*base, _addr(topics[1]), _addr(topics[2]), True)
    if t0 == COLLATERAL_DISABLED.topic:
        return CollateralToggled(*base, _addr(topics[1]), _addr(topics[2]), False)
    if t0 == USER_EMODE_SET.topic:
        return UserEModeSet(*base, _addr(topics[1]), _words(data)[0])
    if t0 == LIQUIDATION_CALL.topic:
        debt, coll, liquidator, receive = _words(data)[:4]
        return LiquidationCall(*base, _addr(topics[1]), _addr(topics[2]), _addr(topics[3]), debt, coll,
                               _word_addr(liquidator), bool(receive))
    if t0 == ANSWER_UPDATED.topic:
        return AnswerUpdated(*base, _int256(topics[1]), int(topics[2], 16), _words(data)[0])
    if t0 == COLLATERAL_CONFIGURATION_CHANGED.topic:
        ltv, lt, bonus = _words(data)[:3]
        return CollateralConfigChanged(*base, _addr(topics[1]), ltv, lt, bonus)
    if t0 == EMODE_CATEGORY_ADDED.topic:
        ltv, lt, bonus, _oracle, label = decode(["uint256", "uint256", "uint256", "address", "string"],
                                                bytes.fromhex(data[2:]))
        return EModeCategorySet(*base, int(topics[1], 16), ltv, lt, bonus, label)
    for ev, kind in ((ASSET_COLLATERAL_IN_EMODE_CHANGED, "collateral"),
                     (ASSET_LTVZERO_IN_EMODE_CHANGED, "ltvzero"),
                     (ASSET_BORROWABLE_IN_EMODE_CHANGED, "borrowable")):
        if t0 == ev.topic:
            category, flag = _words(data)[:2]
            return EModeAssetFlag(*base, _addr(topics[1]), category, kind, bool(flag))
    if t0 == RESERVE_INITIALIZED.topic:
        return ReserveListChanged(*base, _addr(topics[1]), "initialized")
    if t0 == RESERVE_DROPPED.topic:
        return ReserveListChanged(*base, _addr(topics[1]), "dropped")
    if t0 == ASSET_SOURCE_UPDATED.topic:
        return AssetSourceUpdated(*base, _addr(topics[1]), _addr(topics[2]))
    if t0 == FALLBACK_ORACLE_UPDATED.topic:
        return FallbackOracleUpdated(*base, _addr(topics[1]))
    if t0 == STABLE_MINT_TOPIC:
        return StableDebtMoved(*base, _addr(topics[2]))  # onBehalfOf
    if t0 == STABLE_BURN_TOPIC:
        return StableDebtMoved(*base, _addr(topics[1]))
    if t0 == EMODE_ASSET_CATEGORY_CHANGED_TOPIC:
        return ReserveListChanged(*base, _addr(topics[1]), "emode_category")  # v3.0: reload the market
    return None


def log_order(log: Mapping[str, Any]) -> tuple[int, int]:
    return _hex_int(log["blockNumber"]), _hex_int(log["logIndex"])


def decode_logs(logs: Iterable[Mapping[str, Any]],
                timestamps: Mapping[int, int] | None = None) -> list[MirrorEvent]:
    """Decode and order (block, logIndex). `timestamps` (block -> timestamp) fills in what the node
    did not put on the log (`blockTimestamp` is a recent addition to eth_getLogs)."""
    out = []
    for log in sorted(logs, key=log_order):
        ts = timestamps.get(_hex_int(log["blockNumber"])) if timestamps else None
        ev = decode_log(log, ts)
        if ev is not None:
            out.append(ev)
    return out


NEEDS_TIMESTAMP = (RESERVE_DATA_UPDATED.topic, LIQUIDATION_CALL.topic)


def blocks_missing_timestamps(logs: Iterable[Mapping[str, Any]]) -> set[int]:
    """Blocks whose timestamp the mirror needs but the logs do not carry."""
    return {_hex_int(log["blockNumber"]) for log in logs
            if log.get("topics") and log["topics"][0].lower() in NEEDS_TIMESTAMP
            and log.get("blockTimestamp") is None}
