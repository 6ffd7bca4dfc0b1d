"""An exact local mirror of Aave V3.6 account health, moved by logs only.

State kept (and where it comes from, see mirror_events.py for the event-level reasoning):
  per reserve   liquidity/variable-borrow index and rate, lastUpdateTimestamp (ReserveDataUpdated),
                id, decimals, LTV, LT (CollateralConfigurationChanged), oracle price (AnswerUpdated
                of its source) and source (AssetSourceUpdated)
  per category  eMode LTV/LT/bonus (EModeCategoryAdded) and collateral/ltvzero/borrowable bitmaps
  per user      scaled aToken and variable-debt balances per reserve (Mint/Burn/BalanceTransfer),
                collateral bits (ReserveUsedAsCollateralEnabled/Disabled), eMode (UserEModeSet)

Health is recomputed with `GenericLogic.calculateUserAccountData`'s integer operations, in its
rounding directions, at any timestamp: normalized income (linear) and debt (compounded, binomial
approximation) exactly as ReserveLogic/MathUtils, aToken balance `rayMulFloor`, debt `rayMulCeil`,
collateral value floored, debt value `mulDivCeil`, HF `wadDiv(sum(value*LT), debt) / 1e4`.

What the mirror cannot derive from a log it says so instead of guessing: a user whose event does not
fit its state (or who was never loaded) goes to `dirty_users`, a price that comes from the fallback
oracle or a new source goes to `dirty_prices`, a listing change sets `needs_rebootstrap`. The sync
layer (mirror_sync.py) re-reads those at the block the logs were applied to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from keeper.errors import KeeperError
from keeper.health import mirror_events as ev
from keeper.health.mirror_v30 import account_v30, move_scaled_v30
from keeper.log import get_logger
from keeper.protocol.math import (
    RAY,
    UINT256_MAX,
    WAD,
    a_token_balance,
    normalized_debt_ray,
    normalized_income_ray,
    ray_mul,
    scaled_from_balance,
    v_token_balance,
)
from keeper.protocol.math_v30 import compounded_interest_ray_v30
from keeper.types import AccountHealth, Address

log = get_logger(__name__)

PERCENTAGE_FACTOR = 10_000


# --- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReserveState:
    asset: Address
    id: int
    a_token: Address
    variable_debt_token: Address
    decimals: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidity_index_ray: int
    variable_borrow_index_ray: int
    liquidity_rate_ray: int
    variable_borrow_rate_ray: int
    last_update_timestamp: int
    price_base: int | None = None  # None: unknown (fallback oracle / new source) until re-read
    price_source: Address | None = None
    stable_debt_token: Address | None = None  # v3.0-v3.1 only
    compounding_v30: bool = False  # v3.0's MathUtils.calculateCompoundedInterest

    def normalized_income_ray(self, timestamp: int) -> int:
        return normalized_income_ray(self.liquidity_index_ray, self.liquidity_rate_ray,
                                     self.last_update_timestamp, timestamp)

    def normalized_debt_ray(self, timestamp: int) -> int:
        if self.compounding_v30 and timestamp != self.last_update_timestamp:
            growth = compounded_interest_ray_v30(self.variable_borrow_rate_ray, self.last_update_timestamp,
                                                 timestamp)
            return ray_mul(growth, self.variable_borrow_index_ray)
        return normalized_debt_ray(self.variable_borrow_index_ray, self.variable_borrow_rate_ray,
                                   self.last_update_timestamp, timestamp)

    def update_state(self, timestamp: int) -> None:
        """`ReserveLogic.updateState` without an event (the receiveAToken liquidation's collateral, v3.5+).

        The variable index moves only when the reserve has debt; the mirror does not track total
        debt and assumes it does. If it had none, no user's debt reads this index, and the next
        borrow's ReserveDataUpdated carries the pool's value.
        """
        if timestamp == self.last_update_timestamp:
            return
        if self.liquidity_rate_ray != 0:
            self.liquidity_index_ray = self.normalized_income_ray(timestamp)
        self.variable_borrow_index_ray = self.normalized_debt_ray(timestamp)
        self.last_update_timestamp = timestamp


@dataclass(slots=True)
class EModeCategory:
    id: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    collateral_bitmap: int = 0  # bit = reserve id
    borrowable_bitmap: int = 0
    ltvzero_bitmap: int = 0
    label: str = ""
    price_source_set: bool = False  # v3.0: the category prices its assets with its own oracle


@dataclass(slots=True)
class UserState:
    collateral_mask: int = 0  # bit i: reserve id i used as collateral (UserConfiguration bit 2i+1)
    emode: int = 0
    a_scaled: dict[int, int] = field(default_factory=dict)  # reserve id -> scaled aToken balance
    v_scaled: dict[int, int] = field(default_factory=dict)  # reserve id -> scaled variable debt
    # The index each token last stored for the user (`getPreviousIndex`), once known: lets the
    # mirror check an event's `balanceIncrease` against its own scaled balance.
    a_index: dict[int, int] = field(default_factory=dict)
    v_index: dict[int, int] = field(default_factory=dict)
    # v3.0-v3.1: reserve id -> (stable principal, the user's stable rate, the user's last update time)
    stable: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @staticmethod
    def collateral_mask_from_config(user_config: int) -> int:
        mask, i = 0, 0
        user_config >>= 1
        while user_config:
            if user_config & 1:
                mask |= 1 << i
            user_config >>= 2
            i += 1
        return mask


@dataclass(slots=True)
class Applied:
    """What a batch of events changed; `HealthMirror.affected(applied)` turns it into users."""

    events: int = 0
    users: set[Address] = field(default_factory=set)  # balances, collateral bits or eMode changed
    prices: set[Address] = field(default_factory=set)  # assets whose price changed
    reserves: set[Address] = field(default_factory=set)  # assets whose indexes/rates/LT changed
    emode_categories: set[int] = field(default_factory=set)
    dirty_users: set[Address] = field(default_factory=set)
    dirty_prices: set[Address] = field(default_factory=set)
    ignored: int = 0  # events from addresses the mirror does not route (spoofed or unknown)


class MirrorError(KeeperError):
    """An event the mirror cannot apply at all (e.g. a ReserveDataUpdated without a timestamp)."""


# --- the mirror -------------------------------------------------------------------------------


class HealthMirror:
    """Per-reserve, per-category and per-user state, updated by `apply`; health on demand."""

    def __init__(self, *, pool: Address, oracle: Address, configurator: Address | None,
                 block: int = 0, timestamp: int = 0, track_new_users: bool = True,
                 legacy: bool = False) -> None:
        self.pool = to_checksum_address(pool)
        self.oracle = to_checksum_address(oracle)
        self.configurator = to_checksum_address(configurator) if configurator else None
        self.block = block
        self.timestamp = timestamp
        self.track_new_users = track_new_users
        self.legacy = legacy  # v3.0-v3.1 pool: mirror_v30's health math, stable debt, one category per asset
        self._stable_tokens: dict[Address, ReserveState] = {}
        self.reserves: dict[Address, ReserveState] = {}
        self.emodes: dict[int, EModeCategory] = {}
        self.users: dict[Address, UserState] = {}
        self.dirty_users: set[Address] = set()
        self.dirty_prices: set[Address] = set()
        self.needs_rebootstrap = False
        self._by_id: dict[int, ReserveState] = {}
        self._tokens: dict[Address, tuple[ReserveState, bool]] = {}  # token -> (reserve, is_debt)
        self._sources: dict[Address, set[Address]] = {}  # price source -> assets it prices
        self._exposed: dict[int, set[Address]] = {}  # reserve id -> users whose HF reads its price
        self._user_exposure: dict[Address, frozenset[int]] = {}
        self._ctx: tuple[int, dict[int, tuple]] | None = None

    # -- loading (bootstrap / refresh) ---------------------------------------------------------

    def set_reserve(self, reserve: ReserveState) -> None:
        self.drop_reserve(reserve.asset)
        self.reserves[reserve.asset] = reserve
        self._by_id[reserve.id] = reserve
        self._tokens[reserve.a_token] = (reserve, False)
        self._tokens[reserve.variable_debt_token] = (reserve, True)
        if reserve.stable_debt_token:
            self._stable_tokens[reserve.stable_debt_token] = reserve
        self._map_source(reserve.asset, reserve.price_source)
        self._ctx = None

    def drop_reserve(self, asset: Address) -> None:
        old = self.reserves.pop(asset, None)
        if old is not None:
            self._tokens.pop(old.a_token, None)
            self._tokens.pop(old.variable_debt_token, None)
            self._stable_tokens.pop(old.stable_debt_token or "", None)
            if self._by_id.get(old.id) is old:
                del self._by_id[old.id]
            self._unmap_source(old.asset, old.price_source)
            self._ctx = None

    def set_emode_category(self, category: EModeCategory) -> None:
        self.emodes[category.id] = category
        self._ctx = None

    def set_user(self, user: Address, state: UserState) -> None:
        """Replace a user's state with one read from chain at `self.block` (clears dirty)."""
        self.users[user] = state
        self.dirty_users.discard(user)
        self._reindex(user, state)

    def set_price(self, asset: Address, price_base: int) -> None:
        self.reserves[asset].price_base = price_base
        self.dirty_prices.discard(asset)
        self._ctx = None

    def add_price_emitter(self, emitter: Address, asset: Address) -> None:
        """Also take `asset`'s price from `emitter`'s AnswerUpdated. For a source whose answer IS the
        price but whose events come from elsewhere (a Chainlink proxy's current aggregator). Sources
        that compute a price (CAPO, ratio adapters) have no such log: re-read those each block."""
        self._map_source(asset, to_checksum_address(emitter))

    def remove_price_emitter(self, emitter: Address, asset: Address) -> None:
        """Stop taking `asset`'s price from `emitter` (a proxy re-pointed, a source replaced)."""
        self._unmap_source(asset, to_checksum_address(emitter))

    def advance_to(self, block: int, timestamp: int) -> None:
        """Declare every log up to `block` applied; health defaults to this block's timestamp."""
        self.block, self.timestamp = block, timestamp

    # -- queries -------------------------------------------------------------------------------

    def reserve_by_id(self, reserve_id: int) -> ReserveState | None:
        return self._by_id.get(reserve_id)

    def token_addresses(self) -> list[Address]:
        return list(self._tokens)

    def price_sources(self) -> list[Address]:
        return list(self._sources)

    def log_addresses(self) -> list[Address]:
        """Every emitter of a log the mirror consumes: one eth_getLogs `address` list."""
        fixed = [self.pool, self.oracle] + ([self.configurator] if self.configurator else [])
        return list(dict.fromkeys([*fixed, *self._tokens, *self._stable_tokens, *self._sources]))

    def affected_by_price(self, asset: Address) -> set[Address]:
        """Users whose health reads `asset`'s price: debt in it, or it enabled as collateral with a
        non-zero balance. The same users are the ones its index changes move."""
        r = self.reserves.get(asset)
        return set(self._exposed.get(r.id, ())) if r is not None else set()

    def users_in_emode(self, category_id: int) -> set[Address]:
        return {u for u, s in self.users.items() if s.emode == category_id}

    def affected(self, applied: Applied) -> set[Address]:
        """Users whose health may differ after `applied` (at an unchanged timestamp)."""
        out = set(applied.users)
        for asset in applied.prices | applied.reserves:
            out |= self.affected_by_price(asset)
        for cat in applied.emode_categories:
            out |= self.users_in_emode(cat)
        return out - self.dirty_users

    # -- health --------------------------------------------------------------------------------

    def _context(self, timestamp: int) -> dict[int, tuple]:
        """Per reserve id: (income, debt index, price, unit, LT, LTV) at `timestamp`, cached."""
        if self._ctx is not None and self._ctx[0] == timestamp:
            return self._ctx[1]
        ctx = {
            r.id: (r.normalized_income_ray(timestamp), r.normalized_debt_ray(timestamp), r.price_base,
                   10**r.decimals, r.liquidation_threshold_bps, r.ltv_bps)
            for r in self.reserves.values()
        }
        self._ctx = (timestamp, ctx)
        return ctx

    def health(self, user: Address, timestamp: int | None = None, *,
               block: int | None = None) -> AccountHealth | None:
        """`getUserAccountData(user)` as the pool would answer it at `timestamp` (default: the
        mirror's block). None when the mirror cannot know: user dirty or unknown, price unknown."""
        if user in self.dirty_users:
            return None
        state = self.users.get(user)
        if state is None:
            return None
        ts = self.timestamp if timestamp is None else timestamp
        return self._account(user, state, self._context(ts), self.block if block is None else block, ts)

    def recompute(self, users: Iterable[Address] | None = None, timestamp: int | None = None, *,
                  block: int | None = None) -> dict[Address, AccountHealth]:
        """Health of `users` (default: every clean user); users the mirror cannot compute are left out."""
        ts = self.timestamp if timestamp is None else timestamp
        blk = self.block if block is None else block
        ctx = self._context(ts)
        out: dict[Address, AccountHealth] = {}
        dirty, states = self.dirty_users, self.users
        for u in (states if users is None else users):
            if u in dirty:
                continue
            s = states.get(u)
            if s is None:
                continue
            h = self._account(u, s, ctx, blk, ts)
            if h is not None:
                out[u] = h
        return out

    def _account(self, user: Address, u: UserState, ctx: Mapping[int, tuple],
                 block: int, timestamp: int) -> AccountHealth | None:
        """GenericLogic.calculateUserAccountData + calculateAvailableBorrows, integer for integer."""
        if self.legacy:
            return account_v30(self, user, u, ctx, timestamp, block)
        em_lt = em_ltv = em_coll = em_zero = 0
        in_emode = False
        if u.emode:
            cat = self.emodes.get(u.emode)
            if cat is not None:
                in_emode = True
                em_lt, em_ltv = cat.liquidation_threshold_bps, cat.ltv_bps
                em_coll, em_zero = cat.collateral_bitmap, cat.ltvzero_bitmap
        total_collateral = weighted_lt = weighted_ltv = 0
        bits = u.collateral_mask
        a_scaled = u.a_scaled
        while bits:
            low = bits & -bits
            rid = low.bit_length() - 1
            bits ^= low
            rc = ctx.get(rid)
            if rc is None:  # reservesList[i] == address(0): a dropped reserve is skipped
                continue
            income, _, price, unit, lt, ltv = rc
            if price is None:
                return None
            value = (a_scaled.get(rid, 0) * income // RAY) * price // unit
            total_collateral += value
            if in_emode and (em_coll >> rid) & 1:
                lt = em_lt
                ltv = 0 if (em_zero >> rid) & 1 else em_ltv
            if ltv:
                weighted_ltv += value * ltv
            weighted_lt += value * lt
        total_debt = 0
        for rid, s in u.v_scaled.items():
            if not s:
                continue
            rc = ctx.get(rid)
            if rc is None:
                continue
            price = rc[2]
            if price is None:
                return None
            debt = -(-(s * rc[1]) // RAY)
            total_debt += -(-(debt * price) // rc[3])
        if total_debt == 0:
            hf = UINT256_MAX
        else:
            hf = ((weighted_lt * WAD + total_debt // 2) // total_debt) // PERCENTAGE_FACTOR
        if total_collateral:
            avg_ltv = weighted_ltv // total_collateral
            avg_lt = weighted_lt // total_collateral
        else:
            avg_ltv = avg_lt = 0
        borrowable = total_collateral * avg_ltv // PERCENTAGE_FACTOR
        available = borrowable - total_debt if borrowable > total_debt else 0
        return AccountHealth(user, block, total_collateral, total_debt, available, avg_lt, avg_ltv, hf)

    # -- applying events -----------------------------------------------------------------------

    def apply_logs(self, logs: Iterable[Mapping[str, Any]],
                   timestamps: Mapping[int, int] | None = None) -> Applied:
        """Decode, order and apply raw eth_getLogs entries. Does not move `self.block`."""
        return self.apply_all(ev.decode_logs(logs, timestamps))

    def apply_all(self, events: Sequence[ev.MirrorEvent]) -> Applied:
        applied = Applied()
        for e in events:
            self.apply(e, applied)
        return applied

    def apply(self, e: ev.MirrorEvent, applied: Applied | None = None) -> Applied:
        """Apply one event (in chain order). Events from addresses that may not emit them are ignored."""
        applied = applied if applied is not None else Applied()
        applied.events += 1
        handler = _HANDLERS.get(type(e))
        if handler is None or not handler(self, e, applied):
            applied.ignored += 1
        return applied

    # Each handler returns False when the event is not for the mirror (wrong emitter, unknown asset).

    def _on_reserve_data(self, e: ev.ReserveDataUpdated, applied: Applied) -> bool:
        r = self.reserves.get(e.asset)
        if e.emitter != self.pool or r is None:
            return False
        if e.timestamp is None:
            raise MirrorError(f"ReserveDataUpdated at block {e.block} needs its block timestamp")
        r.liquidity_rate_ray = e.liquidity_rate_ray
        r.variable_borrow_rate_ray = e.variable_borrow_rate_ray
        r.liquidity_index_ray = e.liquidity_index_ray
        r.variable_borrow_index_ray = e.variable_borrow_index_ray
        r.last_update_timestamp = e.timestamp
        applied.reserves.add(r.asset)
        self._ctx = None
        return True

    def _on_liquidation(self, e: ev.LiquidationCall, applied: Applied) -> bool:
        if e.emitter != self.pool:
            return False
        r = self.reserves.get(e.collateral_asset)
        # v3.0-v3.1 (`_liquidateATokens` of @aave/core-v3 1.19) only transfers the aTokens: the
        # collateral reserve is not updated at all, and replaying updateState would move its indexes
        # off the pool's (linear and compounded interest are not associative).
        if e.receive_a_token and r is not None and not self.legacy:
            # The collateral reserve got updateState() but no updateInterestRates(): no event.
            if e.timestamp is None:
                raise MirrorError(f"LiquidationCall at block {e.block} needs its block timestamp")
            if r.last_update_timestamp != e.timestamp:
                r.update_state(e.timestamp)
                applied.reserves.add(r.asset)
                self._ctx = None
        return True

    def _user(self, user: Address, applied: Applied) -> UserState | None:
        """The user's state to update, or None if it is dirty (to be re-read) or just became so."""
        if user in self.dirty_users:
            return None
        s = self.users.get(user)
        if s is None:
            if self.track_new_users:
                self.dirty_users.add(user)
                applied.dirty_users.add(user)
            return None
        return s

    def _mark_dirty(self, user: Address, applied: Applied, why: str, **kw: Any) -> None:
        log.warning("health.mirror_user_dirty", user=user, why=why, **kw)
        self.dirty_users.add(user)
        applied.dirty_users.add(user)

    def _on_stable_debt(self, e: ev.StableDebtMoved, applied: Applied) -> bool:
        if e.emitter not in self._stable_tokens:
            return False
        if self._user(e.user, applied) is not None:  # principal, rate and timestamp: re-read them
            self.dirty_users.add(e.user)
            applied.dirty_users.add(e.user)
        return True

    def _on_collateral(self, e: ev.CollateralToggled, applied: Applied) -> bool:
        r = self.reserves.get(e.asset)
        if e.emitter != self.pool or r is None:
            return False
        s = self._user(e.user, applied)
        if s is not None:
            if e.enabled:
                s.collateral_mask |= 1 << r.id
            else:
                s.collateral_mask &= ~(1 << r.id)
            self._touched(e.user, s, applied)
        return True

    def _on_user_emode(self, e: ev.UserEModeSet, applied: Applied) -> bool:
        if e.emitter != self.pool:
            return False
        s = self._user(e.user, applied)
        if s is not None:
            s.emode = e.category_id
            self._touched(e.user, s, applied)
        return True

    def _on_mint(self, e: ev.ScaledMint, applied: Applied) -> bool:
        token = self._tokens.get(e.emitter)
        if token is None:
            return False
        r, debt = token
        s = self._user(e.on_behalf_of, applied)
        if s is not None:
            # balance(s_new, index) - balance(s_old, index) = value - balanceIncrease
            self._move_scaled(e.on_behalf_of, s, r, debt, e.value - e.balance_increase,
                              e.balance_increase, e.index_ray, applied)
        return True

    def _on_burn(self, e: ev.ScaledBurn, applied: Applied) -> bool:
        token = self._tokens.get(e.emitter)
        if token is None:
            return False
        r, debt = token
        s = self._user(e.user, applied)
        if s is not None:
            self._move_scaled(e.user, s, r, debt, -e.value - e.balance_increase, e.balance_increase,
                              e.index_ray, applied)
        return True

    def _move_scaled(self, user: Address, s: UserState, r: ReserveState, debt: bool, delta: int,
                     balance_increase: int, index: int, applied: Applied) -> None:
        scaled = s.v_scaled if debt else s.a_scaled
        indexes = s.v_index if debt else s.a_index
        balance = v_token_balance if debt else a_token_balance
        old = scaled.get(r.id, 0)
        prev_index = indexes.get(r.id)
        if self.legacy:
            new = move_scaled_v30(old, delta, balance_increase, index, prev_index)
        elif prev_index is not None and balance(old, index) - balance(old, prev_index) != balance_increase:
            self._mark_dirty(user, applied, "balance_increase_mismatch", asset=r.asset, debt=debt)
            return
        else:
            new = scaled_from_balance(balance(old, index) + delta, index, debt=debt)
        if new is None:
            self._mark_dirty(user, applied, "no_exact_scaled_amount", asset=r.asset, debt=debt)
            return
        if new:
            scaled[r.id] = new
        else:
            scaled.pop(r.id, None)
        indexes[r.id] = index
        self._touched(user, s, applied)

    def _on_balance_transfer(self, e: ev.BalanceTransfer, applied: Applied) -> bool:
        token = self._tokens.get(e.emitter)
        if token is None or token[1]:  # debt tokens cannot be transferred
            return False
        r = token[0]
        if e.sender == e.recipient:
            s = self._user(e.sender, applied)
            if s is not None:
                s.a_index[r.id] = e.index_ray
            return True
        sender = self._user(e.sender, applied)
        if sender is not None:
            left = sender.a_scaled.get(r.id, 0) - e.scaled_amount
            if left < 0:
                self._mark_dirty(e.sender, applied, "transfer_exceeds_balance", asset=r.asset)
            else:
                if left:
                    sender.a_scaled[r.id] = left
                else:
                    sender.a_scaled.pop(r.id, None)
                sender.a_index[r.id] = e.index_ray
                self._touched(e.sender, sender, applied)
        recipient = self._user(e.recipient, applied)
        if recipient is not None:
            recipient.a_scaled[r.id] = recipient.a_scaled.get(r.id, 0) + e.scaled_amount
            recipient.a_index[r.id] = e.index_ray
            self._touched(e.recipient, recipient, applied)
        return True

    def _on_collateral_config(self, e: ev.CollateralConfigChanged, applied: Applied) -> bool:
        r = self.reserves.get(e.asset)
        if e.emitter != self.configurator or r is None:
            return False
        r.ltv_bps = e.ltv_bps
        r.liquidation_threshold_bps = e.liquidation_threshold_bps
        applied.reserves.add(r.asset)
        self._ctx = None
        return True

    def _on_emode_category(self, e: ev.EModeCategorySet, applied: Applied) -> bool:
        if e.emitter != self.configurator:
            return False
        cat = self.emodes.get(e.category_id)
        if cat is None:
            cat = self.emodes[e.category_id] = EModeCategory(e.category_id, 0, 0, 0)
        cat.ltv_bps, cat.liquidation_threshold_bps = e.ltv_bps, e.liquidation_threshold_bps
        cat.liquidation_bonus_bps, cat.label = e.liquidation_bonus_bps, e.label
        applied.emode_categories.add(e.category_id)
        return True

    def _on_emode_flag(self, e: ev.EModeAssetFlag, applied: Applied) -> bool:
        r = self.reserves.get(e.asset)
        if e.emitter != self.configurator or r is None:
            return False
        cat = self.emodes.get(e.category_id)
        if cat is None:
            cat = self.emodes[e.category_id] = EModeCategory(e.category_id, 0, 0, 0)
        name = f"{e.kind}_bitmap"
        bitmap = getattr(cat, name)
        setattr(cat, name, bitmap | (1 << r.id) if e.enabled else bitmap & ~(1 << r.id))
        applied.emode_categories.add(e.category_id)
        return True

    def _on_reserve_list(self, e: ev.ReserveListChanged, applied: Applied) -> bool:
        if e.emitter != self.configurator:
            return False
        # A new listing's id, tokens and balances (and a dropped one's slot reuse) are re-read whole.
        self.needs_rebootstrap = True
        log.info("health.mirror_reserve_list_changed", asset=e.asset, kind=e.kind, block=e.block)
        return True

    def _on_asset_source(self, e: ev.AssetSourceUpdated, applied: Applied) -> bool:
        r = self.reserves.get(e.asset)
        if e.emitter != self.oracle or r is None:
            return False
        self._unmap_source(r.asset, r.price_source)
        r.price_source = e.source
        self._map_source(r.asset, e.source)
        # The new source's current answer is not in this log: re-read the oracle.
        self._price_unknown(r, applied)
        return True

    def _on_fallback_oracle(self, e: ev.FallbackOracleUpdated, applied: Applied) -> bool:
        if e.emitter != self.oracle:
            return False
        for r in self.reserves.values():
            if r.price_source is None or r.asset in self.dirty_prices:
                self._price_unknown(r, applied)
        return True

    def _on_answer(self, e: ev.AnswerUpdated, applied: Applied) -> bool:
        assets = self._sources.get(e.emitter)
        if not assets:
            return False
        for asset in assets:
            r = self.reserves[asset]
            if e.answer > 0:  # AaveOracle: latestAnswer() > 0, else the fallback oracle
                if r.price_base != e.answer:
                    r.price_base = e.answer
                    applied.prices.add(asset)
                    self._ctx = None
            else:
                self._price_unknown(r, applied)
        return True

    def _price_unknown(self, r: ReserveState, applied: Applied) -> None:
        r.price_base = None
        self.dirty_prices.add(r.asset)
        applied.dirty_prices.add(r.asset)
        applied.prices.add(r.asset)
        self._ctx = None

    # -- indexes -------------------------------------------------------------------------------

    def _map_source(self, asset: Address, source: Address | None) -> None:
        if source is not None and int(source, 16) != 0:
            self._sources.setdefault(source, set()).add(asset)

    def _unmap_source(self, asset: Address, source: Address | None) -> None:
        if source is not None and source in self._sources:
            self._sources[source].discard(asset)
            if not self._sources[source]:
                del self._sources[source]

    def _touched(self, user: Address, s: UserState, applied: Applied) -> None:
        applied.users.add(user)
        self._reindex(user, s)

    def _reindex(self, user: Address, s: UserState) -> None:
        exposure = {rid for rid, v in s.v_scaled.items() if v} | set(s.stable)
        bits = s.collateral_mask
        while bits:
            low = bits & -bits
            rid = low.bit_length() - 1
            bits ^= low
            if s.a_scaled.get(rid):
                exposure.add(rid)
        new = frozenset(exposure)
        old = self._user_exposure.get(user, frozenset())
        if new == old:
            return
        for rid in old - new:
            self._exposed.get(rid, set()).discard(user)
        for rid in new - old:
            self._exposed.setdefault(rid, set()).add(user)
        self._user_exposure[user] = new


_HANDLERS: dict[type, Any] = {
    ev.ReserveDataUpdated: HealthMirror._on_reserve_data,
    ev.LiquidationCall: HealthMirror._on_liquidation,
    ev.CollateralToggled: HealthMirror._on_collateral,
    ev.UserEModeSet: HealthMirror._on_user_emode,
    ev.ScaledMint: HealthMirror._on_mint,
    ev.ScaledBurn: HealthMirror._on_burn,
    ev.BalanceTransfer: HealthMirror._on_balance_transfer,
    ev.CollateralConfigChanged: HealthMirror._on_collateral_config,
    ev.EModeCategorySet: HealthMirror._on_emode_category,
    ev.EModeAssetFlag: HealthMirror._on_emode_flag,
    ev.ReserveListChanged: HealthMirror._on_reserve_list,
    ev.AssetSourceUpdated: HealthMirror._on_asset_source,
    ev.FallbackOracleUpdated: HealthMirror._on_fallback_oracle,
    ev.AnswerUpdated: HealthMirror._on_answer,
    ev.StableDebtMoved: HealthMirror._on_stable_debt,
}
