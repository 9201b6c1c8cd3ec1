"""How long `ernie-compress --help` and `ernie-compress train --help` take (target: `--help` at most 0.25 s median).

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("ernie-compress")
    base = [exe] if exe else [sys.executable, "-m", "ernie_compress.cli"]
    rows = []
    for command in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(base + command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        rows.append({"command": " ".join(["ernie-compress"] + command), "median_s": sorted(times)[len(times) // 2],
                     "min_s": min(times)})
    print("| command | median s | min s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['command']} | {r['median_s']:.3f} | {r['min_s']:.3f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
