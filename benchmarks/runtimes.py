"""Side-by-side runtimes for one checkpoint, measured in one run.

Paddle dygraph, Paddle Inference with and without oneDNN, and ONNX Runtime FP32: latency p50/p95
at batch 1 and 32, throughput, and agreement of predictions with dygraph on held-out texts.
Prints a Markdown table and writes JSON.

    python benchmarks/runtimes.py CKPT [--seq-len 128] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _tables import emit


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from ernie_compress import progress
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.runtime.manifest import load_manifest
    from ernie_compress.stages.export import ExportConfig, export_checkpoint
    from ernie_compress.models import model_from_state
    from ernie_compress.paddle_env import import_paddle, set_default_threads
    from ernie_compress.runtime.backends import RuntimeConfig, open_session
    from ernie_compress.runtime.latency import LatencyConfig, measure_latency

    progress.set_enabled(False)
    set_default_threads(args.threads)
    paddle = import_paddle()
    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = ckpt.tokenizer()
    task = load_task(TaskSpec.from_dict(ckpt.task))
    examples = task.split(task.held_out)[:256]
    pairs = None if examples[0].text_b is None else [e.text_b for e in examples]
    enc = tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=args.seq_len,
                                 pad_to=args.seq_len)
    latency_cfg = LatencyConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                                seq_len=args.seq_len, iterations=args.iterations)

    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))

    def dygraph(ids, types):
        with paddle.no_grad():
            return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy()

    def predictions(run):
        return np.concatenate([run(enc.input_ids[i:i + 32], enc.token_type_ids[i:i + 32])
                               for i in range(0, len(enc.input_ids), 32)]).argmax(-1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp) / "export"
        export_checkpoint(ExportConfig(checkpoint=args.checkpoint, out=export_dir, format="all"))
        manifest = load_manifest(export_dir)
        runs = {"paddle dygraph": dygraph}
        for name, rc in (("paddle inference + oneDNN", RuntimeConfig("cpu", "paddle", args.threads)),
                         ("paddle inference (no oneDNN)",
                          RuntimeConfig("cpu", "paddle", args.threads, mkldnn=False)),
                         ("onnxruntime fp32", RuntimeConfig("cpu", "onnxruntime", args.threads))):
            runs[name] = open_session(export_dir, manifest, rc).run
        reference = predictions(dygraph)
        for name, run in runs.items():
            row = {"runtime": name, "agreement": float(np.mean(predictions(run) == reference))}
            for b in latency_cfg.batch_sizes:
                stats = measure_latency(run, enc.input_ids, enc.token_type_ids, b, latency_cfg)
                row[f"b{b}_p50_ms"] = stats["p50_ms"]
                row[f"b{b}_p95_ms"] = stats["p95_ms"]
                row[f"b{b}_qps"] = stats["qps"]
            rows.append(row)

    cols = ["runtime"] + [f"b{b}_{k}" for b in latency_cfg.batch_sizes for k in ("p50_ms", "p95_ms", "qps")] + ["agreement"]
    result = {"checkpoint": str(ckpt.path), "seq_len": args.seq_len, "threads": args.threads, "rows": rows}
    emit(f"{ckpt.path} — seq {args.seq_len}, threads {args.threads or 'all'}", rows, cols, result, args.json)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
