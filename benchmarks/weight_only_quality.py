"""What weight-only quantization costs a small ERNIE 4.5 decoder trained on demo:lm: held-out
perplexity of W8 and W4 (RTN, GPTQ and AWQ, two group sizes) against the FP32 parent, and whether each
export's decoder (``onnx/decoder.onnx``, MatMulNBits, default int8 compute) generates the
checkpoint's greedy text. Everything runs through the CLI, as a user would:

    python benchmarks/weight_only_quality.py [--preset ernie45-mini] [--epochs 3] [--lr 3e-3] [--workdir runs/weight-only]
        [--checkpoint DIR] [--variants w8-rtn,w4-g32-gptq,...] [--markdown benchmarks/results/weight-only-quality.md]

``--checkpoint`` takes an FP32 causal LM trained on demo:lm instead of training one (e.g. the
mixture of experts ``ernie45-moe-demo``: its experts are 96 wide, so groups of 64 do not fit and
``--variants w8-rtn,w8-gptq,w4-g32-rtn,w4-g32-gptq`` is the set that does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import cli, cli_or_refusal  # noqa: E402

VARIANTS = (("W8, RTN", ["int8", "--method", "rtn"]), ("W8, GPTQ", ["int8", "--method", "gptq"]),
            ("W4 g32, RTN", ["int4", "--group-size", "32", "--method", "rtn"]),
            ("W4 g32, GPTQ", ["int4", "--group-size", "32", "--method", "gptq"]),
            ("W4 g32, AWQ", ["int4", "--group-size", "32", "--method", "awq"]),
            ("W4 g64, RTN", ["int4", "--group-size", "64", "--method", "rtn"]),
            ("W4 g64, GPTQ", ["int4", "--group-size", "64", "--method", "gptq"]),
            ("W4 g64, AWQ", ["int4", "--group-size", "64", "--method", "awq"]),
            ("W4 g32, RTN, int4 head", ["int4", "--group-size", "32", "--method", "rtn", "--head", "int4"]),
            ("W4 g32, GPTQ, int4 head", ["int4", "--group-size", "32", "--method", "gptq", "--head", "int4"]))


def _why(refusal: str) -> str:
    """The measured part of the export's refusal ("... max logit difference 3.4% of the logit scale (most 2%)")."""
    return refusal[refusal.find("max logit"):refusal.find(";", refusal.find("max logit"))] or refusal


def _slug(name: str) -> str:
    return name.lower().replace(", ", "-").replace(" ", "-")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-mini")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--lr", default="3e-3", help="learning rate of the FP32 training (from scratch)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/weight-only"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="an FP32 demo:lm checkpoint (skips training)")
    parser.add_argument("--variants", default="all", help="comma-separated slugs: " + ", ".join(
        _slug(name) for name, _ in VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import emit

    chosen = [(n, o) for n, o in VARIANTS if args.variants == "all" or _slug(n) in args.variants.split(",")]
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    fp32 = args.checkpoint.resolve() if args.checkpoint else work / "fp32"
    if args.checkpoint:
        base = cli("evaluate", str(fp32), "--threads", str(args.threads))["metrics"]["perplexity"]
        trained_as = f"`{fp32.name}` ({cli('info', str(fp32))['architecture']})"
    else:
        trained = cli("train", "--task", "demo:lm", "--preset", args.preset, "--epochs", args.epochs, "--lr", args.lr,
                      "--out", str(fp32), "--overwrite", "--threads", str(args.threads))
        base = trained["metrics"]["test"]["perplexity"]
        trained_as = f"`{args.preset}` trained {args.epochs} epoch(s) on demo:lm (lr {args.lr})"
    rows = [{"variant": "FP32", "perplexity": f"{base:.4f}", "vs FP32": "", "decoder kernels": "float MatMul",
             "export greedy text = checkpoint's": "", "teacher-forced picks equal": ""}]
    result = {"preset": args.preset, "epochs": args.epochs, "lr": args.lr, "checkpoint": str(args.checkpoint or ""),
              "fp32_perplexity": base, "variants": {}}
    for name, options in chosen:
        slug = _slug(name)
        q = cli("quantize", str(fp32), "--weight-only", *options, "--out", str(work / slug), "--overwrite",
                "--threads", str(args.threads))
        ppl = q["metrics"]["test"]["perplexity"]
        export = ("export", str(work / slug), "--format", "onnx", "--out", str(work / f"{slug}-export"), "--overwrite",
                  "--threads", str(args.threads))
        e, refused = cli_or_refusal(*export)
        if refused:  # the default int8 compute failed verification: the exact fp32 compute, and say so
            e = cli(*export, "--weight-only-compute", "fp32")
        check, kernels = e["verification"]["decoder"], e["files"]["decoder"]["kernels"]
        result["variants"][name] = {"int8_compute_refused": refused, "perplexity": ppl, "relative": ppl / base - 1, "decoder": check, "kernels": kernels}
        rows.append({"variant": name, "perplexity": f"{ppl:.4f}", "vs FP32": f"{100 * (ppl / base - 1):+.2f}%",
                     "decoder kernels": ", ".join(f"{n} {op}" for op, n in kernels.items()
                                                  if n and op in ("MatMulNBits", "QMoE")),
                     "export greedy text = checkpoint's": ("yes" if check["greedy_tokens_equal"] else "no") + (
                         f" (fp32 compute; int8 compute refused: {_why(refused)})" if refused else ""),
                     "teacher-forced picks equal": f"{check['teacher_forced_agreement']:.0%}"})
    title = (f"Weight-only quantization of {trained_as}: held-out "
             f"perplexity against the FP32 parent (the LM head int8 per vocabulary entry, or int4 in groups of 32 "
             f"where the row says int4 head: quantize --head int4), and "
             f"the export's decoder (int8 compute) against the checkpoint on "
             f"{check['prompts']} held-out prompts x {check['new_tokens']} greedy tokens")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
