"""One ERNIE 4.5 MoE layer on ONNX Runtime's CPU kernels: the fused ``com.microsoft.MoE`` (float32) and
``com.microsoft.QMoE`` (int8 / int4 experts) against the same layer written as one MatMul or
``MatMulNBits`` per expert with Gather-based token dispatch (our graph without the fused op), both
from ``models/ernie4_5_moe_onnx.py`` with the same router and shared experts, on random weights at
ERNIE-4.5-21B-A3B's layer shape (transformers' ``Ernie4_5_MoeConfig`` defaults, which are that
model's: hidden 2560, 64 experts, moe_intermediate_size 1536, top-6, 2 shared experts), for one
decode token and a 128-token prefill; interleaved rounds, median (min-max), per precision.

Integer weights are per-channel symmetric RTN codes, written three ways from the same codes:
QMoE with one scale per expert row (the kernel dequantizes, then an SGEMM), QMoE with those scales
repeated over blocks of 128 (the kernel's MatMulNBits path), and MatMulNBits per expert with blocks of
128 as the export writes them. ``accuracy_level`` 4 lets int4 kernels quantize activations to int8;
int8 block kernels always do (``QMoE``) or only at level 4 (``MatMulNBits``).

    python benchmarks/moe_kernels.py [--experts 64] [--precisions fp32,int8,int4] [--rounds 3] [--markdown FILE]

About 4.5 minutes on a 2-core machine shared at load 5.7 (half of it building: 755M random weights,
their RTN codes, every kernel's packing), 14 GB peak (the two float32 layers, 3 GB each, and ONNX
Runtime's packed copies); ``--precisions int8,int4`` or ``--experts 16`` for less.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import finish_table, interleaved_rounds, interval, ms_per_call, ratio_rounds  # noqa: E402

from ernie_compress.export.decoder_onnx import DecoderWeights, WeightOnlyLinear, _integer_kernels  # noqa: E402
from ernie_compress.models import ernie4_5_moe_onnx as moe_onnx  # noqa: E402
from ernie_compress.models.onnx_graph import GraphBuilder  # noqa: E402
from ernie_compress.quantize.weight_only import quantize_rtn  # noqa: E402

DECODE_CALLS = 5  # calls a round at 1 token (1 at 128 tokens)
BLOCK = 128  # MatMulNBits' block for per-channel codes of 2560 / 1536 inputs (export: kernel_block_size)


def layer_shape(experts: int):
    """ERNIE-4.5-21B-A3B's MoE layer (the ``ernie45-21b-a3b`` preset), with ``experts`` routed experts."""
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    return config_from_dict(dict(resolve_preset("ernie45-21b-a3b"), moe_num_experts=experts))


class Float32View(Mapping):
    """Weights stored as float16 (half the memory), read as float32."""

    def __init__(self, store: dict[str, np.ndarray]):
        self.store = store

    def __getitem__(self, name: str) -> np.ndarray:
        return self.store[name].astype(np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


def random_layer(shape, names: moe_onnx.MoENames) -> Float32View:
    """Paddle-layout weights [in, out] of one MoE layer, std 0.02 as the models initialize."""
    rng = np.random.default_rng(0)
    h, i = shape.hidden_size, shape.moe_intermediate_size

    def normal(*dims):
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    store = {names.gate: normal(h, shape.moe_num_experts), names.correction_bias: normal(1, shape.moe_num_experts) / 20}
    for e in range(shape.moe_num_experts):
        up_gate, down = names.expert(e)
        store[f"{up_gate}.weight"], store[f"{down}.weight"] = normal(h, 2 * i), normal(i, h)
    width = i * shape.moe_num_shared_experts
    store[f"{names.shared_in}.weight"], store[f"{names.shared_down}.weight"] = normal(h, 2 * width), normal(width, h)
    return Float32View(store)


def rtn_codes(weights: Mapping[str, np.ndarray], bits: int) -> dict[str, WeightOnlyLinear]:
    """Per-channel symmetric RTN codes of every Linear, as the quantize stage makes them (router
    excluded: it stays float32)."""
    return {name: WeightOnlyLinear(*quantize_rtn(weights[name], bits, None), bits, None)
            for name in weights if name.endswith("proj.weight")}


@dataclass(frozen=True)
class Variant:
    label: str
    bits: int | None  # None: float32
    fused: bool
    block_size: int | None = None  # QMoE: per-channel scales written as blocks
    level: int = 0  # accuracy_level of QMoE and MatMulNBits


VARIANTS = {
    "fp32": [Variant("MoE (fused)", None, True), Variant("MatMul per expert", None, False)],
    "int8": [Variant("QMoE, row scales", 8, True), Variant("QMoE, blocks of 128", 8, True, BLOCK),
             Variant("MatMulNBits per expert", 8, False),
             Variant("MatMulNBits per expert, level 4", 8, False, level=4)],
    "int4": [Variant("QMoE, row scales", 4, True), Variant("QMoE, blocks of 128", 4, True, BLOCK),
             Variant("QMoE, blocks of 128, level 4", 4, True, BLOCK, 4),
             Variant("MatMulNBits per expert", 4, False),
             Variant("MatMulNBits per expert, level 4", 4, False, level=4)],
}


@dataclass
class InMemoryGraph(GraphBuilder):
    """A graph builder that keeps large initializers as numpy arrays, handed to ONNX Runtime as
    external initializers (``SessionOptions.add_external_initializers``): a float32 layer is over
    protobuf's 2 GB, and neither a serialized copy nor a file is then needed."""

    arrays: dict = field(default_factory=dict)

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import TensorProto, helper

        array = np.asarray(array)
        if array.nbytes < 1 << 20 or name in self.names:
            return super().const(name, array)
        self.names.add(name)
        self.arrays[name] = np.ascontiguousarray(array)
        stub = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                           data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "memory"), ("offset", "0"), ("length", str(array.nbytes))):
            stub.external_data.add(key=key, value=value)
        self.initializers.append(stub)
        return name


