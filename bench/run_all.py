"""Run every benchmark in turn (`make bench`: smoke size; `make bench FULL=1`: full size).

Each script prints its own lines; bench/race.py writes bench/results/race-N.json, and
bench/plot.py turns those into the tables, target lines and plots in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOKE = (
    ["keeper_path.py", "200", "1000"],
    ["latency.py", "1000"],
    ["mirror_recompute.py", "--borrowers", "1000"],
    ["race.py", "1000"],
    ["routes.py", "usdc_hub"],
    ["routes.py", "default"],
    ["oracle_poll.py", "--borrowers", "1000"],
    ["plot.py"],
)
FULL = (
    ["keeper_path.py", "200", "2000", "10000"],
    ["latency.py", "10000"],
    ["mirror_recompute.py", "--borrowers", "10000"],
    ["race.py", "1000", "10000"],
    ["race.py", "100000", "--no-race"],  # a race at 100,000 would take hours: the keeper alone
    ["race.py", "10000", "--crash-only"],
    ["routes.py", "usdc_hub"],
    ["routes.py", "default"],
    ["oracle_poll.py", "--borrowers", "2000"],
    ["plot.py"],
)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="1,000 / 10,000 / 100,000 borrowers (about an hour)")
    args = ap.parse_args()
    failed = 0
    for script, *rest in FULL if args.full else SMOKE:
        print(f"== {script} {' '.join(rest)}", flush=True)
        failed += (
            subprocess.run([sys.executable, str(HERE / script), *rest], stderr=subprocess.DEVNULL).returncode
            != 0
        )
    sys.exit(1 if failed else 0)
