"""The managed Anvil cleans up after itself: its historical-state cache goes with it.

Anvil moves old block states out of memory into a cache folder and never deletes that folder,
not on SIGTERM nor on SIGINT. Under ~/.foundry they piled up to tens of GB and filled a CI disk.
"""

from __future__ import annotations

from pathlib import Path

from keeper.chain.rpc import RpcClient
from keeper.devnet.anvil import Anvil, AnvilOptions


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


async def test_state_cache_lives_in_its_own_folder_and_goes_with_the_process() -> None:
    node = Anvil()
    await node.start()
    try:
        cache = node._own_cache
        assert cache is not None and cache.is_dir()
        rpc = RpcClient(node.url, timeout_s=30)
        await rpc.start()
        try:
            # More blocks than Anvil keeps in memory: the oldest states go to disk, in our folder.
            await rpc.call("anvil_mine", [hex(1_200)])
        finally:
            await rpc.close()
        assert _size(cache) > 0
    finally:
        await node.stop()
    assert not cache.exists()


async def test_a_given_cache_folder_is_used_and_left_to_its_owner(tmp_path: Path) -> None:
    async with Anvil(AnvilOptions(state_cache=tmp_path)) as node:
        assert node._own_cache is None
        rpc = RpcClient(node.url, timeout_s=30)
        await rpc.start()
        try:
            await rpc.call("anvil_mine", [hex(1_200)])
        finally:
            await rpc.close()
    assert _size(tmp_path) > 0  # `keeper devnet down` removes a detached devnet's folder
