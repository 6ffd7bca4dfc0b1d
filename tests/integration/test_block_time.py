"""Issue 9 on real Anvil chains: a keeper on a chain with a block time, running behind its head.

The transaction's age is counted from the head when it was broadcast, never from the block the
cycle decided on; a borrower left liquidatable by a capped liquidation is taken again at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from pydantic import SecretStr
from scenario import keeper_txs
from test_sending import Miner, _eventually, _pool_txs_pending, _run_apps, _settings

from keeper.app import App
from keeper.config import load_settings
from keeper.devnet.chain import send_as
from keeper.devnet.seed import Seeder, plan_position, shock
from keeper.devnet.stack import KEEPER_ADDRESS, KEEPER_DEV_KEY, Devnet
from keeper.exec.fees import GWEI, Fees
from keeper.exec.safety import CLOSED, CircuitBreaker, Safety
from keeper.exec.sender import Intent, Sender, SendPolicy
from keeper.exec.signer import Signer
from keeper.metrics import Metrics
from keeper.protocol.aave_v3 import (
    APPROVE,
    BALANCE_OF,
    LIQUIDATION,
    discover_market,
    encode_liquidation_call,
    read_account_health,
)
from keeper.sim.fork import ForkSimulator, TxRequest

ETH = 10**18


@pytest.fixture
async def manual(bare_chain: Devnet) -> AsyncIterator[Devnet]:
    """The bare devnet with automine off: blocks come only from `_mine` (restored after)."""
    await bare_chain.rpc.call("evm_setAutomine", [False])
    try:
        yield bare_chain
    finally:
        await bare_chain.rpc.call("anvil_dropAllTransactions", [])
        await bare_chain.rpc.call("evm_setAutomine", [True])


async def _mine(dn: Devnet, blocks: int = 1, base_fee: int = 100 * GWEI) -> int:
    """Mine `blocks` blocks, each charging `base_fee` (above what the test's transaction bid)."""
    for _ in range(blocks):
        await dn.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(base_fee)])
        await dn.rpc.call("evm_mine", [])
    return await dn.rpc.block_number()


async def test_a_tx_sent_while_the_cycle_is_5_blocks_behind_is_cancelled_max_pending_blocks_after_broadcast(
        manual: Devnet) -> None:
    dn = manual
    key = "0x" + keccak(text="keeper-block-time-test:behind").hex()
    account = Account.from_key(key)
    await dn.rpc.call("anvil_setBalance", [account.address, hex(ETH)])
    metrics = Metrics()
    # One failure would trip this breaker: the timeout cancel below must not be one.
    safety = Safety(breaker=CircuitBreaker(max_failures=1, window_s=3_600), metrics=metrics)
    policy = SendPolicy(max_fee_wei=500 * GWEI, max_pending_blocks=6, replace_after_blocks=3)
    sender = Sender(dn.rpc, Signer(SecretStr(key), dn.deployment.chain_id), max_fee_gwei=Decimal(500),
                    policy=policy, safety=safety, metrics=metrics)
    head = await _mine(dn, 8, base_fee=GWEI)
    decided_at = head - 5  # the cycle that decided it is 5 blocks behind the chain
    # A bid of 2 gwei; every block from now on charges 100 gwei: it waits in the mempool.
    intent = Intent(key="behind", to=account.address, data=b"", gas_limit=21_000, gas_estimate=21_000,
                    profit_wei=21_000 * 2 * GWEI, block=decided_at)
    attempt = await sender.submit(intent, Fees(2 * GWEI, GWEI, GWEI))
    assert (attempt.first_block, attempt.last_sent) == (head, head)  # the head at the broadcast
    for waited in range(1, policy.max_pending_blocks):
        await sender.follow_block(await _mine(dn))
        assert attempt.cancel_reason is None and attempt.live.kind == "liquidation", waited
        assert attempt.outcome is None
        # Replacement timing counts from the broadcast too: the first look at a replacement (here
        # capped by the profit, so nothing is re-sent) comes replace_after_blocks after it.
        expected_look = head + policy.replace_after_blocks if waited >= policy.replace_after_blocks else head
        assert attempt.last_sent == expected_look, waited
    await sender.follow_block(await _mine(dn))  # max_pending_blocks after the broadcast
    assert attempt.cancel_reason == "timeout" and attempt.live.kind == "cancel"
    assert attempt.live.head == head + policy.max_pending_blocks
    assert metrics.tx_cancels.labels(reason="timeout")._value.get() == 1
    # The cancel (bid at the ceiling) is mined; the attempt settles as cancelled, and the
    # breaker, which one failure would trip, stays closed.
    await sender.follow_block(await _mine(dn, base_fee=GWEI))
    assert attempt.outcome is not None and attempt.outcome.status == "cancelled"
    assert safety.breaker.state == CLOSED and safety.breaker.failures == 0
    assert metrics.breaker_open._value.get() == 0




