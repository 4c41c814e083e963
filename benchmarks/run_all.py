"""`make bench`: every benchmark in turn; each writes its own section of docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    ["benchmarks.load_encode"],
    ["benchmarks.train_step"],
    ["benchmarks.peer_training"],
    ["benchmarks.inference"],
    ["benchmarks.factor_cost"],
    ["benchmarks.quantized"],
    ["benchmarks.row_split"],
    ["benchmarks.serving_rank"],
    ["benchmarks.serving.stages"],
)


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"\n### python -m {' '.join(module)}", flush=True)
        if subprocess.run([sys.executable, "-m", *module], cwd=ROOT).returncode != 0:
            failed.append(module[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nresults: {ROOT / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
