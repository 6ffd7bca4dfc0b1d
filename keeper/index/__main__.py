"""`python -m keeper.index`: build or resume the borrower index, then exit (or follow heads).

Settings come from KEEPER_* / .env like the keeper's; flags override them. Prints one JSON
line with the result on stdout when done. Safe to kill at any time: the next run resumes
from the last committed page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from eth_utils import to_checksum_address

from keeper.chain.heads import HeadWatcher, fetch_head
from keeper.chain.rpc import RpcClient
from keeper.config import load_settings
from keeper.errors import ConfigError, KeeperError
from keeper.index.indexer import BorrowerIndex
from keeper.index.store import Store
from keeper.log import configure_logging, get_logger
from keeper.protocol.aave_v3 import GET_POOL

log = get_logger("keeper.index")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m keeper.index", description=__doc__.splitlines()[0])
    p.add_argument("--rpc-url", help="overrides KEEPER_RPC_URL")
    p.add_argument("--ws-url", help="overrides KEEPER_WS_URL (only with --follow)")
    p.add_argument("--db", dest="db_path", help="overrides KEEPER_DB_PATH")
    p.add_argument("--pool", help="Pool address (default: read from KEEPER_POOL_ADDRESSES_PROVIDER)")
    p.add_argument("--start-block", type=int, help="overrides KEEPER_START_BLOCK")
    p.add_argument("--max-range", type=int, dest="getlogs_max_range",
                   help="overrides KEEPER_GETLOGS_MAX_RANGE")
    p.add_argument("--confirmations", type=int, default=12)
    p.add_argument("--follow", action="store_true", help="keep indexing new heads until interrupted")
    return p.parse_args(argv)


async def _pool(rpc: RpcClient, pool: str | None, provider: str | None) -> str:
    if pool:
        return to_checksum_address(pool)
    if not provider:
        raise ConfigError("KEEPER_POOL_ADDRESSES_PROVIDER: required (or pass --pool)")
    raw = await rpc.eth_call(provider, GET_POOL.encode())
    return to_checksum_address(GET_POOL.decode_one(raw))


async def run(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    s = load_settings(rpc_url=a.rpc_url, ws_url=a.ws_url, db_path=a.db_path, start_block=a.start_block,
                      getlogs_max_range=a.getlogs_max_range)
    s.require("rpc_url")
    assert s.rpc_url is not None
    configure_logging(s.log_level, s.log_format)
    t0 = time.monotonic()
    async with RpcClient(s.rpc_endpoints(), timeout_s=s.rpc_timeout_s, max_retries=s.rpc_max_retries) as rpc:
        pool = await _pool(rpc, a.pool, s.pool_addresses_provider)
        store = await Store.open(s.db_path)
        try:
            index = BorrowerIndex(rpc, store, pool, start_block=s.start_block, confirmations=a.confirmations,
                                  max_range=s.getlogs_max_range)
            resumed_from = await store.checkpoint()
            update = await index.start(await fetch_head(rpc))
            if a.follow:
                await _follow(rpc, index, s.ws_url)
            return {
                "pool": pool,
                "resumed_from": resumed_from.block if resumed_from else None,
                "checkpoint": index.checkpoint.block,
                "borrowers": len(index.borrowers()),
                "new_borrowers": len(update.new_borrowers),
                "seconds": round(time.monotonic() - t0, 3),
            }
        finally:
            await store.close()


async def _follow(rpc: RpcClient, index: BorrowerIndex, ws_url: str | None) -> None:
    watcher = HeadWatcher(rpc, ws_url=ws_url)
    task = asyncio.create_task(watcher.run())
    try:
        last = None
        while True:
            head = await watcher.slot.next(after=last, timeout=60)
            if head is None:
                continue
            try:
                update = await index.advance(head)
            except KeeperError as e:
                log.warning("index.advance_failed", block=head.number, error=type(e).__name__, detail=str(e))
                continue
            last = head
            if update.changed:
                log.info("index.update", block=update.block, new=len(update.new_borrowers),
                         removed=len(update.removed_borrowers), fork_point=update.fork_point)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    try:
        result = asyncio.run(run(argv))
    except ConfigError as e:
        print(f"config error:\n{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
