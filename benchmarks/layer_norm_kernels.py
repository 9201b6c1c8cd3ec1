"""Why the export writes residual sums as ``Sum``, and where that stops paying: ONNX Runtime's CPU
kernels for a residual block's ``LayerNormalization(x + y)`` — ``Sum`` then ``LayerNormalization`` (what
the rewritten graph runs), the ``SkipLayerNormalization`` that ONNX Runtime fuses an ``Add`` into (what
the standard graph runs by default), and ``Add`` then ``LayerNormalization`` in a session without that
fusion — on one encoder activation ([batch, seq, hidden], float32), at each thread count, interleaved
rounds, median with min-max.

    python benchmarks/layer_norm_kernels.py [--shape 32 128 768] [--threads 2,16] [--rounds 7] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import finish_table, interleaved_rounds, interval, ms_per_call, ratio_rounds  # noqa: E402


def _model(kind: str, shape: list[int]) -> bytes:
    """``y = LN(x + s)`` written as Sum or Add + LayerNormalization, or as one SkipLayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = shape[-1]
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, hidden, dtype=np.float32), "gamma"),
             numpy_helper.from_array(np.linspace(-0.1, 0.1, hidden, dtype=np.float32), "beta")]
    if kind == "skip":
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "s", "gamma", "beta"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    elif kind == "reshape":  # a no-op Reshape between them: ORT's fusion needs LayerNormalization to read the Add
        inits.append(numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "shape"))
        nodes = [helper.make_node("Add", ["x", "s"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["r2"]),
                 helper.make_node("LayerNormalization", ["r2", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Sum" if kind == "sum" else "Add", ["x", "s"], ["r"]),
                 helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "s")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    model = helper.make_model(helper.make_graph(nodes, kind, inputs, [output], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


LABELS = {"sum": "Sum + LayerNormalization (the export's graph)",
          "skip": "SkipLayerNormalization (ORT's fusion of Add + LayerNormalization)",
          "add": "Add + LayerNormalization, session without SkipLayerNormFusion",
          "reshape": "Add + no-op Reshape + LayerNormalization (not fused)"}


def measure(shape: list[int], threads: int, rounds: int, iterations: int) -> dict:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=shape).astype(np.float32), "s": rng.normal(size=shape).astype(np.float32)}
    sessions, outputs = {}, {}
    for kind in LABELS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        disabled = ["SkipLayerNormFusion"] if kind == "add" else []
        sessions[kind] = ort.InferenceSession(_model(kind, shape), options, providers=["CPUExecutionProvider"],
                                              disabled_optimizers=disabled)
        outputs[kind] = sessions[kind].run(None, feeds)[0]  # also the warm-up

    timings = interleaved_rounds({kind: ms_per_call(lambda s=s: s.run(None, feeds), iterations)
                                  for kind, s in sessions.items()}, rounds)
    return {kind: {**t, "over_sum": ratio_rounds(t["rounds"], timings["sum"]["rounds"]),
                   "max_abs_diff": float(np.abs(outputs[kind] - outputs["sum"]).max())}
            for kind, t in timings.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 768])
    parser.add_argument("--threads", default="2", help="comma-separated intra-op thread counts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    threads = [int(t) for t in args.threads.split(",")]
    lines = [f"ONNX Runtime CPU, one residual block's normalization of a {'x'.join(map(str, args.shape))} float32 "
             f"activation; ms per call: median (min–max) of {args.rounds} interleaved rounds of {args.iterations} "
             "calls, per thread count", "",
             "| threads | kernels | ms per call | time / Sum + LayerNormalization | max abs diff |", "|---|---|---|---|---|"]
    results = {}
    for t in threads:
        results[t] = measure(args.shape, t, args.rounds, args.iterations)
        for kind, label in LABELS.items():
            r, o = results[t][kind], results[t][kind]["over_sum"]
            lines.append(f"| {t} | {label} | {interval(r)} | {interval(o)} | {r['max_abs_diff']:.1e} |")
    finish_table(lines, threads, args.markdown)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
