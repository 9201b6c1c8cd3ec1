"""The export's ONNX Runtime graph rewrites one at a time and together, on ONNX Runtime's CPU session.

    python benchmarks/onnx_rewrites.py EXPORT [EXPORT ...] --threads 2,16 --batches 1,32 [--rounds 5] \
        [--markdown FILE] [--json FILE]

Each EXPORT is an export folder written with ``--onnx-ops standard`` (FP32 or INT8). From its
``onnx/model.onnx`` the variants are made with the export's own rewrite functions: the standard graph,
attention fused into ``MultiHeadAttention`` only, residual sums as ``Sum`` only, and both (what
``--onnx-ops onnxruntime``, the default, writes). Every variant runs the same inputs (full-length
random token ids, seq 128; outputs compared with the standard graph's), in interleaved rounds per
thread count and batch size; each row gives ms per batch (median, min–max over the rounds) and its
time over the standard graph's in the same round. Needs no Paddle: runs wherever ONNX Runtime does,
so one CPU can be compared with another (e.g. a GPU machine's many-core host).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import finish_table, interleaved_rounds, interval, ms_per_call, ratio_rounds  # noqa: E402

VARIANTS = {"standard": "standard ONNX ops (--onnx-ops standard)",
            "attention": "MultiHeadAttention only",
            "sum": "residual Sum only",
            "both": "both (--onnx-ops onnxruntime, the default)"}


def _variants(path: Path) -> dict[str, bytes]:
    import onnx

    from ernie_compress.export.onnx_attention import fuse_attention
    from ernie_compress.export.onnx_layer_norm import residual_sums_as_sum

    made = {}
    for name, steps in (("standard", ()), ("attention", (fuse_attention,)), ("sum", (residual_sums_as_sum,)),
                        ("both", (fuse_attention, residual_sums_as_sum))):
        model = onnx.load(str(path))
        counts = [step(model) for step in steps]
        if any(count == 0 for count in counts):
            sys.exit(f"{path}: a rewrite found nothing to rewrite (is it an --onnx-ops standard ERNIE 3.0 export?)")
        made[name] = model.SerializeToString()
    return made


def _feeds(model: bytes, batch: int, seq: int) -> dict[str, np.ndarray]:
    import onnx

    names = [i.name for i in onnx.load_from_string(model).graph.input]
    ids = np.random.default_rng(0).integers(1, 100, size=(batch, seq)).astype(np.int64)
    return {name: ids if name == "input_ids" else np.zeros_like(ids) for name in names}


def measure_export(export: Path, threads: int, batch: int, seq: int, rounds: int, iterations: int) -> dict:
    import onnxruntime as ort

    models = _variants(export / "onnx" / "model.onnx")
    feeds = _feeds(models["standard"], batch, seq)
    sessions, outputs = {}, {}
    for name, model in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outputs[name] = sessions[name].run(None, feeds)[0]  # also the warm-up

    timings = interleaved_rounds({name: ms_per_call(lambda s=s: s.run(None, feeds), iterations)
                                  for name, s in sessions.items()}, rounds)
    base = timings["standard"]["rounds"]
    return {name: {**t, "over_standard": ratio_rounds(t["rounds"], base),
                   "max_abs_diff": float(np.abs(outputs[name] - outputs["standard"]).max())}
            for name, t in timings.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", type=Path, nargs="+", help="export folders written with --onnx-ops standard")
    parser.add_argument("--threads", default="2", help="comma-separated intra-op thread counts")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations-b1", type=int, default=50, help="runs per round at batch 1")
    parser.add_argument("--iterations", type=int, default=10, help="runs per round at larger batches")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    lines = [f"ONNX Runtime {ort.__version__} CPU session, the export's graph rewrites one at a time: ms per batch at "
             f"seq {args.seq_len}, median (min–max) of {args.rounds} interleaved rounds; time / standard per round",
             "", "| export | threads | batch | graph | ms per batch | time / standard | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for export in args.exports:
        for t in threads:
            for b in batches:
                iterations = args.iterations_b1 if b == 1 else args.iterations
                rows = measure_export(export, t, b, args.seq_len, args.rounds, iterations)
                results.append({"export": str(export), "threads": t, "batch": b, "variants": rows})
                for name, label in VARIANTS.items():
                    r, o = rows[name], rows[name]["over_standard"]
                    lines.append(f"| {export.name} | {t} | {b} | {label} | {interval(r)} | {interval(o)} "
                                 f"| {r['max_abs_diff']:.1e} |")
                print(lines[-1], flush=True)
    machine = finish_table(lines, threads, args.markdown)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "machine": machine}, indent=2))
    return {"results": results}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
