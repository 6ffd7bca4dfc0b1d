"""Fixtures for the chain-access unit tests: a real anvil, Multicall3 on it, and a fake node.

The fake node exists only for behaviour a real node cannot be made to show on demand
(429s, hangs, dropped connections, per-item batch failures). Everything else runs on anvil.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from keeper.chain.multicall import MULTICALL3_ADDRESS
from keeper.chain.rpc import RpcClient
from keeper.config import DEFAULT_ANVIL, REPO_ROOT

# Runtime code that reverts with the 4 bytes 0xdeadbeef:
# PUSH4 deadbeef PUSH1 e0 SHL PUSH1 0 MSTORE PUSH1 4 PUSH1 0 REVERT
REVERTER_CODE = "0x63deadbeef60e01b60005260046000fd"
REVERTER_ADDRESS = "0x000000000000000000000000000000000000dEaD"
# anvil's first default account (publicly known test key, funded with 10,000 ETH).
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _drain(stream: asyncio.StreamReader) -> None:
    # anvil logs every request; an unread pipe would eventually block it.
    while await stream.readline():
        pass


@pytest.fixture(scope="session")
async def anvil_url() -> AsyncIterator[str]:
    """A fresh anvil for the session; always stopped, even if startup fails."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(DEFAULT_ANVIL),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"anvil exited early with {await proc.wait()}")
                if b"Listening on" in line:
                    break
        drain = asyncio.create_task(_drain(proc.stdout))
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()


@pytest.fixture(scope="session")
def multicall3_runtime(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Multicall3 runtime bytecode compiled from contracts/Multicall3.sol with solc-js."""
    tmp = tmp_path_factory.mktemp("multicall3")
    job, out = tmp / "job.json", tmp / "out.json"
    job.write_text(
        json.dumps(
            {
                "sources": ["contracts/Multicall3.sol"],
                "settings": {
                    "optimizer": {"enabled": True, "runs": 10_000},
                    "evmVersion": "paris",
                    "outputSelection": {
                        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
                    },
                },
            }
        )
    )
    done = subprocess.run(
        ["node", str(REPO_ROOT / "scripts/solc-compile.cjs"), str(job), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"solc-js failed: {done.stderr[-2000:]}"
    contracts = json.loads(out.read_text())["contracts"]
    return "0x" + contracts["contracts/Multicall3.sol:Multicall3"]["deployedBytecode"]


@dataclass(frozen=True)
class Chain:
    """What tests need to know about the session's anvil."""

    url: str
    multicall3: str = MULTICALL3_ADDRESS
    reverter: str = REVERTER_ADDRESS  # reverts with 0xdeadbeef
    reverter_code: str = REVERTER_CODE
    account: str = ANVIL_ACCOUNT
    key: str = ANVIL_KEY
    chain_id: int = 31337


@pytest.fixture(scope="session")
async def chain(anvil_url: str, multicall3_runtime: str) -> Chain:
    """anvil with Multicall3 at its canonical address and a reverting contract at 0x…dEaD."""
    async with RpcClient(anvil_url) as rpc:
        await rpc.call("anvil_setCode", [MULTICALL3_ADDRESS, multicall3_runtime])
        await rpc.call("anvil_setCode", [REVERTER_ADDRESS, REVERTER_CODE])
    return Chain(url=anvil_url)


@pytest.fixture
async def rpc(chain: Chain) -> AsyncIterator[RpcClient]:
    async with RpcClient(chain.url, timeout_s=10, max_retries=1) as client:
        yield client


@pytest.fixture
def dead_url() -> str:
    """An RPC URL (with a fake API key in the path) where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/v3/SECRET-API-KEY"


# -- fake node -------------------------------------------------------------------------

Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class FakeNode:
    """An HTTP endpoint that answers from a script, one handler per request.

    The last handler repeats once the script runs out. `requests` holds every JSON body.
    """

    def __init__(self) -> None:
        self.script: list[Handler] = []
        self.requests: list[Any] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.requests.append(body)
        step = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        return await step(request, body)

    # Script steps ---------------------------------------------------------------------

    @staticmethod
    def http(status: int, text: str = "") -> Handler:
        async def h(_: web.Request, __: Any) -> web.StreamResponse:
            return web.Response(status=status, text=text)

        return h

    @staticmethod
    def result(value: Any) -> Handler:
        async def h(_: web.Request, body: Any) -> web.StreamResponse:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": value})

        return h

    @staticmethod
    def error(code: int, message: str, data: Any = None, status: int = 200) -> Handler:
        async def h(_: web.Request, body: Any) -> web.StreamResponse:
            err = {"code": code, "message": message, **({"data": data} if data else {})}
            rid = body["id"] if isinstance(body, dict) else None
            return web.json_response({"jsonrpc": "2.0", "id": rid, "error": err}, status=status)

        return h

    @staticmethod
    def hang(seconds: float = 5.0) -> Handler:
        async def h(_: web.Request, body: Any) -> web.StreamResponse:
            await asyncio.sleep(seconds)
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": "0x0"})

        return h

    @staticmethod
    def drop() -> Handler:
        async def h(request: web.Request, _: Any) -> web.StreamResponse:
            assert request.transport is not None
            request.transport.abort()  # client sees the connection reset
            return web.Response()

        return h

    @staticmethod
    def batch(answer: Callable[[dict[str, Any]], dict[str, Any]], reverse: bool = True) -> Handler:
        """Answer each batch item with `answer(item)` (a dict with result or error)."""

        async def h(_: web.Request, body: Any) -> web.StreamResponse:
            items = [{"jsonrpc": "2.0", "id": it["id"], **answer(it)} for it in body]
            return web.json_response(items[::-1] if reverse else items)

        return h


@pytest.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    app = web.Application()
    app.router.add_post("/{tail:.*}", node.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        node.url = f"http://127.0.0.1:{port}/v3/SECRET-API-KEY"
        yield node
    finally:
        async with asyncio.timeout(5):
            await runner.cleanup()
