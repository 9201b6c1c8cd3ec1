"""Our decoder export against onnxruntime-genai's model builder on the same checkpoint, at the real
ERNIE-4.5-0.3B size: file size, KV-cache bytes per token, time to first token and decode tokens/s
(batch 1 and 8), measured in one run, interleaved, a fresh process per measurement.

    python benchmarks/decoder_peers.py [--rounds 3] [--threads 2] [--prompts 128,512] [--batches 1,8]
        [--new-tokens 32] [--variants w4,w4-int4-head,peer-int4,...] [--workdir DIR]
        [--markdown benchmarks/results/decoder-peers.md] [--json out.json]

The checkpoint: ``random_checkpoint.py --preset ernie45-0.3b --dtype float32`` (random weights: speed
and size do not depend on their values; no model can be downloaded here), in the Hugging Face layout
PaddleFormers saves, which both tools read. Ours: ``ernie-compress export --format decoder`` of it (FP32),
and of ``quantize --weight-only int8`` and ``int4``, both ``--group-size 32 --method rtn`` (W8, W4), as
export writes them by default (MatMulNBits ``accuracy_level`` 4; the tied table int8 per vocabulary
entry, stored once and read by the head and ``GatherBlockQuantized``), W4 again with
``--kv-cache int8``, W4 with ``quantize --head int4`` (the table int4 in groups of 32, as the builder's), and ``quantize --w8a8 rtn`` (int8 weights and activations: DynamicQuantizeMatMul;
SmoothQuant's scales would not change its speed). The peer: onnxruntime-genai's
builder (``python -m onnxruntime_genai.models.builder -p fp32|int4 -e cpu``, in the reference venv
``tests/interop/make_reference_venvs.sh`` builds) with its documented defaults (INT4: block 32,
accuracy level 4, the tied table INT4 through ``GatherBlockQuantized``, logits of every prompt
position), then with the setting that matches our head's precision (``matmul_mixed_precision=
last_matmul:int8``, with ``shared_embeddings=false``: builder 0.18 writes a model that references a
missing initializer when an int8 head shares the table, so the table is stored apart) and with that
plus ``prune_lm_head=true`` (logits of the last position only, as ours). The builder reads a copy of the checkpoint folder (the weights linked) whose tokenizer is
a BertTokenizer over the sentencepiece pieces (the reference venv has no sentencepiece; the timings
feed token ids).

Each round starts one process per variant in turn (``decoder_timing_worker.py``: ours through
``runtime/decoding.OnnxDecoder`` as ``OnnxDecoder.open`` runs it on a CPU (one shared past/present buffer where
the graph has GroupQueryAttention), the peer through onnxruntime-genai's generator); each process warms
up once at each measured shape and times it once. Reported: median (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OURS_FP32, OURS_W8, OURS_W4 = "ours FP32", "ours W8 (int8 g32 RTN, int8 head)", "ours W4 (int4 g32 RTN, int8 head)"
OURS_W4_H4 = "ours W4 (int4 g32 RTN, int4 head: quantize --head int4)"
OURS_W4_KV8 = "ours W4, int8 KV cache"
OURS_W8A8 = "ours W8A8 (int8 activations per tensor, DynamicQuantizeMatMul)"
PEER_FP32, PEER_INT4 = "onnxruntime-genai FP32", "onnxruntime-genai INT4 (its defaults: int4 head)"
PEER_INT8_HEAD = "onnxruntime-genai INT4, int8 head (last_matmul:int8)"
PEER_PRUNED = "onnxruntime-genai INT4, int8 head, prune_lm_head"
INT8_HEAD = ["matmul_mixed_precision=last_matmul:int8", "shared_embeddings=false"]  # shared: an invalid model (0.18)
VARIANT_KEYS = {"fp32": OURS_FP32, "w8": OURS_W8, "w4": OURS_W4, "w4-int4-head": OURS_W4_H4, "w4-kv8": OURS_W4_KV8,
                "w8a8": OURS_W8A8, "peer-fp32": PEER_FP32, "peer-int4": PEER_INT4, "peer-int8-head": PEER_INT8_HEAD,
                "peer-pruned": PEER_PRUNED}  # --variants
PEERS = {PEER_FP32: ["-p", "fp32"], PEER_INT4: ["-p", "int4"],
         PEER_INT8_HEAD: ["-p", "int4", "--extra_options", *INT8_HEAD],
         PEER_PRUNED: ["-p", "int4", "--extra_options", *INT8_HEAD, "prune_lm_head=true"]}


def genai_python() -> Path:
    """The reference venv with onnxruntime-genai, where make_reference_venvs.sh puts it (the repository's
    .venvs/ or the shared cache; tests/interop/helpers.reference_python looks in the same places)."""
    cache = Path(os.environ.get("ERNIE_COMPRESS_VENV_CACHE", Path.home() / ".cache" / "ernie-compress" / "venvs"))
    venvs = Path(os.environ.get("ERNIE_COMPRESS_REFERENCE_VENVS", ROOT / ".venvs"))
    candidates = [venvs / "transformers" / "bin" / "python", cache / "transformers" / "bin" / "python"]
    return next((p for p in candidates if p.is_file()), candidates[-1])


def run(cmd: list, timeout: float, env: dict | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def cli(*args) -> dict:
    return json.loads(run([sys.executable, "-m", "ernie_compress", "--quiet", *args, "--json"], 7200))


QUALITY_TEXTS = {"train": 64, "dev": 16, "test": 16}  # the small lm task the quantized checkpoints carry


def small_lm_task(work: Path) -> Path:
    """A folder of demo:lm's first texts for the ``lm`` task: what quantize evaluates a random-weight
    checkpoint on (its perplexity says nothing; all of demo:lm at 0.3B took half an hour a variant) and
    what the int8 KV cache is calibrated on."""
    from ernie_compress.data.tasks import TaskSpec, load_task

    folder = work / "lm-texts"
    folder.mkdir(exist_ok=True)
    task = load_task(TaskSpec("demo:lm"))
    for split, count in QUALITY_TEXTS.items():
        texts = [e.text_a.replace("\n", " ") for e in task.split(split)[:count]]
        (folder / f"{split}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return folder


def build_ours(ckpt: Path, work: Path, wanted_names: set[str]) -> dict[str, Path]:
    """Our exports named in ``wanted_names`` (kept from an earlier run with the same --workdir). The quantized
    checkpoints carry the small lm task of :func:`small_lm_task`, on whose train texts the int8 KV cache's
    scales are calibrated."""
    exports = {OURS_FP32: work / "fp32"}
    if OURS_FP32 in wanted_names and not exports[OURS_FP32].exists():
        print("ours: FP32 export ...", file=sys.stderr)
        cli("export", ckpt, "--format", "decoder", "--out", work / "fp32")
    for method, wanted in ((["--weight-only", "int8", "--group-size", "32", "--method", "rtn"], ((OURS_W8, "e-int8", []),)),
                           (["--weight-only", "int4", "--group-size", "32", "--method", "rtn"],
                            ((OURS_W4, "e-int4", []), (OURS_W4_KV8, "e-int4-kv8", ["--kv-cache", "int8"]))),
                           (["--weight-only", "int4", "--group-size", "32", "--method", "rtn", "--head", "int4"],
                            ((OURS_W4_H4, "e-int4-h4", []),)),
                           (["--w8a8", "rtn"], ((OURS_W8A8, "e-w8a8", []),))):  # speed: smoothing changes no kernel
        exports.update({name: work / folder for name, folder, _ in wanted})
        missing = [(name, flags) for name, _, flags in wanted if name in wanted_names and not exports[name].exists()]
        if not missing:
            continue
        quantized = work / f"q-{wanted[0][1]}"  # kept: a changed export re-runs without quantizing again
        if not (quantized / "compression.json").exists():
            shutil.rmtree(quantized, ignore_errors=True)
            cli("quantize", ckpt, *method, "--task", "lm", "--data", small_lm_task(work), "--out", quantized)
        for name, flags in missing:
            print(f"ours: {name} ...", file=sys.stderr)
            try:
                cli("export", quantized, "--format", "decoder", "--out", exports[name], *flags)
            except SystemExit as refused:
                if name not in (OURS_W4_KV8, OURS_W8A8) or "failed verification" not in str(refused):
                    raise
                print(f"{refused}\n-> built without the check (random weights): see unverified_export",
                      file=sys.stderr)
                unverified_export(quantized, exports[name], exports[OURS_W4] if name == OURS_W4_KV8 else None)
    return {name: path for name, path in exports.items() if name in wanted_names}


def unverified_export(quantized: Path, out: Path, float_cache_export: Path | None = None) -> None:
    """The decoder as ``export`` builds it (GroupQueryAttention; with ``float_cache_export``, the int8
    KV cache whose static per-channel scales the float-cache decoder calibrates on the task's first 32
    train texts), without the export's check, which random weights fail: their flat logits put the
    int8 rounding of the cache (3.2% of the logit scale) or of W8A8's activations (2.7%) above the
    INT8 bound of 2% (measured here; on a trained model, ``kv-cache-quality``: +0.01% and +0.02%
    perplexity). Speed and size do not depend on the weights' values; the table says which rows
    were built so."""
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.export import decoder_onnx, kv_cache
    from ernie_compress.quantize.scheme import quantization_info
    from ernie_compress.runtime.backends import RuntimeConfig
    from ernie_compress.runtime.decoding import OnnxDecoder
    from ernie_compress.stages.export import ExportConfig

    ckpt = load_checkpoint(quantized)
    config, tokenizer = ckpt.config, ckpt.tokenizer()
    scales = None
    if float_cache_export is not None:
        prompts = kv_cache.calibration_prompts(load_task(TaskSpec.from_dict(ckpt.task)), tokenizer,
                                               ckpt.max_seq_length, ExportConfig.kv_calibration_texts)
        decoder = OnnxDecoder.open(float_cache_export / decoder_onnx.DECODER_FILE, RuntimeConfig(threads=2),
                                   tokenizer.pad_id, host_cache=True)
        scales = kv_cache.calibrate(decoder, prompts, config.num_hidden_layers)
        del decoder
    weights = decoder_onnx.decoder_weights(config, ckpt.state, quantization_info(config), 4)
    fused, _ = decoder_onnx.attention_kernel(config, "onnxruntime", int8_cache=scales is not None)
    graph = decoder_onnx.build_decoder(config, weights, kv_scales=scales, fused_attention=fused)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    decoder_onnx.save_model(graph, staging / decoder_onnx.DECODER_FILE)
    (staging / "UNVERIFIED").write_text("built without export's check: random weights (see decoder_peers.py)\n")
    staging.rename(out)


def builder_input(ckpt: Path, scratch: Path) -> Path:
    """The checkpoint's config and weights (linked), with a tokenizer transformers loads without
    sentencepiece (the reference venv has none, and transformers 5 cannot convert ``tokenizer.model``
    without it): a BertTokenizer over the sentencepiece pieces. The builder only copies the tokenizer
    into its output; the timings feed token ids."""
    from ernie_compress.data.sp_tokenizer import SentencePieceTokenizer

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for item in ckpt.iterdir():
        if item.suffix in (".safetensors", ".json") and not item.name.startswith("tokenizer"):
            os.symlink(item, scratch / item.name)
    pieces = SentencePieceTokenizer.from_dir(ckpt).vocab
    (scratch / "vocab.txt").write_text("\n".join(p.replace("\n", " ") for p in pieces) + "\n", encoding="utf-8")
    (scratch / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "unk_token": pieces[0], "do_lower_case": False}))
    return scratch


def build_peers(source: Path, work: Path, python: Path, wanted_names: set[str]) -> dict[str, Path]:
    folders = {}
    for number, (name, flags) in enumerate(PEERS.items()):
        if name not in wanted_names:
            continue
        out = folders[name] = work / f"og-{number}"
        if (out / "genai_config.json").exists():
            continue
        print(f"peer: {name} ...", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        run([python, "-m", "onnxruntime_genai.models.builder", "-i", source, "-o", out, "-e", "cpu",
             "-c", work / "og-cache", *flags], 7200)
    shutil.rmtree(work / "og-cache", ignore_errors=True)
    return folders


def model_files(folder: Path, ours: bool) -> list[Path]:
    base = folder / "onnx" if ours else folder
    return sorted(p for p in base.iterdir() if p.name.startswith("decoder.onnx" if ours else "model.onnx"))


def kv_bytes_per_token(graph_path: Path, head_dim: int) -> int:
    """Bytes the KV cache grows by per token (all layers, keys and values): from the graph's
    ``past_key_values.*`` inputs [batch, kv_heads, past, head_dim] and their element type (the builder
    leaves the last dimension symbolic, ``kv_cache_dim``: the checkpoint's head size then)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    total = 0
    for value in graph.input:
        if value.name.startswith("past_key_values."):
            t = value.type.tensor_type
            dims = [d.dim_value for d in t.shape.dim]
            if not dims[1]:
                sys.exit(f"{graph_path}: {value.name} has no fixed KV-head count")
            total += dims[1] * (dims[3] or head_dim) * helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", default="128,512", help="prompt lengths for time to first token")
    parser.add_argument("--batches", default="1,8", help="batch sizes for decode tokens/s")
    parser.add_argument("--decode-prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--preset", default="ernie45-0.3b")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--build-only", action="store_true", help="make the models in --workdir and stop (time them "
                        "later, on a quiet machine, with the same --workdir)")
    parser.add_argument("--variants", default=None, help="comma-separated keys of the variants to build and time "
                        f"(default: all): {', '.join(VARIANT_KEYS)}")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime

    from _tables import emit, median_interval

    python = genai_python()
    if not python.exists():
        sys.exit(f"{python} is missing: run tests/interop/make_reference_venvs.sh")
    og_version = run([python, "-c", "import onnxruntime_genai as og; print(og.__version__)"], 300).strip()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="decoder-peers-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = work / "ckpt"
        if not ckpt.exists():
            run([sys.executable, ROOT / "benchmarks" / "random_checkpoint.py", ckpt, "--preset", args.preset,
                 "--dtype", "float32"], 3600)
        config = json.loads((ckpt / "config.json").read_text())
        vocab = config["vocab_size"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        keys = list(VARIANT_KEYS) if args.variants is None else args.variants.split(",")
        unknown = [k for k in keys if k not in VARIANT_KEYS]
        if unknown:
            sys.exit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_KEYS)}")
        wanted = {VARIANT_KEYS[k] for k in keys}
        ours = build_ours(ckpt, work, wanted)
        peers = build_peers(builder_input(ckpt, work / "og-input"), work, python, wanted) if wanted & set(PEERS) else {}
        if args.build_only:
            print(f"built in {work}", file=sys.stderr)
            return {}
        variants = {**{n: ("ours", p) for n, p in ours.items()}, **{n: ("genai", p) for n, p in peers.items()}}
        info = {}
        for name, (kind, folder) in variants.items():
            files = model_files(folder, kind == "ours")
            info[name] = {"file_bytes": sum(f.stat().st_size for f in files),
                          "kv_bytes_per_token": kv_bytes_per_token(files[0], head_dim)}
        times: dict[str, list[dict]] = {name: [] for name in variants}
        worker = ROOT / "benchmarks" / "decoder_timing_worker.py"
        flags = ["--threads", args.threads, "--prompts", args.prompts, "--batches", args.batches,
                 "--decode-prompt", args.decode_prompt, "--new-tokens", args.new_tokens, "--vocab", vocab]
        for r in range(args.rounds):
            for name, (kind, folder) in variants.items():
                exe = sys.executable if kind == "ours" else python
                out = run([exe, worker, kind, folder, *flags], 1800)
                times[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    prompts, batches = args.prompts.split(","), args.batches.split(",")

    def series(name: str, key: str, at: str) -> list[float]:
        return [t[key][at] for t in times[name]]

    rows, result = [], {"preset": args.preset, "threads": args.threads, "rounds": args.rounds,
                        "new_tokens": args.new_tokens, "decode_prompt": args.decode_prompt,
                        "onnxruntime": onnxruntime.__version__, "onnxruntime_genai": og_version, "variants": {}}
    for name in variants:
        unchecked = variants[name][0] == "ours" and (variants[name][1] / "UNVERIFIED").exists()
        row = {"variant": name + (" (built without export's check: random weights)" if unchecked else ""),
               "file MB": f"{info[name]['file_bytes'] / 1e6:.0f}",
               "KV bytes / token": f"{info[name]['kv_bytes_per_token']:,}"}
        for p in prompts:
            row[f"TTFT ms (prompt {p})"] = median_interval(series(name, "ttft_ms", p), 0)
        for b in batches:
            row[f"decode tok/s (batch {b})"] = median_interval(series(name, "decode_tokens_per_s", b), 1)
        row["peak RSS MiB"] = f"{statistics.median(t['peak_rss_mib'] for t in times[name]):.0f}"
        rows.append(row)
        result["variants"][name] = {**info[name], "runs": times[name]}
    ratios: dict = {}
    for ours_name, tag in ((OURS_W4, "w4"), (OURS_W4_H4, "w4_int4_head")):
        if ours_name not in variants or PEER_INT4 not in variants:
            continue
        ratios[f"{tag}_file_vs_peer_int4"] = info[ours_name]["file_bytes"] / info[PEER_INT4]["file_bytes"]
        for b in batches:
            ratios[f"{tag}_decode_vs_peer_int4_batch{b}"] = _ratio(series(ours_name, "decode_tokens_per_s", b),
                                                                   series(PEER_INT4, "decode_tokens_per_s", b))
        for p in prompts:
            ratios[f"{tag}_ttft_vs_peer_int4_prompt{p}"] = _ratio(series(ours_name, "ttft_ms", p),
                                                                  series(PEER_INT4, "ttft_ms", p))
            if PEER_PRUNED in variants:
                ratios[f"{tag}_ttft_vs_peer_pruned_prompt{p}"] = _ratio(series(ours_name, "ttft_ms", p),
                                                                        series(PEER_PRUNED, "ttft_ms", p))
    if OURS_FP32 in variants and OURS_W8A8 in variants:
        for p in prompts:
            ratios[f"w8a8_ttft_vs_ours_fp32_prompt{p}"] = _ratio(series(OURS_FP32, "ttft_ms", p),
                                                                 series(OURS_W8A8, "ttft_ms", p))  # > 1: W8A8 faster
    result["ratios"] = ratios
    title = (f"Decoder exports, {args.preset} (random weights, FP32 checkpoint), ours vs onnxruntime-genai "
             f"{og_version}'s model builder, ONNX Runtime {onnxruntime.__version__} CPU, {args.threads} threads; "
             f"TTFT = prefill + first pick; decode = {args.new_tokens} greedy steps after a {args.decode_prompt}-token "
             f"prompt per row; median (min-max) of {args.rounds} interleaved rounds, a fresh process per variant "
             f"and round. Ours W4 against the builder's INT4 (its defaults, or as named), per-round ratio medians "
             f"(file and TTFT: < 1 is ours smaller/faster; decode: > 1 is ours faster; w8a8_ttft_vs_ours_fp32: "
             f"FP32's TTFT / W8A8's, > 1 is W8A8 faster): "
             + ", ".join(f"{k} {v['median'] if isinstance(v, dict) else v:.2f}" for k, v in ratios.items()))
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads,
         summary={k: v for k, v in result.items() if k != "variants"})
    return result


def _ratio(ours: list[float], peer: list[float]) -> dict:
    """Per-round ratios (the rounds ran both in turn), median and range."""
    per_round = [o / p for o, p in zip(ours, peer)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


if __name__ == "__main__":
    main()
