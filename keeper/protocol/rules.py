"""Which Aave rules a pool runs, read from the pool itself at start.

`POOL_REVISION()` names the release; tell-tales confirm it, because forks reuse revision numbers:
- `getReserveDeficit(asset)` exists from v3.3 on (deficit accounting, the $1,000 dust rule and the
  close factor on total debt came with it);
- `getEModeCategoryCollateralConfig(id)` exists from v3.2 on; before, eMode is `getEModeCategoryData`;
- a non-zero StableDebtToken in `getReserveData` before v3.2: stable-rate debt counts toward health.

A revision outside the known ranges, or one whose tell-tales disagree with it, is "unknown": the
reads still follow the tell-tales (they must work whatever the sizing), and sizing is left to the
fork (`sizing="simulate"`).
"""

from __future__ import annotations

from collections.abc import Sequence

from keeper.chain.multicall import multicall
from keeper.chain.rpc import RpcClient
from keeper.log import get_logger
from keeper.protocol.abi import fn
from keeper.types import Address, Rules

log = get_logger(__name__)

POOL_REVISION = fn("Pool", "POOL_REVISION")
GET_RESERVE_DEFICIT = fn("Pool", "getReserveDeficit")
GET_EMODE_COLLATERAL_CONFIG = fn("Pool", "getEModeCategoryCollateralConfig")

# Revisions whose rules are known, with the tell-tale each range must show (has deficit getter).
LEGACY_REVISIONS = range(1, 7)  # v3.0 .. v3.2: close factor per reserve, no dust rule, no deficit
CURRENT_REVISIONS = range(7, 11)  # v3.3 .. v3.6 (aave-v3-origin 3.6.0 is revision 10)


def choose_rules(revision: int, *, has_deficit: bool, has_new_emode: bool, has_stable_tokens: bool) -> Rules:
    """The rule set for a revision and the pool's tell-tales (pure)."""
    if revision in LEGACY_REVISIONS and not has_deficit:
        sizing = "v3.0"
    elif revision in CURRENT_REVISIONS and has_deficit and has_new_emode:
        sizing = "v3.3"
    else:
        sizing = "simulate"
    return Rules(
        revision=revision,
        sizing=sizing,
        emode_getters="v3.2" if has_new_emode else "v3.0",
        stable_debt=has_stable_tokens and not has_new_emode,
    )


async def detect_rules(rpc: RpcClient, pool: Address, probe_asset: Address | None,
                       stable_tokens: Sequence[Address | None], block: int | str = "latest", *,
                       revision_override: int | None = None) -> Rules:
    """Read POOL_REVISION and the tell-tales at `block`; `revision_override` replaces the revision read
    (an operator's or a test's way to force a revision, e.g. an unknown one)."""
    calls = [(pool, POOL_REVISION.encode()), (pool, GET_EMODE_COLLATERAL_CONFIG.encode(1))]
    if probe_asset is not None:
        calls.append((pool, GET_RESERVE_DEFICIT.encode(probe_asset)))
    results = await multicall(rpc, calls, block)
    ok_rev, raw_rev = results[0]
    read = POOL_REVISION.decode_one(raw_rev) if ok_rev and len(raw_rev) >= 32 else -1
    revision = read if revision_override is None else revision_override
    has_new_emode = results[1][0] and len(results[1][1]) >= 96
    has_deficit = probe_asset is not None and results[2][0] and len(results[2][1]) >= 32
    has_stable = any(t is not None and int(t, 16) != 0 for t in stable_tokens)
    rules = choose_rules(revision, has_deficit=has_deficit, has_new_emode=has_new_emode,
                         has_stable_tokens=has_stable)
    if rules.sizing == "simulate":
        log.warning("protocol.unknown_revision", pool=pool, revision=revision, read=read,
                    overridden=revision_override is not None, has_deficit=has_deficit,
                    has_new_emode=has_new_emode, sizing="fork search of debtToCover")
    return rules
