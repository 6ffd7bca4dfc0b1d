"""Issue 6 on real Anvil chains with the real Aave bytecode: sending that wins and never bleeds.

Most tests here use a module devnet where blocks come from `Miner`: a block every 0.25 s by
`evm_mine`, like Anvil's interval mining, except that the test may look at the mempool just
before a block and decide what happens to it (raise its base fee, hold it until both racers
have sent). That makes "the base fee rises after sending" and "both keepers are in the same
block" exact instead of a matter of timing. The only fake is the relay: a local aiohttp
server standing in for a Flashbots-style relay and a private-transaction endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from pydantic import SecretStr

from keeper.app import App
from keeper.chain.rpc import RpcClient
from keeper.config import load_settings
from keeper.devnet.seed import SEL_SET_ANSWER, Seeder, get_price, plan_position, shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet, fund_inventory, launch
from keeper.errors import ConfigError
from keeper.exec.executor import deploy_executor
from keeper.exec.fees import GWEI
from keeper.exec.relay import PrivateTx, flashbots_signature, relay_account
from keeper.exec.safety import GAS_BALANCE_LOW, CircuitBreaker, Safety
from keeper.exec.sender import Intent, Sender
from keeper.exec.signer import Signer
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import APPROVE, BALANCE_OF, encode_liquidation_call

WAD = 10**18
ETH = 10**18


# -- the module devnet and its block producer ----------------------------------------------


class Miner:
    """Mines a block every `interval_s`; `before()` runs first and returns False to hold it."""

    def __init__(self, rpc: RpcClient, interval_s: float = 0.25) -> None:
        self.rpc = rpc
        self.interval_s = interval_s
        self.lock = asyncio.Lock()  # the relay stand-in lands bundles under it
        self.before: Callable[[], Awaitable[bool]] | None = None
        self.running = False
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.rpc.call("evm_setAutomine", [False])
        self.running = True
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            async with self.lock:
                if self.before is None or await self.before():
                    await self.rpc.call("evm_mine", [])


@pytest.fixture(scope="module")
async def market() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=0)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture
async def mined(market: Devnet) -> AsyncIterator[tuple[Devnet, Miner]]:
    """The module devnet, isolated by snapshot/revert, with a Miner (not started yet)."""
    rpc = market.rpc
    snapshot = await rpc.call("evm_snapshot", [])
    miner = Miner(rpc)
    try:
        yield market, miner
    finally:
        await miner.stop()
        await rpc.call("anvil_dropAllTransactions", [])
        assert await rpc.call("evm_revert", [snapshot])
        await rpc.call("evm_setAutomine", [True])
        await rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])


async def _open(dn: Devnet, index: int, collateral_usd: dict, debt_usd: dict) -> str:
    plan = plan_position(index, collateral_usd, debt_usd, salt=6)
    await Seeder(dn.rpc, dn.deployment).seed([plan], liquidity_usd=0)  # leaves automine on
    return plan.address


def _settings(dn: Devnet, key: str = KEEPER_DEV_KEY, **over: Any):
    return load_settings(**{
        "rpc_url": dn.url, "pool_addresses_provider": dn.deployment.pool_addresses_provider,
        "private_key": key, "metrics_port": 0, "poll_interval_s": 0.1,
        "db_path": Path(tempfile.mkdtemp()) / "keeper.db", **over})


async def _eventually(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - the conditions are other tasks' state
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


async def _run_apps(apps: list[App], scenario: Callable[[], Awaitable[None]], timeout_s: float = 60) -> None:
    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for app in apps:
                tg.create_task(app.run(install_signals=False))
            try:
                await scenario()
            finally:
                for app in apps:
                    app.request_stop()
    await asyncio.wait_for(main(), timeout_s)


async def _pool_txs_pending(rpc: RpcClient, pool: str) -> dict[str, list[dict]]:
    """Pending (public mempool) transactions to the pool, by sender."""
    content = await rpc.call("txpool_content", [])
    out: dict[str, list[dict]] = {}
    for part in ("pending", "queued"):
        for sender, by_nonce in (content.get(part) or {}).items():
            for tx in by_nonce.values():
                if (tx.get("to") or "").lower() == pool.lower():
                    out.setdefault(to_checksum_address(sender), []).append(tx)
    return out


async def _pool_txs_mined(rpc: RpcClient, pool: str, sender: str, from_block: int) -> list[dict]:
    """Mined transactions from `sender` to the pool after `from_block`, with their receipts' status."""
    out = []
    for n in range(from_block + 1, await rpc.block_number() + 1):
        block = await rpc.get_block(n, True)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower() and (tx["to"] or "").lower() == pool.lower():
                receipt = await rpc.get_transaction_receipt(tx["hash"])
                out.append({**tx, "status": int(receipt["status"], 16), "block": n})
    return out


