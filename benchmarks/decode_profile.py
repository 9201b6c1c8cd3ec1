"""Where a decode step's time goes: ONNX Runtime's per-operator profile of one greedy decode step of
two or more decoder graphs with the same cache interface (ours, ``export --format decoder``, and
onnxruntime-genai's builder output: ``past_key_values.{i}.key|value`` in, ``present.{i}.*`` out),
fed the same shapes through plain ``InferenceSession.run``:

    python benchmarks/decode_profile.py NAME=MODEL.onnx NAME=MODEL.onnx ... [--past 64] [--batch 1]
        [--seq 1] [--steps 40] [--rounds 3] [--threads 2] [--markdown benchmarks/results/decode-profile.md]

(``--seq 512 --past 0``: a prefill of a 512-token prompt instead of a decode step.)

Each model gets a session with profiling (``enable_profiling``: one ``*_kernel_time`` event per node
run, summed by operator type, ``runtime/op_profile.py``) and one without; the step time is the
median over ``--rounds`` interleaved rounds of ``--steps`` runs of the unprofiled session. The cache
is ``--past`` positions of random values (the kernels' time does not depend on them); every step
reads the same cache (a profile of one step shape, not a generation loop: the runtime's own cache
handling, e.g. onnxruntime-genai's shared past/present buffer, is outside this table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WARMUP = 5


def cache_shape(spec, model: Path) -> tuple[int, int]:
    """(kv heads, head size) of a cache input [batch, kv_heads, past, head_dim]; a symbolic head size
    (the builder's ``kv_cache_dim``) from the ``genai_config.json`` beside the model."""
    heads, dim = spec.shape[1], spec.shape[3]
    if not isinstance(dim, int):
        import json

        dim = json.loads((model.parent / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    return heads, dim


def step_inputs(session, model: Path, batch: int, past: int, seq: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One call's feeds for whatever the graph declares: ``seq`` tokens per row (1: a decode step; a
    prompt's length with ``past`` 0: a prefill), the mask over past + seq positions, the positions (when
    the graph takes them) and a random cache."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(3, 1000, (batch, seq), dtype=np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((batch, past + seq), np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1))
        elif spec.name.startswith("past_key_values."):
            heads, dim = cache_shape(spec, model)
            dtype = np.int8 if spec.type == "tensor(int8)" else np.float32  # an int8 cache: codes
            feeds[spec.name] = (rng.standard_normal((batch, heads, past, dim)) * (40 if dtype == np.int8 else 1)).astype(dtype)
        else:
            raise SystemExit(f"{spec.name}: an input this profile does not know how to feed")
    return feeds


def open_sessions(path: Path, threads: int, profile_dir: Path):
    import onnxruntime as ort

    def options(profile: bool):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_dir / path.parent.name)
        return opts

    cpu = ["CPUExecutionProvider"]
    return (ort.InferenceSession(str(path), options(False), providers=cpu),
            ort.InferenceSession(str(path), options(True), providers=cpu))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=path/to/model.onnx")
    parser.add_argument("--past", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=1, help="tokens per call: 1 (a decode step), or a prompt's "
                        "length with --past 0 (a prefill)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from _tables import emit, operator_rows
    from ernie_compress.runtime.op_profile import onnxruntime_op_profile

    models = dict(m.split("=", 1) for m in args.models)
    step_ms: dict[str, list[float]] = {name: [] for name in models}
    ops: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: open_sessions(Path(path), args.threads, Path(tmp)) for name, path in models.items()}
        feeds = {name: step_inputs(plain, Path(models[name]), args.batch, args.past, args.seq)
                 for name, (plain, _) in sessions.items()}
        for name, (plain, profiled) in sessions.items():
            for _ in range(WARMUP):
                plain.run(None, feeds[name])
            for _ in range(args.steps):
                profiled.run(None, feeds[name])
            rows = onnxruntime_op_profile(profiled.end_profiling(), top_n=10_000)
            ops[name] = {r["op"]: r["total_ms"] / args.steps for r in rows}
        for _ in range(args.rounds):  # interleaved: every model once per round
            for name, (plain, _) in sessions.items():
                started = time.perf_counter()
                for _ in range(args.steps):
                    plain.run(None, feeds[name])
                step_ms[name].append(1000 * (time.perf_counter() - started) / args.steps)

    names = list(models)
    rows = operator_rows(ops, args.top, "ms/step", 3)
    rows.append({"operator": "step, unprofiled (median of rounds)",
                 **{f"{n} ms/step": f"{statistics.median(step_ms[n]):.3f} ({min(step_ms[n]):.3f}-{max(step_ms[n]):.3f})"
                    for n in names}})
    result = {"past": args.past, "seq": args.seq, "batch": args.batch, "steps": args.steps, "models": models,
              "ops_ms_per_step": ops, "step_ms": step_ms}
    call = (f"One decode step (batch {args.batch}, {args.past} cached positions)" if args.seq == 1 else
            f"One call of {args.seq} tokens per row (batch {args.batch}, {args.past} cached positions)")
    title = (f"{call} per operator type, ONNX Runtime's "
             f"profiler ({args.steps} steps), and the unprofiled step time (median (min-max) of {args.rounds} "
             f"interleaved rounds of {args.steps} steps), {args.threads} threads: "
             + ", ".join(f"{n} = {p}" for n, p in models.items()))
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