def build_session(shape, names, weights, integer, variant: Variant, threads: int):
    """The layer as an ONNX Runtime session whose large weights stay numpy arrays."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    matmul, _ = _integer_kernels(DecoderWeights({}, integer or {}, variant.level))
    g = InMemoryGraph(weights, matmul=matmul)
    experts = integer if variant.bits and variant.fused else None
    moe_onnx.moe(g, "x", shape, names, integer=experts, fused=variant.fused, block_size=variant.block_size,
                 accuracy_level=variant.level, name="y")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, shape.hidden_size]) for n in ("x", "y")]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in g.arrays.values()]
    options.add_external_initializers(list(g.arrays), values)
    session = ort.InferenceSession(g.model("moe", io[:1], io[1:]).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session.keep_alive = (g.arrays, values)  # the session reads these buffers
    return session


def measure(shape, precision: str, threads: int, rounds: int, weights, names) -> dict:
    """Every variant of one precision at decode (1 token) and prefill (128 tokens)."""
    bits = VARIANTS[precision][0].bits
    integer = rtn_codes(weights, bits) if bits else None
    feeds = {n: np.random.default_rng(n).standard_normal((1, n, shape.hidden_size), dtype=np.float32)
             for n in (1, 128)}
    results = {}
    sessions = {}
    for v in VARIANTS[precision]:
        sessions[v.label] = build_session(shape, names, weights, integer, v, threads)
        print(f"{precision}: {v.label} built", file=sys.stderr, flush=True)
    first = VARIANTS[precision][0].label
    for tokens, iterations in ((1, DECODE_CALLS), (128, 1)):
        feed = {"x": feeds[tokens]}
        outputs = {k: s.run(None, feed)[0] for k, s in sessions.items()}  # also the warm-up
        timings = interleaved_rounds({k: ms_per_call(lambda s=s: s.run(None, feed), iterations)
                                      for k, s in sessions.items()}, rounds)
        for k, t in timings.items():
            diff = np.abs(outputs[k] - outputs[first]).max() / np.abs(outputs[first]).max()
            results[tokens, k] = {**t, "over_fused": ratio_rounds(t["rounds"], timings[first]["rounds"]),
                                  "diff": float(diff)}
    del sessions
    gc.collect()
    return results


def active_bytes(shape, bits: int | None) -> float:
    """Bytes of expert weights one decode token reads: k routed experts and the shared MLP."""
    h, i = shape.hidden_size, shape.moe_intermediate_size
    params = (shape.moe_k + shape.moe_num_shared_experts) * 3 * h * i
    return params * (4 if bits is None else bits / 8)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    shape = layer_shape(args.experts)
    names = moe_onnx.paddle_names(1)
    weights = random_layer(shape, names)
    lines = [f"ONNX Runtime CPU, one ERNIE 4.5 MoE layer (hidden {shape.hidden_size}, {shape.moe_num_experts} "
             f"experts of {shape.moe_intermediate_size}, top-{shape.moe_k}, {shape.moe_num_shared_experts} shared; "
             f"random weights), {args.threads} threads; ms per call: median (min–max) of {args.rounds} "
             f"interleaved rounds ({DECODE_CALLS} calls a round at 1 token, 1 at 128)", "",
             "| tokens | precision | kernels | ms per call | time / fused (first row) | max diff / max output |",
             "|---|---|---|---|---|---|"]
    results = {}
    for precision in args.precisions.split(","):
        results[precision] = measure(shape, precision, args.threads, args.rounds, weights, names)
        for (tokens, label), r in results[precision].items():
            lines.append(f"| {tokens} | {precision} | {label} | {interval(r)} | {interval(r['over_fused'])} | "
                         f"{r['diff']:.1e} |")
    bytes_line = ", ".join(f"{p} {active_bytes(shape, VARIANTS[p][0].bits) / 1e6:.0f} MB"
                           for p in args.precisions.split(","))
    lines += ["", f"Expert weights one decode token reads (k routed + shared): {bytes_line}."]
    finish_table(lines, [args.threads], args.markdown)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