async def _debt(dn: Devnet, user: str, symbol: str) -> int:
    raw = await dn.rpc.eth_call(dn.deployment.debt_tokens[symbol], BALANCE_OF.encode(user))
    return BALANCE_OF.decode_one(raw)


def _key(label: str) -> str:
    return "0x" + keccak(text=f"keeper-sending-test:{label}").hex()


# -- 1. a stuck transaction ------------------------------------------------------------------


async def test_a_stuck_transaction_is_replaced_at_the_same_nonce_and_costs_less_than_the_profit(
        mined: tuple[Devnet, Miner]) -> None:
    dn, miner = mined
    pool = dn.deployment.pool
    user = await _open(dn, 1, {"WETH": 100_000}, {"USDC": 78_000})
    seen: dict[str, Any] = {}

    async def raise_base_fee_after_the_keeper_sent() -> bool:
        if "nonce" not in seen:
            pending = (await _pool_txs_pending(dn.rpc, pool)).get(KEEPER_ADDRESS)
            if pending:
                # The block that would include it charges far more than the keeper bid.
                seen.update(nonce=int(pending[0]["nonce"], 16), tx=pending[0]["hash"],
                            max_fee=int(pending[0]["maxFeePerGas"], 16))
                await dn.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(200 * GWEI)])
        return True

    miner.before = raise_base_fee_after_the_keeper_sent
    await miner.start()
    await shock(dn.rpc, dn.deployment, "WETH", -15)
    metrics = Metrics()
    app = App(_settings(dn, priority_fee_share_bps=100, replace_after_blocks=2), metrics)

    def settled(_: object) -> bool:
        return any(o.key == user for o in app.sender.history)

    await asyncio.wait_for(app.run(until=settled, install_signals=False), 60)
    outcome = next(o for o in app.sender.history if o.key == user)
    assert seen["max_fee"] < 200 * GWEI  # it really was priced out of the next block
    assert outcome.status == "included" and outcome.replacements >= 1
    assert outcome.first_tx == seen["tx"] and outcome.tx_hash != seen["tx"]
    assert await dn.rpc.get_transaction_receipt(seen["tx"]) is None
    mined_tx = await dn.rpc.call("eth_getTransactionByHash", [outcome.tx_hash])
    assert int(mined_tx["nonce"], 16) == seen["nonce"] == outcome.nonce
    receipt = await dn.rpc.get_transaction_receipt(outcome.tx_hash)
    cost = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
    assert outcome.gas_cost_wei == cost
    assert outcome.profit_wei is not None and 0 < cost < outcome.profit_wei
    assert int(mined_tx["maxFeePerGas"], 16) * int(mined_tx["gas"], 16) <= outcome.profit_wei
    assert int(mined_tx["maxFeePerGas"], 16) <= 500 * GWEI  # KEEPER_MAX_FEE_GWEI
    assert metrics.tx_replacements._value.get() >= 1
    assert metrics.liquidations.labels(outcome="included")._value.get() == 1
    assert await _debt(dn, user, "USDC") == 0


# -- 2. a lost race --------------------------------------------------------------------------


