"""Aave V3 on chain: discovery from the PoolAddressesProvider, reads, events, calldata.

Everything here is encoding and decoding around batched reads; no decisions.
Reads are pinned to a block so one cycle sees one consistent state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from eth_utils import to_checksum_address

from keeper.chain.multicall import multicall
from keeper.chain.rpc import RpcClient
from keeper.errors import ConfigError, KeeperError, RpcError
from keeper.protocol.abi import decode_revert, event, fn
from keeper.protocol.rules import detect_rules
from keeper.types import AccountHealth, Address, Market, Reserve, ReservePosition

# PoolAddressesProvider
GET_POOL = fn("PoolAddressesProvider", "getPool")
GET_PRICE_ORACLE = fn("PoolAddressesProvider", "getPriceOracle")
GET_DATA_PROVIDER = fn("PoolAddressesProvider", "getPoolDataProvider")
# Pool
GET_RESERVES_LIST = fn("Pool", "getReservesList")
GET_RESERVE_DATA = fn("Pool", "getReserveData")
GET_USER_ACCOUNT_DATA = fn("Pool", "getUserAccountData")
GET_USER_CONFIGURATION = fn("Pool", "getUserConfiguration")
GET_USER_EMODE = fn("Pool", "getUserEMode")
FLASHLOAN_PREMIUM_TOTAL = fn("Pool", "FLASHLOAN_PREMIUM_TOTAL")
GET_EMODE_COLLATERAL_CONFIG = fn("Pool", "getEModeCategoryCollateralConfig")
GET_EMODE_BITMAP = fn("Pool", "getEModeCategoryCollateralBitmap")
GET_EMODE_DATA = fn("Pool", "getEModeCategoryData")  # v3.0-v3.1 (kept, deprecated, later)
LIQUIDATION_CALL = fn("Pool", "liquidationCall")
POOL_REVISION = fn("Pool", "POOL_REVISION")
# Oracle
GET_ASSETS_PRICES = fn("AaveOracle", "getAssetsPrices")
GET_SOURCE_OF_ASSET = fn("AaveOracle", "getSourceOfAsset")
BASE_CURRENCY_UNIT = fn("AaveOracle", "BASE_CURRENCY_UNIT")
# ERC20
BALANCE_OF = fn("ERC20", "balanceOf")
SYMBOL = fn("ERC20", "symbol")
DECIMALS = fn("ERC20", "decimals")
ALLOWANCE = fn("ERC20", "allowance")
APPROVE = fn("ERC20", "approve")

BORROW = event("Pool", "Borrow")
REPAY = event("Pool", "Repay")
LIQUIDATION = event("Pool", "LiquidationCall")
SUPPLY = event("Pool", "Supply")

UINT256_MAX = 2**256 - 1


class MarketReadError(KeeperError):
    """A read the keeper cannot act without failed; never treated as 'healthy'."""


@dataclass(frozen=True, slots=True)
class ReserveConfig:
    """ReserveConfiguration.sol's bitmap, decoded."""

    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    decimals: int
    active: bool
    frozen: bool
    borrowing_enabled: bool
    paused: bool
    flash_loan_enabled: bool
    liquidation_protocol_fee_bps: int

    @classmethod
    def decode(cls, data: int) -> ReserveConfig:
        def bits(start: int, width: int) -> int:
            return (data >> start) & ((1 << width) - 1)

        return cls(
            ltv_bps=bits(0, 16),
            liquidation_threshold_bps=bits(16, 16),
            liquidation_bonus_bps=bits(32, 16),
            decimals=bits(48, 8),
            active=bool(bits(56, 1)),
            frozen=bool(bits(57, 1)),
            borrowing_enabled=bool(bits(58, 1)),
            paused=bool(bits(60, 1)),
            flash_loan_enabled=bool(bits(63, 1)),
            liquidation_protocol_fee_bps=bits(152, 16),
        )


def _ok(result: tuple[bool, bytes], what: str) -> bytes:
    ok, data = result
    if not ok:
        raise MarketReadError(f"{what} failed: {decode_revert(data)}")
    return data


