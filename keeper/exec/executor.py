"""Keeper-side helpers for the flash-loan executor (contracts/Liquidator.sol).

The committed abis/Liquidator.json and abis/Liquidator.bin are what the keeper deploys and
talks to; tests rebuild the contract and require byte-identical output. Regenerate both
after editing the contract with `python -m keeper.exec.executor`.

Deploying signs locally with eth_account and sends a raw transaction, so it works against
any node (no unlocked accounts). The key is never logged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from pydantic import SecretStr

from keeper.chain.rpc import RpcClient
from keeper.errors import ConfigError, ExecutionError, ExecutionReverted
from keeper.log import get_logger
from keeper.protocol.abi import ABI_DIR, decode_revert, fn
from keeper.types import Address

log = get_logger(__name__)

SOURCE = "contracts/Liquidator.sol"
BIN_PATH = ABI_DIR / "Liquidator.bin"
ABI_PATH = ABI_DIR / "Liquidator.json"

LIQUIDATE = fn("Liquidator", "liquidate")
SWEEP = fn("Liquidator", "sweep")
OWNER = fn("Liquidator", "owner")
POOL = fn("Liquidator", "POOL")
SWAP_ROUTER = fn("Liquidator", "SWAP_ROUTER")
EXECUTE_OPERATION = fn("Liquidator", "executeOperation")
GET_POOL = fn("PoolAddressesProvider", "getPool")
INSUFFICIENT_PROFIT = keccak(text="InsufficientProfit(uint256,uint256)")[:4]
UINT256_MAX = 2**256 - 1


@dataclass(frozen=True, slots=True)
class LiquidateParams:
    """Liquidator.Params. Amounts in debt-asset units unless noted."""

    collateral_asset: Address
    debt_asset: Address
    user: Address
    debt_to_cover: int  # UINT256_MAX: as much as the pool allows
    flash_amount: int  # expected debt repaid plus a margin (interest accrues until inclusion)
    swap_path: bytes = b""  # Uniswap V3 path collateral -> debt; empty when they are the same
    min_swap_out: int = 0  # swap output floor (debt units)
    min_profit: int = 0  # debt left after repaying amount + premium, or the call reverts

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.collateral_asset, self.debt_asset, self.user, self.debt_to_cover, self.flash_amount,
                self.swap_path, self.min_swap_out, self.min_profit)


def encode_liquidate(params: LiquidateParams) -> bytes:
    """Calldata for Liquidator.liquidate(params)."""
    return LIQUIDATE.encode(params.as_tuple())


def encode_sweep(token: Address, to: Address) -> bytes:
    return SWEEP.encode(token, to)


def creation_code() -> bytes:
    """The committed creation bytecode (without constructor arguments)."""
    return bytes.fromhex(BIN_PATH.read_text().strip().removeprefix("0x"))


def deploy_data(provider: Address, router: Address) -> bytes:
    return creation_code() + encode(["address", "address"], [provider, router])


def decode_executor_revert(data: bytes | str | None) -> str:
    """Like decode_revert, with InsufficientProfit's numbers spelled out."""
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else (data or b"")
    if raw[:4] == INSUFFICIENT_PROFIT:
        try:
            got, minimum = decode(["uint256", "uint256"], raw[4:])
            return f"InsufficientProfit(got={got}, min={minimum})"
        except DecodingError:
            pass
    return decode_revert(raw)


async def _fees(rpc: RpcClient) -> dict[str, int]:
    """EIP-1559 fields: tip from the node, cap at twice the base fee plus tip (legacy if no base fee)."""
    block = await rpc.get_block("latest")
    base = int(block["baseFeePerGas"], 16) if block and block.get("baseFeePerGas") else None
    if base is None:
        return {"gasPrice": int(await rpc.call("eth_gasPrice"), 16)}
    tip = int(await rpc.call("eth_maxPriorityFeePerGas"), 16)
    return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip, "type": 2}


def _key(signer_key: str | SecretStr) -> str:
    return signer_key.get_secret_value() if isinstance(signer_key, SecretStr) else signer_key