async def test_a_borrower_still_liquidatable_after_a_capped_liquidation_is_liquidated_again_in_the_next_block(
        bare_chain: Devnet) -> None:
    dn, rpc, pool = bare_chain, bare_chain.rpc, bare_chain.deployment.pool
    # Two debts: one liquidationCall repays at most half of the USDC leg (the 50% close factor),
    # after which the DAI leg still leaves the borrower below HF 1.
    plan = plan_position(21, {"WETH": 10_000}, {"USDC": 4_400, "DAI": 3_400}, salt=9)
    await Seeder(rpc, dn.deployment).seed([plan], liquidity_usd=0)
    user = plan.address
    miner = Miner(rpc, interval_s=0.5)
    seen: dict[str, int] = {}

    async def hold_the_block_after_the_first_liquidation_until_the_keeper_sent_again() -> bool:
        if "first" not in seen:
            logs = await _liquidations(dn, user)
            if logs:
                seen["first"] = int(logs[0]["blockNumber"], 16)
                seen["since"] = int(time.monotonic())
            return True
        if "released" not in seen:
            pending = (await _pool_txs_pending(rpc, pool)).get(KEEPER_ADDRESS)
            if not pending and time.monotonic() - seen["since"] < 20:
                return False  # a block-time chain would mine it anyway; this one waits for the keeper
            seen["released"] = 1
        return True

    miner.before = hold_the_block_after_the_first_liquidation_until_the_keeper_sent_again
    app = App(_settings(dn, poll_interval_s=0.1))
    try:
        await miner.start()
        await shock(rpc, dn.deployment, "WETH", -15)

        async def scenario() -> None:
            def two() -> bool:
                return app.sender is not None and sum(o.success for o in app.sender.history) >= 2

            await _eventually(two, 60, "two liquidations")

        await _run_apps([app], scenario)
    finally:
        await miner.stop()
        await rpc.call("evm_setAutomine", [True])
    first, second = [int(e["blockNumber"], 16) for e in (await _liquidations(dn, user))[:2]]
    assert first == seen["first"] and second == first + 1
    market = await discover_market(rpc, dn.deployment.pool_addresses_provider)
    (after_first,) = await read_account_health(rpc, market, [user], first)
    assert after_first.liquidatable  # the capped round left it liquidatable
    outcomes = [o for o in app.sender.history if o.key == user]
    assert [o.status for o in outcomes[:2]] == ["included", "included"]
    assert app.metrics.skipped.labels(reason="cooldown")._value.get() == 0


async def _liquidations(dn: Devnet, user: str) -> list[dict]:
    topic = "0x" + encode(["address"], [user]).hex()
    return await dn.rpc.get_logs({"address": dn.deployment.pool, "fromBlock": "0x0", "toBlock": "latest",
                                  "topics": [LIQUIDATION.topic, None, None, topic]})


