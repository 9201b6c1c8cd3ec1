"""What the int8 KV cache (``export --kv-cache int8``) and int8 activations (``quantize --w8a8``) cost a small
ERNIE 4.5 decoder trained on demo:lm: held-out perplexity through the exported decoder with the float32
cache and with the int8 cache, for the FP32 checkpoint, weight-only W8 and W4 (GPTQ, AWQ) and W8A8 (RTN,
SmoothQuant) and INT8 PTQ (static activation scales), and KV-cache bytes per token. Everything runs through the CLI, as a user would:

    python benchmarks/kv_cache_quality.py [--preset ernie45-mini] [--epochs 3] [--lr 3e-3] [--workdir runs/kv-cache]
        [--checkpoint DIR] [--markdown benchmarks/results/kv-cache-quality.md] [--json out.json]

Both caches are scored the same way: ``evaluate --score-with decoder`` feeds each held-out text one
token at a time through ``onnx/decoder.onnx`` and its cache (teacher forcing), so the only difference
between the two columns of a row is the cache; the int8 export's own verification (teacher-forced
next-token picks against dygraph on held-out prompts) is shown beside it. ``--checkpoint`` takes an FP32
causal LM trained on demo:lm instead of training one; the one trained in ``--workdir`` is kept and reused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import cli, cli_or_refusal  # noqa: E402

VARIANTS = (("FP32", None), ("W8, RTN", ["--weight-only", "int8", "--method", "rtn"]),
            ("W4 g32, GPTQ", ["--weight-only", "int4", "--group-size", "32", "--method", "gptq"]),
            ("W4 g32, AWQ", ["--weight-only", "int4", "--group-size", "32", "--method", "awq"]),
            ("W8A8, RTN", ["--w8a8", "rtn"]), ("W8A8, SmoothQuant", ["--w8a8", "smoothquant"]),
            ("INT8 PTQ (static activation scales)", ["--ptq", "int8"]))
TIMING = ["--batch-sizes", "1", "--iterations", "1", "--warmup", "0", "--prompt-lengths", "8",
          "--decode-batch-sizes", "1", "--new-tokens", "2"]  # evaluate's timings are not what is measured here


def kv_bytes_per_token(export: dict, itemsize: int) -> int:
    """Bytes the cache grows by per token: keys and values of every layer, kv heads x head size each."""
    decoder = export["files"]["decoder"]
    return 2 * decoder["layers"] * decoder["kv_heads"] * decoder["head_dim"] * itemsize


def _export(ckpt: Path, out: Path, kv: str, reuse: bool, threads: list[str]) -> tuple[dict | None, str | None]:
    """The export's result (its manifest where ``reuse`` finds one), or its one-line refusal."""
    manifest = out / "manifest.json"
    if reuse and manifest.is_file():
        return json.loads(manifest.read_text()), None
    return cli_or_refusal("export", str(ckpt), "--format", "decoder", "--kv-cache", kv, "--out", str(out),
                          "--overwrite", *threads)


def _scored(export: Path, reuse: bool, threads: list[str]) -> dict:
    """evaluate --score-with decoder's metrics (kept beside the export, and reused with ``reuse``)."""
    kept = export.parent / f"{export.name}.metrics.json"
    if reuse and kept.is_file():
        return json.loads(kept.read_text())
    metrics = cli("evaluate", str(export), "--score-with", "decoder", *TIMING, *threads)["metrics"]
    kept.write_text(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-mini")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--lr", default="3e-3", help="learning rate of the FP32 training (from scratch)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/kv-cache"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="an FP32 demo:lm checkpoint (skips training)")
    parser.add_argument("--reuse", action="store_true", help="keep the checkpoints, exports and scores already in "
                        "--workdir (a run that stopped part way)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import emit

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)]
    fp32 = args.checkpoint.resolve() if args.checkpoint else work / "fp32"
    if args.checkpoint:
        trained_as = f"`{fp32.name}` ({cli('info', str(fp32))['architecture']})"
    else:
        if not (fp32 / "config.json").is_file():  # trained once per --workdir (the same arguments give the same model)
            cli("train", "--task", "demo:lm", "--preset", args.preset, "--epochs", args.epochs, "--lr", args.lr,
                "--out", str(fp32), "--overwrite", *threads)
        trained_as = f"`{args.preset}` trained {args.epochs} epoch(s) on demo:lm (lr {args.lr})"
    rows, result = [], {"preset": args.preset, "epochs": args.epochs, "lr": args.lr, "variants": {}}
    reference = None
    for name, options in VARIANTS:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        ckpt = fp32
        if options is not None:
            ckpt = work / slug
            if not (args.reuse and (ckpt / "config.json").is_file()):
                cli("quantize", str(fp32), *options, "--out", str(ckpt), "--overwrite", *threads)
        exports, scored, refused = {}, {}, None
        for kv in ("float32", "int8"):
            exports[kv], refused = _export(ckpt, work / f"{slug}-kv-{kv}", kv, args.reuse, threads)
            if refused:
                break
            scored[kv] = _scored(work / f"{slug}-kv-{kv}", args.reuse, threads)
        if refused and "float32" not in scored:  # the export refuses this variant: say why, in its row
            result["variants"][name] = {"refused": refused}
            rows.append({"variant": name, "perplexity, float32 cache": f"export refused: {refused}"})
            continue
        if refused:  # the float cache exports, the int8 cache is refused: the float row and the reason
            base = scored["float32"]["perplexity"]
            result["variants"][name] = {"perplexity": scored, "int8_cache_refused": refused}
            rows.append({"variant": name, "perplexity, float32 cache": f"{base:.4f}",
                         "vs FP32": f"{100 * (base / reference - 1):+.2f}%",
                         "perplexity, int8 cache": f"export refused: {refused}"})
            continue
        base, got = scored["float32"]["perplexity"], scored["int8"]["perplexity"]
        reference = reference or base  # the FP32 row's, float32 cache
        check = exports["int8"]["verification"]["decoder"]
        result["variants"][name] = {"perplexity": scored, "relative": got / base - 1, "int8_verification": check,
                                    "calibration": exports["int8"]["files"]["decoder"]["kv_cache"]}
        rows.append({"variant": name, "perplexity, float32 cache": f"{base:.4f}",
                     "vs FP32": f"{100 * (base / reference - 1):+.2f}%" if name != "FP32" else "",
                     "perplexity, int8 cache": f"{got:.4f}", "int8 vs float32 cache": f"{100 * (got / base - 1):+.2f}%",
                     "teacher-forced picks vs dygraph (int8 cache)": f"{check['teacher_forced_agreement']:.1%}",
                     "max logit diff / scale": f"{check['max_relative_diff']:.2%}",
                     "KV bytes / token (float32 -> int8)": f"{kv_bytes_per_token(exports['float32'], 4):,} -> "
                                                           f"{kv_bytes_per_token(exports['int8'], 1):,}"})
        tokens, calibration = scored["int8"]["tokens"], exports["int8"]["files"]["decoder"]["kv_cache"]["calibrated_on"]
    title = (f"The int8 KV cache on {trained_as}: held-out perplexity ({tokens:,} tokens) through the exported "
             f"decoder, fed one token at a time through its cache (evaluate --score-with decoder), with the "
             f"float32 cache and with the int8 cache (static per-channel scales, calibrated on {calibration}); "
             f"the weight-only rows run their integer kernels (int8 compute), the W8A8 rows DynamicQuantizeMatMul, PTQ MatMulIntegerToFloat")
    rows = [{column: row.get(column, "") for column in rows[0]} for row in rows]  # a refused row: its reason only
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
