"""The mirror's reads that exist only on v3.0-v3.1 pools: eMode by `getEModeCategoryData` (each asset
in the one category its configuration names) and each user's stable-rate debt (principal, own rate,
last update), which `StableDebtToken.balanceOf` compounds."""

from __future__ import annotations

from collections.abc import Sequence

from keeper.chain.multicall import Call, multicall
from keeper.chain.rpc import RpcClient
from keeper.errors import KeeperError
from keeper.health.mirror import EModeCategory, HealthMirror, ReserveState
from keeper.protocol.abi import Fn, decode_revert, fn
from keeper.types import Address

GET_EMODE_DATA = fn("Pool", "getEModeCategoryData")
PRINCIPAL_BALANCE_OF = Fn("principalBalanceOf", ("address",), ("uint256",))
GET_USER_STABLE_RATE = Fn("getUserStableRate", ("address",), ("uint256",))
GET_USER_LAST_UPDATED = Fn("getUserLastUpdated", ("address",), ("uint40",))
MAX_EMODE_CATEGORY = 255


class MirrorSyncV30Error(KeeperError):
    """A v3.0 read the mirror cannot be built without failed."""


def _ok(result: tuple[bool, bytes], what: str) -> bytes:
    ok, data = result
    if not ok:
        raise MirrorSyncV30Error(f"{what} failed: {decode_revert(data)}")
    return data


async def load_emodes_v30(rpc: RpcClient, mirror: HealthMirror, configs: Sequence[tuple[int, int]],
                          block: int) -> None:
    """Every configured category at `block`; `configs` is (reserve id, configuration bitmap) per reserve."""
    members: dict[int, int] = {}
    for rid, config in configs:
        category = (config >> 168) & 0xFF
        if category:
            members[category] = members.get(category, 0) | (1 << rid)
    ids = range(1, MAX_EMODE_CATEGORY + 1)
    results = await multicall(rpc, [(mirror.pool, GET_EMODE_DATA.encode(c)) for c in ids], block)
    for c, res in zip(ids, results, strict=True):
        ltv, lt, bonus, source, label = GET_EMODE_DATA.decode_one(_ok(res, f"getEModeCategoryData({c})"))
        bitmap = members.get(c, 0)
        if lt == 0 and not bitmap and c not in mirror.emodes:
            continue
        mirror.set_emode_category(EModeCategory(
            id=c, ltv_bps=ltv, liquidation_threshold_bps=lt, liquidation_bonus_bps=bonus,
            collateral_bitmap=bitmap, borrowable_bitmap=bitmap, label=label,
            price_source_set=int(source, 16) != 0,
        ))


def stable_calls(reserves: Sequence[ReserveState], user: Address) -> list[Call]:
    calls: list[Call] = []
    for r in reserves:
        token = r.stable_debt_token
        assert token is not None
        calls += [(token, PRINCIPAL_BALANCE_OF.encode(user)), (token, GET_USER_STABLE_RATE.encode(user)),
                  (token, GET_USER_LAST_UPDATED.encode(user))]
    return calls


def stable_state(reserves: Sequence[ReserveState], results: Sequence[tuple[bool, bytes]],
                 user: Address) -> dict[int, tuple[int, int, int]]:
    """reserve id -> (principal, rate, last update) for the reserves where `user` has stable debt."""
    out = {}
    for j, r in enumerate(reserves):
        principal = PRINCIPAL_BALANCE_OF.decode_one(_ok(results[3 * j], f"principalBalanceOf({user})"))
        if principal:
            rate = GET_USER_STABLE_RATE.decode_one(_ok(results[3 * j + 1], f"getUserStableRate({user})"))
            last = GET_USER_LAST_UPDATED.decode_one(_ok(results[3 * j + 2], f"getUserLastUpdated({user})"))
            out[r.id] = (principal, rate, last)
    return out