async def test_a_keeper_restarted_mid_liquidation_resumes_and_finishes_the_job(any_chain: Devnet,
                                                                                 tmp_path: Path) -> None:
    dn = any_chain  # automine, and 1-second blocks
    market = await discover_market(dn.rpc, dn.deployment.pool_addresses_provider)
    users = [p.address for p in dn.plans]
    await shock(dn.rpc, dn.deployment, "WETH", -15)
    start = await dn.rpc.block_number()
    victims = [h.user for h in await read_account_health(dn.rpc, market, users, start) if h.liquidatable]
    assert len(victims) >= 5
    nonce = await dn.rpc.get_transaction_count(KEEPER_ADDRESS, "latest")
    db = tmp_path / "keeper.db"
    # First run: stopped right after its first cycle sent (on 1-second blocks, with its
    # transactions still pending).
    first = App(_settings(dn, db_path=db, inclusion_wait_s=0))
    await asyncio.wait_for(first.run(until=lambda r: bool(r.sent), install_signals=False), 120)
    sent_first = sum(len(r.sent) for r in first.reports)
    assert sent_first >= 1
    # Second run on the same database: the index resumes from its checkpoint, the nonce manager
    # continues after the pending transactions, and the rest is liquidated.
    second = App(_settings(dn, db_path=db, inclusion_wait_s=5 if dn.block_time else 0.5))

    idle = 0

    def done(report: Any) -> bool:
        # The first run's transactions may still be pending (the fork replays them, so their
        # borrowers simulate as already liquidated) and a capped one needs a second round once
        # they land: stop when nobody is liquidatable, or after 5 cycles that sent nothing.
        nonlocal idle
        waiting = second.sender is not None and bool(second.sender.registry.inflight)
        idle = 0 if report.sent or waiting else idle + 1
        return report.liquidatable == 0 or idle >= 5

    await asyncio.wait_for(second.run(until=done, install_signals=False), 120)
    # Resumed from the checkpoint, never behind it (on 1-second blocks a restart within the second
    # sees the same head again: its cycle replays the pending transactions and sends nothing twice).
    assert second.reports[0].block >= first.reports[-1].block
    end = await dn.rpc.block_number()
    still = [h.user for h in await read_account_health(dn.rpc, market, victims, end) if h.liquidatable]
    assert still == []
    mined, reverted = await keeper_txs(dn, KEEPER_ADDRESS, start + 1, end)
    assert reverted == []
    # Every nonce used once, none skipped: the chain's count is the start plus what was mined.
    assert await dn.rpc.get_transaction_count(KEEPER_ADDRESS, "latest") == nonce + mined
    assert await dn.rpc.get_transaction_count(KEEPER_ADDRESS, "pending") == nonce + mined


async def test_the_fork_replays_the_keepers_pending_liquidation_before_simulating_the_next(
        manual: Devnet) -> None:
    dn, rpc, d = manual, manual.rpc, manual.deployment
    await rpc.call("evm_setAutomine", [True])
    plan = plan_position(22, {"WETH": 200_000}, {"USDC": 160_000}, salt=9)  # capped at 50% at -4%
    await Seeder(rpc, d).seed([plan], liquidity_usd=0)
    await send_as(rpc, KEEPER_ADDRESS, d.assets["USDC"], APPROVE.encode(d.pool, 2**256 - 1), impersonate=True)
    await shock(rpc, d, "WETH", -4)
    await rpc.call("evm_setAutomine", [False])
    head = await rpc.block_number()
    data = encode_liquidation_call(d.assets["WETH"], d.assets["USDC"], plan.address, 2**256 - 1)
    sender = Sender(rpc, Signer(SecretStr(KEEPER_DEV_KEY), d.chain_id), max_fee_gwei=Decimal(500))
    intent = Intent(key=plan.address, to=d.pool, data=data, gas_limit=600_000, gas_estimate=400_000,
                    profit_wei=ETH, block=head)
    attempt = await sender.submit(intent, await sender.fees())
    debt = await _debt_at(rpc, d.debt_tokens["USDC"], plan.address)
    async with ForkSimulator(dn.url, load_settings().anvil_path) as sim:
        await sim.at_block(head)
        pending = [(a.nonce, TxRequest(KEEPER_ADDRESS, a.intent.to, a.intent.data, gas=a.intent.gas_limit))
                   for a in sender.replayable()]
        assert [n for n, _ in pending] == [attempt.nonce]
        assert await sim.replay_pending(KEEPER_ADDRESS, pending) == 1
        # The fork holds the pending liquidation (half the debt repaid); a rewind keeps it.
        on_fork = await _debt_at(sim.rpc, d.debt_tokens["USDC"], plan.address)
        assert abs(on_fork - debt // 2) <= debt // 10**4, (debt, on_fork)
        run = await sim.run(TxRequest(KEEPER_ADDRESS, d.pool, data, gas=600_000), [d.assets["USDC"]])
        assert not run.success  # simulated on top of the first: the borrower is healthy again
    assert await _debt_at(rpc, d.debt_tokens["USDC"], plan.address) == debt  # nothing mined on the chain


async def _debt_at(rpc: Any, token: str, user: str) -> int:
    return BALANCE_OF.decode_one(await rpc.eth_call(token, BALANCE_OF.encode(user)))
