"""The operator's view: `keeper run` from env vars alone, and bad settings that stop it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile

import pytest

from keeper.devnet.anvil import free_port
from keeper.devnet.seed import shock
from keeper.devnet.stack import Devnet
from keeper.protocol.aave_v3 import MarketReadError, discover_market, read_account_health

WAD = 10**18
BAD_KEY = "0x" + "zz" * 32


def _env(**kv: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    db = os.path.join(tempfile.mkdtemp(), "keeper.db")
    return {**env, "KEEPER_METRICS_PORT": "0", "KEEPER_LOG_FORMAT": "json", "KEEPER_DB_PATH": db, **kv}


async def _keeper(*args: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keeper",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode(), err.decode()


def _one_clear_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


async def test_unreachable_rpc_stops_the_keeper_with_one_line(devnet: Devnet) -> None:
    url = f"http://127.0.0.1:{free_port()}/v3/secret-api-key"
    code, _, err = await _keeper(
        "run",
        env=_env(
            KEEPER_RPC_URL=url,
            KEEPER_POOL_ADDRESSES_PROVIDER=devnet.deployment.pool_addresses_provider,
            KEEPER_PRIVATE_KEY=devnet.keeper_env()["KEEPER_PRIVATE_KEY"],
            KEEPER_RPC_MAX_RETRIES="0",
        ),
    )
    assert code == 2
    line = _one_clear_line(err)
    assert "KEEPER_RPC_URL" in line and "cannot reach" in line
    assert "secret-api-key" not in err


async def test_provider_without_code_stops_the_keeper_with_one_line(devnet: Devnet) -> None:
    code, _, err = await _keeper(
        "run",
        env=_env(
            KEEPER_RPC_URL=devnet.url,
            KEEPER_POOL_ADDRESSES_PROVIDER="0x" + "12" * 20,
            KEEPER_PRIVATE_KEY=devnet.keeper_env()["KEEPER_PRIVATE_KEY"],
        ),
    )
    assert code == 2
    line = _one_clear_line(err)
    assert "KEEPER_POOL_ADDRESSES_PROVIDER" in line and "no contract" in line


async def test_malformed_key_stops_the_keeper_without_echoing_it(devnet: Devnet) -> None:
    code, out, err = await _keeper(
        "run",
        env=_env(
            KEEPER_RPC_URL=devnet.url,
            KEEPER_POOL_ADDRESSES_PROVIDER=devnet.deployment.pool_addresses_provider,
            KEEPER_PRIVATE_KEY=BAD_KEY,
        ),
    )
    assert code == 2
    line = _one_clear_line(err)
    assert "KEEPER_PRIVATE_KEY" in line
    assert "zz" not in err + out


async def test_missing_key_is_named(devnet: Devnet) -> None:
    code, _, err = await _keeper(
        "run",
        env=_env(
            KEEPER_RPC_URL=devnet.url,
            KEEPER_POOL_ADDRESSES_PROVIDER=devnet.deployment.pool_addresses_provider,
        ),
    )
    assert code == 2
    assert "KEEPER_PRIVATE_KEY" in _one_clear_line(err)


async def test_keeper_run_liquidates_a_market_it_did_not_deploy(chain: Devnet) -> None:
    """Given only an RPC URL, a provider address and a key, the daemon finds and liquidates,
    then stops cleanly on SIGTERM."""
    await shock(chain.rpc, chain.deployment, "WETH", -15)
    market = await discover_market(chain.rpc, chain.deployment.pool_addresses_provider)
    users = [p.address for p in chain.plans]
    block = await chain.rpc.block_number()
    victims = [h.user for h in await read_account_health(chain.rpc, market, users, block) if h.liquidatable]
    assert victims
    port = free_port()
    env = _env(
        KEEPER_RPC_URL=chain.url,
        KEEPER_POOL_ADDRESSES_PROVIDER=market.provider,
        KEEPER_PRIVATE_KEY=chain.keeper_env()["KEEPER_PRIVATE_KEY"],
        KEEPER_POLL_INTERVAL_S="0.2",
        KEEPER_METRICS_PORT=str(port),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keeper",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(600):  # up to 60 s
            await asyncio.sleep(0.1)
            block = await chain.rpc.block_number()
            try:
                health = await read_account_health(chain.rpc, market, victims, block)
            except MarketReadError:
                # Anvil can serve a read of the newest block while it mines the next one on top
                # (seen as Panic(0x11) from the pool's interest math); read again.
                continue
            if all(not h.liquidatable for h in health):
                break
        else:
            pytest.fail("the keeper did not liquidate every victim in time")
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        assert 'keeper_liquidations_total{outcome="included"}' in text
        assert chain.keeper_env()["KEEPER_PRIVATE_KEY"][2:] not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(ln) for ln in err.decode().splitlines() if ln.startswith("{")]
    assert any(e["event"] == "app.stopped" for e in events)
    assert chain.keeper_env()["KEEPER_PRIVATE_KEY"][2:] not in err.decode()
