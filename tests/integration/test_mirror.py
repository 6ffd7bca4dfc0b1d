"""The exact health mirror against the real Aave V3.6 bytecode on Anvil.

The done-when test drives a seeded random sequence of every action that moves account health,
bootstraps the mirror part-way through, then feeds it only the logs since, and asserts that every
field of `getUserAccountData` matches the mirror to the wei at several checkpoints.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from eth_abi import encode
from eth_utils import to_checksum_address

from keeper.chain.multicall import multicall
from keeper.devnet.aave import ASSETS
from keeper.devnet.aave30 import STABLE_RATE_ASSETS
from keeper.devnet.seed import SEL_DEPOSIT, SEL_MINT
from keeper.devnet.stack import KEEPER_ADDRESS, Devnet, launch
from keeper.health.mirror import HealthMirror
from keeper.health.mirror_events import RESERVE_DATA_UPDATED, SCALED_MINT
from keeper.health.mirror_sync import (
    bootstrap,
    catch_up,
    fetch_logs,
    reconcile,
    refresh_users,
)
from keeper.protocol.aave_v3 import GET_RESERVE_DATA, discover_market, read_account_data
from keeper.protocol.abi import Fn, fn
from keeper.types import Market

UINT256_MAX = 2**256 - 1
SPECS = {s.symbol: s for s in ASSETS}
SYMBOLS = [s.symbol for s in ASSETS]

SUPPLY = fn("Pool", "supply")
BORROW = fn("Pool", "borrow")
REPAY = fn("Pool", "repay")
REPAY_WITH_ATOKENS = fn("Pool", "repayWithATokens")
WITHDRAW = fn("Pool", "withdraw")
SET_COLLATERAL = fn("Pool", "setUserUseReserveAsCollateral")
SET_EMODE = fn("Pool", "setUserEMode")
LIQUIDATE = fn("Pool", "liquidationCall")
TRANSFER = fn("ERC20", "transfer")
APPROVE = fn("ERC20", "approve")
BALANCE_OF = fn("ERC20", "balanceOf")
TOTAL_SUPPLY = fn("ERC20", "totalSupply")
SET_EMODE_CATEGORY = fn("PoolConfigurator", "setEModeCategory")
SET_COLLATERAL_IN_EMODE = fn("PoolConfigurator", "setAssetCollateralInEMode")
SET_BORROWABLE_IN_EMODE = fn("PoolConfigurator", "setAssetBorrowableInEMode")
CONFIGURE_COLLATERAL = fn("PoolConfigurator", "configureReserveAsCollateral")
SET_RESERVE_FACTOR = fn("PoolConfigurator", "setReserveFactor")
SET_ANSWER = fn("DevnetPriceFeed", "setAnswer")
GET_TREASURY = fn("AToken", "RESERVE_TREASURY_ADDRESS")
SET_ASSET_SOURCES = fn("AaveOracle", "setAssetSources")


@pytest.fixture(scope="module")
async def devnet() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=40, seed=11)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture
async def chain(devnet: Devnet) -> AsyncIterator[Devnet]:
    """The module's devnet, reverted to its seeded state after each test."""
    snap = await devnet.rpc.call("evm_snapshot", [])
    try:
        yield devnet
    finally:
        await devnet.rpc.call("evm_setAutomine", [True])
        await devnet.rpc.call("evm_revert", [snap])


@pytest.fixture(params=["3.6", "3.0"], ids=["v3.6", "v3.0"])
def walk_devnet(request: pytest.FixtureRequest) -> Devnet:
    """The random walk's market: this module's v3.6 devnet, or the session's v3.0 one (stable debt)."""
    return request.getfixturevalue("devnet" if request.param == "3.6" else "devnet30")


@pytest.fixture
async def walk_chain(walk_devnet: Devnet) -> AsyncIterator[Devnet]:
    dn = walk_devnet
    snap = await dn.rpc.call("evm_snapshot", [])
    try:
        yield dn
    finally:
        await dn.rpc.call("evm_setAutomine", [True])
        await dn.rpc.call("evm_revert", [snap])
        await dn.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])


@pytest.fixture
async def market(chain: Devnet) -> Market:
    return await discover_market(chain.rpc, chain.deployment.pool_addresses_provider)


def _healthiest(dn: Devnet, n: int) -> list[str]:
    """Seeded borrowers with the most headroom: a small extra borrow always passes validation."""
    return [p.address for p in sorted(dn.plans, key=lambda p: -p.target_hf_bps)[:n]]


