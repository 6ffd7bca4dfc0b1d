"""The naive baseline keeper: polls each borrower's getUserAccountData, one call at a time.

This is how several public keepers work, and the benchmarks race it against ours on the same
chain, each with its own wallet. It finds its borrowers once from Borrow events, then sweeps
them forever. When a health factor is below 1 it reads the account's reserves (one call per
reserve), picks the largest collateral and the largest debt by oracle value, and sends
`liquidationCall(collateral, debt, user, max, false)` from inventory with a fixed gas limit,
without simulating. It prints one line, `ready`, once it is sweeping.

    .venv/bin/python bench/naive.py RPC_URL POOL_ADDRESSES_PROVIDER PRIVATE_KEY START_BLOCK
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keeper.chain.rpc import RpcClient
from keeper.errors import ExecutionReverted
from keeper.exec.signer import Signer
from keeper.index.events import RangeSizer, backfill_borrowers
from keeper.protocol.aave_v3 import (
    APPROVE,
    GET_USER_ACCOUNT_DATA,
    LIQUIDATION_CALL,
    UINT256_MAX,
    discover_market,
)
from keeper.protocol.abi import fn
from keeper.types import Market

GET_USER_RESERVE_DATA = fn("AaveProtocolDataProvider", "getUserReserveData")
GET_ASSET_PRICE = fn("AaveOracle", "getAssetPrice")
GAS = 1_000_000
RESEND_AFTER_S = 3.0


class Naive:
    def __init__(self, rpc: RpcClient, market: Market, signer: Signer) -> None:
        self.rpc, self.market, self.signer = rpc, market, signer
        self.nonce = 0
        self.sent: dict[str, float] = {}

    async def send(self, to: str, data: bytes) -> str:
        gas_price = int(await self.rpc.call("eth_gasPrice", []), 16)
        tx = {"type": 2, "to": to, "data": data, "value": 0, "gas": GAS, "nonce": self.nonce,
              "maxFeePerGas": 2 * gas_price + 10**9, "maxPriorityFeePerGas": 10**9}
        raw, tx_hash = self.signer.sign(tx)
        self.nonce += 1
        await self.rpc.send_raw_transaction(raw)
        return tx_hash

    async def approve_all(self) -> None:
        self.nonce = await self.rpc.get_transaction_count(self.signer.address)
        hashes = [await self.send(r.asset, APPROVE.encode(self.market.pool, UINT256_MAX))
                  for r in self.market.reserves]
        for h in hashes:
            await self.rpc.wait_for_receipt(h, timeout=600, poll_interval=0.2)

    async def pair(self, user: str) -> tuple[str, str] | None:
        best_coll, best_debt = (0, ""), (0, "")
        for r in self.market.reserves:
            call = GET_USER_RESERVE_DATA.encode(r.asset, user)
            data = GET_USER_RESERVE_DATA.decode(await self.rpc.eth_call(self.market.data_provider, call))
            price = GET_ASSET_PRICE.decode_one(
                await self.rpc.eth_call(self.market.oracle, GET_ASSET_PRICE.encode(r.asset)))
            a_balance, variable_debt, as_collateral = data[0], data[2], data[8]
            if as_collateral:
                best_coll = max(best_coll, (a_balance * price // 10**r.decimals, r.asset))
            best_debt = max(best_debt, (variable_debt * price // 10**r.decimals, r.asset))
        if not best_coll[0] or not best_debt[0]:
            return None
        return best_coll[1], best_debt[1]

    async def sweep(self, users: list[str]) -> None:
        for user in users:
            try:
                raw = await self.rpc.eth_call(self.market.pool, GET_USER_ACCOUNT_DATA.encode(user))
            except ExecutionReverted:
                continue  # seen mid-liquidation on Anvil; the next sweep reads it again
            _, debt, _, _, _, hf = GET_USER_ACCOUNT_DATA.decode(raw)
            if not debt or hf >= 10**18 or time.monotonic() - self.sent.get(user, -1e9) < RESEND_AFTER_S:
                continue
            try:
                pair = await self.pair(user)
            except ExecutionReverted:
                continue  # the data provider panics on some accounts mid-liquidation; next sweep
            if pair is None:
                continue
            data = LIQUIDATION_CALL.encode(pair[0], pair[1], user, UINT256_MAX, False)
            await self.send(self.market.pool, data)
            self.sent[user] = time.monotonic()


async def main(url: str, provider: str, key: str, start_block: int) -> None:
    async with RpcClient(url, timeout_s=60, max_batch=1) as rpc:
        market = await discover_market(rpc, provider)
        naive = Naive(rpc, market, Signer(SecretStr(key), market.chain_id))
        head = await rpc.block_number()
        sizer = RangeSizer(max_range=10_000)
        users = sorted(await backfill_borrowers(rpc, market.pool, start_block, head, sizer))
        await naive.approve_all()
        print("ready", len(users), flush=True)
        while True:
            await naive.sweep(users)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
