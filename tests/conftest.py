"""Shared chain fixtures: the devnet is a resource, started once per session and always stopped.

`devnet`: Aave V3.6 on Anvil with 200 seeded borrowers (the issue's default).
`bare_devnet`: the same market with liquidity and no borrowers, for hand-built positions.
`chain` / `bare_chain`: the devnet wrapped in evm_snapshot/evm_revert, so every test starts
from the same state whatever the previous one did.
`interval_devnet`: the same 200-borrower market mining a block every second, like a real chain.
`devnet30` / `bare_devnet30` (and `chain30` / `bare_chain30`): the same on Aave V3.0
(`@aave/core-v3@1.19.3`), some borrowers with stable-rate debt.
`flavour_devnet` / `flavour_chain`: parametrised over both flavours, for tests that must pass on each.
`any_chain`: a test using it runs on `devnet` (automine), on `interval_devnet` (1-second blocks) and
on `devnet30` (Aave V3.0, automine); all isolated by snapshot/revert (Anvil keeps interval mining
across a revert, from the reverted block).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keeper.devnet.stack import Devnet, launch

INTERVAL_BLOCK_TIME_S = 1


@pytest.fixture(scope="session")
async def devnet() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=200)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture(scope="session")
async def interval_devnet() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=200, block_time=INTERVAL_BLOCK_TIME_S)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture(scope="session")
async def bare_devnet() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=0)
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture(scope="session")
async def devnet30() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=200, aave="3.0")
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture(scope="session")
async def bare_devnet30() -> AsyncIterator[Devnet]:
    dn = await launch(borrowers=0, aave="3.0")
    try:
        yield dn
    finally:
        await dn.close()


@pytest.fixture(scope="session", params=["3.6", "3.0"], ids=["v3.6", "v3.0"])
def flavour_devnet(request: pytest.FixtureRequest) -> Devnet:
    """The 200-borrower devnet of each flavour (the session fixture of that flavour)."""
    return request.getfixturevalue("devnet30" if request.param == "3.0" else "devnet")


async def _isolated(dn: Devnet) -> AsyncIterator[Devnet]:
    snapshot = await dn.rpc.call("evm_snapshot", [])
    try:
        yield dn
    finally:
        await dn.rpc.call("anvil_dropAllTransactions", [])  # 1-second blocks: nothing pending leaks on
        assert await dn.rpc.call("evm_revert", [snapshot]), (
            "evm_revert failed: later tests would see this one"
        )
        # Anvil keeps its next-block base fee across a revert; put back the devnet's 1 gwei.
        await dn.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])


@pytest.fixture
async def chain(devnet: Devnet) -> AsyncIterator[Devnet]:
    async for dn in _isolated(devnet):
        yield dn


@pytest.fixture
async def bare_chain(bare_devnet: Devnet) -> AsyncIterator[Devnet]:
    async for dn in _isolated(bare_devnet):
        yield dn


@pytest.fixture(params=["automine", "1s_blocks", "v3.0"])
def any_devnet(request: pytest.FixtureRequest) -> Devnet:
    # A plain fixture: only it may ask for a session devnet by name (outside the event loop).
    names = {"automine": "devnet", "1s_blocks": "interval_devnet", "v3.0": "devnet30"}
    return request.getfixturevalue(names[request.param])


@pytest.fixture
async def any_chain(any_devnet: Devnet) -> AsyncIterator[Devnet]:
    """The seeded market on automine, on 1-second blocks, and on Aave V3.0 (automine)."""
    async for isolated in _isolated(any_devnet):
        yield isolated


@pytest.fixture
async def chain30(devnet30: Devnet) -> AsyncIterator[Devnet]:
    async for dn in _isolated(devnet30):
        yield dn


@pytest.fixture
async def bare_chain30(bare_devnet30: Devnet) -> AsyncIterator[Devnet]:
    async for dn in _isolated(bare_devnet30):
        yield dn


@pytest.fixture
async def flavour_chain(flavour_devnet: Devnet) -> AsyncIterator[Devnet]:
    async for dn in _isolated(flavour_devnet):
        yield dn
