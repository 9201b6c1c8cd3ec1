"""Decoding speed of the ERNIE 4.5 decoder export at the real ERNIE-4.5-0.3B size: FP32, weight-only
INT8 and INT4 (MatMulNBits), in ONNX Runtime on this CPU, measured in one run, interleaved.

    python benchmarks/decoding.py [--threads 2] [--rounds 3] [--prompt 128] [--new-tokens 32]
        [--markdown benchmarks/results/decoding.md] [--json out.json]      # pip install -e ".[bench]" first

Random weights (speed does not depend on their values; no model can be downloaded here): the
preset ``ernie45-0.3b`` (18 layers, hidden 1024, 16 query / 2 KV heads, vocab 103,424, tied head).
W8 is int8 per output channel, W4 int4 in groups of 32 rows (RTN: the codes' values do not change
the kernels' speed, so GPTQ runs as fast); the head is int8 per vocabulary entry in both, as
``quantize --weight-only`` writes it, and the tied table is stored once (the head's codes, which
``GatherBlockQuantized`` reads for the token rows: "file MB" counts it once). The graphs are ``export/decoder_onnx.py``'s, the loop
``runtime/decoding.py``'s: time to first token = prefill of a ``--prompt``-token prompt plus the
first pick; decode tokens/s = ``--new-tokens`` greedy steps after it, batch 1. W8 and W4 run as
``export`` writes them by default (``--weight-only-compute int8``: MatMulNBits ``accuracy_level``
4, activations quantized to int8 per block inside the kernel) and with ``fp32`` compute (level 0:
exact to the checkpoint). The peer row is ONNX Runtime's own ``MatMulNBitsQuantizer`` applied to
our FP32 graph with the same settings (int4, symmetric, block 32, accuracy level 4) and its default
coverage (MatMuls with constant weights: the Gemm head stays FP32).

Decoding reads every weight once per token, so its floor is weight bytes per token / memory
bandwidth; the bandwidth is measured here (``--threads`` numpy copies of 1 GiB in all, at once:
bytes read + written per second).
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
W8, W4 = "W8 (int8 per channel)", "W4 (int4, group 32)"
PEER = "peer: ONNX Runtime's MatMulNBitsQuantizer, int4 block 32 (head stays FP32)"
sys.path.insert(0, str(ROOT))


def random_state(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of an ``Ernie4_5ForCausalLM`` of ``config`` (names and shapes from the config, so no
    Paddle is needed): normal(0, 0.02), RMSNorm weights 1, biases 0."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in config.causal_lm_shapes().items():
        state[name] = (np.ones(shape, np.float32) if name.endswith("norm.weight") else
                       np.zeros(shape, np.float32) if name.endswith(".bias") else
                       rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
    return state


def integer_weights(config, state, bits: int, group: int | None) -> dict:
    """Codes and scales of every Linear (``bits``, ``group``) and of the head (int8 per entry)."""
    from ernie_compress.export.decoder_onnx import WeightOnlyLinear
    from ernie_compress.quantize.weight_only import HEAD_BITS, lm_head_weight, quantize_rtn

    integer = {}
    for name, weight in state.items():
        if name.startswith("ernie.layers.") and weight.ndim == 2:
            integer[name] = WeightOnlyLinear(*quantize_rtn(weight, bits, group), bits, group)
    name, transposed = lm_head_weight(config)  # a tied table [vocab, hidden] is read transposed
    head = state[name].T if transposed else state[name]
    integer[name] = WeightOnlyLinear(*quantize_rtn(head, HEAD_BITS, None), HEAD_BITS, None)
    return integer


def weight_bytes_per_token(graph) -> int:
    """Bytes of weights one decode step reads: the initializers the MatMul, MatMulNBits and Gemm
    nodes take (every Linear and the head; the embedding table only where it is the head)."""
    from onnx import numpy_helper

    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in graph.graph.initializer}
    used = {name for node in graph.graph.node if node.op_type in ("MatMul", "MatMulNBits", "Gemm")
            for name in node.input if name in sizes}
    return sum(sizes[name] for name in used)


def ort_matmul_nbits_quantizer(fp32_graph, block_size: int = 32):
    """The peer: ONNX Runtime's own weight-only quantizer on our FP32 graph (int4, symmetric, its
    default coverage: MatMuls with constant weights, so the Gemm head stays FP32), accuracy level 4."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    quantizer = MatMulNBitsQuantizer(fp32_graph, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    return quantizer.model.model


