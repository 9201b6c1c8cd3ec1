"""FP32 vs FP16 vs our PTQ/QAT INT8 vs onnxruntime's own dynamic INT8, on one checkpoint, in one run.

For each variant: held-out accuracy (through ONNX Runtime on CPU), its difference against FP32 in
points, latency p50 at batch 1 and 32 (seq 128 by default; median of interleaved rounds), throughput
at batch 32, model size.
``quantize_dynamic`` (QInt8 weights, reduce_range, dynamic activation ranges) runs on the same FP32
ONNX and is the baseline our static INT8 must match or beat. Prints Markdown and JSON.

    python benchmarks/quantization.py CKPT [--qat-epochs 1] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _tables import emit


def _lineage_result(checkpoint_dir: Path) -> dict:
    """The quantize result recorded in a kept checkpoint's lineage (for --reuse)."""
    stage = json.loads((checkpoint_dir / "compression.json").read_text())["stages"][-1]
    return {"delta_points": stage["delta_points"]}


def interleaved_latency(variants: dict[str, str], runtime, seq_len: int, iterations: int,
                        rounds: int) -> dict[str, tuple[float, float]]:
    """Median over ``rounds`` of each variant's p50 at batch 1 and 32; every round times every
    variant in turn on the same inputs (held-out texts padded to ``seq_len``)."""
    import numpy as np

    from ernie_compress.data.sp_tokenizer import load_tokenizer
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.export import load_manifest
    from ernie_compress.runtime.backends import open_session
    from ernie_compress.runtime.evaluate_export import latency_inputs
    from ernie_compress.runtime.latency import LatencyConfig, measure_latency

    manifests = {name: load_manifest(Path(path)) for name, path in variants.items()}
    sessions = {name: open_session(Path(path), manifests[name], runtime) for name, path in variants.items()}
    first = next(iter(variants))
    task = load_task(TaskSpec.from_dict(manifests[first]["task"]))
    enc = latency_inputs(task.split(task.held_out), load_tokenizer(Path(variants[first])), seq_len)
    config = LatencyConfig(batch_sizes=(1, 32), seq_len=seq_len, iterations=iterations, warmup=3)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, session in sessions.items():
            b1, b32 = (measure_latency(session.run, enc.input_ids, enc.token_type_ids, b, config)["p50_ms"]
                       for b in (1, 32))
            samples[name].append((b1, b32))
    return {name: (float(np.median([s[0] for s in got])), float(np.median([s[1] for s in got])))
            for name, got in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5,
                        help="latency rounds; each times every variant once, interleaved, and the "
                             "table gives the median round (drift of a shared machine hits all alike)")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-max-steps", type=int, default=None)
    parser.add_argument("--qat-lr", type=float, default=5e-5)
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the variants in this folder")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse quantized checkpoints already there (re-export only)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ernie_compress import progress
    from ernie_compress.export import ExportConfig, export_checkpoint
    from ernie_compress.paddle_env import set_default_threads
    from ernie_compress.quantize import QuantizeConfig, quantize_checkpoint
    from ernie_compress.runtime.backends import RuntimeConfig
    from ernie_compress.runtime.evaluate_export import EvaluateExportConfig, evaluate_export
    from ernie_compress.runtime.latency import LatencyConfig
    from ernie_compress.train import TrainConfig

    progress.set_enabled(False)
    set_default_threads(args.threads)
    work = Path(args.keep or tempfile.mkdtemp(prefix="quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint

    variants = {}
    variants["fp32"] = export_checkpoint(ExportConfig(ckpt, work / "fp32", format="onnx", overwrite=True))["out"]
    def reusable(name: str) -> bool:
        return args.reuse and (work / name / "config.json").exists()

    if not reusable("fp16-ckpt"):
        quantize_checkpoint(QuantizeConfig(ckpt, work / "fp16-ckpt", fp16=True, overwrite=True))
    variants["fp16"] = export_checkpoint(ExportConfig(work / "fp16-ckpt", work / "fp16", format="onnx",
                                                      overwrite=True))["out"]
    ptq = _lineage_result(work / "ptq-ckpt") if reusable("ptq-ckpt") else quantize_checkpoint(
        QuantizeConfig(ckpt, work / "ptq-ckpt", ptq="int8", overwrite=True, calib_samples=args.calib_samples))
    variants["ptq int8 (ours)"] = export_checkpoint(ExportConfig(work / "ptq-ckpt", work / "ptq", format="onnx",
                                                                 overwrite=True))["out"]
    qat = _lineage_result(work / "qat-ckpt") if reusable("qat-ckpt") else quantize_checkpoint(QuantizeConfig(
        ckpt, work / "qat-ckpt", qat="int8", overwrite=True, distill_from_parent=True,
        train=TrainConfig(epochs=args.qat_epochs, learning_rate=args.qat_lr, max_steps=args.qat_max_steps)))
    variants["qat int8 (ours)"] = export_checkpoint(ExportConfig(work / "qat-ckpt", work / "qat", format="onnx",
                                                                 overwrite=True))["out"]
    # onnxruntime's own dynamic quantization of the same FP32 ONNX, same manifest otherwise
    dyn = work / "ort-dynamic"
    shutil.rmtree(dyn, ignore_errors=True)
    shutil.copytree(work / "fp32", dyn)
    quantize_dynamic(str(work / "fp32" / "onnx" / "model.onnx"), str(dyn / "onnx" / "model.onnx"),
                     weight_type=QuantType.QInt8, reduce_range=True, per_channel=True)
    manifest = json.loads((dyn / "manifest.json").read_text())
    manifest["precision"] = "int8 (ort dynamic)"
    (dyn / "manifest.json").write_text(json.dumps(manifest))
    variants["ort quantize_dynamic int8"] = str(dyn)

    rows = []
    fp32_acc = None
    runtime = RuntimeConfig("cpu", "onnxruntime", args.threads)
    for name, path in variants.items():  # accuracy on the held-out split, through the export
        ev = evaluate_export(EvaluateExportConfig(Path(path), runtime=runtime,
                                                  latency=LatencyConfig(batch_sizes=(1,), iterations=1, warmup=0)))
        acc = ev["metrics"]["accuracy"]
        fp32_acc = acc if fp32_acc is None else fp32_acc
        rows.append({"variant": name, "accuracy": acc, "delta_points": (acc - fp32_acc) * 100,
                     "size_mb": (Path(path) / "onnx" / "model.onnx").stat().st_size / 1e6})
    latency = interleaved_latency(variants, runtime, args.seq_len, args.iterations, args.rounds)
    for row in rows:
        b1, b32 = latency[row["variant"]]
        row.update(b1_p50_ms=b1, b32_p50_ms=b32, b32_qps=32 / (b32 / 1000))
    base = rows[0]
    for row in rows:
        row["speedup_b32"] = base["b32_p50_ms"] / row["b32_p50_ms"]
        row["speedup_b1"] = base["b1_p50_ms"] / row["b1_p50_ms"]
    cols = ["variant", "accuracy", "delta_points", "b1_p50_ms", "b32_p50_ms", "b32_qps", "speedup_b1",
            "speedup_b32", "size_mb"]
    result = {"checkpoint": str(ckpt), "seq_len": args.seq_len, "threads": args.threads, "rounds": args.rounds,
              "rows": rows,
              "qat_fake_quant_delta": qat["delta_points"], "ptq_fake_quant_delta": ptq["delta_points"]}
    emit(f"{ckpt} — ONNX Runtime CPU, seq {args.seq_len}, threads {args.threads or 'all'}, "
         f"median of {args.rounds} interleaved rounds; "
         f"PTQ fake-quant delta {ptq['delta_points']:+.2f}, QAT fake-quant delta {qat['delta_points']:+.2f}",
         rows, cols, result, args.json, digits=3)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
