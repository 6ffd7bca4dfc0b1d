"""The mirror's I/O: bootstrap at a pinned block, fetch and apply logs, re-read what logs cannot say,
and reconcile against `getUserAccountData`.

Every read is pinned to one block number through Multicall3, so a bootstrap or a refresh sees one
consistent state, and `catch_up(rpc, mirror, b)` leaves the mirror exactly at the end of block `b`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eth_utils import to_checksum_address

from keeper.chain.multicall import Call, multicall
from keeper.chain.rpc import RpcClient
from keeper.errors import KeeperError, RpcError, RpcRangeTooLarge, RpcTimeout
from keeper.health.mirror import Applied, EModeCategory, HealthMirror, ReserveState, UserState
from keeper.health.mirror_events import blocks_missing_timestamps, mirror_topics
from keeper.health.mirror_sync_v30 import load_emodes_v30, stable_calls, stable_state
from keeper.log import get_logger
from keeper.protocol.aave_v3 import (
    GET_RESERVE_DATA,
    GET_RESERVES_LIST,
    GET_SOURCE_OF_ASSET,
    GET_USER_CONFIGURATION,
    GET_USER_EMODE,
    ReserveConfig,
    read_account_data,
)
from keeper.protocol.abi import decode_revert, fn
from keeper.types import AccountHealth, Address, Market

log = get_logger(__name__)

GET_POOL_CONFIGURATOR = fn("PoolAddressesProvider", "getPoolConfigurator")
GET_ASSET_PRICE = fn("AaveOracle", "getAssetPrice")
EMODE_COLLATERAL_CONFIG = fn("Pool", "getEModeCategoryCollateralConfig")
EMODE_COLLATERAL_BITMAP = fn("Pool", "getEModeCategoryCollateralBitmap")
EMODE_BORROWABLE_BITMAP = fn("Pool", "getEModeCategoryBorrowableBitmap")
EMODE_LTVZERO_BITMAP = fn("Pool", "getEModeCategoryLtvzeroBitmap")
EMODE_LABEL = fn("Pool", "getEModeCategoryLabel")
SCALED_BALANCE_OF = fn("AToken", "scaledBalanceOf")
GET_PREVIOUS_INDEX = fn("AToken", "getPreviousIndex")

MAX_EMODE_CATEGORY = 255
USERS_PER_ROUND = 2_000  # users whose state one refresh round reads (bounds its memory)


class MirrorSyncError(KeeperError):
    """A read the mirror cannot be built or refreshed without failed."""


def _ok(result: tuple[bool, bytes], what: str) -> bytes:
    ok, data = result
    if not ok:
        raise MirrorSyncError(f"{what} failed: {decode_revert(data)}")
    return data


async def _timestamp(rpc: RpcClient, block: int) -> int:
    header = await rpc.get_block(block)
    if header is None:
        raise MirrorSyncError(f"block {block} not found")
    return int(header["timestamp"], 16)


# --- bootstrap --------------------------------------------------------------------------------


async def bootstrap(rpc: RpcClient, market: Market, users: Iterable[Address], block: int, *,
                    configurator: Address | None = None, previous_index: bool = False,
                    batch_size: int = 500) -> HealthMirror:
    """A mirror of `market` and `users` as of the end of `block`; apply logs from `block + 1` on.

    `previous_index` also reads each token's `getPreviousIndex` per user (twice the calls), which
    lets the mirror check the very first event of each user against its balance; without it the
    check starts from the user's second event.
    """
    t0 = time.monotonic()
    if configurator is None:
        (res,) = await multicall(rpc, [(market.provider, GET_POOL_CONFIGURATOR.encode())], block)
        configurator = to_checksum_address(GET_POOL_CONFIGURATOR.decode_one(_ok(res, "getPoolConfigurator")))
    mirror = HealthMirror(pool=market.pool, oracle=market.oracle, configurator=configurator,
                          block=block, timestamp=await _timestamp(rpc, block),
                          legacy=market.rules.legacy_math)
    await load_market(rpc, mirror, block, batch_size=batch_size)
    users = list(dict.fromkeys(to_checksum_address(u) for u in users))
    await refresh_users(rpc, mirror, users, block, previous_index=previous_index, batch_size=batch_size)
    log.info("health.mirror_bootstrapped", block=block, users=len(users), reserves=len(mirror.reserves),
             emodes=len(mirror.emodes), seconds=round(time.monotonic() - t0, 3))
    return mirror


async def load_market(rpc: RpcClient, mirror: HealthMirror, block: int, *, batch_size: int = 500) -> None:
    """(Re)load every reserve (indexes, rates, config, source, price) and eMode category at `block`."""
    (res,) = await multicall(rpc, [(mirror.pool, GET_RESERVES_LIST.encode())], block)
    assets = [to_checksum_address(a) for a in GET_RESERVES_LIST.decode_one(_ok(res, "getReservesList"))]
    calls: list[Call] = []
    for a in assets:
        calls += [(mirror.pool, GET_RESERVE_DATA.encode(a)), (mirror.oracle, GET_SOURCE_OF_ASSET.encode(a)),
                  (mirror.oracle, GET_ASSET_PRICE.encode(a))]
    if not mirror.legacy:
        for c in range(1, MAX_EMODE_CATEGORY + 1):
            calls += [(mirror.pool, EMODE_COLLATERAL_CONFIG.encode(c)),
                      (mirror.pool, EMODE_COLLATERAL_BITMAP.encode(c)),
                      (mirror.pool, EMODE_BORROWABLE_BITMAP.encode(c)),
                      (mirror.pool, EMODE_LTVZERO_BITMAP.encode(c))]
    results = await multicall(rpc, calls, block, batch_size=batch_size)
    for old in [a for a in mirror.reserves if a not in assets]:  # dropped since the last load
        mirror.drop_reserve(old)
    for i, asset in enumerate(assets):
        d = GET_RESERVE_DATA.decode_one(_ok(results[3 * i], f"getReserveData({asset})"))
        cfg = ReserveConfig.decode(d[0][0])
        ok, raw_source = results[3 * i + 1]
        source = to_checksum_address(GET_SOURCE_OF_ASSET.decode_one(raw_source)) if ok else None
        ok, raw_price = results[3 * i + 2]
        price = GET_ASSET_PRICE.decode_one(raw_price) if ok else None
        mirror.set_reserve(ReserveState(
            asset=asset, id=d[7], a_token=to_checksum_address(d[8]),
            variable_debt_token=to_checksum_address(d[10]), decimals=cfg.decimals, ltv_bps=cfg.ltv_bps,
            liquidation_threshold_bps=cfg.liquidation_threshold_bps, liquidity_index_ray=d[1],
            variable_borrow_index_ray=d[3], liquidity_rate_ray=d[2], variable_borrow_rate_ray=d[4],
            last_update_timestamp=d[6], price_base=price, price_source=source,
            stable_debt_token=to_checksum_address(d[9]) if mirror.legacy and int(d[9], 16) else None,
            compounding_v30=mirror.legacy,
        ))
        if price is None:
            mirror.dirty_prices.add(asset)
        else:
            mirror.dirty_prices.discard(asset)
    if mirror.legacy:
        datas = [GET_RESERVE_DATA.decode_one(results[3 * i][1]) for i in range(len(assets))]
        await load_emodes_v30(rpc, mirror, [(d[7], d[0][0]) for d in datas], block)
        mirror.needs_rebootstrap = False
        return
    base = 3 * len(assets)
    for c in range(1, MAX_EMODE_CATEGORY + 1):
        j = base + 4 * (c - 1)
        ltv, lt, bonus = EMODE_COLLATERAL_CONFIG.decode_one(_ok(results[j], f"eMode {c} config"))
        bitmaps = [f.decode_one(_ok(results[j + k], f"eMode {c} {f.name}")) for k, f in
                   enumerate((EMODE_COLLATERAL_BITMAP, EMODE_BORROWABLE_BITMAP, EMODE_LTVZERO_BITMAP), 1)]
        if lt == 0 and not any(bitmaps) and c not in mirror.emodes:
            continue  # never configured (bits may be set before the category itself)
        mirror.set_emode_category(EModeCategory(
            id=c, ltv_bps=ltv, liquidation_threshold_bps=lt, liquidation_bonus_bps=bonus,
            collateral_bitmap=bitmaps[0], borrowable_bitmap=bitmaps[1], ltvzero_bitmap=bitmaps[2],
        ))
    mirror.needs_rebootstrap = False


async def refresh_users(rpc: RpcClient, mirror: HealthMirror, users: Sequence[Address], block: int, *,
                        previous_index: bool = True, batch_size: int = 500,
                        failed: list[Address] | None = None, users_per_round: int = USERS_PER_ROUND) -> None:
    """Re-read `users`' eMode, collateral bits and scaled balances at `block` (which must be the
    block the mirror's logs are applied to) and replace their mirrored state.

    With `failed` given, a user whose reads' request failed for good is appended to it and
    keeps its old state (the caller retries it next block) instead of failing the whole refresh."""
    # A round of users at a time: its calls, calldata and replies are all held at once, and at
    # 100,000 borrowers one round for all of them would be the process's peak memory.
    for start in range(0, len(users), users_per_round):
        await _refresh_round(rpc, mirror, users[start : start + users_per_round], block,
                             previous_index=previous_index, batch_size=batch_size, failed=failed)


async def _refresh_round(rpc: RpcClient, mirror: HealthMirror, users: Sequence[Address], block: int, *,
                         previous_index: bool, batch_size: int, failed: list[Address] | None) -> None:
    reserves = sorted(mirror.reserves.values(), key=lambda r: r.id)
    stable = [r for r in reserves if r.stable_debt_token]
    per_user = 2 + 2 * len(reserves) * (2 if previous_index else 1) + 3 * len(stable)
    calls: list[Call] = []
    for u in users:
        calls += [(mirror.pool, GET_USER_CONFIGURATION.encode(u)), (mirror.pool, GET_USER_EMODE.encode(u))]
        for r in reserves:
            calls += [(r.a_token, SCALED_BALANCE_OF.encode(u)),
                      (r.variable_debt_token, SCALED_BALANCE_OF.encode(u))]
            if previous_index:
                calls += [(r.a_token, GET_PREVIOUS_INDEX.encode(u)),
                          (r.variable_debt_token, GET_PREVIOUS_INDEX.encode(u))]
        calls += stable_calls(stable, u)
    results = await multicall(rpc, calls, block, batch_size=batch_size, partial=failed is not None)
    step = 4 if previous_index else 2
    for k, u in enumerate(users):
        chunk = results[k * per_user : (k + 1) * per_user]
        if failed is not None and any(isinstance(r, RpcError) for r in chunk):
            failed.append(u)
            continue
        config = GET_USER_CONFIGURATION.decode_one(_ok(chunk[0], f"getUserConfiguration({u})"))[0]
        state = UserState(collateral_mask=UserState.collateral_mask_from_config(config),
                          emode=GET_USER_EMODE.decode_one(_ok(chunk[1], f"getUserEMode({u})")))
        for j, r in enumerate(reserves):
            part = chunk[2 + step * j : 2 + step * (j + 1)]
            a = SCALED_BALANCE_OF.decode_one(_ok(part[0], f"aToken.scaledBalanceOf({u})"))
            v = SCALED_BALANCE_OF.decode_one(_ok(part[1], f"vToken.scaledBalanceOf({u})"))
            if a:
                state.a_scaled[r.id] = a
            if v:
                state.v_scaled[r.id] = v
            if previous_index:
                state.a_index[r.id] = GET_PREVIOUS_INDEX.decode_one(_ok(part[2], "getPreviousIndex"))
                state.v_index[r.id] = GET_PREVIOUS_INDEX.decode_one(_ok(part[3], "getPreviousIndex"))
        state.stable = stable_state(stable, chunk[2 + step * len(reserves):], u)
        mirror.set_user(u, state)


async def refresh_prices(rpc: RpcClient, mirror: HealthMirror, assets: Iterable[Address], block: int) -> None:
    assets = list(assets)
    if not assets:
        return
    results = await multicall(rpc, [(mirror.oracle, GET_ASSET_PRICE.encode(a)) for a in assets], block)
    for a, res in zip(assets, results, strict=True):
        mirror.set_price(a, GET_ASSET_PRICE.decode_one(_ok(res, f"getAssetPrice({a})")))


# --- logs -------------------------------------------------------------------------------------


async def fetch_logs(rpc: RpcClient, mirror: HealthMirror, from_block: int, to_block: int, *,
                     max_range: int = 2_000) -> list[dict]:
    """Every log the mirror consumes in [from_block, to_block], one address-list filter per range;
    a range the node refuses is halved."""
    addresses = mirror.log_addresses()
    topics = [mirror_topics()]
    out: list[dict] = []
    start, size = from_block, max_range
    while start <= to_block:
        end = min(to_block, start + size - 1)
        try:
            logs = await rpc.get_logs({"address": addresses, "topics": topics,
                                       "fromBlock": start, "toBlock": end})
        except (RpcRangeTooLarge, RpcTimeout):
            if size == 1:
                raise
            size = max(1, size // 2)
            continue
        out.extend(logs)
        start = end + 1
    return out


@dataclass(slots=True)
class CatchUp:
    """One `catch_up`: the logs applied, what they changed, and what had to be re-read."""

    from_block: int
    to_block: int
    logs: int
    applied: Applied
    refreshed_users: set[Address] = field(default_factory=set)
    refreshed_prices: set[Address] = field(default_factory=set)
    rebootstrapped: bool = False
    seconds: float = 0.0

    def affected(self, mirror: HealthMirror) -> set[Address]:
        """Users whose health may have changed beyond interest accrual."""
        return mirror.affected(self.applied) | self.refreshed_users


async def catch_up(rpc: RpcClient, mirror: HealthMirror, to_block: int, *,
                   max_range: int = 2_000, failed: list[Address] | None = None,
                   timestamp: int | None = None) -> CatchUp:
    """Apply every log in (mirror.block, to_block], re-read what the logs could not say, and leave
    the mirror at `to_block`. Not reorg-aware: call it with a block the caller considers final,
    or re-bootstrap after a reorg below `mirror.block`. With `failed`, users whose re-read
    failed for good are appended to it (see refresh_users) instead of failing the catch-up.
    `timestamp` is `to_block`'s when the caller has its header already (the head it is acting
    on): one request fewer per block."""
    t0 = time.monotonic()
    start = mirror.block + 1
    if to_block < start:
        return CatchUp(start, to_block, 0, Applied())
    logs = await fetch_logs(rpc, mirror, start, to_block, max_range=max_range)
    timestamps = {b: await _timestamp(rpc, b) for b in sorted(blocks_missing_timestamps(logs))}
    applied = mirror.apply_logs(logs, timestamps)
    out = CatchUp(start, to_block, len(logs), applied)
    if mirror.needs_rebootstrap:
        await load_market(rpc, mirror, to_block)
        users = list(mirror.users) + sorted(mirror.dirty_users - set(mirror.users))
        await refresh_users(rpc, mirror, users, to_block)
        out.rebootstrapped, out.refreshed_users = True, set(users)
    else:
        if mirror.dirty_users:
            out.refreshed_users = set(mirror.dirty_users)
            await refresh_users(rpc, mirror, sorted(mirror.dirty_users), to_block, failed=failed)
        if mirror.dirty_prices:
            out.refreshed_prices = set(mirror.dirty_prices)
            await refresh_prices(rpc, mirror, sorted(mirror.dirty_prices), to_block)
    mirror.advance_to(to_block, timestamp if timestamp is not None else await _timestamp(rpc, to_block))
    out.seconds = time.monotonic() - t0
    log.debug("health.mirror_caught_up", from_block=start, to_block=to_block, logs=len(logs),
              events=applied.events, ignored=applied.ignored, refreshed=len(out.refreshed_users),
              seconds=round(out.seconds, 4))
    return out


# --- reconcile --------------------------------------------------------------------------------

FIELDS = ("total_collateral_base", "total_debt_base", "available_borrows_base",
          "current_liquidation_threshold_bps", "ltv_bps", "health_factor_wad")


@dataclass(frozen=True, slots=True)
class Drift:
    """A user whose mirrored account data differs from the pool's at the same block."""

    user: Address
    block: int
    fields: tuple[str, ...]  # FIELDS that differ; ("unavailable",) if the mirror had no answer
    mirror: AccountHealth | None
    chain: AccountHealth


async def reconcile(rpc: RpcClient, mirror: HealthMirror, users: Iterable[Address],
                    block: int) -> list[Drift]:
    """Compare the mirror with `getUserAccountData` at `block` (the mirror must be at that block).

    Every field of the account data is compared to the wei; the lead exports `len(...)` as
    keeper_mirror_drift and re-reads the drifted users (`refresh_users`).
    """
    if block != mirror.block:
        raise ValueError(f"mirror is at block {mirror.block}, not {block}: catch_up first")
    users = list(dict.fromkeys(to_checksum_address(u) for u in users))
    chain = await read_account_data(rpc, mirror.pool, users, block)
    mine = mirror.recompute(users)
    drifts = []
    for c in chain:
        m = mine.get(c.user)
        if m is None:
            drifts.append(Drift(c.user, block, ("unavailable",), None, c))
            continue
        diff = tuple(f for f in FIELDS if getattr(m, f) != getattr(c, f))
        if diff:
            drifts.append(Drift(c.user, block, diff, m, c))
    if drifts:
        log.warning("health.mirror_drift", block=block, users=len(users), drifted=len(drifts),
                    first=drifts[0].user, fields=",".join(drifts[0].fields))
    return drifts