async def test_the_keeper_that_loses_a_race_sends_at_most_one_counted_revert_and_then_cools_down(
        mined: tuple[Devnet, Miner]) -> None:
    dn, miner = mined
    pool = dn.deployment.pool
    # Two debts: after the USDC leg is liquidated the borrower is still liquidatable (DAI leg),
    # so the loser's cooldown is put to the test.
    user = await _open(dn, 2, {"WETH": 10_000}, {"USDC": 4_400, "DAI": 3_400})
    rival = Account.from_key(_key("rival"))
    await dn.rpc.call("anvil_setBalance", [rival.address, hex(100 * ETH)])
    await fund_inventory(dn.rpc, dn.deployment, rival.address, 1_000_000)
    # The rival bids half its profit as priority fee, the keeper a twentieth: the rival goes first.
    rival_app = App(_settings(dn, _key("rival"), priority_fee_share_bps=5_000, inclusion_wait_s=5),
                    Metrics())
    keeper_app = App(_settings(dn, priority_fee_share_bps=500, inclusion_wait_s=5, cooldown_blocks=50),
                     Metrics())
    apps = {rival.address: rival_app, KEEPER_ADDRESS: keeper_app}
    race: dict[str, Any] = {}

    async def hold_until_both_sent_then_until_the_loser_saw_it() -> bool:
        if "block" not in race:
            pending = set(await _pool_txs_pending(dn.rpc, pool)) & set(apps)
            if not pending:
                return True
            race.setdefault("since", time.monotonic())
            if pending != set(apps) and time.monotonic() - race["since"] < 10:
                return False  # hold the block: both racers must be in it
            race["block"] = await dn.rpc.block_number() + 1
            return True
        if "released" not in race:
            loser = race.get("loser")
            if loser is None:
                block = await dn.rpc.get_block(race["block"], True)
                first = next(t for t in block["transactions"] if (t["to"] or "").lower() == pool.lower())
                race["winner"] = to_checksum_address(first["from"])
                race["loser"] = loser = next(a for a in apps if a != race["winner"])
            seen = any(r.block >= race["block"] for r in apps[loser].reports)
            if not seen and time.monotonic() - race["since"] < 20:
                return False  # the loser decides on the block right after the race first
            race["released"] = True
        return True

    miner.before = hold_until_both_sent_then_until_the_loser_saw_it
    await miner.start()
    start = await dn.rpc.block_number()

    async def scenario() -> None:
        await _eventually(lambda: all(a.reports for a in apps.values()), 30, "both keepers cycling")
        await shock(dn.rpc, dn.deployment, "WETH", -15)
        await _eventually(lambda: "released" in race, 30, "the race block and the loser's next cycle")
        winner = apps[race["winner"]]
        await _eventually(lambda: sum(o.success for o in winner.sender.history) >= 2, 20,
                          "the winner taking the second leg too")

    await _run_apps(list(apps.values()), scenario)
    winner, loser = race["winner"], race["loser"]
    loser_app = apps[loser]
    assert winner == rival.address  # the higher bid is first in the block
    sent = await _pool_txs_mined(dn.rpc, pool, loser, start)
    reverted = [t for t in sent if t["status"] == 0]
    # At most one reverting transaction, in the race block itself, and it is counted.
    assert len(sent) <= 1 and all(t["block"] == race["block"] for t in sent)
    assert loser_app.metrics.liquidations.labels(outcome="reverted")._value.get() == len(reverted) <= 1
    # A lost race counts against the breaker only if it cost gas (reverted), not when cancelled.
    assert loser_app.sender.safety.breaker.failures == len(reverted)
    # The borrower was still liquidatable after the race, and the loser held off.
    assert loser_app.metrics.skipped.labels(reason="cooldown")._value.get() >= 1
    assert loser_app.sender.cooling(user, await dn.rpc.block_number())
    assert await _debt(dn, user, "USDC") == 0 and await _debt(dn, user, "DAI") == 0


