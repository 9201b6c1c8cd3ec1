"""GPTQ calibration divided between processes (issue #30 item 3): ``quantize --weight-only int4 --method gptq
--stream`` on one process and on ``--nproc 2`` of a random-weight ERNIE-4.5-0.3B-shaped checkpoint, timed in
interleaved rounds, and the two results compared on their dequantized weights.

    python benchmarks/calibration_ranks.py [--preset ernie45-0.3b] [--layers 18] [--calib-samples 64]
        [--rounds 1] [--nprocs 1,2] [--workdir /tmp] [--json ...] [--markdown ...]

The checkpoint is written by ``random_checkpoint.py`` with a small ``lm`` task of demo-corpus texts
(``memory.write_task``); each run is a fresh ``python -m ernie_compress`` process measured as in
``memory.py`` (wall time; ``wait4``'s ru_maxrss: the largest of the command and its ranks, so *per
process*, not summed). Every run uses the same ``--threads`` per process (default 1: on a 2-core machine
one process's solves are single-threaded NumPy row sweeps either way; two processes use both cores).
The max |difference| of every run's dequantized weights against the first one-process run is read group
by group through the lazy checkpoint (no whole model in memory). The checkpoint is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 2**30


def max_difference(a: Path, b: Path) -> float:
    """The largest |a - b| over every tensor of two checkpoints of the same model, one group at a time."""
    import numpy as np

    from ernie_compress.lazy_checkpoint import open_checkpoint

    x, y = open_checkpoint(a), open_checkpoint(b)
    worst = 0.0
    for (group, one), (_, two) in zip(x.iter_groups(), y.iter_groups()):
        assert one.keys() == two.keys(), group
        worst = max([worst, *(float(np.abs(one[k] - two[k]).max()) for k in one)])
    return worst


def main(argv: list[str] | None = None) -> dict:
    from memory import run_measured, write_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-0.3b", help="the layer shape (an ernie45-* preset)")
    parser.add_argument("--layers", type=int, default=18, help="decoder layers (ERNIE-4.5-0.3B has 18)")
    parser.add_argument("--calib-samples", type=int, default=64, help="GPTQ calibration texts (batches of 32)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every --nprocs value")
    parser.add_argument("--nprocs", default="1,2", help="process counts, comma-separated (the first is the base)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of each process")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "calibration-ranks.json")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    nprocs = [int(n) for n in args.nprocs.split(",")]
    base = Path(tempfile.mkdtemp(prefix="calibration-ranks-", dir=args.workdir))
    try:
        ckpt, data = base / "checkpoint", write_task(base / "data", {"train": args.calib_samples, "dev": 8, "test": 8})
        wrote = run_measured([sys.executable, str(ROOT / "benchmarks" / "random_checkpoint.py"), str(ckpt),
                              "--preset", args.preset, "--layers", str(args.layers)], cwd=ROOT)
        if wrote.returncode:
            sys.exit(f"random_checkpoint.py failed: {wrote.error}")
        runs = []
        for round_ in range(args.rounds):
            for n in nprocs:
                out = base / f"q-{n}-{round_}"
                got = run_measured([sys.executable, "-m", "ernie_compress", "--quiet", "--json", "quantize", str(ckpt),
                                    "--weight-only", "int4", "--method", "gptq", "--stream", "--calib-samples",
                                    str(args.calib_samples), "--task", "lm", "--data", str(data), "--threads",
                                    str(args.threads), "--nproc", str(n), "--out", str(out)], cwd=ROOT)
                if got.returncode:
                    sys.exit(f"--nproc {n} failed: {got.error}")
                run = {"nproc": n, "round": round_, "wall_s": got.wall_s, "peak_rss_gib": got.peak_rss_bytes / GIB,
                       "out": out}
                print(f"--nproc {n} round {round_}: {got.wall_s:.0f} s, {run['peak_rss_gib']:.2f} GiB",
                      file=sys.stderr, flush=True)
                runs.append(run)
        reference = runs[0]["out"]
        for run in runs[1:]:
            run["max_difference"] = max_difference(reference, run["out"])
        for run in runs:
            run.pop("out")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _emit(args, nprocs, runs)


def _emit(args, nprocs: list[int], runs: list[dict]) -> dict:
    from _tables import emit

    base = statistics.median(r["wall_s"] for r in runs if r["nproc"] == nprocs[0])
    rows = []
    for n in nprocs:
        mine = [r for r in runs if r["nproc"] == n]
        walls = [r["wall_s"] for r in mine]
        diffs = [r["max_difference"] for r in mine if "max_difference" in r]
        rows.append({"processes": str(n), "wall s (median)": statistics.median(walls),
                     "wall s (min-max)": f"{min(walls):.0f}-{max(walls):.0f}",
                     "vs 1 process": statistics.median(walls) / base,
                     "peak RSS GiB per process": max(r["peak_rss_gib"] for r in mine),
                     "max abs difference vs 1 process": f"{max(diffs):.1e}" if diffs else "(reference)"})
    result = {"preset": args.preset, "layers": args.layers, "calib_samples": args.calib_samples,
              "threads_per_process": args.threads, "rounds": args.rounds, "runs": runs,
              "load_average": os.getloadavg()}
    title = (f"Streamed W4 GPTQ (`quantize --weight-only int4 --method gptq --stream`) of a random-weight "
             f"{args.preset}-shaped checkpoint ({args.layers} layers, {args.calib_samples} calibration texts), on "
             f"1 and more processes (`--nproc`, --threads {args.threads} each), {args.rounds} interleaved round(s); "
             f"load average {result['load_average'][0]:.1f} at the end")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
