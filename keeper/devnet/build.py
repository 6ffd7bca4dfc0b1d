"""Compile Solidity with the pinned solc-js, once, into a cache git ignores.

Aave's core is BUSL-1.1, so its bytecode is never committed: every machine
compiles it from the npm sources on first use (about 20 s) and reuses the
cached output after that. The cache key covers the sources, the settings and
the compiler, so a change to any of them recompiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO_ROOT / "node_modules"
CACHE_DIR = REPO_ROOT / ".cache" / "solc"
COMPILER = REPO_ROOT / "scripts" / "solc-compile.cjs"

AAVE = "@aave-dao/aave-v3-origin/src"

# Upstream aave-v3-origin's foundry.toml settings; changing any of them changes the bytecode.
AAVE_SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "shanghai",
    "metadata": {"bytecodeHash": "none"},
    "remappings": [
        "openzeppelin-contracts/contracts/=@openzeppelin/contracts/",
        "openzeppelin-contracts-upgradeable/contracts/=@openzeppelin/contracts-upgradeable/",
        "solidity-utils/=@bgd-labs/solidity-utils/src/",
    ],
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.bytecode.linkReferences",
                    "evm.deployedBytecode.object"]}
    },
}


class BuildError(KeeperError):
    """Compiling contracts failed (missing npm packages, or solc reported errors)."""


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str  # "unit/path.sol:Contract"
    abi: list
    bytecode: str  # hex without 0x; may hold __$...$__ link placeholders
    link_references: dict
    deployed_bytecode: str

    def linked(self, libraries: dict[str, str]) -> str:
        """Creation code with library placeholders replaced; `libraries` maps 'Name' -> address."""
        code = self.bytecode
        for unit, names in self.link_references.items():
            for lib, spots in names.items():
                addr = libraries.get(lib) or libraries.get(f"{unit}:{lib}")
                if addr is None:
                    raise BuildError(f"{self.name} needs library {lib}, which is not deployed")
                hex_addr = addr.lower().removeprefix("0x")
                for spot in spots:
                    start = spot["start"] * 2
                    code = code[:start] + hex_addr + code[start + 40 :]
        if "__$" in code:
            raise BuildError(f"{self.name} still has unlinked libraries")
        return code


class Build:
    """Compiled artifacts, looked up by contract name or by 'path:Name'."""

    def __init__(self, contracts: dict[str, dict]) -> None:
        self._by_full = {
            name: Artifact(
                name=name,
                abi=c["abi"],
                bytecode=c["bytecode"],
                link_references=c.get("linkReferences") or {},
                deployed_bytecode=c.get("deployedBytecode") or "",
            )
            for name, c in contracts.items()
        }

    def __getitem__(self, key: str) -> Artifact:
        if key in self._by_full:
            return self._by_full[key]
        hits = [a for full, a in self._by_full.items() if full.rsplit(":", 1)[1] == key]
        if len(hits) != 1:
            raise KeyError(f"{key}: {len(hits)} artifacts match")
        return hits[0]

    def names(self) -> list[str]:
        return sorted(self._by_full)


def _require_node_modules() -> None:
    if not (NODE_MODULES / "solc").is_dir():
        raise BuildError("node_modules is missing: run `make setup` (npm ci) first")


def _job_key(job: dict) -> str:
    h = hashlib.sha256(json.dumps(job, sort_keys=True).encode())
    for unit in job["sources"]:
        h.update(_locate(unit).read_bytes())
    lock = REPO_ROOT / "package-lock.json"
    if lock.exists():  # pins every transitively imported source and the compiler
        h.update(lock.read_bytes())
    h.update(COMPILER.read_bytes())
    return h.hexdigest()[:16]


def _locate(unit: str) -> Path:
    for base in (REPO_ROOT, NODE_MODULES):
        if (base / unit).exists():
            return base / unit
    raise BuildError(f"source not found: {unit}")


async def compile_job(name: str, sources: list[str], settings: dict, *, timeout_s: float = 600,
                      compiler: str | None = None) -> Build:
    """Compile `sources` (unit paths under the repo or node_modules) once and cache the result.
    `compiler` names another pinned solc-js package (an npm alias) for sources with older pragmas."""
    _require_node_modules()
    job: dict = {"sources": sorted(sources), "settings": settings}
    if compiler:
        job["compiler"] = compiler
    out = CACHE_DIR / f"{name}-{_job_key(job)}.json"
    if not out.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        job_file = out.with_suffix(".job.json")
        job_file.write_text(json.dumps(job))
        tmp = out.with_suffix(".tmp")
        proc = await asyncio.create_subprocess_exec(
            "node", str(COMPILER), str(job_file), str(tmp),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BuildError(f"compiling {name} took over {timeout_s:.0f}s") from None
        if proc.returncode != 0:
            raise BuildError(f"compiling {name} failed:\n{err.decode()[-4000:]}")
        tmp.replace(out)  # atomic: a half-written cache is never read
    return Build(json.loads(out.read_text())["contracts"])


def aave_sources() -> list[str]:
    root = NODE_MODULES / AAVE
    if not root.is_dir():
        raise BuildError(f"{AAVE} is missing: run `make setup` (npm ci) first")
    batches = sorted(
        p.relative_to(NODE_MODULES).as_posix()
        for d in ("deployments/projects/aave-v3-libraries", "deployments/projects/aave-v3-batched/batches")
        for p in (root / d).glob("*.sol")
    )
    extra = [
        "contracts/protocol/libraries/helpers/Errors.sol",
        "contracts/mocks/testnet-helpers/TestnetERC20.sol",
        "contracts/dependencies/weth/WETH9.sol",
        "contracts/instances/PoolInstance.sol",
    ]
    return batches + [f"{AAVE}/{e}" for e in extra]


async def build_aave() -> Build:
    return await compile_job("aave-v3.6.0", aave_sources(), AAVE_SETTINGS)


# The project's own contracts: compiled with the same pinned compiler.
OWN_SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "shanghai",
    "metadata": {"bytecodeHash": "none"},
    "outputSelection": AAVE_SETTINGS["outputSelection"],
}


async def build_own(sources: list[str]) -> Build:
    return await compile_job("own", sources, OWN_SETTINGS)