async def test_a_pending_liquidation_is_cancelled_when_someone_else_liquidates_first(
        mined: tuple[Devnet, Miner]) -> None:
    dn, miner = mined
    rpc, pool, d = dn.rpc, dn.deployment.pool, dn.deployment
    user = await _open(dn, 4, {"WETH": 100_000}, {"USDC": 78_000})
    rival = Account.from_key(_key("rival-liquidator")).address
    await fund_inventory(rpc, d, rival, 1_000_000)
    await rpc.call("anvil_impersonateAccount", [rival])
    approve = {"from": rival, "to": d.assets["USDC"], "data": "0x" + APPROVE.encode(pool, 2**256 - 1).hex()}
    approved = await rpc.call("eth_sendTransaction", [approve])
    await rpc.wait_for_receipt(approved, timeout=10, poll_interval=0.02)
    seen: dict[str, Any] = {}

    async def a_rival_outbids_the_keeper_in_the_next_block() -> bool:
        if "nonce" not in seen and (pending := (await _pool_txs_pending(rpc, pool)).get(KEEPER_ADDRESS)):
            seen.update(nonce=int(pending[0]["nonce"], 16), tx=pending[0]["hash"])
            # The next block costs more than the keeper bid; the rival pays for it.
            await rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(200 * GWEI)])
            data = encode_liquidation_call(d.assets["WETH"], d.assets["USDC"], user, 2**256 - 1)
            seen["rival_tx"] = await rpc.call("eth_sendTransaction", [{
                "from": rival, "to": pool, "data": "0x" + data.hex(), "gas": hex(1_000_000),
                "maxFeePerGas": hex(1_000 * GWEI), "maxPriorityFeePerGas": hex(100 * GWEI)}])
        return True

    miner.before = a_rival_outbids_the_keeper_in_the_next_block
    await miner.start()
    start = await rpc.block_number()
    await shock(rpc, d, "WETH", -15)
    metrics = Metrics()
    app = App(_settings(dn, priority_fee_share_bps=100, replace_after_blocks=3), metrics)

    def settled(_: object) -> bool:
        return any(o.key == user for o in app.sender.history)

    try:
        await asyncio.wait_for(app.run(until=settled, install_signals=False), 60)
    finally:
        await rpc.call("anvil_stopImpersonatingAccount", [rival])
    rival_receipt = await rpc.get_transaction_receipt(seen["rival_tx"])
    assert int(rival_receipt["status"], 16) == 1
    outcome = next(o for o in app.sender.history if o.key == user)
    assert (outcome.status, outcome.reason) == ("cancelled", "lost")
    cancel = await rpc.call("eth_getTransactionByHash", [outcome.tx_hash])
    # A zero-value self-transfer at the nonce of the liquidation it replaces.
    assert to_checksum_address(cancel["to"]) == KEEPER_ADDRESS and int(cancel["value"], 16) == 0
    assert cancel["input"] == "0x" and int(cancel["nonce"], 16) == seen["nonce"] == outcome.nonce
    assert outcome.gas_cost_wei <= 21_000 * 500 * GWEI
    assert await _pool_txs_mined(rpc, pool, KEEPER_ADDRESS, start) == []  # no reverting liquidation
    assert metrics.tx_cancels.labels(reason="lost")._value.get() == 1
    assert metrics.liquidations.labels(outcome="cancelled")._value.get() == 1
    assert metrics.liquidations.labels(outcome="reverted")._value.get() == 0
    assert app.sender.cooling(user, await rpc.block_number())


# -- 3. bundles through a relay --------------------------------------------------------------


class RelayStandIn:
    """A Flashbots-style relay on localhost: it checks X-Flashbots-Signature (address:sig, an
    EIP-191 signature of the body's 0x-keccak) and lands bundles in their target block by
    eth_sendRawTransaction + evm_mine; private transactions are forwarded to the node."""

    def __init__(self, chain: RpcClient, miner: Miner | None = None, *, drop_first: int = 0) -> None:
        self.chain = chain
        self.miner = miner
        self.drop_first = drop_first
        self.bundles: list[dict[str, Any]] = []
        self.private: list[dict[str, Any]] = []
        self.signers: set[str] = set()
        self.bad_signatures = 0
        self.landed: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RelayStandIn:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        req = json.loads(body)
        address, _, signature = request.headers.get("X-Flashbots-Signature", "").partition(":")
        try:
            digest = encode_defunct(text="0x" + keccak(body).hex())
            signer = Account.recover_message(digest, signature=signature)
        except Exception:
            signer = None
        if signer is None or signer.lower() != address.lower():
            self.bad_signatures += 1
            return web.json_response({"jsonrpc": "2.0", "id": req.get("id"),
                                      "error": {"code": -32600, "message": "invalid flashbots signature"}},
                                     status=403)
        self.signers.add(to_checksum_address(signer))
        params = req["params"][0]
        if req["method"] == "eth_sendBundle":
            self.bundles.append(params)
            if len(self.bundles) > self.drop_first:
                await self._land(params["txs"], int(params["blockNumber"], 16))
            return web.json_response({"jsonrpc": "2.0", "id": req["id"],
                                      "result": {"bundleHash": "0x" + keccak(body).hex()}})
        if req["method"] == "eth_sendPrivateTransaction":
            self.private.append(params)
            tx_hash = await self.chain.send_raw_transaction(params["tx"])
            return web.json_response({"jsonrpc": "2.0", "id": req["id"], "result": tx_hash})
        return web.json_response({"jsonrpc": "2.0", "id": req["id"],
                                  "error": {"code": -32601, "message": "method not found"}})

    async def _land(self, txs: list[str], target: int) -> None:
        assert self.miner is not None
        async with self.miner.lock:
            if await self.chain.block_number() + 1 != target:
                return  # not for the next block: a real relay would not include it either
            for raw in txs:
                self.landed.append(await self.chain.send_raw_transaction(raw))
            await self.chain.call("evm_mine", [])


