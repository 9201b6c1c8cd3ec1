"""Where an encoder batch's time goes, per operator type, for the INT8 rows of the base-size
quantization table (``benchmarks/quantization.py``): ONNX Runtime's profiler on the exports and peer
models that benchmark leaves in its work folder, each in the session the table times it in:

    python benchmarks/encoder_profile.py WORKDIR [--batch-size 32] [--seq-len 128] [--runs 5]
        [--threads 2] [--markdown benchmarks/results/encoder-profile.md]

``WORKDIR``: ``quantization.py``'s folder (``ptq``: ours; ``ptq-qattention``: ours with
``--int8-attention qattention``; ``ort-8-linears``: ONNX Runtime's tools' dynamic 8-bit model, timed
with ``SkipLayerNormFusion`` disabled, the tuned session; ``ort-8-linears-our-graph``: the same
quantization of our FP32 graph), each opened by ``quantization.open_variant``. Every model runs ``--runs`` batches of held-out texts padded to
``--seq-len`` after two warm-up batches; times are kernel times summed by operator type, per batch,
and the batch's wall time (median of the runs, unprofiled sessions, interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quantization import OURS, QATTENTION, SESSION_TUNED, open_variant  # noqa: E402

# the table's rows (quantization.py's names) and the folders it leaves them in
VARIANTS = {OURS: "ptq", QATTENTION: "ptq-qattention", SESSION_TUNED: "ort-8-linears",
            "ORT dynamic 8-bit, encoder Linears, on our FP32 graph": "ort-8-linears-our-graph"}
WARMUP = 2


def open_session(name: str, folder: Path, threads: int, profile_dir: Path | None):
    """``name``'s session as quantization.py times it, profiled when ``profile_dir`` is given."""
    from ernie_compress.runtime.backends import RuntimeConfig

    runtime = RuntimeConfig("cpu", "onnxruntime", threads, profile=profile_dir is not None)  # as quantization.py
    return open_variant(name, folder, runtime, profile_dir)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from _tables import emit, operator_rows
    from ernie_compress.data.sp_tokenizer import load_tokenizer
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.runtime.evaluate_export import latency_inputs
    from ernie_compress.runtime.manifest import load_manifest
    from ernie_compress.runtime.op_profile import onnxruntime_op_profile

    folders = {name: args.workdir / sub for name, sub in VARIANTS.items() if (args.workdir / sub).is_dir()}
    if not folders:
        sys.exit(f"{args.workdir}: none of {', '.join(VARIANTS.values())} (run benchmarks/quantization.py there)")
    first = next(iter(folders.values()))
    task = load_task(TaskSpec.from_dict(load_manifest(first)["task"]))
    enc = latency_inputs(task.split(task.held_out), load_tokenizer(first), args.seq_len)
    b = args.batch_size
    ids, types = enc.input_ids[:b], enc.token_type_ids[:b]
    if len(ids) < b:
        sys.exit(f"the held-out split has {len(ids)} texts, fewer than --batch-size {b}")
    ops: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in folders.items():
            profile_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            profile_dir.mkdir()
            session = open_session(name, folder, args.threads, profile_dir)
            for _ in range(WARMUP + args.runs):
                session.run(ids, types)
            rows = onnxruntime_op_profile(session.end_profiling(), top_n=10_000)
            ops[name] = {r["op"]: r["total_ms"] / (WARMUP + args.runs) for r in rows}
    plain = {name: open_session(name, folder, args.threads, None) for name, folder in folders.items()}
    wall: dict[str, list[float]] = {name: [] for name in folders}
    for name, session in plain.items():
        for _ in range(WARMUP):
            session.run(ids, types)
    for _ in range(args.runs):  # interleaved
        for name, session in plain.items():
            started = time.perf_counter()
            session.run(ids, types)
            wall[name].append(1000 * (time.perf_counter() - started))

    names = list(folders)
    rows = operator_rows(ops, args.top, "ms", 1)
    rows.append({"operator": "batch, unprofiled (median of runs)",
                 **{f"{n} ms": f"{statistics.median(wall[n]):.1f} ({min(wall[n]):.1f}-{max(wall[n]):.1f})"
                    for n in names}})
    result = {"batch_size": b, "seq_len": args.seq_len, "runs": args.runs, "ops_ms_per_batch": ops, "wall_ms": wall,
              "models": {n: str(f) for n, f in folders.items()}}
    title = (f"One encoder batch ({b} x {args.seq_len} held-out tokens, {task.spec.name}) per operator type: "
             f"ONNX Runtime's profiler, kernel time per batch (mean of {WARMUP + args.runs} batches), and the "
             f"unprofiled batch time (median (min-max) of {args.runs} interleaved runs), {args.threads} threads; "
             f"models from {args.workdir} (benchmarks/quantization.py)")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
