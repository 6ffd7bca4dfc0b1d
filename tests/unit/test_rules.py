"""Issue 12: rules chosen from POOL_REVISION and the pool's tell-tales; the v3.0 sizing port."""

from __future__ import annotations

from keeper.protocol.math import UINT256_MAX, LiquidationInputs, liquidation_outcome, max_debt_to_cover
from keeper.protocol.math_v30 import compounded_interest_ray_v30, stable_debt_balance
from keeper.protocol.rules import choose_rules

WAD = 10**18
RAY = 10**27
SIM = "simulate"


def test_v30_revision_without_deficit_getter_gets_the_v30_rules() -> None:
    r = choose_rules(1, has_deficit=False, has_new_emode=False, has_stable_tokens=True)
    assert (r.sizing, r.emode_getters, r.stable_debt, r.legacy_math) == ("v3.0", "v3.0", True, True)


def test_v36_revision_with_its_tell_tales_gets_the_current_rules() -> None:
    r = choose_rules(10, has_deficit=True, has_new_emode=True, has_stable_tokens=False)
    assert (r.sizing, r.emode_getters, r.stable_debt) == ("v3.3", "v3.2", False)


def test_unknown_or_contradicted_revision_is_sized_by_simulation() -> None:
    assert choose_rules(11, has_deficit=True, has_new_emode=True, has_stable_tokens=False).sizing == SIM
    assert choose_rules(0, has_deficit=False, has_new_emode=False, has_stable_tokens=True).sizing == SIM
    # A "v3.0" revision number on a pool that has v3.3's deficit getter: a fork; do not trust either.
    assert choose_rules(1, has_deficit=True, has_new_emode=True, has_stable_tokens=False).sizing == SIM
    # Reads still follow the tell-tales for an unknown revision.
    unknown = choose_rules(99, has_deficit=False, has_new_emode=False, has_stable_tokens=True)
    assert (unknown.emode_getters, unknown.stable_debt) == ("v3.0", True)
    assert "unknown" in unknown.name


def _inputs(hf_wad: int, debt_usd: int, coll_usd: int, sizing: str) -> LiquidationInputs:
    return LiquidationInputs(
        hf_wad=hf_wad, total_collateral_base=coll_usd * 10**8, total_debt_base=debt_usd * 10**8,
        collateral_balance=coll_usd * 10**18 // 2000, debt_balance=debt_usd * 10**6,
        collateral_price_base=2000 * 10**8, debt_price_base=10**8, collateral_decimals=18,
        debt_decimals=6, bonus_bps=10500, protocol_fee_bps=1000, sizing=sizing,
    )


def test_v30_small_position_at_hf_097_is_capped_at_half_of_the_reserve_debt() -> None:
    small = _inputs(97 * WAD // 100, 1_150, 1_400, "v3.0")
    out = liquidation_outcome(small, UINT256_MAX)
    assert out.close_factor_applied and out.debt_repaid == 1_150 * 10**6 // 2
    # v3.3+: under $2,000 on both sides there is no close factor: closed whole.
    v33 = liquidation_outcome(_inputs(97 * WAD // 100, 1_150, 1_400, "v3.3"), UINT256_MAX)
    assert v33.debt_repaid == 1_150 * 10**6


def test_v30_below_095_allows_the_whole_reserve_debt() -> None:
    out = liquidation_outcome(_inputs(90 * WAD // 100, 100_000, 110_000, "v3.0"), UINT256_MAX)
    assert not out.close_factor_applied and out.debt_repaid == 100_000 * 10**6


def test_v30_has_no_dust_rule_and_no_deficit() -> None:
    leave_ten = 1_090 * 10**6  # of $1,100: $10 left
    v30 = liquidation_outcome(_inputs(90 * WAD // 100, 1_100, 1_250, "v3.0"), leave_ten)
    v33 = liquidation_outcome(_inputs(90 * WAD // 100, 1_100, 1_250, "v3.3"), leave_ten)
    assert not v30.reverts and v30.debt_repaid == leave_ten and v30.deficit == 0
    assert v33.revert_reason == "MustNotLeaveDust"
    # Collateral runs out: v3.0 leaves the rest as debt (no deficit), and any amount is accepted.
    short = _inputs(80 * WAD // 100, 1_100, 1_050, "v3.0")
    out = liquidation_outcome(short, UINT256_MAX)
    assert out.takes_all_collateral and out.deficit == 0 and not out.has_no_collateral_left
    assert max_debt_to_cover(short) == 1_100 * 10**6


def test_v30_compounded_interest_and_stable_balance() -> None:
    assert compounded_interest_ray_v30(5 * RAY // 100, 100, 100) == RAY
    year = 365 * 24 * 3600
    growth = compounded_interest_ray_v30(5 * RAY // 100, 0, year)
    assert RAY * 1051 // 1000 < growth < RAY * 1052 // 1000  # e^0.05 = 1.05127, binomial just under
    assert stable_debt_balance(0, 5 * RAY // 100, 0, year) == 0
    assert stable_debt_balance(10**6, 5 * RAY // 100, 0, year) == (10**6 * growth + RAY // 2) // RAY