def _newcomer(i: int) -> str:
    return to_checksum_address(f"0x{0xC0FFEE000 + i:040x}")


@dataclass
class Scenario:
    """Sends the random actions. Amounts are sized from on-chain reads so most succeed; a revert
    is fine (no logs), and `ok` counts only mined successes per kind."""

    dn: Devnet
    rng: random.Random
    actors: list[str]
    prices: dict[str, int] = field(default_factory=lambda: {s: SPECS[s].price_e8 for s in SYMBOLS})
    ok: Counter = field(default_factory=Counter)
    sent: Counter = field(default_factory=Counter)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (kind, tx hash) not yet counted
    batching: bool = False
    admin_turn: int = 0

    @property
    def rpc(self):
        return self.dn.rpc

    @property
    def d(self):
        return self.dn.deployment

    async def setup(self) -> None:
        d = self.d
        await self.rpc.call("anvil_autoImpersonateAccount", [True])
        holders = [*self.actors, KEEPER_ADDRESS]
        for a in holders:
            await self.rpc.call("anvil_setBalance", [a, hex(10**24)])
        for a in self.actors:
            for s in SYMBOLS:
                amount = 10_000_000 * 10 ** SPECS[s].decimals * 10**8 // SPECS[s].price_e8
                if s == "WETH":
                    await self._tx("fund", a, d.assets[s], SEL_DEPOSIT, value=amount)
                else:
                    await self._tx("fund", d.deployer, d.assets[s],
                                   SEL_MINT + encode(["address", "uint256"], [a, amount]))
        for a in holders:
            for s in SYMBOLS:
                await self._tx("fund", a, d.assets[s], APPROVE.encode(d.pool, UINT256_MAX))
        assert self.ok["fund"] == self.sent["fund"], "funding the actors failed"

    async def tighten_liquidity(self, utilization_pct: int = 85) -> None:
        """The deployer pulls most of its seed liquidity so every reserve runs at high utilization:
        double-digit rates make any interest or rounding slip visible in base-currency units."""
        d = self.d
        for s in SYMBOLS:
            (supplied,) = await self._call(d.a_tokens[s], TOTAL_SUPPLY)
            (debt,) = await self._call(d.debt_tokens[s], TOTAL_SUPPLY)
            (own,) = await self._call(d.a_tokens[s], BALANCE_OF, d.deployer)
            amount = min(own - 1, supplied - debt * 100 // utilization_pct)
            await self._tx("tighten", d.deployer, d.pool, WITHDRAW.encode(d.assets[s], amount, d.deployer))
        assert self.ok["tighten"] == len(SYMBOLS)

    # -- plumbing -------------------------------------------------------------------------------

    async def _tx(self, kind: str, sender: str, to: str, data: bytes, value: int = 0) -> None:
        tx = {"from": sender, "to": to, "data": "0x" + data.hex(), "value": hex(value),
              "gas": hex(3_000_000)}
        h = await self.rpc.call("eth_sendTransaction", [tx])
        self.sent[kind] += 1
        self.pending.append((kind, h))
        if not self.batching:
            await self.settle()

    async def settle(self) -> None:
        for kind, h in self.pending:
            receipt = await self.rpc.wait_for_receipt(h, timeout=30, poll_interval=0.005)
            if int(receipt["status"], 16) == 1:
                self.ok[kind] += 1
        self.pending.clear()

    async def _call(self, to: str, f, *args):
        return f.decode(await self.rpc.eth_call(to, f.encode(*args)))

    async def _balances(self, user: str) -> tuple[dict[str, int], dict[str, int]]:
        d = self.d
        calls = [(d.a_tokens[s], BALANCE_OF.encode(user)) for s in SYMBOLS]
        calls += [(d.debt_tokens[s], BALANCE_OF.encode(user)) for s in SYMBOLS]
        res = await multicall(self.rpc, calls)
        vals = [BALANCE_OF.decode_one(r[1]) for r in res]
        n = len(SYMBOLS)
        return dict(zip(SYMBOLS, vals[:n], strict=True)), dict(zip(SYMBOLS, vals[n:], strict=True))

    def _units(self, symbol: str, usd: float) -> int:
        return int(usd * 10**8) * 10 ** SPECS[symbol].decimals // self.prices[symbol]

    def _fraction(self, amount: int) -> int:
        return amount * self.rng.randint(5, 95) // 100

    # -- user actions ---------------------------------------------------------------------------

    async def supply(self) -> None:
        user, s = self.rng.choice(self.actors), self.rng.choice(SYMBOLS)
        amount = self._units(s, self.rng.uniform(50, 50_000))
        await self._tx("supply", user, self.d.pool, SUPPLY.encode(self.d.assets[s], amount, user, 0))

    async def borrow(self) -> None:
        user, s = self.rng.choice(self.actors), self.rng.choice(SYMBOLS)
        (data,) = [await self._call(self.d.pool, fn("Pool", "getUserAccountData"), user)]
        available_base = data[2]
        if available_base == 0:
            return
        amount = available_base * self.rng.randint(10, 95) // 100 * 10 ** SPECS[s].decimals // self.prices[s]
        if amount:
            await self._tx("borrow", user, self.d.pool,
                           BORROW.encode(self.d.assets[s], amount, 2, 0, user))

    async def repay(self, with_a_tokens: bool = False) -> None:
        user = self.rng.choice(self.actors)
        coll, debt = await self._balances(user)
        choices = [s for s in SYMBOLS if debt[s]]
        if not choices:
            return
        s = self.rng.choice(choices)
        amount = UINT256_MAX if self.rng.random() < 0.3 else self._fraction(debt[s]) or 1
        if not with_a_tokens:
            await self._tx("repay", user, self.d.pool, REPAY.encode(self.d.assets[s], amount, 2, user))
            return
        if not coll[s]:  # repaying with aTokens needs a supply of the debt asset first
            await self._tx("supply", user, self.d.pool,
                           SUPPLY.encode(self.d.assets[s], debt[s] // 2 + 1, user, 0))
        await self._tx("repay_with_atokens", user, self.d.pool,
                       REPAY_WITH_ATOKENS.encode(self.d.assets[s], amount, 2))

    async def withdraw(self) -> None:
        user = self.rng.choice(self.actors)
        coll, _ = await self._balances(user)
        choices = [s for s in SYMBOLS if coll[s]]
        if not choices:
            return
        s = self.rng.choice(choices)
        amount = UINT256_MAX if self.rng.random() < 0.3 else self._fraction(coll[s]) or 1
        await self._tx("withdraw", user, self.d.pool, WITHDRAW.encode(self.d.assets[s], amount, user))

    async def transfer(self) -> None:
        user = self.rng.choice(self.actors)
        to = self.rng.choice([a for a in self.actors if a != user])
        coll, _ = await self._balances(user)
        choices = [s for s in SYMBOLS if coll[s]]
        if not choices:
            return
        s = self.rng.choice(choices)
        amount = coll[s] if self.rng.random() < 0.3 else self._fraction(coll[s]) or 1
        await self._tx("transfer", user, self.d.a_tokens[s], TRANSFER.encode(to, amount))

    async def toggle_collateral(self) -> None:
        user = self.rng.choice(self.actors)
        coll, _ = await self._balances(user)
        choices = [s for s in SYMBOLS if coll[s]]
        if not choices:
            return
        s = self.rng.choice(choices)
        await self._tx("toggle", user, self.d.pool,
                       SET_COLLATERAL.encode(self.d.assets[s], self.rng.random() < 0.5))

    async def set_emode(self) -> None:
        user = self.rng.choice(self.actors)
        await self._tx("emode", user, self.d.pool, SET_EMODE.encode(self.rng.choice([0, 1, 2, 2])))

    async def liquidate(self) -> None:
        borrowers = [a for a in self.actors]
        healths = await read_account_data(self.rpc, self.d.pool, borrowers, await self.rpc.block_number())
        liquidatable = [h.user for h in healths if h.total_debt_base and h.health_factor_wad < 10**18]
        if not liquidatable:
            # Push a collateral price down so a later step has someone to liquidate.
            await self.move_price(self.rng.choice(["WETH", "WBTC", "LINK"]), -self.rng.randint(15, 30))
            return
        user = self.rng.choice(liquidatable)
        coll, debt = await self._balances(user)
        colls = [s for s in SYMBOLS if coll[s]]
        debts = [s for s in SYMBOLS if debt[s]]
        if not colls or not debts:
            return
        c, b = self.rng.choice(colls), self.rng.choice(debts)
        amount = UINT256_MAX if self.rng.random() < 0.5 else self._fraction(debt[b]) or 1
        receive = self.rng.random() < 0.5
        kind = f"liquidate_receive_a_token_{receive}"
        await self._tx(kind, KEEPER_ADDRESS, self.d.pool,
                       LIQUIDATE.encode(self.d.assets[c], self.d.assets[b], user, amount, receive))

    # -- market actions -------------------------------------------------------------------------

    async def move_price(self, symbol: str | None = None, pct: int | None = None) -> None:
        s = symbol or self.rng.choice(SYMBOLS)
        pct = self.rng.randint(-12, 12) if pct is None else pct
        base = SPECS[s].price_e8
        new = min(max(self.prices[s] * (100 + pct) // 100, base * 45 // 100), base * 16 // 10)
        self.prices[s] = new
        await self._tx("price", self.d.deployer, self.d.feeds[s], SET_ANSWER.encode(new))

    async def time_jump(self) -> None:
        seconds = self.rng.choice([self.rng.randint(1, 3_600), self.rng.randint(3_600, 90 * 86_400)])
        await self.rpc.call("evm_increaseTime", [hex(seconds)])
        await self.rpc.call("evm_mine", [])
        self.ok["time"] += 1

    async def create_emode(self, category: int) -> None:
        d, cfg = self.d, self.d.pool_configurator

        async def admin(data: bytes) -> None:
            await self._tx("admin", d.deployer, cfg, data)

        if category == 1:  # stablecoins
            await admin(SET_EMODE_CATEGORY.encode(1, 9000, 9300, 10200, "stables"))
            members = ["USDC", "DAI"]
            borrowable = ["USDC", "DAI"]
        else:  # majors against stables
            await admin(SET_EMODE_CATEGORY.encode(2, 8500, 8800, 10400, "majors"))
            members = ["WETH", "WBTC"]
            borrowable = ["USDC", "DAI", "WETH", "WBTC"]
        for s in members:
            await admin(SET_COLLATERAL_IN_EMODE.encode(d.assets[s], category, True))
        for s in borrowable:
            await admin(SET_BORROWABLE_IN_EMODE.encode(d.assets[s], category, True))

    async def admin(self) -> None:
        d, cfg = self.d, self.d.pool_configurator
        what = ("lt", "reserve_factor", "emode_lt", "emode_member")[self.admin_turn % 4]
        self.admin_turn += 1
        if what == "lt":
            s = self.rng.choice(SYMBOLS)
            spec = SPECS[s]
            lt = spec.liquidation_threshold_bps - self.rng.choice([0, 100, 200, 300])
            ltv = min(spec.ltv_bps, lt - 100)
            await self._tx("admin_lt", d.deployer, cfg,
                           CONFIGURE_COLLATERAL.encode(d.assets[s], ltv, lt, spec.liquidation_bonus_bps))
        elif what == "reserve_factor":
            s = self.rng.choice(SYMBOLS)
            await self._tx("admin_rf", d.deployer, cfg,
                           SET_RESERVE_FACTOR.encode(d.assets[s], self.rng.randint(500, 3_000)))
        elif what == "emode_lt":
            lt = self.rng.choice([8700, 8800, 8900])
            await self._tx("admin_emode", d.deployer, cfg,
                           SET_EMODE_CATEGORY.encode(2, 8500, lt, 10400, "majors"))
        else:
            await self._tx("admin_emode", d.deployer, cfg,
                           SET_COLLATERAL_IN_EMODE.encode(d.assets["LINK"], 2, self.rng.random() < 0.5))

    # -- the random walk ------------------------------------------------------------------------

    USER_ACTIONS: ClassVar[tuple[str, ...]] = (
        "supply", "borrow", "repay", "repay_with_atokens", "withdraw", "transfer", "toggle_collateral",
        "set_emode", "liquidate")
    WEIGHTS: ClassVar[dict[str, int]] = {
        "supply": 10, "borrow": 12, "repay": 8, "repay_with_atokens": 5, "withdraw": 8, "transfer": 8,
        "toggle_collateral": 8, "set_emode": 6, "liquidate": 10, "move_price": 10, "time_jump": 6, "admin": 6,
        "batch": 6}

    async def run(self, name: str) -> None:
        if name == "repay_with_atokens":
            await self.repay(with_a_tokens=True)
        else:
            await getattr(self, name)()

    async def step(self) -> None:
        names, weights = zip(*self.WEIGHTS.items(), strict=True)
        name = self.rng.choices(names, weights)[0]
        if name != "batch":
            await self.run(name)
            return
        # Several transactions in one block: same timestamp, several updates of one reserve.
        await self.rpc.call("evm_setAutomine", [False])
        self.batching = True
        try:
            for _ in range(self.rng.randint(2, 5)):
                await self.run(self.rng.choice([*self.USER_ACTIONS, "move_price"]))
            await self.rpc.call("evm_mine", [])
        finally:
            self.batching = False
            await self.rpc.call("evm_setAutomine", [True])
        await self.settle()
        self.ok["batch"] += 1


SET_EMODE_CATEGORY_V30 = Fn("setEModeCategory", ("uint8", "uint16", "uint16", "uint16", "address", "string"),
                            ())
SET_ASSET_EMODE_CATEGORY_V30 = Fn("setAssetEModeCategory", ("address", "uint8"), ())
ZERO_ADDRESS = "0x" + "00" * 20


class ScenarioV30(Scenario):
    """The same walk on Aave v3.0: stable-rate borrows and repays, and v3.0's eMode administration
    (a category with an oracle slot; each asset in exactly one category)."""

    async def tighten_liquidity(self, utilization_pct: int = 85) -> None:
        d = self.d
        for s in SYMBOLS:
            (supplied,) = await self._call(d.a_tokens[s], TOTAL_SUPPLY)
            (variable,) = await self._call(d.debt_tokens[s], TOTAL_SUPPLY)
            (stable,) = await self._call(d.stable_debt_tokens[s], TOTAL_SUPPLY)
            (own,) = await self._call(d.a_tokens[s], BALANCE_OF, d.deployer)
            amount = min(own - 1, supplied - (variable + stable) * 100 // utilization_pct)
            await self._tx("tighten", d.deployer, d.pool, WITHDRAW.encode(d.assets[s], amount, d.deployer))
        assert self.ok["tighten"] == len(SYMBOLS)

    async def _by_mode(self, user: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        coll, variable = await super()._balances(user)
        tokens = [self.d.stable_debt_tokens[s] for s in SYMBOLS]
        res = await multicall(self.rpc, [(t, BALANCE_OF.encode(user)) for t in tokens])
        stable = {s: BALANCE_OF.decode_one(r[1]) for s, r in zip(SYMBOLS, res, strict=True)}
        return coll, variable, stable

    async def _balances(self, user: str) -> tuple[dict[str, int], dict[str, int]]:
        coll, variable, stable = await self._by_mode(user)
        return coll, {s: variable[s] + stable[s] for s in SYMBOLS}

    async def borrow(self) -> None:
        user, s = self.rng.choice(self.actors), self.rng.choice(SYMBOLS)
        (data,) = [await self._call(self.d.pool, fn("Pool", "getUserAccountData"), user)]
        if data[2] == 0:
            return
        amount = data[2] * self.rng.randint(10, 95) // 100 * 10 ** SPECS[s].decimals // self.prices[s]
        stable = s in STABLE_RATE_ASSETS and self.rng.random() < 0.5
        if amount:
            await self._tx("borrow_stable" if stable else "borrow", user, self.d.pool,
                           BORROW.encode(self.d.assets[s], amount, 1 if stable else 2, 0, user))

    async def repay(self, with_a_tokens: bool = False) -> None:
        user = self.rng.choice(self.actors)
        coll, variable, stable = await self._by_mode(user)
        choices = [(s, m) for s in SYMBOLS for m, b in ((1, stable[s]), (2, variable[s])) if b]
        if not choices:
            return
        s, mode = self.rng.choice(choices)
        debt = stable[s] if mode == 1 else variable[s]
        amount = UINT256_MAX if self.rng.random() < 0.3 else self._fraction(debt) or 1
        kind = "repay_stable" if mode == 1 else "repay"
        if not with_a_tokens:
            await self._tx(kind, user, self.d.pool, REPAY.encode(self.d.assets[s], amount, mode, user))
            return
        if not coll[s]:
            supply = SUPPLY.encode(self.d.assets[s], debt // 2 + 1, user, 0)
            await self._tx("supply", user, self.d.pool, supply)
        await self._tx("repay_with_atokens", user, self.d.pool,
                       REPAY_WITH_ATOKENS.encode(self.d.assets[s], amount, mode))

    async def create_emode(self, category: int) -> None:
        d, cfg = self.d, self.d.pool_configurator
        if category == 1:
            params, members = (9000, 9300, 10200, ZERO_ADDRESS, "stables"), ["USDC", "DAI"]
        else:
            params, members = (8500, 8800, 10400, ZERO_ADDRESS, "majors"), ["WETH", "WBTC"]
        await self._tx("admin", d.deployer, cfg, SET_EMODE_CATEGORY_V30.encode(category, *params))
        for s in members:
            await self._tx("admin", d.deployer, cfg,
                           SET_ASSET_EMODE_CATEGORY_V30.encode(d.assets[s], category))

    async def admin(self) -> None:
        d, cfg = self.d, self.d.pool_configurator
        what = ("lt", "reserve_factor", "emode_lt", "emode_member")[self.admin_turn % 4]
        if what in ("lt", "reserve_factor"):
            await super().admin()
            return
        self.admin_turn += 1
        if what == "emode_lt":
            lt = self.rng.choice([8700, 8800, 8900])
            data = SET_EMODE_CATEGORY_V30.encode(2, 8500, lt, 10400, ZERO_ADDRESS, "majors")
        else:  # LINK in or out of the majors category (v3.0: an asset's one category)
            category = 2 if self.rng.random() < 0.5 else 0
            data = SET_ASSET_EMODE_CATEGORY_V30.encode(d.assets["LINK"], category)
        await self._tx("admin_emode", d.deployer, cfg, data)


async def test_mirror_fed_only_logs_matches_get_user_account_data_to_the_wei(walk_chain: Devnet) -> None:
    chain = walk_chain
    v30 = chain.deployment.aave_version == "3.0"
    market = await discover_market(chain.rpc, chain.deployment.pool_addresses_provider)
    rpc, d = chain.rpc, chain.deployment
    borrowers = [p.address for p in chain.plans[:40]]
    newcomers = [_newcomer(i) for i in range(4)]  # no position when the mirror is bootstrapped
    scenario = (ScenarioV30 if v30 else Scenario)(chain, random.Random(20240601), [*borrowers, *newcomers])
    await scenario.setup()
    await scenario.tighten_liquidity()

    # Before the bootstrap: an eMode category the mirror must READ, and some random history.
    await scenario.create_emode(2)
    for _ in range(15):
        await scenario.step()
    treasury = GET_TREASURY.decode_one(await rpc.eth_call(d.a_tokens["WETH"], GET_TREASURY.encode()))
    tracked = [*borrowers, *newcomers, KEEPER_ADDRESS, to_checksum_address(treasury), d.deployer]
    start = await rpc.block_number()
    mirror = await bootstrap(rpc, market, tracked, start)
    assert not await reconcile(rpc, mirror, tracked, start)

    # After: an eMode category the mirror must learn from EModeCategoryAdded & bitmap events.
    await scenario.create_emode(1)
    checkpoints = 0
    for i in range(1, 241):
        await scenario.step()
        if i % 40 == 0:
            if i == 240:
                await scenario.time_jump()  # a checkpoint on a block with no logs at all
            block = await rpc.block_number()
            cu = await catch_up(rpc, mirror, block)
            # Fed only by logs: nothing had to be re-read from chain. On v3.0, by design, a stable-debt
            # change re-reads its user and moving an asset's eMode category reloads the market.
            if not v30:
                assert not cu.refreshed_users and not cu.rebootstrapped, cu
            assert not cu.refreshed_prices, cu
            assert cu.applied.ignored == 0
            drifts = await reconcile(rpc, mirror, tracked, block)
            assert not drifts, _describe(drifts)
            checkpoints += 1

    # The sequence really exercised what it claims to (each count is of mined, successful txs).
    kinds = ("supply", "borrow", "repay", "repay_with_atokens", "withdraw", "transfer", "toggle",
             "emode", "price", "time", "admin_lt", "admin_rf", "admin_emode", "batch",
             "liquidate_receive_a_token_True", "liquidate_receive_a_token_False",
             *(("borrow_stable", "repay_stable") if v30 else ()))
    missing = [k for k in kinds if scenario.ok[k] == 0]
    assert not missing, f"never succeeded: {missing}; ok={dict(scenario.ok)} sent={dict(scenario.sent)}"
    assert checkpoints == 6


def _describe(drifts) -> str:
    lines = [f"{len(drifts)} drifted users"]
    for dr in drifts[:5]:
        lines.append(f"{dr.user} {dr.fields}: mirror={dr.mirror} chain={dr.chain}")
    return "\n".join(lines)


async def test_reconcile_reports_drift_when_a_mint_log_is_missed(chain: Devnet, market: Market) -> None:
    rpc, d = chain.rpc, chain.deployment
    (user,) = _healthiest(chain, 1)
    block = await rpc.block_number()
    mirror = await bootstrap(rpc, market, [user], block)
    await rpc.call("anvil_impersonateAccount", [user])
    tx = {"from": user, "to": d.pool, "gas": hex(2_000_000),
          "data": "0x" + BORROW.encode(d.assets["USDC"], 10 * 10**6, 2, 0, user).hex()}
    receipt = await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=10)
    assert int(receipt["status"], 16) == 1
    head = await rpc.block_number()
    logs = await fetch_logs(rpc, mirror, block + 1, head)
    kept = [lg for lg in logs if not (lg["topics"][0] == SCALED_MINT.topic
                                      and lg["address"].lower() == d.debt_tokens["USDC"].lower())]
    assert len(kept) == len(logs) - 1
    mirror.apply_logs(kept)
    mirror.advance_to(head, int((await rpc.get_block(head))["timestamp"], 16))

    drifts = await reconcile(rpc, mirror, [user], head)
    assert [dr.user for dr in drifts] == [user]
    assert "total_debt_base" in drifts[0].fields and "health_factor_wad" in drifts[0].fields

    await refresh_users(rpc, mirror, [user], head)
    assert not await reconcile(rpc, mirror, [user], head)


async def test_user_first_seen_in_logs_is_read_at_the_catch_up_block(chain: Devnet, market: Market) -> None:
    rpc, d = chain.rpc, chain.deployment
    known, stranger = _healthiest(chain, 2)
    block = await rpc.block_number()
    mirror = await bootstrap(rpc, market, [known], block)
    await rpc.call("anvil_impersonateAccount", [stranger])
    tx = {"from": stranger, "to": d.pool, "gas": hex(2_000_000),
          "data": "0x" + BORROW.encode(d.assets["DAI"], 5 * 10**18, 2, 0, stranger).hex()}
    await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=10)
    head = await rpc.block_number()

    cu = await catch_up(rpc, mirror, head)

    assert stranger in cu.applied.dirty_users and cu.refreshed_users == {stranger}
    assert not mirror.dirty_users
    assert not await reconcile(rpc, mirror, [known, stranger], head)


async def test_users_read_in_rounds_give_the_same_mirror_as_one_round(chain: Devnet, market: Market) -> None:
    """A bootstrap reads users a round at a time (bounded memory at 100,000 borrowers): rounds that
    split the list anywhere give the state one round gives, and it matches the chain."""
    rpc = chain.rpc
    users = [p.address for p in chain.plans]
    block = await rpc.block_number()
    whole = await bootstrap(rpc, market, users, block)
    rounds = await bootstrap(rpc, market, [], block)
    await refresh_users(rpc, rounds, users, block, previous_index=False, users_per_round=7)
    assert len(users) % 7 and rounds.users == whole.users and len(rounds.users) == len(users)
    assert not await reconcile(rpc, rounds, users, block)


async def test_price_update_moves_only_users_exposed_to_that_asset(chain: Devnet, market: Market) -> None:
    rpc, d = chain.rpc, chain.deployment
    users = [p.address for p in chain.plans]
    block = await rpc.block_number()
    mirror: HealthMirror = await bootstrap(rpc, market, users, block)
    await rpc.call("anvil_impersonateAccount", [d.deployer])
    new_price = SPECS["LINK"].price_e8 * 80 // 100
    tx = {"from": d.deployer, "to": d.feeds["LINK"], "gas": hex(200_000),
          "data": "0x" + SET_ANSWER.encode(new_price).hex()}
    await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=10)
    head = await rpc.block_number()
    ts = int((await rpc.get_block(head))["timestamp"], 16)
    before = mirror.recompute(timestamp=ts)

    applied = mirror.apply_logs(await fetch_logs(rpc, mirror, block + 1, head))
    after = mirror.recompute(timestamp=ts)

    link = d.assets["LINK"]
    exposed = mirror.affected_by_price(link)
    moved = {u for u in users if before[u] != after[u]}
    assert applied.prices == {link}
    assert moved and moved <= exposed
    assert exposed == mirror.affected(applied)
    assert len(exposed) < len(users)
    # Full and subset recomputes agree on the users the price moved.
    subset = mirror.recompute(exposed, timestamp=ts)
    assert all(subset[u] == after[u] for u in exposed)
    mirror.advance_to(head, ts)
    assert not await reconcile(rpc, mirror, users, head)


async def test_receive_a_token_liquidation_accrues_the_collateral_reserve_without_an_event(
        chain: Devnet, market: Market) -> None:
    rpc, d = chain.rpc, chain.deployment
    scenario = Scenario(chain, random.Random(5), [])
    await scenario.tighten_liquidity()  # double-digit rates: one skipped accrual shows in base units
    plan = next(p for p in chain.plans if list(p.collateral) == ["LINK"])
    debt_symbol = next(iter(plan.debt))
    users = [p.address for p in chain.plans]
    block = await rpc.block_number()
    mirror = await bootstrap(rpc, market, users, block)
    await rpc.call("evm_increaseTime", [hex(10 * 86_400)])
    await scenario.move_price("LINK", -40)
    await scenario._tx("approve", KEEPER_ADDRESS, d.assets[debt_symbol], APPROVE.encode(d.pool, UINT256_MAX))
    tx = {"from": KEEPER_ADDRESS, "to": d.pool, "gas": hex(3_000_000), "data": "0x" + LIQUIDATE.encode(
        d.assets["LINK"], d.assets[debt_symbol], plan.address, UINT256_MAX, True).hex()}
    receipt = await rpc.wait_for_receipt(await rpc.call("eth_sendTransaction", [tx]), timeout=10)
    assert int(receipt["status"], 16) == 1

    # The premise: the pool moved LINK's indexes in this transaction and said nothing about it.
    updated = [lg for lg in receipt["logs"] if lg["topics"][0] == RESERVE_DATA_UPDATED.topic]
    assert all(to_checksum_address("0x" + lg["topics"][1][-40:]) != d.assets["LINK"] for lg in updated)
    link = GET_RESERVE_DATA.decode_one(await rpc.eth_call(d.pool, GET_RESERVE_DATA.encode(d.assets["LINK"])))
    liquidation_ts = int((await rpc.get_block(int(receipt["blockNumber"], 16)))["timestamp"], 16)
    assert link[6] == liquidation_ts

    await rpc.call("evm_increaseTime", [hex(30 * 86_400)])
    await rpc.call("evm_mine", [])
    head = await rpc.block_number()
    await catch_up(rpc, mirror, head)

    assert mirror.reserves[d.assets["LINK"]].last_update_timestamp == liquidation_ts
    assert mirror.reserves[d.assets["LINK"]].liquidity_index_ray == link[1]
    assert mirror.reserves[d.assets["LINK"]].variable_borrow_index_ray == link[3]
    assert not await reconcile(rpc, mirror, [*users, KEEPER_ADDRESS], head)


async def test_asset_source_change_rereads_the_price_then_follows_the_new_feed(
        chain: Devnet, market: Market) -> None:
    rpc, d = chain.rpc, chain.deployment
    users = [p.address for p in chain.plans]
    scenario = Scenario(chain, random.Random(9), [])
    block = await rpc.block_number()
    mirror = await bootstrap(rpc, market, users, block)
    link, dai = d.assets["LINK"], d.assets["DAI"]
    await scenario._tx("source", d.deployer, d.oracle, SET_ASSET_SOURCES.encode([link], [d.feeds["DAI"]]))
    assert scenario.ok["source"] == 1

    cu = await catch_up(rpc, mirror, await rpc.block_number())

    assert cu.refreshed_prices == {link} and mirror.reserves[link].price_source == d.feeds["DAI"]
    assert mirror.reserves[link].price_base == SPECS["DAI"].price_e8
    assert not await reconcile(rpc, mirror, users, mirror.block)

    # One AnswerUpdated of the shared feed now moves both assets, with nothing re-read.
    await scenario.move_price("DAI", -7)
    cu = await catch_up(rpc, mirror, await rpc.block_number())
    assert cu.applied.prices == {link, dai} and not cu.refreshed_prices
    assert mirror.reserves[link].price_base == mirror.reserves[dai].price_base == scenario.prices["DAI"]
    assert not await reconcile(rpc, mirror, users, mirror.block)