async def sign_and_send(rpc: RpcClient, signer_key: str | SecretStr, to: Address | None, data: bytes, *,
                        value: int = 0, gas: int | None = None, timeout_s: float = 120,
                        poll_interval: float = 0.5) -> dict[str, Any]:
    """Sign one transaction locally, broadcast it once and wait for its receipt.

    Gas is estimated (+20%) unless given; an estimate that reverts raises ExecutionReverted.
    Returns the receipt whatever its status: a revert after inclusion is the caller's to judge.
    """
    account = Account.from_key(_key(signer_key))
    call: dict[str, Any] = {"from": account.address, "data": "0x" + data.hex(), "value": hex(value)}
    if to is not None:
        call["to"] = to
    if gas is None:
        gas = int(await rpc.call("eth_estimateGas", [call]), 16) * 12 // 10
    nonce, chain_id, fees = await asyncio.gather(
        rpc.get_transaction_count(account.address, "pending"), rpc.chain_id(), _fees(rpc)
    )
    tx: dict[str, Any] = {"data": data, "value": value, "gas": gas, "nonce": nonce, "chainId": chain_id,
                          **fees}
    if to is not None:
        tx["to"] = to_checksum_address(to)
    signed = account.sign_transaction(tx)
    tx_hash = await rpc.send_raw_transaction(signed.raw_transaction)
    return await rpc.wait_for_receipt(tx_hash, timeout=timeout_s, poll_interval=poll_interval)


async def deploy_executor(rpc: RpcClient, signer_key: str | SecretStr, provider: Address, router: Address,
                          *, timeout_s: float = 120, poll_interval: float = 0.5) -> Address:
    """Deploy Liquidator(provider, router) from the signer's account; returns its address.

    The signer becomes the executor's owner: the keeper must send liquidations from it.
    """
    provider, router = to_checksum_address(provider), to_checksum_address(router)
    await _check_deploy_targets(rpc, provider, router)
    receipt = await sign_and_send(rpc, signer_key, None, deploy_data(provider, router),
                                  timeout_s=timeout_s, poll_interval=poll_interval)
    if int(receipt["status"], 16) != 1 or not receipt.get("contractAddress"):
        raise ExecutionError(f"executor deployment reverted (tx {receipt['transactionHash']})")
    address = to_checksum_address(receipt["contractAddress"])
    log.info("exec.executor_deployed", address=address, owner=receipt["from"], provider=provider,
             router=router, gas_used=int(receipt["gasUsed"], 16), tx=receipt["transactionHash"])
    return address


async def _check_deploy_targets(rpc: RpcClient, provider: Address, router: Address) -> None:
    if not await rpc.get_code(provider):
        raise ConfigError(f"KEEPER_POOL_ADDRESSES_PROVIDER: no contract at {provider} on this chain")
    try:
        pool = to_checksum_address(GET_POOL.decode_one(await rpc.eth_call(provider, GET_POOL.encode())))
    except (ExecutionReverted, DecodingError):
        pool = None
    if pool is None or not await rpc.get_code(pool):
        raise ConfigError(
            f"KEEPER_POOL_ADDRESSES_PROVIDER: {provider} is not an Aave V3 PoolAddressesProvider"
        )
    if not await rpc.get_code(router):
        raise ConfigError(f"swap router: no contract at {router} on this chain")


async def check_executor(rpc: RpcClient, address: Address, expected_owner: Address, *,
                         expected_pool: Address | None = None, block: int | str = "latest") -> None:
    """Raise ConfigError (one line) unless `address` is a Liquidator owned by `expected_owner`.

    With `expected_pool`, also require it to flash-borrow from that Aave pool.
    """
    where = f"KEEPER_EXECUTOR_ADDRESS: {address}"
    if not await rpc.get_code(address, block):
        raise ConfigError(f"{where} has no code on this chain (deploy one with `keeper executor deploy`)")
    try:
        owner = to_checksum_address(OWNER.decode_one(await rpc.eth_call(address, OWNER.encode(), block)))
        pool = to_checksum_address(POOL.decode_one(await rpc.eth_call(address, POOL.encode(), block)))
    except (ExecutionReverted, DecodingError):
        raise ConfigError(f"{where} is not a Liquidator executor (owner()/POOL() failed)") from None
    if owner != to_checksum_address(expected_owner):
        raise ConfigError(f"{where} is owned by {owner}, not by the keeper's signer {expected_owner}")
    if expected_pool is not None and pool != to_checksum_address(expected_pool):
        raise ConfigError(f"{where} flash-borrows from pool {pool}, not the market's pool {expected_pool}")


async def build_artifacts() -> tuple[list[dict], str]:
    """Compile the contract with the pinned solc-js: (ABI, creation bytecode hex without 0x)."""
    from keeper.devnet.build import build_own  # devnet tooling: only needed to rebuild

    art = (await build_own([SOURCE]))[f"{SOURCE}:Liquidator"]
    return art.abi, art.bytecode


def write_artifacts(abi: list[dict], bytecode: str) -> None:
    ABI_PATH.write_text(json.dumps(abi, indent=1) + "\n")
    BIN_PATH.write_text(bytecode + "\n")


if __name__ == "__main__":
    write_artifacts(*asyncio.run(build_artifacts()))
    print(f"wrote {ABI_PATH} and {BIN_PATH}")