async def discover_market(rpc: RpcClient, provider: Address, block: int | str = "latest", *,
                          revision_override: int | None = None) -> Market:
    """Pool, oracle, data provider, reserves and the pool's rules, from the provider alone."""
    provider = to_checksum_address(provider)
    if not await rpc.get_code(provider, block):
        raise ConfigError(f"KEEPER_POOL_ADDRESSES_PROVIDER: no contract at {provider} on this chain")
    try:
        head = await multicall(rpc, [(provider, GET_POOL.encode()), (provider, GET_PRICE_ORACLE.encode()),
                                     (provider, GET_DATA_PROVIDER.encode())], block)
        pool, oracle, data_provider = (
            to_checksum_address(f.decode_one(_ok(r, f.name)))
            for f, r in zip((GET_POOL, GET_PRICE_ORACLE, GET_DATA_PROVIDER), head, strict=True)
        )
    except (MarketReadError, ValueError) as e:
        raise ConfigError(
            f"KEEPER_POOL_ADDRESSES_PROVIDER: {provider} is not an Aave V3 PoolAddressesProvider ({e})"
        ) from None
    meta = await multicall(rpc, [(pool, GET_RESERVES_LIST.encode()), (pool, FLASHLOAN_PREMIUM_TOTAL.encode()),
                                 (oracle, BASE_CURRENCY_UNIT.encode())], block)
    assets = [to_checksum_address(a) for a in GET_RESERVES_LIST.decode_one(_ok(meta[0], "getReservesList"))]
    premium = FLASHLOAN_PREMIUM_TOTAL.decode_one(_ok(meta[1], "FLASHLOAN_PREMIUM_TOTAL"))
    base_unit = BASE_CURRENCY_UNIT.decode_one(_ok(meta[2], "BASE_CURRENCY_UNIT"))
    reserves = await _read_reserves(rpc, pool, oracle, assets, block)
    rules = await detect_rules(rpc, pool, assets[0] if assets else None,
                               [r.stable_debt_token for r in reserves], block,
                               revision_override=revision_override)
    if not rules.stable_debt:
        reserves = [replace(r, stable_debt_token=None) for r in reserves]
    return Market(
        chain_id=await rpc.chain_id(), provider=provider, pool=pool, oracle=oracle,
        data_provider=data_provider, reserves=tuple(reserves), base_currency_unit=base_unit,
        flash_loan_premium_bps=premium, rules=rules,
    )


async def _read_reserves(rpc: RpcClient, pool: Address, oracle: Address, assets: Sequence[Address],
                         block: int | str) -> list[Reserve]:
    calls = []
    for a in assets:
        calls += [(pool, GET_RESERVE_DATA.encode(a)), (a, SYMBOL.encode()),
                  (oracle, GET_SOURCE_OF_ASSET.encode(a))]
    results = await multicall(rpc, calls, block)
    reserves = []
    for i, asset in enumerate(assets):
        data = GET_RESERVE_DATA.decode_one(_ok(results[3 * i], f"getReserveData({asset})"))
        cfg = ReserveConfig.decode(data[0][0])
        ok, raw_symbol = results[3 * i + 1]
        symbol = SYMBOL.decode_one(raw_symbol) if ok else asset[:8]  # some tokens return bytes32
        ok, raw_source = results[3 * i + 2]
        source = to_checksum_address(GET_SOURCE_OF_ASSET.decode_one(raw_source)) if ok else None
        reserves.append(Reserve(
            asset=asset, symbol=symbol, decimals=cfg.decimals,
            a_token=to_checksum_address(data[8]), variable_debt_token=to_checksum_address(data[10]),
            ltv_bps=cfg.ltv_bps, liquidation_threshold_bps=cfg.liquidation_threshold_bps,
            liquidation_bonus_bps=cfg.liquidation_bonus_bps,
            liquidation_protocol_fee_bps=cfg.liquidation_protocol_fee_bps,
            usage_as_collateral_enabled=cfg.liquidation_threshold_bps > 0,
            borrowing_enabled=cfg.borrowing_enabled, active=cfg.active, frozen=cfg.frozen,
            paused=cfg.paused, price_source=source, reserve_id=data[7],
            stable_debt_token=to_checksum_address(data[9]) if int(data[9], 16) else None,
            emode_category=(data[0][0] >> 168) & 0xFF,
        ))
    return reserves


