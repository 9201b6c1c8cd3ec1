"""Do ONNX Runtime's fused decoder operators pay on this CPU? Our ERNIE-4.5-0.3B W4 decoder as ``export``
writes it (each layer's attention one ``com.microsoft.GroupQueryAttention``: rotary inside, interleaved as
ERNIE 4.5's) against the same graph with attention in standard ops (``--onnx-ops standard``), and each with
the post-attention residual and RMSNorm as ``SkipSimplifiedLayerNormalization``; and export's graph with
separate q/k/v and gate/up projections (one MatMulNBits per part over its columns, no Split:
``GraphBuilder.separate_projections``, as onnxruntime-genai's builder writes them); batch 1. One run, interleaved:

    python benchmarks/fused_decoder_ops.py [--rounds 5] [--prompts 128,512] [--new-tokens 32] [--threads 2]
        [--preset ernie45-0.3b] [--markdown benchmarks/results/fused-decoder-ops.md]

Each variant is checked first (:func:`check_equivalence`: float weights, sharp attention, logits within
1e-4 of the standard graph's). The timed graphs: random weights (speed does not depend on them), W4 RTN
groups of 32 and the int8 head, int8 compute, as ``benchmarks/decoding.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ernie_compress.models.onnx_graph import GraphBuilder  # noqa: E402

STANDARD, GQA, SKIP, BOTH = ("standard ops (--onnx-ops standard)", "GroupQueryAttention (export's default)",
                             "SkipSimplifiedLayerNormalization", "GroupQueryAttention + SkipSimplifiedLayerNormalization")
SEPARATE = "GroupQueryAttention, separate q/k/v and gate/up projections"
VARIANTS = (STANDARD, GQA, SKIP, BOTH, SEPARATE)


def skip_decoder_layer(attention):
    """``ernie4_5_onnx.decoder_layer`` with ``x + attn`` and the post-attention RMSNorm as one
    SkipSimplifiedLayerNormalization (outputs: the normed sum, and the sum itself for the residual)."""
    from ernie_compress.models import ernie4_5_onnx as blocks

    def layer(g, x, config, names, io):
        attended, present = attention(g, blocks.rms_norm(g, x, names.input_norm, config.rms_norm_eps), config,
                                      names, io)
        normed, _, _, summed = g.op("SkipSimplifiedLayerNormalization", attended, x, g.weight(names.post_norm),
                                    outputs=4, domain="com.microsoft", epsilon=float(config.rms_norm_eps))
        return g.op("Add", summed, blocks.mlp(g, normed, config, names)), present

    return layer


@dataclass
class SeparateProjections(GraphBuilder):
    """The export's graph builder with each fused projection's parts as their own MatMuls."""

    separate_projections: bool = True


def build(config, weights, variant: str):
    """The decoder graph of ``variant``: export's (standard or GroupQueryAttention attention), the
    family's decoder layer patched for SkipSimplifiedLayerNormalization where named, the graph
    builder for separate projections where named."""
    from ernie_compress.export import decoder_onnx
    from ernie_compress.models import ernie4_5_onnx as blocks

    layer = blocks.decoder_layer
    try:
        if variant in (SKIP, BOTH):
            blocks.decoder_layer = skip_decoder_layer(blocks.attention)
        if variant == SEPARATE:
            decoder_onnx.GraphBuilder = SeparateProjections
        return decoder_onnx.build_decoder(config, weights, fused_attention=variant in (GQA, BOTH, SEPARATE))
    finally:
        blocks.decoder_layer, decoder_onnx.GraphBuilder = layer, GraphBuilder


def check_equivalence(keys: dict, threads: int) -> dict[str, dict]:
    """Each fused variant against the standard graph, float weights (exact kernels) on 2 layers of the
    preset's shape with the qkv weights 8x (sharp attention, so the rotary positions and the mask
    decide the logits; a non-interleaved rotary gives a difference of the logits' own size): logits
    of 12 teacher-forced steps after a 40-token prompt within 1e-4 of their scale. Exits otherwise."""
    import onnxruntime as ort

    from decoding import random_state
    from ernie_compress.export.decoder_onnx import DecoderWeights
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.runtime.decoding import OnnxDecoder, generate_tokens

    config = config_from_dict(dict(keys, num_hidden_layers=2, vocab_size=1000))
    state = random_state(config)
    state.update({k: v * 8 for k, v in state.items() if "qkv_proj" in k})
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    decoders = {v: OnnxDecoder(ort.InferenceSession(build(config, DecoderWeights(state, {}), v).SerializeToString(),
                                                    options, providers=["CPUExecutionProvider"]))
                for v in VARIANTS}
    prompt = [1, *np.random.default_rng(0).integers(5, 1000, 40).tolist()]
    reference = generate_tokens(decoders[STANDARD], prompt, 12, eos_id=-1)
    scale = float(np.abs(reference["logits"]).max())
    checks = {}
    for variant, decoder in decoders.items():
        forced = generate_tokens(decoder, prompt, 12, eos_id=-1, forced=reference["tokens"])
        checks[variant] = {"max_relative_diff": float(np.abs(forced["logits"] - reference["logits"]).max()) / scale}
        if checks[variant]["max_relative_diff"] > 1e-4:
            sys.exit(f"{variant} does not compute the standard graph's logits: {checks[variant]}")
    return checks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", default="128,512")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="ernie45-0.3b")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers than the preset's (a quick check)")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from _tables import emit, median_interval
    from decoding import integer_weights, random_state
    from ernie_compress.export.decoder_onnx import DecoderWeights, save_model
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset
    from ernie_compress.runtime.decoding import OnnxDecoder, generate_tokens

    keys = resolve_preset(args.preset)
    config = config_from_dict(dict(keys, num_hidden_layers=args.layers or keys["num_hidden_layers"]))
    state = random_state(config)
    weights = DecoderWeights(state, integer_weights(config, state, 4, 32), 4)
    prompts = [int(p) for p in args.prompts.split(",")]
    rng = np.random.default_rng(1)
    tokens = [1, *rng.integers(5, config.vocab_size, max(prompts) - 1).tolist()]
    sessions, checks = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(VARIANTS):
            print(f"writing {variant} ...", file=sys.stderr)
            path = Path(tmp) / f"{i}.onnx"
            save_model(build(config, weights, variant), path)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = args.threads, 1, 3
            sessions[variant] = OnnxDecoder(ort.InferenceSession(str(path), options,
                                                                 providers=["CPUExecutionProvider"]))
        checks = check_equivalence(keys, args.threads)
        times = {v: {"ttft": {p: [] for p in prompts}, "decode": []} for v in sessions}
        for decoder in sessions.values():  # warm-up at every measured shape
            for p in prompts:
                generate_tokens(decoder, tokens[:p], 3, eos_id=-1)
        for r in range(args.rounds):
            for variant, decoder in sessions.items():
                for p in prompts:
                    out = generate_tokens(decoder, tokens[:p], args.new_tokens if p == prompts[0] else 1, eos_id=-1)
                    times[variant]["ttft"][p].append(out["time_to_first_token_ms"])
                    if p == prompts[0]:
                        times[variant]["decode"].append(out["decode_tokens_per_s"])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows, result = [], {"preset": args.preset, "threads": args.threads, "rounds": args.rounds, "checks": checks,
                        "times": {v: {"ttft": {str(p): t for p, t in x["ttft"].items()}, "decode": x["decode"]}
                                  for v, x in times.items()}}
    base = times[STANDARD]
    for variant, x in times.items():
        row = {"variant": variant}
        for p in prompts:
            row[f"TTFT ms (prompt {p})"] = median_interval(x["ttft"][p], 0)
            row[f"vs standard ({p})"] = f"{statistics.median(np.divide(x['ttft'][p], base['ttft'][p])):.2f}x"
        row[f"decode tok/s (batch 1, after {prompts[0]})"] = median_interval(x["decode"], 1)
        row["decode vs standard"] = f"{statistics.median(np.divide(x['decode'], base['decode'])):.2f}x"
        row["check: max logit diff / scale"] = f"{checks[variant]['max_relative_diff']:.1e}"
        rows.append(row)
    shape = args.preset + (f" ({config.num_hidden_layers} layers)" if args.layers else "")
    title = (f"Fused ONNX Runtime decoder operators, {shape} W4 (random weights, int8 compute), ONNX Runtime "
             f"{ort.__version__} CPU, batch 1, {args.threads} threads; median (min-max) of {args.rounds} interleaved "
             f"rounds, per-round ratios to the standard graph (TTFT: < 1 is faster; decode: > 1 is faster)")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads,
         summary={"checks": checks})
    return result


if __name__ == "__main__":
    main()