def copy_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second through memory: ``threads`` numpy copies of ``gib`` / ``threads`` GiB at
    once (bytes read + written), best of ``repeats``."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(int(gib * 2**30) // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts]
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL while it copies
        def copy_all():
            list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
        best = min(_timed(copy_all) for _ in range(repeats))
    return 2 * src.nbytes / best


def gpu_copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float | None:
    """Bytes per second through GPU memory (a device-to-device copy, read + written), via PyTorch
    where it is installed (the GPU machine has no Paddle); None without it."""
    try:
        import torch
    except ImportError:
        return None
    src = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times[1:])


def interleaved_generation(sessions: dict, prompt: list[int], rounds: int, new_tokens: int) -> tuple[dict, dict]:
    """Time to first token (ms) and decode tokens/s of each decoder in ``sessions``, ``rounds`` times,
    each round running every decoder once (after one warm-up each: first runs allocate and pack)."""
    from ernie_compress.runtime.decoding import generate_tokens

    for decoder in sessions.values():
        generate_tokens(decoder, prompt[:16], 3, eos_id=-1)
    ttft, decode = {name: [] for name in sessions}, {name: [] for name in sessions}
    for r in range(rounds):
        for name, decoder in sessions.items():
            out = generate_tokens(decoder, prompt, new_tokens, eos_id=-1)
            ttft[name].append(out["time_to_first_token_ms"])
            decode[name].append(out["decode_tokens_per_s"])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return ttft, decode


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onnx-ops", choices=("standard", "onnxruntime"), default="standard", help=(
        "attention in standard ops (what the tables in docs/benchmarks.md were measured with), or as "
        "GroupQueryAttention (export's default for CPU decoders since; CPU only)"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each variant once per round)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens for time to first token")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy decode steps timed per round")
    parser.add_argument("--preset", default="ernie45-0.3b")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: CUDAExecutionProvider (onnxruntime-gpu); the fp32-compute rows are left out "
                             "there (accuracy_level is a CPU setting)")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from _tables import emit
    from ernie_compress import progress
    from ernie_compress.export.decoder_onnx import DecoderWeights, build_decoder, kernel_counts, save_model
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset
    from ernie_compress.runtime.decoding import OnnxDecoder

    progress.set_enabled(False)
    config = config_from_dict(resolve_preset(args.preset))
    print(f"building {args.preset} with random weights ...", file=sys.stderr)
    state = random_state(config)
    w8, w4 = integer_weights(config, state, 8, None), integer_weights(config, state, 4, 32)
    fused = args.onnx_ops == "onnxruntime"
    build = lambda integer, level: lambda: build_decoder(config, DecoderWeights(state, integer, level),  # noqa: E731
                                                         fused_attention=fused)
    variants = {"FP32": build({}, 0), W8: build(w8, 4), W4: build(w4, 4),  # as export writes them (int8 compute)
                PEER: lambda: ort_matmul_nbits_quantizer(build({}, 0)())}
    if args.device == "cpu":  # --weight-only-compute fp32
        variants.update({W8 + ", fp32 compute": build(w8, 0), W4 + ", fp32 compute": build(w4, 0)})
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "gpu" else ["CPUExecutionProvider"]
    bandwidth = copy_bandwidth(args.threads) if args.device == "cpu" else gpu_copy_bandwidth()
    sessions, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in variants.items():
            print(f"writing {name} ...", file=sys.stderr)
            graph = make()
            path = Path(tmp) / f"{len(sessions)}.onnx"
            save_model(graph, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=providers)
            if session.get_providers()[0] != providers[0]:
                sys.exit(f"ONNX Runtime runs {session.get_providers()}, not {providers[0]}")
            sessions[name] = OnnxDecoder(session, cache_on="cuda" if args.device == "gpu" else None)  # cache stays on the GPU
            per_token = weight_bytes_per_token(graph)
            info[name] = {"kernels": kernel_counts(graph), "weight_bytes_per_token": per_token,
                          "bandwidth_bound_tokens_per_s": bandwidth / per_token if bandwidth else None,  # reads once
                          "file_bytes": sum(p.stat().st_size for p in Path(tmp).glob(f"{len(sessions) - 1}.onnx*"))}
            del graph
        rng = np.random.default_rng(1)
        prompt = [1, *rng.integers(5, config.vocab_size, args.prompt - 1).tolist()]
        ttft, decode = interleaved_generation(sessions, prompt, args.rounds, args.new_tokens)
    rows, result = [], {"preset": args.preset, "device": args.device, "threads": args.threads, "rounds": args.rounds, "prompt": args.prompt,
                        "new_tokens": args.new_tokens, "copy_bandwidth_gb_s": bandwidth / 1e9 if bandwidth else None,
                        "variants": {}}
    fp32 = statistics.median(decode["FP32"])
    for name in sessions:
        tps = statistics.median(decode[name])
        bound = info[name]["bandwidth_bound_tokens_per_s"]
        result["variants"][name] = {**info[name], "ttft_ms": ttft[name], "decode_tokens_per_s": decode[name]}
        rows.append({"variant": name, "MatMulNBits / float MatMul": f"{info[name]['kernels']['MatMulNBits']} / "
                                                                     f"{info[name]['kernels']['MatMul'] + info[name]['kernels']['Gemm']}",
                     "weights read per token": f"{info[name]['weight_bytes_per_token'] / 2**20:.0f} MiB",
                     "file MB": f"{info[name]['file_bytes'] / 1e6:.0f}",
                     f"TTFT ms (prompt {args.prompt})": _interval(ttft[name], 0),
                     "decode tokens/s (batch 1)": _interval(decode[name], 1),
                     "bandwidth bound tokens/s": f"{bound:.1f}" if bound else "not measured",
                     "share of the bound": f"{tps / bound:.0%}" if bound else "",
                     "decode vs FP32": f"{tps / fp32:.2f}x"})
    result["int4_vs_fp32_decode"] = statistics.median(decode[W4]) / fp32
    result["int8_vs_fp32_decode"] = statistics.median(decode[W8]) / fp32
    result["int4_vs_peer_decode"] = statistics.median(decode[W4]) / statistics.median(decode[PEER])
    if W4 + ", fp32 compute" in decode:
        result["int4_fp32_compute_vs_fp32_decode"] = statistics.median(decode[W4 + ", fp32 compute"]) / fp32
    where = "CPU" if args.device == "cpu" else f"{providers[0]} on {_gpu_name()}"
    measured = (f"{args.threads} numpy copies at once" if args.device == "cpu" else "a device-to-device copy")
    attention = "GroupQueryAttention" if args.onnx_ops == "onnxruntime" else "attention in standard ops"
    title = (f"Decoding, {args.preset} (random weights, {attention}), ONNX Runtime {ort.__version__} {where}, batch 1, "
             f"{args.new_tokens} greedy tokens after a {args.prompt}-token prompt; median (min-max) of {args.rounds} "
             f"interleaved rounds. Memory bandwidth ({measured}, bytes read + written): "
             + (f"{bandwidth / 1e9:.1f} GB/s" if bandwidth else "not measured")
             + "; bound = bandwidth / weight bytes read per token")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown,
         threads=args.threads if args.device == "cpu" else None,
         summary={k: v for k, v in result.items() if k != "variants"})
    return result


def _gpu_name() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "a GPU"


def _interval(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
