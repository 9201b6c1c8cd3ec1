"""Why the export writes residual sums as ``Sum``: ONNX Runtime's CPU kernels for a residual block's
``LayerNormalization(x + y)`` — ``Add`` then ``LayerNormalization`` (what the rewritten graph runs),
against the ``SkipLayerNormalization`` that ONNX Runtime fuses an ``Add`` into — on one encoder
activation ([batch, seq, hidden], float32), interleaved rounds, median with min-max.

    python benchmarks/layer_norm_kernels.py [--shape 32 128 768] [--threads 2] [--rounds 7] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved_rounds, ratio_rounds  # noqa: E402


def _model(kind: str, shape: list[int]) -> bytes:
    """``y = LN(x + s)`` written as Sum + LayerNormalization, or as one SkipLayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = shape[-1]
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, hidden, dtype=np.float32), "gamma"),
             numpy_helper.from_array(np.linspace(-0.1, 0.1, hidden, dtype=np.float32), "beta")]
    if kind == "skip":
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "s", "gamma", "beta"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Sum", ["x", "s"], ["r"]),
                 helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "s")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    model = helper.make_model(helper.make_graph(nodes, kind, inputs, [output], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 768])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from ernie_compress.machine import machine_info, machine_line

    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=args.shape).astype(np.float32), "s": rng.normal(size=args.shape).astype(np.float32)}
    labels = {"sum": "Sum + LayerNormalization (the export's graph)", "skip": "SkipLayerNormalization (ORT's fusion)"}
    sessions, outputs = {}, {}
    for kind in labels:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.log_severity_level = 3
        sessions[kind] = ort.InferenceSession(_model(kind, args.shape), options, providers=["CPUExecutionProvider"])
        outputs[kind] = sessions[kind].run(None, feeds)[0]
    max_diff = float(np.abs(outputs["sum"] - outputs["skip"]).max())

    def timer(session):
        def run() -> float:
            start = time.perf_counter()
            for _ in range(args.iterations):
                session.run(None, feeds)
            return (time.perf_counter() - start) / args.iterations * 1e3
        return run

    for session in sessions.values():
        session.run(None, feeds)
    timings = interleaved_rounds({kind: timer(s) for kind, s in sessions.items()}, args.rounds)
    ratio = ratio_rounds(timings["skip"]["rounds"], timings["sum"]["rounds"])
    machine = machine_info(args.threads)
    lines = [f"ONNX Runtime CPU, one residual block's normalization of a {'x'.join(map(str, args.shape))} float32 "
             f"activation, {args.threads} threads; ms per call: median (min–max) of {args.rounds} interleaved rounds "
             f"of {args.iterations} calls; outputs differ by at most {max_diff:.1e}", "",
             "| kernels | ms per call | time / Sum + LayerNormalization |", "|---|---|---|"]
    for kind, label in labels.items():
        t = timings[kind]
        r = ratio if kind == "skip" else {"median": 1.0, "min": 1.0, "max": 1.0}
        lines.append(f"| {label} | {t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f}) | "
                     f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}) |")
    markdown = "\n".join(lines) + "\n\n" + machine_line(machine)
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown + "\n")
    return {"timings": timings, "skip_over_sum": ratio, "max_abs_diff": max_diff}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
