"""Run every benchmark in turn (`make bench`); each prints its own lines. Numbers go in BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    ["keeper_path.py", "200", "2000", "10000"],
    ["latency.py", "10000"],
    ["mirror_recompute.py", "--borrowers", "10000"],
    ["routes.py", "usdc_hub"],
    ["routes.py", "default"],
    ["oracle_poll.py", "--borrowers", "2000"],
)

if __name__ == "__main__":
    failed = 0
    for script, *args in SCRIPTS:
        print(f"== {script} {' '.join(args)}", flush=True)
        failed += (
            subprocess.run([sys.executable, str(HERE / script), *args], stderr=subprocess.DEVNULL).returncode
            != 0
        )
    sys.exit(1 if failed else 0)
