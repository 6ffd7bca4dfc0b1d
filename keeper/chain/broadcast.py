"""Broadcast one signed transaction to every endpoint until a node accepts it.

The same signed bytes always have the same hash and nonce, so sending them again can never
spend twice. What decides the next step is whether a node may have handled them:

- a node accepted them (or says it already knows them): done, the hash is returned;
- every endpoint refused them before handling them (HTTP 429/503, -32005, connection
  refused): send the identical bytes again with backoff, until the deadline, then raise
  TxNotAccepted (nothing went out; the nonce is free);
- a node answered a definite error (nonce too low, underpriced, ...): raised as is;
- otherwise the request may have reached a node (timeout after sending, connection lost
  mid-answer): raise that transient error; the broadcast is "uncertain" and the sender
  follows the hash. It is never re-sent blindly here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from eth_utils import keccak

from keeper.chain.endpoints import Endpoint, EndpointPool
from keeper.errors import NOT_ACCEPTED_ERRORS, TRANSIENT_ERRORS, RpcError, TxNotAccepted
from keeper.log import get_logger

__all__ = ["ALREADY_KNOWN", "broadcast_raw"]

log = get_logger(__name__)

ALREADY_KNOWN = ("already known", "already imported", "known transaction")

SendOne = Callable[[Endpoint], Awaitable[str]]
EventHook = Callable[[str, str], None]


def already_known(e: RpcError) -> bool:
    return any(p in str(e).lower() for p in ALREADY_KNOWN)


async def _round(pool: EndpointPool, send_one: SendOne, tx_hash: str) -> str | list[RpcError]:
    """One send of the bytes to every endpoint: the hash on the first acceptance, else all errors."""
    tasks = [asyncio.create_task(send_one(ep)) for ep in pool.endpoints]
    errors: list[RpcError] = []
    try:
        for fut in asyncio.as_completed(tasks):
            try:
                return await fut
            except RpcError as e:
                if already_known(e):
                    return tx_hash
                errors.append(e)
        return errors
    finally:
        for t in tasks:
            t.cancel()  # a slower endpoint's answer no longer matters once one accepted
        await asyncio.gather(*tasks, return_exceptions=True)


async def broadcast_raw(
    pool: EndpointPool,
    send_one: SendOne,
    raw_hex: str,
    *,
    deadline_s: float,
    backoff_base_s: float = 0.1,
    backoff_max_s: float = 2.0,
    on_event: EventHook | None = None,
) -> str:
    """Send `raw_hex` to all endpoints, re-sending while every refusal is definite (see module doc)."""
    tx_hash = "0x" + keccak(hexstr=raw_hex).hex()
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        attempt += 1
        outcome = await _round(pool, send_one, tx_hash)
        if isinstance(outcome, str):
            if attempt > 1:
                log.info("rpc.broadcast_accepted", tx=tx_hash, attempts=attempt)
            return outcome
        definite = [e for e in outcome if not isinstance(e, TRANSIENT_ERRORS)]
        if definite:
            raise definite[0]
        uncertain = [e for e in outcome if not isinstance(e, NOT_ACCEPTED_ERRORS)]
        if uncertain:
            raise uncertain[0]
        delay = min(backoff_max_s, backoff_base_s * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if time.monotonic() + delay > deadline:
            if on_event is not None:
                on_event("not_accepted", "all")
            raise TxNotAccepted(
                f"no endpoint accepted the transaction in {attempt} rounds: {outcome[0].message}",
                method="eth_sendRawTransaction",
                code=outcome[0].code,
            )
        log.warning("rpc.rebroadcast", tx=tx_hash, attempt=attempt, delay_s=round(delay, 3),
                    error=type(outcome[0]).__name__)
        if on_event is not None:
            on_event("rebroadcast", "all")
        await asyncio.sleep(delay)
