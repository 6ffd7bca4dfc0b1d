"""ABI-driven encoding with eth-abi: the committed JSON in abis/ is the single source of truth.

Hot paths encode with these `Fn` objects (selector + eth-abi), never through web3
contract objects, which add milliseconds per call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

ABI_DIR = Path(__file__).resolve().parents[2] / "abis"


def _type_of(param: dict) -> str:
    """Canonical type string; tuples expand to their components (eth-abi's form)."""
    t = param["type"]
    if t.startswith("tuple"):
        inner = ",".join(_type_of(c) for c in param["components"])
        return f"({inner}){t[len('tuple'):]}"
    return t


@cache
def load_abi(name: str) -> tuple[dict, ...]:
    return tuple(json.loads((ABI_DIR / f"{name}.json").read_text()))


@cache
def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


@dataclass(frozen=True, slots=True)
class Fn:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(self.inputs)})"

    @property
    def selector(self) -> bytes:
        return _selector(self.signature)

    def encode(self, *args: Any) -> bytes:
        return self.selector + encode(list(self.inputs), list(args))

    def decode(self, data: bytes) -> tuple:
        return decode(list(self.outputs), data)

    def decode_one(self, data: bytes) -> Any:
        return self.decode(data)[0]


@cache
def fn(contract: str, name: str, n_inputs: int | None = None) -> Fn:
    """The function `name` of abis/<contract>.json (overloads picked by input count)."""
    entries = [e for e in load_abi(contract) if e.get("type") == "function" and e["name"] == name
               and (n_inputs is None or len(e["inputs"]) == n_inputs)]
    if len(entries) != 1:
        raise KeyError(f"{contract}.{name}: {len(entries)} matching functions")
    e = entries[0]
    return Fn(name, tuple(_type_of(p) for p in e["inputs"]), tuple(_type_of(p) for p in e["outputs"]))


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    topic: str  # 0x-hex keccak of the signature
    indexed: tuple[tuple[str, str], ...]  # (name, type)
    data: tuple[tuple[str, str], ...]

    def decode(self, log: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, typ), topic in zip(self.indexed, log["topics"][1:], strict=True):
            out[name] = decode([typ], bytes.fromhex(topic[2:]))[0]
        raw = bytes.fromhex(log["data"][2:])
        values = decode([t for _, t in self.data], raw) if self.data else ()
        out.update({name: v for (name, _), v in zip(self.data, values, strict=True)})
        return out


@cache
def event(contract: str, name: str) -> Event:
    e = next(e for e in load_abi(contract) if e.get("type") == "event" and e["name"] == name)
    types = [_type_of(p) for p in e["inputs"]]
    sig = f"{name}({','.join(types)})"
    return Event(
        name=name,
        topic="0x" + keccak(text=sig).hex(),
        indexed=tuple((p["name"], _type_of(p)) for p in e["inputs"] if p["indexed"]),
        data=tuple((p["name"], _type_of(p)) for p in e["inputs"] if not p["indexed"]),
    )


@cache
def error_names() -> dict[bytes, str]:
    """4-byte selector -> custom error name, from every ABI we ship.

    Errors raised inside Aave's logic libraries appear in no contract's ABI but
    the Errors library's, which is why abis/Errors.json exists.
    """
    out: dict[bytes, str] = {}
    for path in sorted(ABI_DIR.glob("*.json")):
        for e in load_abi(path.stem):
            if e.get("type") == "error":
                sig = f"{e['name']}({','.join(_type_of(p) for p in e['inputs'])})"
                out[keccak(text=sig)[:4]] = e["name"]
    return out


_ERROR_STRING = keccak(text="Error(string)")[:4]
_PANIC = keccak(text="Panic(uint256)")[:4]


def decode_revert(data: bytes | str | None) -> str:
    """A readable revert reason: custom error name, Error(string) text or Panic code."""
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x")) if data not in ("", "0x") else b""
    if not data:
        return "reverted without data"
    head = bytes(data[:4])
    if head == _ERROR_STRING:
        return decode(["string"], data[4:])[0]
    if head == _PANIC:
        return f"Panic(0x{decode(['uint256'], data[4:])[0]:x})"
    return error_names().get(head, f"unknown error 0x{head.hex()}")