async def read_account_health(rpc: RpcClient, market: Market, users: Sequence[Address], block: int,
                              *, batch_size: int = 500, gas_per_batch: int = 50_000_000,
                              failed: list[Address] | None = None) -> list[AccountHealth]:
    """getUserAccountData for every user at one block. A failed read raises; it is never 'healthy'.

    With `failed` given, users whose request failed for good are appended to it (and left out
    of the result) instead of raising, so the other chunks' answers are still used."""
    return await read_account_data(rpc, market.pool, users, block, batch_size=batch_size,
                                   gas_per_batch=gas_per_batch, failed=failed)


async def read_account_data(rpc: RpcClient, pool: Address, users: Sequence[Address], block: int,
                            *, batch_size: int = 500, gas_per_batch: int = 50_000_000,
                            failed: list[Address] | None = None) -> list[AccountHealth]:
    results = await multicall(rpc, account_data_calls(pool, users), block, batch_size=batch_size,
                              gas_per_batch=gas_per_batch, partial=failed is not None)
    return decode_account_data(users, results, block, failed=failed)


def account_data_calls(pool: Address, users: Sequence[Address]) -> list[tuple[str, bytes]]:
    """getUserAccountData(user) for each user, encoded by hand: the bytes eth-abi gives, without it."""
    selector = GET_USER_ACCOUNT_DATA.selector
    return [(pool, selector + bytes(12) + bytes.fromhex(u[2:])) for u in users]


def decode_account_data(users: Sequence[Address], results: Sequence[Any], block: int,
                        failed: list[Address] | None = None) -> list[AccountHealth]:
    """getUserAccountData results (one per user, in order) as AccountHealth; a failed one raises.

    With `failed`, a user whose request failed for good (an RpcError in its slot) or whose own call
    reverted is appended to it and left out instead. Decoded by hand (six uint256 words, the hot
    path of every cycle): the same values eth-abi gives."""
    out = []
    for user, result in zip(users, results, strict=True):
        # With `failed`, an account whose own call reverted is deferred like a failed request: one
        # account whose getUserAccountData panics (seen on Anvil after some liquidations) must not
        # stop every cycle from reading the others.
        if isinstance(result, RpcError) or (failed is not None and not result[0]):
            if failed is None:
                raise result
            failed.append(user)
            continue
        raw = _ok(result, f"getUserAccountData({user})")
        if len(raw) < 192:  # six uint256, as eth-abi would insist
            raise MarketReadError(f"getUserAccountData({user}): {len(raw)} bytes, expected 192")
        c, d, avail, lt, ltv, hf = (int.from_bytes(raw[i : i + 32], "big") for i in range(0, 192, 32))
        out.append(AccountHealth(user, block, c, d, avail, lt, ltv, hf))
    return out


async def read_prices(rpc: RpcClient, market: Market, block: int) -> dict[Address, int]:
    assets = [r.asset for r in market.reserves]
    (result,) = await multicall(rpc, [(market.oracle, GET_ASSETS_PRICES.encode(assets))], block)
    prices = GET_ASSETS_PRICES.decode_one(_ok(result, "getAssetsPrices"))
    return dict(zip(assets, prices, strict=True))


