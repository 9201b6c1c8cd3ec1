"""A model bigger than this machine's memory, end to end (issue #30's headline): a random-weight ERNIE 4.5
checkpoint at a published layer shape, larger than the machine's RAM, quantized to W4 GPTQ layer by layer
(codes stored), exported layer by layer to ONNX and run.

    python benchmarks/bigger_than_memory.py [--preset ernie45-21b-a3b] [--layers 21] [--dtype bfloat16]
        [--calib-samples 64] [--max-new-tokens 16] [--workdir /tmp] [--json ...] [--markdown ...]

Steps, each a fresh CLI process measured as ``memory.py`` measures (``wait4``'s ru_maxrss of the command,
spawned from a small fresh interpreter; wall time):

1. ``random_checkpoint.py`` writes the checkpoint shard by shard (its size on disk against ``MemTotal``);
2. ``quantize --weight-only int4 --method gptq --stream --store codes`` on ``--calib-samples`` short
   demo-corpus texts (``memory.write_task``); the report says how many experts had enough calibration
   tokens for GPTQ and how many were rounded to nearest;
3. the input checkpoint is removed (the disk holds both only during step 2);
4. ``export --format onnx --stream --weight-only-compute fp32`` of the W4 checkpoint (verified against the
   streamed NumPy reference; fp32 compute, since int8 compute's error on deep random-weight decoders passes
   the export's bound: ``--compute``);
5. ``generate`` on the export: time to first token and decode tokens/s of a few prompts.

Before step 1 the free disk is checked against the checkpoint plus the W4 output (the export reuses the
input's space). A step that fails is recorded with its last error line and the later steps are skipped.
Everything written is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 2**30


def mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    from memory import run_measured, write_task
    from random_checkpoint import DTYPES, checkpoint_config, tensor_plan

    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-21b-a3b", help="the layer shape (an ernie45-* preset)")
    parser.add_argument("--layers", type=int, default=21, help="decoder layers (21 of 21B-A3B's: 30 GiB in BF16)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--calib-samples", type=int, default=64, help="GPTQ calibration texts")
    parser.add_argument("--group-size", type=int, default=32, help="INT4 group size")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generate: tokens per prompt")
    parser.add_argument("--compute", default="fp32", help=(
        "export --weight-only-compute (default fp32: int8 compute's logit error on deep random-weight decoders "
        "passes the export's 2%% bound, docs/benchmarks.md)"))
    parser.add_argument("--timeout-s", type=float, default=4 * 3600, help="kill a step that runs longer")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="kill a step whose resident memory passes this")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bigger-than-memory.json")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--keep-export", type=Path, default=None,
                        help="move the export (and the task texts, DIR/data) here instead of removing it")
    parser.add_argument("--evaluate", type=Path, default=None, help=(
        "only measure `evaluate` of an export kept with --keep-export and add it to the --json result of the "
        "run that made it"))
    args = parser.parse_args(argv)
    if args.evaluate:
        return _evaluate_kept(args, run_measured)

    config = checkpoint_config(args.preset, layers=args.layers)
    weights = sum(int(np.prod(t.shape)) for t in tensor_plan(config)[1]) * DTYPES[args.dtype][1]
    memory = mem_total_bytes()
    w4_estimate = weights / DTYPES[args.dtype][1] * (0.5 + 4 / 32) + 2 * GIB  # codes, scales, float embedding
    args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    if weights + w4_estimate > free:
        sys.exit(f"{args.workdir}: {free / GIB:.1f} GiB free, the checkpoint and its W4 copy need about "
                 f"{(weights + w4_estimate) / GIB:.1f} GiB")
    base = Path(tempfile.mkdtemp(prefix="bigger-than-memory-", dir=args.workdir))
    ckpt, w4, export = base / "checkpoint", base / "w4", base / "export"
    data = write_task(base / "data", {"train": args.calib_samples, "dev": 8, "test": 8})
    cli = [sys.executable, "-m", "ernie_compress", "--quiet", "--json"]
    steps = [
        ("write", [sys.executable, str(ROOT / "benchmarks" / "random_checkpoint.py"), str(ckpt), "--preset",
                   args.preset, "--layers", str(args.layers), "--dtype", args.dtype], ckpt),
        ("quantize", [*cli, "quantize", str(ckpt), "--weight-only", "int4", "--method", "gptq", "--stream",
                      "--group-size", str(args.group_size), "--store", "codes", "--calib-samples", str(args.calib_samples), "--task", "lm", "--data",
                      str(data), "--out", str(w4)], w4),
        ("export", [*cli, "export", str(w4), "--format", "onnx", "--stream", "--weight-only-compute",
                    args.compute, "--out", str(export)], export),
        ("generate", [*cli, "generate", str(export), "--prompts", str(data / "test.txt"), "--max-new-tokens",
                      str(args.max_new_tokens), "--no-stream"], None),
    ]
    rows, failed = [], None

    def result() -> dict:
        return {"preset": args.preset, "layers": args.layers, "dtype": args.dtype, "checkpoint_gib": weights / GIB,
                "mem_total_gib": memory / GIB, "checkpoint_vs_memory": weights / memory,
                "calib_samples": args.calib_samples,
                "steps": rows + [{"step": name, "status": "not run (the run was stopped)"}
                                 for name, _, _ in steps[len(rows):]],
                "load_average": os.getloadavg()}

    try:
        for name, cmd, output in steps:
            row = {"step": name, "argv": cmd[1:]}
            if failed:
                rows.append(dict(row, status="skipped", error=f"{failed} failed"))
                continue
            got = run_measured(cmd, cwd=ROOT, limit_bytes=int(args.max_rss_gib * GIB), timeout_s=args.timeout_s)
            row.update(status="ok" if got.returncode == 0 else "failed", peak_rss_gib=got.peak_rss_bytes / GIB,
                       wall_s=got.wall_s, error=got.error)
            if output is not None and output.exists():
                row["output_gib"] = folder_bytes(output) / GIB
            if got.returncode == 0 and name in ("quantize", "generate"):
                row["result"] = json.loads(got.stdout.strip().splitlines()[-1])
            rows.append(row)
            _emit(result(), args, quiet=True)  # each step on record as soon as it is done
            print(f"{name}: {row['status']} {row['peak_rss_gib']:.2f} GiB {row['wall_s']:.0f} s "
                  f"{row.get('output_gib', 0):.2f} GiB written {row.get('error') or ''}", file=sys.stderr, flush=True)
            if got.returncode:
                failed = name
            if name == "quantize":
                shutil.rmtree(ckpt, ignore_errors=True)  # step 3: the export reads the W4 checkpoint only
        if args.keep_export and not failed:
            args.keep_export.mkdir(parents=True)
            shutil.move(str(export), str(args.keep_export / "export"))
            shutil.move(str(data), str(args.keep_export / "data"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    _emit(result(), args)
    return result()


def _evaluate_kept(args, run_measured) -> dict:
    """``evaluate`` of a kept export on its task texts (perplexity through the KV-cache decoder, and the
    generation timing), measured, as one more step of the saved result."""
    result = json.loads(args.json.read_text())
    cmd = [sys.executable, "-m", "ernie_compress", "--quiet", "--json", "evaluate", str(args.evaluate / "export"),
           "--task", "lm", "--data", str(args.evaluate / "data")]
    got = run_measured(cmd, cwd=ROOT, limit_bytes=int(args.max_rss_gib * GIB), timeout_s=args.timeout_s)
    row = {"step": "evaluate", "argv": cmd[1:], "status": "ok" if got.returncode == 0 else "failed",
           "peak_rss_gib": got.peak_rss_bytes / GIB, "wall_s": got.wall_s, "error": got.error}
    if got.returncode == 0:
        row["result"] = json.loads(got.stdout.strip().splitlines()[-1])
    result["steps"] = [r for r in result["steps"] if r["step"] != "evaluate"] + [row]
    _emit(result, args)
    return result


def _summary(row: dict) -> str:
    """What a step's own result says: GPTQ's rounding record, or the generation speed."""
    result = row.get("result") or {}
    if row["step"] == "quantize":
        rounding = result.get("scheme", {}).get("rounding", {})
        return "; ".join(f"{how}: {c['linears']} Linears ({c['experts']} routed experts)" for how, c in rounding.items())
    if row["step"] == "evaluate":
        metrics = result.get("metrics", {})
        gen = result.get("generation") or {}
        parts = [f"perplexity {metrics['perplexity']:.1f} (random weights)"] if "perplexity" in metrics else []
        parts += [f"TTFT {t['ttft_ms']['median']:.0f} ms at prompt {t['prompt_tokens']}"
                  for t in gen.get("time_to_first_token", []) if isinstance(t.get("ttft_ms"), dict)]
        parts += [f"decode {d['tokens_per_s']} tokens/s at batch {d['batch_size']}" for d in gen.get("decode", [])]
        return ", ".join(parts)
    if row["step"] == "generate":
        runs = result.get("results", [])
        ttft = sorted(r["time_to_first_token_ms"] for r in runs)
        decode = sorted(r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"])
        if ttft and decode:
            return (f"{len(runs)} prompts: TTFT median {ttft[len(ttft) // 2]:.0f} ms, decode median "
                    f"{decode[len(decode) // 2]:.1f} tokens/s")
    return ""


def _emit(result: dict, args, quiet: bool = False) -> None:
    """The table and JSON result (``quiet``: written to --json / --markdown only, as each step ends)."""
    import contextlib
    import io

    from _tables import emit

    rows = [{"step": r["step"], "peak RSS GiB": f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "–",
             "wall s": f"{r['wall_s']:.0f}" if "wall_s" in r else "–",
             "written GiB": f"{r['output_gib']:.2f}" if "output_gib" in r else "–",
             "result": r["status"] + (f": {r['error']}" if r.get("error") else "")
             + (f" ({s})" if (s := _summary(r)) else "")} for r in result["steps"]]
    title = (f"A random-weight {result['preset']}-shaped checkpoint of {result['layers']} layers in {result['dtype']}: "
             f"{result['checkpoint_gib']:.1f} GiB, {result['checkpoint_vs_memory']:.2f}x this machine's memory "
             f"({result['mem_total_gib']:.1f} GiB), through the CLI: W4 GPTQ streamed with its codes stored "
             f"({result['calib_samples']} calibration texts), streamed ONNX export, generation; load average "
             f"{result['load_average'][0]:.1f} at the end")
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown)


if __name__ == "__main__":
    main()
