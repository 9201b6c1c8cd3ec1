"""Decoding speed of an ERNIE 4.5 MoE decoder export at ERNIE-4.5-21B-A3B's layer shape on this CPU:
FP32, W8 and W4 experts, each as ONNX Runtime's fused kernel (``MoE`` / ``QMoE``) and as one
``MatMul`` / ``MatMulNBits`` per expert (our graph without the fused op), against the
active-parameter bandwidth bound; measured in one run, interleaved.

    python benchmarks/moe_decoding.py [--layers 2] [--experts 64] [--threads 2] [--rounds 3] [--prompt 128]
        [--new-tokens 16] [--variants all|w4-qmoe,...] [--markdown benchmarks/results/moe-decoding.md]

Random weights (speed does not depend on their values): the preset ``ernie45-21b-a3b`` (hidden 2560,
20 query / 4 KV heads of 128, 64 experts of width 1536, top-6, 2 shared experts, layer 0 dense,
vocabulary 103,424, tied head) cut to ``--layers`` layers so it fits this machine's memory (2 layers:
1 dense + 1 MoE, 4.6 GB of FP32 weights). The graphs are ``export/decoder_onnx.py``'s as ``export
--moe-experts fused|dispatch`` writes them; integer weights are RTN codes as ``quantize --weight-only``
writes them (W8 per output channel, W4 in groups of 32 rows; the router stays FP32, the head int8 per
vocabulary entry), run with ``--weight-only-compute int8`` (``accuracy_level`` 4). Time to first
token = prefill of a ``--prompt``-token prompt plus the first pick; decode tokens/s = ``--new-tokens``
greedy steps after it, batch 1 (``runtime/decoding.py``).

A decode step reads every weight but the routed experts, plus ``moe_k`` of each MoE layer's
experts: the bound is the measured memory bandwidth (``decoding.copy_bandwidth``) divided by those
active bytes. Peak memory: every variant's session is open at once (about 14 GB at 2 layers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# variant -> (bits or None for float, group size, how experts run)
VARIANTS = {
    "FP32, MoE": (None, None, "fused"),
    "FP32, MatMul per expert": (None, None, "dispatch"),
    "W8, QMoE": (8, None, "fused"),
    "W8, MatMulNBits per expert": (8, None, "dispatch"),
    "W4, QMoE": (4, 32, "fused"),
    "W4, MatMulNBits per expert": (4, 32, "dispatch"),
}
EXPERT_OPS = ("MatMul", "MatMulNBits", "Gemm", "MoE", "QMoE")  # the ops whose initializers a step reads


def _slug(name: str) -> str:
    return name.lower().replace(", ", "-").replace(" ", "-")


def integer_weights(config, state, bits: int, group: int | None) -> dict:
    """RTN codes and scales of every Linear with a role in the family (experts, attention, shared and
    dense MLPs; not the router) and of the head (int8 per vocabulary entry)."""
    from ernie_compress.export.decoder_onnx import WeightOnlyLinear
    from ernie_compress.models.families import family_of
    from ernie_compress.quantize.weight_only import HEAD_BITS, lm_head_weight, quantize_rtn

    family = family_of(config)
    integer = {}
    for name, weight in state.items():
        if name.endswith(".weight") and family.linear_role(name[:-len(".weight")]) is not None:
            integer[name] = WeightOnlyLinear(*quantize_rtn(weight, bits, group), bits, group)
    name, transposed = lm_head_weight(config)
    head = state[name].T if transposed else state[name]
    integer[name] = WeightOnlyLinear(*quantize_rtn(head, HEAD_BITS, None), HEAD_BITS, None)
    return integer


def active_bytes_per_token(graph, config) -> int:
    """Bytes of weights one decode step reads: the initializers of the MatMul-like and MoE nodes, the
    routed experts' (names holding ``.experts.``) counted for ``moe_k`` of ``moe_num_experts``."""
    from onnx import numpy_helper

    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in graph.graph.initializer}
    used = {name for node in graph.graph.node if node.op_type in EXPERT_OPS for name in node.input if name in sizes}
    share = config.moe_k / config.moe_num_experts
    return int(sum(sizes[n] * (share if ".experts." in n else 1.0) for n in used))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-21b-a3b")
    parser.add_argument("--layers", type=int, default=2, help="layers kept (layer 0 is dense in 21B-A3B)")
    parser.add_argument("--experts", type=int, default=None, help="routed experts per MoE layer (default: the preset's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onnx-ops", choices=("standard", "onnxruntime"), default="standard", help=(
        "attention in standard ops (what the tables in docs/benchmarks.md were measured with), or as "
        "GroupQueryAttention (export's default for CPU decoders since; CPU only)"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each variant once per round)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens for time to first token")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy decode steps timed per round")
    parser.add_argument("--variants", default="all", help=f"comma-separated subset of: {', '.join(map(_slug, VARIANTS))}")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    asked = set(map(_slug, VARIANTS)) if args.variants == "all" else {v.strip() for v in args.variants.split(",")}
    if asked - set(map(_slug, VARIANTS)):
        parser.error(f"unknown variants {sorted(asked - set(map(_slug, VARIANTS)))}")
    chosen = [v for v in VARIANTS if _slug(v) in asked]

    import onnxruntime as ort

    from _tables import emit
    from decoding import _interval, copy_bandwidth, interleaved_generation, random_state
    from ernie_compress import progress
    from ernie_compress.export.decoder_onnx import DecoderWeights, build_decoder, kernel_counts, save_model
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset
    from ernie_compress.runtime.decoding import OnnxDecoder

    progress.set_enabled(False)
    keys = dict(resolve_preset(args.preset), num_hidden_layers=args.layers)
    if args.experts:
        keys["moe_num_experts"] = args.experts
    config = config_from_dict(keys)
    print(f"building {args.preset} ({args.layers} layers) with random weights ...", file=sys.stderr)
    state = random_state(config)
    integer = {bits_group: integer_weights(config, state, *bits_group)
               for bits_group in {VARIANTS[v][:2] for v in chosen if VARIANTS[v][0]}}
    bandwidth = copy_bandwidth(args.threads)
    sessions, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            bits, group, experts = VARIANTS[name]
            print(f"writing {name} ...", file=sys.stderr)
            weights = DecoderWeights(state, integer[(bits, group)] if bits else {}, 4 if bits else 0, experts)
            graph = build_decoder(config, weights, fused_attention=args.onnx_ops == "onnxruntime")
            active, kernels = active_bytes_per_token(graph, config), kernel_counts(graph)  # before saving: external
            path = Path(tmp) / f"{len(sessions)}.onnx"                                        # data leaves the graph
            save_model(graph, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            options.log_severity_level = 3
            sessions[name] = OnnxDecoder(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
            info[name] = {"kernels": kernels, "active_weight_bytes_per_token": active,
                          "bandwidth_bound_tokens_per_s": bandwidth / active}
            del graph
        rng = np.random.default_rng(1)
        prompt = [1, *rng.integers(5, config.vocab_size, args.prompt - 1).tolist()]
        ttft, decode = interleaved_generation(sessions, prompt, args.rounds, args.new_tokens)
    result = {"preset": args.preset, "layers": args.layers, "experts": config.moe_num_experts, "k": config.moe_k,
              "threads": args.threads, "rounds": args.rounds, "prompt": args.prompt, "new_tokens": args.new_tokens,
              "copy_bandwidth_gb_s": bandwidth / 1e9, "variants": {}}
    rows = []
    for name in sessions:
        tps, bound = statistics.median(decode[name]), info[name]["bandwidth_bound_tokens_per_s"]
        result["variants"][name] = {**info[name], "ttft_ms": ttft[name], "decode_tokens_per_s": decode[name]}
        kernels = info[name]["kernels"]
        rows.append({"variant": name,
                     "kernels": ", ".join(f"{n} {op}" for op, n in kernels.items() if n),
                     "active weights per token": f"{info[name]['active_weight_bytes_per_token'] / 2**20:.0f} MiB",
                     f"TTFT ms (prompt {args.prompt})": _interval(ttft[name], 0),
                     "decode tokens/s (batch 1)": _interval(decode[name], 2),
                     "bandwidth bound tokens/s": f"{bound:.1f}", "share of the bound": f"{tps / bound:.0%}"})
    for bits in ("W8", "W4", "FP32"):
        fused = next((n for n in sessions if n.startswith(bits + ",") and "per expert" not in n), None)
        split = next((n for n in sessions if n.startswith(bits + ",") and "per expert" in n), None)
        if fused and split:
            result[f"{bits.lower()}_fused_vs_per_expert_decode"] = (statistics.median(decode[fused])
                                                                   / statistics.median(decode[split]))
    title = (f"MoE decoding, {args.preset} cut to {args.layers} layers ({config.moe_num_experts} experts, top-"
             f"{config.moe_k}; random weights; attention: {args.onnx_ops} ops), ONNX Runtime {ort.__version__} CPU, batch 1, {args.new_tokens} greedy "
             f"tokens after a {args.prompt}-token prompt; median (min-max) of {args.rounds} interleaved rounds. "
             f"Memory bandwidth ({args.threads} numpy copies at once, bytes read + written): {bandwidth / 1e9:.1f} GB/s; "
             f"bound = bandwidth / active weight bytes read per token")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads,
         summary={k: v for k, v in result.items() if k != "variants"})
    return result


if __name__ == "__main__":
    main()
