"""What the generation loop costs around the graph: one exported ``onnx/decoder.onnx`` run by
``runtime/decoding.OnnxDecoder`` three ways, in one process, interleaved:

    python benchmarks/decode_loop.py EXPORT_DIR [--prompt 128] [--new-tokens 32] [--batches 1,8]
        [--rounds 7] [--threads 2] [--markdown benchmarks/results/decode-loop.md] [--json out.json]

- numpy feeds: ``InferenceSession.run`` with the cache as numpy arrays (each step's present keys and
  values come back as arrays and go in again as the next step's past);
- I/O binding: the cache stays in ONNX Runtime's own tensors (``OrtValue``), bound as the next step's
  past (``OnnxDecoder(cache_on="cpu", share_buffer=False)``, what a GPU session does on its device);
- a shared buffer: one buffer per cache tensor bound as both past and present, which
  GroupQueryAttention appends to in place (``OnnxDecoder(cache_on="cpu")`` on a graph export wrote
  with GroupQueryAttention; onnxruntime-genai's ``past_present_share_buffer``).

All produce the same logits (checked first, bit for bit). Reported per batch size: time to first
token (prefill of ``--prompt`` tokens per row and the first picks) and decode tokens/s over
``--new-tokens`` greedy steps (rows x steps / seconds), median (min-max) over the rounds, and the
per-round ratio to numpy feeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LOOPS = {"numpy feeds (session.run)": (None, False), "I/O binding (cache kept in OrtValues)": ("cpu", False),
         "shared past/present buffer (I/O binding)": ("cpu", True)}


def generate(decoder, rows: list[list[int]], new_tokens: int) -> tuple[float, float, np.ndarray]:
    """Greedy continuation of a batch: (time to first token ms, decode tokens/s, logits of every step)."""
    start = time.perf_counter()
    logits = decoder.prefill(rows)
    picks = logits.argmax(axis=-1)
    first = time.perf_counter()
    steps = [logits]
    for _ in range(new_tokens - 1):
        logits = decoder.step(picks)
        picks = logits.argmax(axis=-1)
        steps.append(logits)
    end = time.perf_counter()
    return (first - start) * 1000, len(rows) * (new_tokens - 1) / (end - first), np.stack(steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an export folder with onnx/decoder.onnx")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from _tables import emit, median_interval
    from ernie_compress.runtime.decoding import OnnxDecoder

    path = args.export / "onnx" / "decoder.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = args.threads, 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    decoders = {name: OnnxDecoder(session, cache_on=where, share_buffer=share) for name, (where, share) in LOOPS.items()}
    if not decoders[list(LOOPS)[-1]].shared:
        sys.exit(f"{path} does not let past and present share a buffer (export it with --onnx-ops onnxruntime)")
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    rows = {b: [[1, *rng.integers(5, 1000, args.prompt - 1).tolist()] for _ in range(b)] for b in batches}
    reference = None
    for name, decoder in decoders.items():  # the same logits either way (and a warm-up at every shape)
        for b in batches:
            _, _, logits = generate(decoder, rows[b], 4)
            if b == batches[0]:
                if reference is not None and not np.array_equal(reference, logits):
                    sys.exit(f"{name} gives other logits than {next(iter(decoders))}")
                reference = logits
    times = {name: {b: {"ttft": [], "decode": []} for b in batches} for name in decoders}
    for r in range(args.rounds):
        for b in batches:
            for name, decoder in decoders.items():
                ttft, rate, _ = generate(decoder, rows[b], args.new_tokens)
                times[name][b]["ttft"].append(ttft)
                times[name][b]["decode"].append(rate)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    numpy_loop = next(iter(decoders))
    rows_out = []
    for b in batches:
        for name in decoders:
            t = times[name][b]
            rows_out.append({
                "loop": name, "batch": str(b),
                f"TTFT ms (prompt {args.prompt})": median_interval(t["ttft"], 0),
                "decode tok/s": median_interval(t["decode"], 1),
                "decode vs numpy feeds": f"{statistics.median(np.divide(t['decode'], times[numpy_loop][b]['decode'])):.3f}x"})
    title = (f"The generation loop around one decoder graph ({args.export.name}/onnx/decoder.onnx): numpy feeds, "
             f"I/O binding and a shared past/present buffer, one process, {args.rounds} interleaved rounds, prompt {args.prompt}, {args.new_tokens} greedy "
             f"tokens, {args.threads} threads; median (min-max), per-round ratios; the same logits every way")
    result = {"export": str(args.export), "rounds": args.rounds, "prompt": args.prompt, "new_tokens": args.new_tokens,
              "times": {n: {str(b): t for b, t in x.items()} for n, x in times.items()}}
    emit(title, rows_out, list(rows_out[0]), result, args.json, markdown_path=args.markdown, threads=args.threads,
         summary={"loops": list(decoders)})
    return result


if __name__ == "__main__":
    main()
