"""What `keeper devnet up` leaves behind for `down`, `shock` and the operator: one JSON file per port."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from keeper.devnet.aave import Deployment
from keeper.devnet.uniswap import UniswapDeployment

STATE_DIR = Path(__file__).resolve().parents[2] / ".devnet"


def state_path(port: int) -> Path:
    return STATE_DIR / f"{port}.json"


def cache_path(port: int) -> Path:
    """Anvil's historical-state cache for a detached devnet; `down` removes it with the state file."""
    return STATE_DIR / f"{port}.cache"


def save(port: int, pid: int, deployment: Deployment, borrowers: int, uniswap: UniswapDeployment,
         executor: str) -> Path:
    STATE_DIR.mkdir(exist_ok=True)
    path = state_path(port)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "port": port, "borrowers": borrowers, "executor": executor,
                               "deployment": deployment.to_json(), "uniswap": uniswap.to_json()}, indent=1))
    tmp.replace(path)
    return path


def load(port: int) -> dict | None:
    path = state_path(port)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["deployment"] = Deployment.from_json(data["deployment"])
    data["uniswap"] = UniswapDeployment.from_json(data["uniswap"])
    return data


def remove(port: int) -> None:
    state_path(port).unlink(missing_ok=True)
    shutil.rmtree(cache_path(port), ignore_errors=True)
