"""What weight-only quantization costs a small ERNIE 4.5 decoder trained on demo:lm: held-out
perplexity of W8 and W4 (RTN and GPTQ, two group sizes) against the FP32 parent, and whether each
export's decoder (``onnx/decoder.onnx``, MatMulNBits, default int8 compute) generates the
checkpoint's greedy text. Everything runs through the CLI, as a user would:

    python benchmarks/weight_only_quality.py [--preset ernie45-mini] [--epochs 3] [--lr 3e-3] [--workdir runs/weight-only]
        [--markdown benchmarks/results/weight-only-quality.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (("W8, RTN", ["int8", "--method", "rtn"]), ("W8, GPTQ", ["int8", "--method", "gptq"]),
            ("W4 g32, RTN", ["int4", "--group-size", "32", "--method", "rtn"]),
            ("W4 g32, GPTQ", ["int4", "--group-size", "32", "--method", "gptq"]),
            ("W4 g64, RTN", ["int4", "--group-size", "64", "--method", "rtn"]),
            ("W4 g64, GPTQ", ["int4", "--group-size", "64", "--method", "gptq"]))


def cli(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ernie_compress", "--quiet", "--json", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"ernie-compress {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-mini")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--lr", default="3e-3", help="learning rate of the FP32 training (from scratch)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/weight-only"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import markdown

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32"
    trained = cli("train", "--task", "demo:lm", "--preset", args.preset, "--epochs", args.epochs, "--lr", args.lr,
                  "--out", str(fp32), "--overwrite", "--threads", str(args.threads))
    base = trained["metrics"]["test"]["perplexity"]
    rows = [{"variant": "FP32", "perplexity": f"{base:.4f}", "vs FP32": "", "decoder kernels": "float MatMul",
             "export greedy text = checkpoint's": "", "teacher-forced picks equal": ""}]
    result = {"preset": args.preset, "epochs": args.epochs, "lr": args.lr, "fp32_perplexity": base, "variants": {}}
    for name, options in VARIANTS:
        slug = name.lower().replace(", ", "-").replace(" ", "-")
        q = cli("quantize", str(fp32), "--weight-only", *options, "--out", str(work / slug), "--overwrite",
                "--threads", str(args.threads))
        ppl = q["metrics"]["test"]["perplexity"]
        e = cli("export", str(work / slug), "--format", "onnx", "--out", str(work / f"{slug}-export"), "--overwrite",
                "--threads", str(args.threads))
        check, kernels = e["verification"]["decoder"], e["files"]["decoder"]["kernels"]
        result["variants"][name] = {"perplexity": ppl, "relative": ppl / base - 1, "decoder": check, "kernels": kernels}
        rows.append({"variant": name, "perplexity": f"{ppl:.4f}", "vs FP32": f"{100 * (ppl / base - 1):+.2f}%",
                     "decoder kernels": f"{kernels['MatMulNBits']} MatMulNBits",
                     "export greedy text = checkpoint's": "yes" if check["greedy_tokens_equal"] else "no",
                     "teacher-forced picks equal": f"{check['teacher_forced_agreement']:.0%}"})
    title = (f"Weight-only quantization of `{args.preset}` trained {args.epochs} epoch(s) on demo:lm (lr {args.lr}): held-out "
             f"perplexity against the FP32 parent (the LM head int8 per vocabulary entry in every variant), and "
             f"the export's decoder (int8 compute) against the checkpoint on "
             f"{check['prompts']} held-out prompts x {check['new_tokens']} greedy tokens")
    table = markdown(title, rows, list(rows[0]), threads=args.threads)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
