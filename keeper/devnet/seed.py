"""Seed a devnet market with borrowers whose health factors are planned in advance.

A plan is pure (`plan_borrowers`): amounts come from the quoted prices and
each reserve's liquidation threshold, so a test knows every borrower's
collateral, debt and health factor before a transaction is sent. Execution
sends each phase as one JSON-RPC batch with automine off and mines until the
pool is empty: thousands of borrowers take a few blocks, not thousands.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from keeper.chain.rpc import RpcClient
from keeper.devnet.aave import ASSETS, Deployment
from keeper.devnet.chain import send_as
from keeper.errors import KeeperError, RpcError
from keeper.log import get_logger

log = get_logger(__name__)

UINT256_MAX = 2**256 - 1
SPECS = {s.symbol: s for s in ASSETS}
# Seeding bids no tip, so fee history (and keepers' tip estimates) stays like a quiet chain's.
GAS_PRICE = 50 * 10**9


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


SEL_MINT = _selector("mint(address,uint256)")
SEL_APPROVE = _selector("approve(address,uint256)")
SEL_DEPOSIT = _selector("deposit()")
SEL_SUPPLY = _selector("supply(address,uint256,address,uint16)")
SEL_BORROW = _selector("borrow(address,uint256,uint256,uint16,address)")
SEL_SET_ANSWER = _selector("setAnswer(int256)")
SEL_LATEST_ANSWER = _selector("latestAnswer()")


class SeedError(KeeperError):
    """Seeding the devnet failed: a planned borrower did not end up with its position."""


@dataclass(frozen=True, slots=True)
class BorrowerPlan:
    address: str
    collateral: dict[str, int]  # symbol -> token units supplied
    debt: dict[str, int]  # symbol -> token units borrowed
    target_hf_bps: int  # health factor planned at the quoted prices, 10_000 = 1.0
    stable: tuple[str, ...] = ()  # debt symbols borrowed at the stable rate (v3.0 markets only)

    def collateral_usd(self, prices_e8: dict[str, int]) -> int:
        return sum(_value_e8(s, a, prices_e8) for s, a in self.collateral.items()) // 10**8

    def to_json(self) -> dict:
        return {"address": self.address, "collateral": self.collateral, "debt": self.debt,
                "target_hf_bps": self.target_hf_bps, "stable": list(self.stable)}


def _value_e8(symbol: str, amount: int, prices_e8: dict[str, int]) -> int:
    """Base-currency value (8 decimals) of a token amount, rounded down like the oracle path."""
    return amount * prices_e8[symbol] // 10 ** SPECS[symbol].decimals


def quoted_prices() -> dict[str, int]:
    return {s.symbol: s.price_e8 for s in ASSETS}


def borrower_address(index: int, salt: int = 0) -> str:
    return to_checksum_address(keccak(text=f"keeper-devnet-borrower:{salt}:{index}")[-20:])


def plan_borrowers(n: int, *, seed: int = 7, hf_min_bps: int = 10_200,
                   hf_max_bps: int = 25_000, salt: int = 0) -> list[BorrowerPlan]:
    """Mixed collateral and debt, small and large positions, HF in [hf_min, hf_max]."""
    rng = random.Random(seed)
    prices = quoted_prices()
    symbols = [s.symbol for s in ASSETS]
    plans = []
    for i in range(n):
        coll_syms = rng.sample(symbols, rng.choice((1, 1, 2)))
        debt_choices = [s for s in symbols if s not in coll_syms]
        debt_syms = rng.sample(debt_choices, rng.choice((1, 1, 2)))
        # One in five is small (under $2,000 of collateral); the rest spread to $2M.
        if i % 5 == 0:
            coll_usd = rng.randint(1_300, 1_950)
        else:
            coll_usd = int(10 ** rng.uniform(3.4, 6.3))
        # Lean towards the line, where liquidations happen, but cover the whole range.
        hf_bps = rng.randint(hf_min_bps, min(hf_max_bps, 13_000)) if rng.random() < 0.6 \
            else rng.randint(hf_min_bps, hf_max_bps)
        collateral = _split_amounts(rng, coll_syms, coll_usd * 10**8, prices)
        weighted_lt_e8 = sum(
            _value_e8(s, a, prices) * SPECS[s].liquidation_threshold_bps
            for s, a in collateral.items()
        ) // 10_000
        debt_e8 = weighted_lt_e8 * 10_000 // hf_bps
        debt = _split_amounts(rng, debt_syms, debt_e8, prices)
        plans.append(BorrowerPlan(borrower_address(i, salt), collateral, debt, hf_bps))
    return plans


def _split_amounts(rng: random.Random, symbols: Sequence[str], total_e8: int,
                   prices: dict[str, int]) -> dict[str, int]:
    if len(symbols) == 1:
        shares = [10_000]
    else:
        first = rng.randint(3_000, 7_000)
        shares = [first, 10_000 - first]
    out = {}
    for sym, share in zip(symbols, shares, strict=True):
        value_e8 = total_e8 * share // 10_000
        out[sym] = value_e8 * 10 ** SPECS[sym].decimals // prices[sym]
    return out


def _tx(sender: str, to: str, data: bytes, nonce: int, gas: int, value: int = 0) -> dict:
    return {"from": sender, "to": to, "data": "0x" + data.hex(), "nonce": hex(nonce),
            "gas": hex(gas), "maxFeePerGas": hex(GAS_PRICE), "maxPriorityFeePerGas": "0x0",
            "value": hex(value)}


class Seeder:
    """Sends planned positions to a devnet market through raw JSON-RPC batches."""

    def __init__(self, rpc: RpcClient, deployment: Deployment, *, batch_size: int = 1000) -> None:
        self.rpc = rpc
        self.d = deployment
        self.batch_size = batch_size

    async def seed(self, plans: Sequence[BorrowerPlan], *, liquidity_usd: int = 2_000_000_000) -> None:
        block = await self.rpc.get_block("latest")
        await self.rpc.call("anvil_autoImpersonateAccount", [True])
        await self.rpc.call("evm_setAutomine", [False])
        # One block per phase: Anvil's pool can drop a sender's later nonces when a full
        # block splits its transactions, so lift the gas limit while seeding.
        await self.rpc.call("anvil_setBlockGasLimit", [hex(2**40)])
        try:
            await self._run([await self._fund(plans, liquidity_usd)])
            nonces = await self._nonces([self.d.deployer, *(p.address for p in plans)])
            await self._run(self._supply_txs(plans, liquidity_usd, nonces))
            await self._run(self._borrow_txs(plans, nonces))
        finally:
            await self.rpc.call("anvil_setBlockGasLimit", [block["gasLimit"]])
            await self.rpc.call("evm_setAutomine", [True])
            await self.rpc.call("anvil_autoImpersonateAccount", [False])
        # Full seeding blocks push the base fee up; put it back so gas costs stay realistic.
        await self.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])
        await self.rpc.call("evm_mine", [])

    async def _nonces(self, addresses: Sequence[str]) -> dict[str, int]:
        replies = await self.rpc.batch([("eth_getTransactionCount", [a, "pending"]) for a in addresses])
        for r in replies:
            if isinstance(r, RpcError):
                raise SeedError(f"reading nonces failed: {r}")
        return {a: int(r, 16) for a, r in zip(addresses, replies, strict=True)}

    def _liquidity(self, liquidity_usd: int) -> dict[str, int]:
        return {s.symbol: liquidity_usd * 10**8 * 10**s.decimals // s.price_e8 for s in ASSETS} \
            if liquidity_usd else {}

    async def _fund(self, plans: Sequence[BorrowerPlan], liquidity_usd: int) -> list:
        """Token balances by cheat code: thousands of borrowers cost no mint transactions.

        Minting through the tokens would chain thousands of nonces on one sender, which
        Anvil's pool handles in quadratic time.
        """
        d, calls = self.d, []
        holders = [(p.address, p.collateral) for p in plans]
        holders.append((d.deployer, self._liquidity(liquidity_usd)))
        weth_dealt = 0
        for holder, amounts in holders:
            calls.append(("anvil_setBalance", [holder, hex(10**18 + 10**24 * (holder == d.deployer))]))
            for sym, amount in amounts.items():
                token = d.assets[sym]
                balance = amount + (await self._balance(token, holder) if holder == d.deployer else 0)
                calls.append(("anvil_dealERC20", [holder, token, hex(balance)]))
                weth_dealt += amount if sym == "WETH" else 0
        # Dealt WETH must stay redeemable: back it with ETH as deposits would have.
        weth = d.assets["WETH"]
        eth_in_weth = int(await self.rpc.call("eth_getBalance", [weth, "latest"]), 16)
        calls.append(("anvil_setBalance", [weth, hex(eth_in_weth + weth_dealt)]))
        return calls

    async def _balance(self, token: str, holder: str) -> int:
        data = "0x70a08231" + encode(["address"], [holder]).hex()
        return int(await self.rpc.call("eth_call", [{"to": token, "data": data}, "latest"]), 16)

    def _supply_txs(self, plans: Sequence[BorrowerPlan], liquidity_usd: int, nonces: dict[str, int]) -> list:
        """Each holder approves the pool and supplies: two transactions per collateral asset."""
        d, calls = self.d, []
        holders = [(d.deployer, self._liquidity(liquidity_usd)), *((p.address, p.collateral) for p in plans)]
        for holder, amounts in holders:
            nonce = nonces[holder]
            group = []
            for sym, amount in amounts.items():
                token = d.assets[sym]
                approve = SEL_APPROVE + encode(["address", "uint256"], [d.pool, UINT256_MAX])
                supply = SEL_SUPPLY + encode(["address", "uint256", "address", "uint16"],
                                             [token, amount, holder, 0])
                group.append(_tx(holder, token, approve, nonce, 100_000))
                group.append(_tx(holder, d.pool, supply, nonce + 1, 500_000))
                nonce += 2
            calls.append([("eth_sendTransaction", [t]) for t in group])
        return calls

    def _borrow_txs(self, plans: Sequence[BorrowerPlan], nonces: dict[str, int]) -> list:
        d, calls = self.d, []
        for plan in plans:
            nonce = nonces[plan.address] + 2 * len(plan.collateral)
            group = []
            for sym, amount in plan.debt.items():
                data = SEL_BORROW + encode(["address", "uint256", "uint256", "uint16", "address"],
                                           [d.assets[sym], amount, 1 if sym in plan.stable else 2,
                                            0, plan.address])
                group.append(("eth_sendTransaction", [_tx(plan.address, d.pool, data, nonce, 800_000)]))
                nonce += 1
            calls.append(group)
        return calls

    async def _run(self, groups: list[list]) -> None:
        """Send groups of calls, a block at a time; a group (one sender's chain) is never split.

        Anvil's pool slows down as it fills, so a block is mined every `batch_size` calls.
        """
        chunk: list = []
        for group in [*groups, None]:
            if group is not None and len(chunk) + len(group) <= self.batch_size:
                chunk += group
                continue
            if chunk:
                results = await self.rpc.batch(chunk)
                failed = [r for r in results if isinstance(r, RpcError)]
                if failed:
                    raise SeedError(f"{len(failed)} seeding calls were refused, first: {failed[0]}")
                await self._mine_until_empty()
            chunk = list(group or [])

    async def _mine_until_empty(self, max_blocks: int = 10_000) -> None:
        for _ in range(max_blocks):
            status = await self.rpc.call("txpool_status", [])
            if int(status["pending"], 16) == 0 and int(status["queued"], 16) == 0:
                return
            # Full blocks raise the base fee 12.5% each; hold it so queued txs stay includable.
            await self.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])
            await self.rpc.call("evm_mine", [])
        raise SeedError("the transaction pool did not drain")


async def set_price(rpc: RpcClient, deployment: Deployment, symbol: str, price_e8: int,
                    *, sender: str | None = None) -> str:
    """Move a devnet feed; the feed emits AnswerUpdated like a Chainlink aggregator."""
    if deployment.chainlink is not None:  # `--oracle chainlink`: through the aggregator or CAPO ratio
        from keeper.devnet.chainlink import set_price as chainlink_set_price

        return await chainlink_set_price(rpc, deployment, symbol, price_e8)
    data = SEL_SET_ANSWER + encode(["int256"], [price_e8])
    receipt = await send_as(rpc, sender or deployment.deployer, deployment.feeds[symbol], data, gas=200_000,
                            what=f"setAnswer on the {symbol} feed")
    return receipt["transactionHash"]


async def get_price(rpc: RpcClient, deployment: Deployment, symbol: str) -> int:
    raw = await rpc.call("eth_call", [{"to": deployment.feeds[symbol],
                                       "data": "0x" + SEL_LATEST_ANSWER.hex()}, "latest"])
    return int(raw, 16)


async def shock(rpc: RpcClient, deployment: Deployment, symbol: str, pct: float | str) -> tuple[int, int]:
    """Move `symbol`'s price by `pct` percent (e.g. -12.5). Returns (old, new) in 8 decimals."""
    from decimal import Decimal

    if symbol not in deployment.feeds:
        raise KeeperError(f"unknown asset {symbol!r}; devnet assets: {', '.join(deployment.assets)}")
    old = await get_price(rpc, deployment, symbol)
    new = int(Decimal(old) * (Decimal(100) + Decimal(str(pct))) / Decimal(100))
    if new <= 0:
        raise KeeperError(f"a {pct}% shock would make the {symbol} price non-positive")
    await set_price(rpc, deployment, symbol, new)
    return old, new


def plan_position(index: int, collateral_usd: dict[str, int], debt_usd: dict[str, int], *,
                  salt: int = 1) -> BorrowerPlan:
    """A hand-built position, in dollars at the quoted prices (tests and scenarios)."""
    prices = quoted_prices()

    def units(sym: str, usd: int) -> int:
        return usd * 10**8 * 10 ** SPECS[sym].decimals // prices[sym]

    collateral = {s: units(s, v) for s, v in collateral_usd.items()}
    debt = {s: units(s, v) for s, v in debt_usd.items()}
    weighted = sum(v * SPECS[s].liquidation_threshold_bps for s, v in collateral_usd.items())
    return BorrowerPlan(borrower_address(index, salt), collateral, debt,
                        weighted // max(1, sum(debt_usd.values())))
