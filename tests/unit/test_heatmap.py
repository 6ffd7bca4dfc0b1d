"""The liquidation heatmap on hand-built positions, with expectations worked out by hand.

Market: WETH (18 decimals, $2,000, LT 80%), USDC (6 decimals, $1, LT 85%). Base currency: USD, 8 decimals.

  A  1 WETH coll., 1,000 USDC debt                HF 1.6    liquidatable when 1,600(1+m) < 1,000:  m < −37.5%
  B  10,000 USDC coll., 3.5 WETH debt             HF 1.214  liquidatable when 7,000(1+m) > 8,500:  m > +21.43%
  C  0.5 WETH + 1,000 USDC coll., 1,500 USDC debt HF 1.1    when 800(1+m) + 850 < 1,500:  m < −18.75%
  D  1,000 USDC coll., 900 USDC debt              HF 0.944  liquidatable already, whatever WETH does
  F  1 WETH (collateral disabled) + 2,000 USDC, 1,000 USDC debt   HF 1.7, not exposed to WETH
"""

from __future__ import annotations

import pytest

from keeper.health.heatmap import Heatmap, build_heatmap, health_factor_at, moves, price_at
from keeper.heatmap_cmd import bar, render, rows
from keeper.types import AccountHealth, Position, Reserve, ReservePosition

WETH = "0x" + "e" * 40
USDC = "0x" + "c" * 40
X1 = "0x" + "1" * 40
X2 = "0x" + "2" * 40
DAI = "0x" + "d" * 40
E8 = 10**8
WAD = 10**18


def _reserve(asset: str, symbol: str, decimals: int, lt_bps: int) -> Reserve:
    return Reserve(asset, symbol, decimals, asset, asset, lt_bps - 100, lt_bps, 10_500, 1_000,
                   True, True, True, False, False)


RESERVES = {WETH: _reserve(WETH, "WETH", 18, 8_000), USDC: _reserve(USDC, "USDC", 6, 8_500),
            X1: _reserve(X1, "X1", 18, 8_000), X2: _reserve(X2, "X2", 18, 8_000),
            DAI: _reserve(DAI, "DAI", 18, 8_000)}
PRICES = {WETH: 2_000 * E8, USDC: E8, X1: E8, X2: E8, DAI: E8}