async def test_a_liquidation_lands_through_correctly_signed_bundles_re_sent_each_block(
        mined: tuple[Devnet, Miner]) -> None:
    dn, miner = mined
    pool = dn.deployment.pool
    user = await _open(dn, 3, {"WETH": 20_000}, {"USDC": 15_600})
    relay_key = _key("relay-reputation")
    public_sightings: list[str] = []

    async def watch_the_public_mempool() -> bool:
        for tx in (await _pool_txs_pending(dn.rpc, pool)).get(KEEPER_ADDRESS, []):
            public_sightings.append(tx["hash"])
        return True

    miner.before = watch_the_public_mempool
    await miner.start()
    await shock(dn.rpc, dn.deployment, "WETH", -15)
    async with RelayStandIn(dn.rpc, miner, drop_first=1) as relay:
        # A forged signature is refused: the stand-in really checks.
        forged = b'{"jsonrpc":"2.0","id":1,"method":"eth_sendBundle","params":[{"txs":[]}]}'
        header = flashbots_signature(b"another body", relay_account(SecretStr(relay_key)))
        async with aiohttp.ClientSession() as http, http.post(
                relay.url, data=forged, headers={"X-Flashbots-Signature": header}) as resp:
            assert resp.status == 403
        assert relay.bad_signatures == 1
        metrics = Metrics()
        app = App(_settings(dn, bundle_relay_url=relay.url, relay_signing_key=relay_key, bundle_blocks=3),
                  metrics)

        def settled(_: object) -> bool:
            return any(o.key == user for o in app.sender.history)

        await asyncio.wait_for(app.run(until=settled, install_signals=False), 60)
    outcome = next(o for o in app.sender.history if o.key == user)
    assert outcome.status == "included" and outcome.route == "bundle"
    assert relay.bad_signatures == 1  # only the forged one
    assert relay.signers == {Account.from_key(relay_key).address} != {KEEPER_ADDRESS}
    # The first offer was dropped; the same transaction was offered again for the next block.
    assert len(relay.bundles) >= 2
    targets = [int(b["blockNumber"], 16) for b in relay.bundles]
    assert targets == sorted(set(targets))
    assert len({tuple(b["txs"]) for b in relay.bundles}) == 1
    assert outcome.tx_hash in relay.landed
    receipt = await dn.rpc.get_transaction_receipt(outcome.tx_hash)
    assert int(receipt["blockNumber"], 16) == targets[-1]
    assert public_sightings == []  # it never waited in the public mempool
    assert metrics.bundles_sent._value.get() == len(relay.bundles)
    assert await _debt(dn, user, "USDC") == 0


