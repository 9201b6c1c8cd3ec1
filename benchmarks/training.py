"""Training throughput of every training stage in 1 vs N data-parallel processes (samples/s).

    python benchmarks/training.py [--nproc 2] [--rounds 3] [--steps 60] [--preset demo-teacher]
                                  [--markdown benchmarks/results/training-cpu.md]

It trains a ``--preset`` model on demo:sentiment for one step (the checkpoint every stage starts
from), then runs each stage (``train --from``, ``distill`` into ``demo-mini``, ``prune`` recovery,
``quantize --qat``) for ``--steps`` optimizer steps at the global batch ``--batch-size``, once with
``--nproc 1`` and once with ``--nproc N``, in interleaved rounds. Samples/s is the stage's own
``samples_per_s``: steps x global batch / the time in the training steps (process start-up, model
loading and dev evaluation are not in it). On a CPU, N processes share the cores one process would use with N threads, so the
speed-up compares the same hardware; "efficiency" is the speed-up / N. The stage commands are the
CLI's, run as subprocesses. On a machine with a GPU and paddlepaddle-gpu, pass ``--device gpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved_rounds, ratio_rounds  # noqa: E402
from _tables import emit  # noqa: E402

CLI = shutil.which("ernie-compress") or str(Path(sys.executable).with_name("ernie-compress"))
STAGES = {
    "train": ["train", "--from", "{ckpt}"],
    "distill": ["distill", "--teacher", "{ckpt}", "--student", "demo-mini", "--no-latency"],
    "prune recovery": ["prune", "{ckpt}", "--params", "0.15", "--no-latency", "--importance", "magnitude"],
    "quantize --qat": ["quantize", "{ckpt}", "--qat", "int8"],
}


def run(args: list[str]) -> dict:
    result = subprocess.run([CLI, "--quiet", "--json", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="demo-teacher")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="training-bench-"))
    try:
        ckpt = work / "start"
        run(["train", "--task", "demo:sentiment", "--preset", args.preset, "--max-steps", "1", "--out", str(ckpt)])
        common = ["--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--epochs", "1000",
                  "--device", args.device]
        rows, result = [], {"stages": {}, "nproc": args.nproc, "steps": args.steps, "batch_size": args.batch_size,
                            "preset": args.preset, "device": args.device}
        for stage, template in STAGES.items():
            stage_args = [a.format(ckpt=ckpt) for a in template]
            if stage == "prune recovery":  # its epochs option is --recover-epochs
                stage_common = [a if a != "--epochs" else "--recover-epochs" for a in common]
            else:
                stage_common = common
            runs = 0

            def timer(nproc: int, stage_args=stage_args, stage_common=stage_common):
                nonlocal runs
                runs += 1
                out = work / f"{stage.replace(' ', '-')}-{nproc}-{runs}"
                r = run([*stage_args, *stage_common, "--nproc", str(nproc), "--out", str(out)])
                shutil.rmtree(out, ignore_errors=True)
                return r["samples_per_s"]

            timed = interleaved_rounds({"1": lambda: timer(1), "n": lambda: timer(args.nproc)}, args.rounds)
            speedup = ratio_rounds(timed["n"]["rounds"], timed["1"]["rounds"])
            result["stages"][stage] = {"samples_per_s": timed, "speedup": speedup}
            rows.append({"stage": stage, "1 process": f"{timed['1']['median']:.0f} ({timed['1']['min']:.0f}–"
                                                      f"{timed['1']['max']:.0f})",
                         f"{args.nproc} processes": f"{timed['n']['median']:.0f} ({timed['n']['min']:.0f}–"
                                                    f"{timed['n']['max']:.0f})",
                         "speed-up": f"{speedup['median']:.2f}x ({speedup['min']:.2f}–{speedup['max']:.2f})",
                         "efficiency": f"{speedup['median'] / args.nproc:.0%}"})
        threads = os.cpu_count()
        title = (f"Training samples/s ({args.device}, {args.preset} from demo:sentiment, global batch "
                 f"{args.batch_size}, {args.steps} steps; median (min–max) of {args.rounds} interleaved rounds; "
                 f"1 process uses every core, {args.nproc} processes share them)")
        emit(title, rows, ["stage", "1 process", f"{args.nproc} processes", "speed-up", "efficiency"], result,
             args.json, markdown_path=args.markdown, threads=threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