def _hf(weighted_base_bps: int, debt_base: int) -> int:
    """GenericLogic: wadDiv (half up) of Σ value×LT by the debt, then / 1e4 (floor)."""
    return (weighted_base_bps * WAD + debt_base // 2) // debt_base // 10_000


def _position(user: str, hf_wad: int, *reserves: ReservePosition, debt_base: int = 1) -> Position:
    health = AccountHealth(user, 100, 0, debt_base, 0, 0, 0, hf_wad)
    return Position(user, 100, health, tuple(reserves), dict(PRICES))


def _coll(asset: str, amount: int, enabled: bool = True) -> ReservePosition:
    return ReservePosition(asset, amount, 0, enabled)


def _debt(asset: str, amount: int) -> ReservePosition:
    return ReservePosition(asset, 0, amount, False)


A = _position("A", 16 * 10**17, _coll(WETH, WAD), _debt(USDC, 1_000 * 10**6))
B = _position("B", _hf(10_000 * E8 * 8_500, 7_000 * E8), _coll(USDC, 10_000 * 10**6),
              _debt(WETH, 35 * 10**17))
C = _position("C", 11 * 10**17, _coll(WETH, WAD // 2), _coll(USDC, 1_000 * 10**6), _debt(USDC, 1_500 * 10**6))
D = _position("D", _hf(1_000 * E8 * 8_500, 900 * E8), _coll(USDC, 1_000 * 10**6), _debt(USDC, 900 * 10**6))
F = _position("F", 17 * 10**17, _coll(WETH, WAD, enabled=False), _coll(USDC, 2_000 * 10**6),
              _debt(USDC, 1_000 * 10**6))


def _heatmap(*positions: Position, **kw) -> Heatmap:
    return build_heatmap(positions, RESERVES, WETH, **{"steps": 50, "step_bps": 100, **kw})


def test_hand_built_health_factors_match_the_local_replica() -> None:
    # Guards the fixtures: a wrong input HF would silently move a position to `unmodelled`.
    for p in (A, B, C, D, F):
        assert health_factor_at(p, RESERVES) == p.health.health_factor_wad, p.user


def test_position_already_under_water_is_counted_at_every_level_and_new_only_now() -> None:
    hm = _heatmap(D)
    assert (hm.now.positions, hm.now.new_positions, hm.now.new_users) == (1, 1, ("D",))
    assert (hm.now.collateral_base, hm.now.debt_base) == (1_000 * E8, 900 * E8)
    for lv in (*hm.down, *hm.up):
        assert (lv.positions, lv.new_positions, lv.collateral_base) == (1, 0, 1_000 * E8)


def test_collateral_position_becomes_liquidatable_at_the_first_level_below_its_threshold() -> None:
    hm = _heatmap(A)
    # −37% leaves 1,260 × 0.8 = 1,008 of weighted collateral against 1,000 of debt; −38% leaves 992.
    assert hm.level(-3700).positions == 0
    lv = hm.level(-3800)
    assert (lv.positions, lv.new_positions, lv.new_users) == (1, 1, ("A",))
    assert (lv.new_collateral_base, lv.new_debt_base) == (1_240 * E8, 1_000 * E8)
    assert lv.new_asset_collateral == WAD
    assert lv.price_base == 1_240 * E8
    assert hm.level(-5000).positions == 1 and hm.level(-5000).new_positions == 0
    assert all(lv.positions == 0 for lv in hm.up)


def test_health_factor_of_exactly_one_is_not_liquidatable() -> None:
    hm = _heatmap(A, steps=100, step_bps=50)
    # −37.5%: 1,250 × 0.8 = 1,000 = the debt, HF exactly 1.0; the pool needs HF < 1.
    assert hm.level(-3750).positions == 0
    assert hm.level(-3800).new_positions == 1


def test_debt_position_becomes_liquidatable_when_the_asset_rises() -> None:
    hm = _heatmap(B)
    # +21%: 3.5 × 2,420 = 8,470 of debt under 8,500 weighted; +22%: 3.5 × 2,440 = 8,540 over it.
    assert hm.level(2100).positions == 0
    lv = hm.level(2200)
    assert (lv.new_positions, lv.new_collateral_base, lv.new_debt_base) == (1, 10_000 * E8, 8_540 * E8)
    assert lv.new_asset_collateral == 0
    assert all(lv.positions == 0 for lv in hm.down)  # a falling debt price only helps
    assert (hm.collateral_exposed, hm.debt_exposed) == (0, 1)


def test_cumulative_levels_add_up_positions_valued_at_the_levels_price() -> None:
    hm = _heatmap(A, B, C, D, F)
    assert (hm.positions, hm.collateral_exposed, hm.debt_exposed, hm.unmodelled) == (5, 2, 1, ())
    # C: −18% leaves 800 × 0.82 + 850 = 1,506 ≥ 1,500; −19% leaves 1,498.
    assert hm.level(-1800).positions == 1
    c = hm.level(-1900)
    assert (c.new_users, c.new_collateral_base, c.new_debt_base) == (("C",), 1_810 * E8, 1_500 * E8)
    assert c.new_asset_collateral == WAD // 2
    assert (c.positions, c.collateral_base, c.debt_base) == (2, 2_810 * E8, 2_400 * E8)  # D + C
    # At −38% (WETH 1,240): D 1,000 + C 620 + 1,000 + A 1,240 of collateral.
    a = hm.level(-3800)
    assert (a.new_users, a.positions, a.collateral_base, a.debt_base) == (("A",), 3, 3_860 * E8, 3_400 * E8)
    assert hm.users_liquidatable_at(-3800) == {"A", "C", "D"}
    assert sum(lv.new_positions for lv in (hm.now, *hm.down)) == hm.down[-1].positions == 3
    # Up: D and, from +22%, B (3.5 × 2,440 = 8,540 of WETH debt).
    b = hm.level(2200)
    assert (b.new_users, b.positions, b.collateral_base, b.debt_base) == (("B",), 2, 11_000 * E8, 9_440 * E8)
    assert hm.users_liquidatable_at(5000) == {"B", "D"}


def test_disabled_collateral_does_not_expose_a_position_to_the_asset() -> None:
    hm = _heatmap(F)
    assert (hm.positions, hm.collateral_exposed, hm.debt_exposed) == (1, 0, 0)
    assert all(lv.positions == 0 for lv in (hm.now, *hm.down, *hm.up))


def test_emode_threshold_moves_the_liquidation_level() -> None:
    # A in an eMode with an LT of 90% for WETH: HF 1.8; 1,800 × (1+m) < 1,000 from m < −44.4%.
    a = _position("A", 18 * 10**17, *A.reserves)
    hm = _heatmap(a, thresholds_bps={"A": {WETH: 9_000}})
    assert hm.unmodelled == ()
    assert hm.level(-4400).positions == 0
    assert hm.level(-4500).new_users == ("A",)


def test_position_whose_chain_health_disagrees_is_left_out_and_reported() -> None:
    wrong = _position("W", A.health.health_factor_wad + 1, *A.reserves)  # e.g. an unknown eMode
    hm = _heatmap(wrong, A)
    assert hm.unmodelled == ("W",)
    assert hm.positions == 1
    assert hm.level(-5000).positions == 1


def test_each_collateral_value_is_floored_before_summing() -> None:
    # X1 worth 62,499,999.8 and X2 62,500,000.8 base units: 125,000,000.6 unfloored (× 0.8 over the
    # 100,000,000 debt), 124,999,999 floored per asset like the pool (× 0.8 under it).
    x1 = ReservePosition(X1, 624_999_998 * 10**9, 0, True)
    x2 = ReservePosition(X2, 625_000_008 * 10**9, 0, True)
    p = _position("R", _hf(124_999_999 * 8_000, E8), x1, x2, _debt(USDC, 10**6))
    assert p.health.health_factor_wad == 999_999_992 * 10**9
    hm = build_heatmap([p], RESERVES, X1, steps=1, step_bps=100)
    assert hm.unmodelled == () and hm.now.new_users == ("R",)


def test_debt_value_is_rounded_up() -> None:
    # 1.25 X1 of collateral (100,000,000 × 1e4 weighted) against 1 DAI + 1 wei: the debt's value is
    # 100,000,000.0000000001 base units, rounded up to 100,000,001, so HF is just under 1.
    p = _position("R", _hf(125_000_000 * 8_000, E8 + 1), _coll(X1, 125 * 10**16), _debt(DAI, WAD + 1))
    assert p.health.health_factor_wad < WAD
    hm = build_heatmap([p], RESERVES, X1, steps=1, step_bps=100)
    assert hm.unmodelled == () and hm.now.positions == 1
    exact = _position("S", WAD, _coll(X1, 125 * 10**16), _debt(DAI, WAD))
    assert build_heatmap([exact], RESERVES, X1, steps=1, step_bps=100).now.positions == 0


def test_level_prices_truncate_like_the_devnet_shock() -> None:
    assert price_at(2_920_50_000000, -1_500) == 2_920_50_000000 * 85 // 100
    assert price_at(3, -5_000) == 1  # 1.5 truncated
    hm = _heatmap(A)
    assert [lv.move_bps for lv in hm.down[:3]] == [-100, -200, -300]
    assert hm.level(-1500).price_base == 1_700 * E8


def test_down_side_stops_short_of_a_zero_price() -> None:
    down, up = moves(60, 200)
    assert down[-1] == -9_800 and len(down) == 49
    assert up[-1] == 12_000 and len(up) == 60
    with pytest.raises(ValueError):
        moves(10, 0)


def test_positions_without_debt_are_not_counted() -> None:
    empty = Position("Z", 100, AccountHealth("Z", 100, 1_000 * E8, 0, 0, 0, 0, 2**256 - 1),
                     (_coll(WETH, WAD),), dict(PRICES))
    assert _heatmap(empty, A).positions == 1


def test_bar_grows_in_eighths_of_a_cell() -> None:
    assert bar(8, 8, width=4) == "████"
    assert bar(1, 8, width=4) == "▌"  # 1/8 of 4 cells = half a cell
    assert bar(5, 8, width=2) == "█▎"  # 10/8 cells
    assert bar(0, 8) == "" and bar(1, 10**9) == "▏"  # anything above zero shows


def test_render_shows_the_up_side_only_when_a_position_owes_the_asset() -> None:
    only_collateral = _heatmap(A, steps=5)
    assert [lv.move_bps for lv in rows(only_collateral)] == [0, -100, -200, -300, -400, -500]
    both = _heatmap(A, B, steps=2)
    assert [lv.move_bps for lv in rows(both)] == [200, 100, 0, -100, -200]
    table = render(both)
    assert table.row_count == 5
    assert "now" in table.columns[1]._cells
