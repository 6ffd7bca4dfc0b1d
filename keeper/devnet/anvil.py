"""Anvil as a managed process: the devnet chain and the simulation fork both run on it.

A started Anvil is a resource: `async with Anvil(...)` always stops it, and
`stop()` escalates from SIGTERM to SIGKILL under a deadline so no process is
left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ANVIL = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"

# Anvil's default mnemonic account 0: a well-known devnet key, never a real one.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


class AnvilError(KeeperError):
    """Anvil could not be started, or did not answer in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AnvilOptions:
    port: int = 0  # 0: pick a free port
    chain_id: int = 31337
    block_time: float | None = None  # None: automine
    fork_url: str | None = None
    fork_block: int | None = None
    gas_limit: int = 100_000_000
    code_size_limit: int | None = None
    base_fee: int | None = None
    # Where Anvil writes the historical states it moves out of memory. Anvil never deletes
    # them itself (not on SIGTERM, not on SIGINT): left in ~/.foundry/anvil/tmp they filled a
    # CI disk. None: a temporary folder that stop() removes.
    state_cache: Path | None = None
    # Historical states kept on disk once the in-memory ones (Anvil keeps hundreds) are used up:
    # bounds the disk a chain mining every second for hours can take.
    max_disk_states: int = 256
    extra: list[str] = field(default_factory=list)

    def argv(self, binary: Path, port: int, state_cache: Path) -> list[str]:
        args = [
            str(binary),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--chain-id",
            str(self.chain_id),
            "--gas-limit",
            str(self.gas_limit),
            "--mnemonic",
            DEV_MNEMONIC,
            "--accounts",
            "10",
            "--balance",
            "1000000",
            "--silent",
            "--cache-path",
            str(state_cache),
        ]
        if "--prune-history" not in self.extra:  # which keeps no state on disk at all
            args += ["--max-persisted-states", str(0 if self.fork_url else self.max_disk_states)]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        if self.fork_url:
            # No storage cache: a long-running keeper re-forks every block, and each fork at a
            # block number would otherwise leave a file under ~/.foundry/cache for ever.
            args += ["--fork-url", self.fork_url, "--no-rate-limit", "--no-storage-caching"]
            if self.fork_block is not None:
                args += ["--fork-block-number", str(self.fork_block)]
        if self.code_size_limit:
            args += ["--code-size-limit", str(self.code_size_limit)]
        if self.base_fee is not None:
            args += ["--base-fee", str(self.base_fee)]
        return args + self.extra


class Anvil:
    """One Anvil process. Use as an async context manager, or start()/stop()."""

    def __init__(
        self,
        options: AnvilOptions | None = None,
        *,
        binary: Path | None = None,
        detach: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.options = options or AnvilOptions()
        self.binary = Path(binary or DEFAULT_ANVIL)
        self.detach = detach  # survive this Python process (keeper devnet up)
        self.log_path = log_path
        self.port = self.options.port or free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self._popen: subprocess.Popen | None = None
        self._own_cache: Path | None = None  # a temporary state cache this object removes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        return self.proc.pid if self.proc else None

    async def start(self, *, timeout_s: float = 15.0) -> Anvil:
        if not self.binary.exists():
            raise AnvilError(f"anvil not found at {self.binary}: run `make setup` or set KEEPER_ANVIL_PATH")
        cache = self.options.state_cache
        if cache is None:
            cache = self._own_cache = Path(tempfile.mkdtemp(prefix="keeper-anvil-"))
        try:
            await self._spawn(self.options.argv(self.binary, self.port, cache))
            await wait_ready(self.url, timeout_s, self._exit_code)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _spawn(self, argv: list[str]) -> None:
        # Opening a local log file and forking are sub-millisecond; only the devnet CLI logs to a file.
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: ASYNC230
        try:
            if self.detach:
                # asyncio kills its child processes when the loop closes; a devnet that must
                # outlive this command is a plain Popen in its own session.
                self._popen = subprocess.Popen(  # noqa: ASYNC220
                    argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
                )
            else:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
                )
        finally:
            if self.log_path:
                out.close()

    def _exit_code(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        return self.proc.returncode if self.proc is not None else None

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        try:
            await self._stop_process(timeout_s)
        finally:
            if self._own_cache is not None:
                cache, self._own_cache = self._own_cache, None
                await asyncio.to_thread(shutil.rmtree, cache, True)

    async def _stop_process(self, timeout_s: float) -> None:
        if self._popen is not None:
            popen, self._popen = self._popen, None
            await _stop_popen(popen, timeout_s)
            return
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def __aenter__(self) -> Anvil:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def wait_ready(url: str, timeout_s: float, exit_code: Callable[[], int | None] = lambda: None) -> None:
    """Poll eth_chainId until Anvil answers; fail fast if the process died."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    delay = 0.02
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while True:
            if (code := exit_code()) is not None:
                raise AnvilError(f"anvil exited with code {code} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(url, json=body) as resp:
                    if resp.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise AnvilError(f"anvil did not answer on {url} within {timeout_s}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


async def _stop_popen(popen: subprocess.Popen, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while popen.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            popen.kill()
            break
        await asyncio.sleep(0.02)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=1)
