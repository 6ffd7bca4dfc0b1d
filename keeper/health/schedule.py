"""Which borrowers to re-check on chain at a block: near the line every block, the rest less often.

Pure. The local mirror computes every borrower's health each block; these re-checks
are what catches a mirror that drifted, before it costs an opportunity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from keeper.types import AccountHealth, Address

WAD = 10**18


@dataclass(frozen=True, slots=True)
class Tier:
    below_hf_wad: int  # accounts under this health factor...
    every_blocks: int  # ...are re-read on chain this often


DEFAULT_TIERS = (
    Tier(105 * WAD // 100, 1),
    Tier(125 * WAD // 100, 10),
    Tier(2**256 - 1, 100),
)
LARGE_DEBT_BASE = 1_000_000 * 10**8  # $1M: big positions move up one tier


def _phase(user: Address, every: int) -> int:
    """Spread a tier's accounts over its period instead of reading them all on one block."""
    return int(user[-8:], 16) % every


def due(block: int, local: Mapping[Address, AccountHealth], everyone: Iterable[Address],
        tiers: tuple[Tier, ...] = DEFAULT_TIERS) -> set[Address]:
    """Borrowers to read on chain at `block`.

    Anyone the mirror cannot compute (unknown, dirty) is read every block: an account the
    keeper cannot see is never assumed healthy.
    """
    out: set[Address] = set()
    for user in everyone:
        h = local.get(user)
        if h is None:
            out.add(user)
            continue
        if h.total_debt_base == 0:
            continue
        level = next(i for i, t in enumerate(tiers) if h.health_factor_wad < t.below_hf_wad)
        if h.total_debt_base >= LARGE_DEBT_BASE and level > 0:
            level -= 1
        every = tiers[level].every_blocks
        if every == 1 or block % every == _phase(user, every):
            out.add(user)
    return out