async def read_reserve_positions(rpc: RpcClient, market: Market, users: Sequence[Address], block: int
                                 ) -> dict[Address, tuple[tuple[ReservePosition, ...], int]]:
    """Per-reserve balances and eMode of each user: aToken and debt balances (stable-rate debt
    included where the market has it), collateral flags."""
    debt_tokens = [(r.variable_debt_token, *([r.stable_debt_token] if r.stable_debt_token else []))
                   for r in market.reserves]
    calls = []
    for u in users:
        calls += [(market.pool, GET_USER_CONFIGURATION.encode(u)), (market.pool, GET_USER_EMODE.encode(u))]
        for r, tokens in zip(market.reserves, debt_tokens, strict=True):
            calls += [(t, BALANCE_OF.encode(u)) for t in (r.a_token, *tokens)]
    results = await multicall(rpc, calls, block)
    per_user = len(calls) // max(1, len(users))
    out = {}
    for i, u in enumerate(users):
        chunk = iter(results[i * per_user : (i + 1) * per_user])
        config = GET_USER_CONFIGURATION.decode_one(_ok(next(chunk), "getUserConfiguration"))[0]
        emode = GET_USER_EMODE.decode_one(_ok(next(chunk), "getUserEMode"))
        positions = []
        for j, (r, tokens) in enumerate(zip(market.reserves, debt_tokens, strict=True)):
            coll = BALANCE_OF.decode_one(_ok(next(chunk), f"aToken.balanceOf({u})"))
            debt = sum(BALANCE_OF.decode_one(_ok(next(chunk), f"debtToken.balanceOf({u})")) for _ in tokens)
            # UserConfiguration: bit 2*id is "borrowing", bit 2*id+1 is "using as collateral".
            enabled = bool((config >> (2 * _id(r, j) + 1)) & 1)
            if coll or debt:
                positions.append(ReservePosition(r.asset, coll, debt, enabled))
        out[u] = (tuple(positions), emode)
    return out


def _id(reserve: Reserve, position: int) -> int:
    """The reserve's pool id; without one, its place in getReservesList (the same unless one was dropped)."""
    return reserve.reserve_id if reserve.reserve_id >= 0 else position


@dataclass(frozen=True, slots=True)
class EModeCategory:
    """An eMode category's collateral parameters and the collateral assets it covers."""

    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    collateral_assets: frozenset[Address]


async def read_emode_categories(rpc: RpcClient, market: Market, categories: Iterable[int], block: int
                                ) -> dict[int, EModeCategory]:
    """The given eMode categories (0, no eMode, is skipped).

    A borrower in a category is valued with its threshold, and liquidated with its bonus,
    on the collateral assets it covers; each reserve's own parameters apply to the rest.
    """
    ids = sorted({c for c in categories if c})
    if market.rules.emode_getters == "v3.0":
        return await _read_emode_categories_v30(rpc, market, ids, block)
    calls = []
    for c in ids:
        calls += [(market.pool, GET_EMODE_COLLATERAL_CONFIG.encode(c)),
                  (market.pool, GET_EMODE_BITMAP.encode(c))]
    results = await multicall(rpc, calls, block) if calls else []
    out: dict[int, EModeCategory] = {}
    for k, c in enumerate(ids):
        ltv, lt, bonus = GET_EMODE_COLLATERAL_CONFIG.decode_one(_ok(results[2 * k], "eMode config"))
        bitmap = GET_EMODE_BITMAP.decode_one(_ok(results[2 * k + 1], "eMode bitmap"))
        assets = frozenset(r.asset for j, r in enumerate(market.reserves) if (bitmap >> _id(r, j)) & 1)
        out[c] = EModeCategory(ltv, lt, bonus, assets)
    return out


async def _read_emode_categories_v30(rpc: RpcClient, market: Market, ids: Sequence[int], block: int
                                     ) -> dict[int, EModeCategory]:
    """v3.0-v3.1: `getEModeCategoryData`; an asset is in the one category its configuration names."""
    calls = [(market.pool, GET_EMODE_DATA.encode(c)) for c in ids]
    results = await multicall(rpc, calls, block) if calls else []
    out: dict[int, EModeCategory] = {}
    for c, res in zip(ids, results, strict=True):
        ltv, lt, bonus, _source, _label = GET_EMODE_DATA.decode_one(_ok(res, f"getEModeCategoryData({c})"))
        assets = frozenset(r.asset for r in market.reserves if r.emode_category == c)
        out[c] = EModeCategory(ltv, lt, bonus, assets)
    return out


def encode_liquidation_call(collateral: Address, debt: Address, user: Address, debt_to_cover: int,
                            receive_a_token: bool = False) -> bytes:
    return LIQUIDATION_CALL.encode(collateral, debt, user, debt_to_cover, receive_a_token)