async def test_private_transactions_go_to_the_private_endpoint_signed(bare_chain: Devnet) -> None:
    key = _key("private-sender")
    account = Account.from_key(key)
    await bare_chain.rpc.call("anvil_setBalance", [account.address, hex(ETH)])
    async with RelayStandIn(bare_chain.rpc) as relay:
        private = PrivateTx(relay.url, signing_key=SecretStr(_key("private-reputation")))
        sender = Sender(bare_chain.rpc, Signer(SecretStr(key), bare_chain.deployment.chain_id),
                        max_fee_gwei=Decimal(100), private=private)
        try:
            weth = bare_chain.deployment.assets["WETH"]
            block = await bare_chain.rpc.block_number()
            intent = Intent(key="approve", to=weth, data=APPROVE.encode(bare_chain.deployment.pool, 1),
                            gas_limit=80_000, gas_estimate=50_000, profit_wei=ETH // 100, block=block)
            attempt = await sender.submit(intent, await sender.fees())
            outcome = await sender.settle(attempt, 5)
        finally:
            await sender.close()
    assert outcome is not None and outcome.status == "included" and outcome.route == "private"
    assert len(relay.private) == 1 and relay.bad_signatures == 0
    assert int(relay.private[0]["maxBlockNumber"], 16) > block
    assert relay.signers == {Account.from_key(_key("private-reputation")).address}


# -- 4. nonces ------------------------------------------------------------------------------


async def test_nonce_too_low_resyncs_from_the_node_and_the_send_goes_through(bare_chain: Devnet) -> None:
    key = _key("nonce-too-low")
    account = Account.from_key(key)
    rpc = bare_chain.rpc
    await rpc.call("anvil_setBalance", [account.address, hex(ETH)])
    sender = Sender(rpc, Signer(SecretStr(key), bare_chain.deployment.chain_id), max_fee_gwei=Decimal(100),
                    poll_interval_s=0.02)
    first = await sender.send(account.address, b"", gas=21_000)
    # Someone else with the same key (an operator's wallet app) takes the next nonce.
    out_of_band = account.sign_transaction({"type": 2, "to": account.address, "value": 0, "gas": 21_000,
                                            "nonce": first.nonce + 1, "maxFeePerGas": 10 * GWEI,
                                            "maxPriorityFeePerGas": GWEI,
                                            "chainId": bare_chain.deployment.chain_id})
    await rpc.send_raw_transaction(bytes(out_of_band.raw_transaction))
    assert sender.nonces.next_nonce == first.nonce + 1  # stale
    second = await sender.send(account.address, b"", gas=21_000)
    assert second.success and second.nonce == first.nonce + 2
    assert await rpc.get_transaction_count(account.address, "latest") == first.nonce + 3


async def test_a_restarted_keeper_continues_after_its_pending_transactions_without_a_gap(
        mined: tuple[Devnet, Miner]) -> None:
    dn, _ = mined  # the miner stays off: transactions wait in the mempool
    key = _key("restart")
    account = Account.from_key(key)
    await dn.rpc.call("anvil_setBalance", [account.address, hex(ETH)])
    await dn.rpc.call("evm_setAutomine", [False])
    chain_id = dn.deployment.chain_id
    block = await dn.rpc.block_number()

    def transfer(label: str) -> Intent:
        return Intent(key=label, to=account.address, data=b"", gas_limit=21_000, gas_estimate=21_000,
                      profit_wei=None, block=block)

    before = Sender(dn.rpc, Signer(SecretStr(key), chain_id), max_fee_gwei=Decimal(100))
    fees = await before.fees()
    sent = [await before.submit(transfer(f"a{i}"), fees) for i in range(2)]
    assert [a.nonce for a in sent] == [0, 1]
    # A nonce taken and never sent, below one taken after it, is the next one handed out.
    taken, later = await before.nonces.reserve(), await before.nonces.reserve()
    await before.nonces.release(taken)
    assert (taken, later, await before.nonces.reserve()) == (2, 3, 2)
    # The process restarts: a new manager for the same key, two transactions still pending.
    after = Sender(dn.rpc, Signer(SecretStr(key), chain_id), max_fee_gwei=Decimal(100))
    third = await after.submit(transfer("b"), fees)
    assert third.nonce == 2 and after.nonces.recovered == 2
    await dn.rpc.call("evm_mine", [])
    assert await dn.rpc.get_transaction_count(account.address, "latest") == 3
    for a in (*sent, third):
        assert await dn.rpc.get_transaction_receipt(a.tx_hash) is not None


# -- 5. safety: the circuit breaker, the gas floor, start-up checks ------------------------------


async def test_the_breaker_trips_after_n_forced_reverts_and_indexing_goes_on(
        mined: tuple[Devnet, Miner]) -> None:
    dn, miner = mined
    rpc, pool = dn.rpc, dn.deployment.pool
    users = [await _open(dn, 10 + i, {"WETH": 20_000 + 5_000 * i}, {"USDC": 15_600 + 3_900 * i})
             for i in range(5)]
    quoted = await get_price(rpc, dn.deployment, "WETH")
    forced: dict[str, Any] = {}

    async def undo_the_shock_ahead_of_the_keeper() -> bool:
        # The moment the keeper's first liquidation waits for a block, the price comes back in a
        # transaction that outbids it: in the block the borrowers are healthy again, so this and
        # every other liquidation the keeper simulated on the shocked state revert.
        if not forced and (await _pool_txs_pending(rpc, pool)).get(KEEPER_ADDRESS):
            forced["tx"] = await rpc.call("eth_sendTransaction", [{
                "from": dn.deployment.deployer, "to": dn.deployment.feeds["WETH"], "gas": hex(200_000),
                "data": "0x" + (SEL_SET_ANSWER + encode(["int256"], [quoted])).hex(),
                "maxFeePerGas": hex(2_000 * GWEI), "maxPriorityFeePerGas": hex(1_000 * GWEI)}])
        return True

    miner.before = undo_the_shock_ahead_of_the_keeper
    await miner.start()
    metrics = Metrics()
    app = App(_settings(dn, breaker_max_failures=3, max_fee_gwei=Decimal(100), inclusion_wait_s=5), metrics)
    start = await rpc.block_number()

    async def scenario() -> None:
        await _eventually(lambda: bool(app.reports), 30, "the keeper cycling")
        await shock(rpc, dn.deployment, "WETH", -15)
        await _eventually(lambda: app.sender.safety.breaker.is_open(), 30, "the breaker to trip")
        tripped_cycles = len(app.reports)
        # What had been sent when it tripped: transactions sent before may still be mined later.
        forced["sends_at_trip"] = metrics.liquidations.labels(outcome="sent")._value.get()
        forced["nonce_at_trip"] = await rpc.get_transaction_count(KEEPER_ADDRESS, "pending")
        await shock(rpc, dn.deployment, "WETH", -15)  # liquidatable again: the open breaker refuses
        tracked = metrics.borrowers_tracked._value.get()
        # A new borrower arrives after the trip: the index and the health stage pick it up.
        await _open(dn, 20, {"LINK": 5_000}, {"DAI": 2_000})
        await _eventually(lambda: metrics.borrowers_tracked._value.get() == tracked + 1
                          and len(app.reports) >= tripped_cycles + 2, 30, "cycles after the trip")

    await _run_apps([app], scenario)
    breaker = app.sender.safety.breaker
    assert breaker.trips == 1 and "reverted, reverted, reverted" in (breaker.reason or "")
    assert metrics.breaker_open._value.get() == 1 and metrics.breaker_trips._value.get() == 1
    sent = await _pool_txs_mined(rpc, pool, KEEPER_ADDRESS, start)
    # One cycle sends every liquidation it decided before any is mined (on a chain with a block
    # time it could not wait for each), so all of that cycle's may revert; nothing after the trip.
    assert 3 <= len(sent) <= len(users) and all(t["status"] == 0 for t in sent)
    assert metrics.liquidations.labels(outcome="reverted")._value.get() == len(sent)
    assert metrics.liquidations.labels(outcome="sent")._value.get() == forced["sends_at_trip"]
    assert all(int(t["nonce"], 16) < forced["nonce_at_trip"] for t in sent)
    assert metrics.skipped.labels(reason="breaker_open")._value.get() >= 1
    assert metrics.borrowers_tracked._value.get() == len(users) + 1


async def test_the_kill_switch_file_pauses_sending_and_removing_it_resumes(
        bare_chain: Devnet, tmp_path: Path) -> None:
    rpc = bare_chain.rpc
    user = await _open(bare_chain, 5, {"WETH": 20_000}, {"USDC": 15_600})
    await shock(rpc, bare_chain.deployment, "WETH", -15)
    switch = tmp_path / "keeper.pause"
    switch.touch()
    metrics = Metrics()
    app = App(_settings(bare_chain, kill_switch_file=switch), metrics)

    async def scenario() -> None:
        await _eventually(lambda: any(r.liquidatable for r in app.reports), 30, "a cycle seeing the borrower")
        assert metrics.skipped.labels(reason="paused")._value.get() >= 1
        assert metrics.sending_paused._value.get() == 1
        assert not app.sender.history and metrics.liquidations.labels(outcome="sent")._value.get() == 0
        switch.unlink()
        await rpc.call("evm_mine", [])  # a new head, so a new cycle
        await _eventually(lambda: any(o.success for o in app.sender.history), 30, "the liquidation")

    await _run_apps([app], scenario)
    assert metrics.sending_paused._value.get() == 0
    assert await _debt(bare_chain, user, "USDC") == 0


async def test_sending_is_refused_below_the_gas_floor_and_the_keeper_does_not_start(
        bare_chain: Devnet) -> None:
    poor = Account.from_key(_key("poor"))
    await bare_chain.rpc.call("anvil_setBalance", [poor.address, hex(ETH // 100)])
    safety = Safety(breaker=CircuitBreaker(max_failures=3, window_s=60), min_balance_wei=ETH // 20)
    assert await safety.refusal(bare_chain.rpc, poor.address) == GAS_BALANCE_LOW
    assert await safety.refusal(bare_chain.rpc, KEEPER_ADDRESS) is None
    # Given the head, the balance is read once per head (it only changes when a block is mined).
    head = await bare_chain.rpc.block_number()
    await bare_chain.rpc.call("anvil_setBalance", [poor.address, hex(ETH)])
    assert await safety.refusal(bare_chain.rpc, poor.address, head) is None
    await bare_chain.rpc.call("anvil_setBalance", [poor.address, hex(ETH // 100)])
    assert await safety.refusal(bare_chain.rpc, poor.address, head) is None  # read at this head
    assert await safety.refusal(bare_chain.rpc, poor.address, head + 1) == GAS_BALANCE_LOW
    app = App(_settings(bare_chain, _key("poor"), min_gas_balance_eth=Decimal("0.05")))
    with pytest.raises(ConfigError, match=r"KEEPER_MIN_GAS_BALANCE_ETH.*below the floor"):
        await asyncio.wait_for(app.run(install_signals=False), 30)


def _env(**kv: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    db = os.path.join(tempfile.mkdtemp(), "keeper.db")
    return {**env, "KEEPER_METRICS_PORT": "0", "KEEPER_LOG_FORMAT": "json", "KEEPER_DB_PATH": db, **kv}


async def _keeper_run(env: dict[str, str]) -> tuple[int, str]:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "keeper", "run", env=env,
                                                stdout=pipe, stderr=pipe)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


async def test_a_wrong_chain_id_stops_the_keeper_at_start_with_one_line(bare_devnet: Devnet) -> None:
    env = _env(**{**bare_devnet.keeper_env(), "KEEPER_CHAIN_ID": "1"})
    code, err = await _keeper_run(env)
    assert code == 2
    line = _one_line(err)
    assert "KEEPER_CHAIN_ID" in line and "expected chain 1" in line
    assert f"the node is on {bare_devnet.deployment.chain_id}" in line


async def test_an_executor_owned_by_someone_else_stops_the_keeper_at_start_with_one_line(
        bare_chain: Devnet) -> None:
    stranger = _key("stranger")
    await bare_chain.rpc.call("anvil_setBalance", [Account.from_key(stranger).address, hex(ETH)])
    foreign = await deploy_executor(bare_chain.rpc, stranger, bare_chain.deployment.pool_addresses_provider,
                                    bare_chain.uniswap.router, poll_interval=0.02)
    env = _env(**{**bare_chain.keeper_env(), "KEEPER_EXECUTION": "flashloan",
                  "KEEPER_EXECUTOR_ADDRESS": foreign})
    code, err = await _keeper_run(env)
    assert code == 2
    line = _one_line(err)
    assert "KEEPER_EXECUTOR_ADDRESS" in line and "is owned by" in line and KEEPER_ADDRESS in line
    assert KEEPER_DEV_KEY[2:] not in err
