"""The race benchmark (bench/race.py) at smoke size: it runs and reports every figure.

What the figures are is BENCHMARKS.md's business, not this test's: it checks that each one
was measured, on a real 1,000-borrower devnet mining a block a second, with the keeper and
the naive poller running as processes behind their recording proxies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import plot  # noqa: E402
import race  # noqa: E402


@pytest.mark.slow
async def test_race_at_1000_borrowers_reports_every_figure() -> None:
    result = await race.run_size(1000, shocks=3, crash_blocks=30)

    missing = [name for name, _, get in plot.FIGURES if get(result) is None]
    assert not missing, f"figures not reported: {missing}"
    assert len(result["shock_runs"]) == 3
    assert all(set(s["requests_per_block"]) == {"keeper", "naive"} for s in result["shock_runs"])
    assert result["steady_requests_per_block"]["keeper"] > 0  # the proxy saw the keeper's requests
    assert result["crash"]["liquidations"] > 0
    # Every figure renders into the table and the target lines.
    assert "| keeper peak RSS |" in plot.table(result)
    assert plot.verdicts([result]).count("\n") == len(plot.TARGETS) - 1
