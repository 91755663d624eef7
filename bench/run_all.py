"""``make bench``: every benchmark in turn, each printing its table and writing bench/RESULTS.md.

``python bench/run_all.py [--quick]``. Run it on a quiet machine: the numbers are
ratios measured side by side in one run, and other load skews them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "worker_bench.py",
    "shm_bench.py",
    "gateway_bench.py",
    "protocol_bench.py",
    "peer_bench.py",
    "autoscale_bench.py",
    "advice_bench.py",
]


def main(argv: list[str]) -> int:
    extra = [a for a in argv if a == "--quick"]
    status = 0
    for name in BENCHES:
        script = HERE / name
        if not script.exists():
            continue
        print(f"\n=== {name}", flush=True)
        status |= subprocess.run([sys.executable, str(script), *extra], check=False).returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
