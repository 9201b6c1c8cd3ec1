"""Expert pruning of an ERNIE 4.5 MoE model trained on demo:lm: ``prune --experts R`` scored by REAP
(Lasby et al. 2025) against routing frequency, held-out (test split) perplexity of the parent, of the
pruned model before recovery and after it (``--recover-epochs`` of fine-tuning with KD from the parent,
the stage's default), with total and active parameters. Everything runs through the CLI:

    python benchmarks/moe_pruning.py --checkpoint DIR [--experts 0.25] [--recover-epochs 1]
        [--workdir runs/moe-pruning] [--markdown benchmarks/results/moe-pruning.md] [--json out.json]

The issue's targets: REAP at most 3% above the parent after recovery, and below frequency.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import cli  # noqa: E402

METHODS = ("reap", "frequency")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an ERNIE 4.5 MoE checkpoint trained on demo:lm")
    parser.add_argument("--experts", default="0.25", help="fraction of routed experts removed per MoE layer")
    parser.add_argument("--recover-epochs", default="1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("runs/moe-pruning"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import emit

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = {m: cli("prune", str(args.checkpoint.resolve()), "--experts", args.experts, "--importance", m,
                   "--recover-epochs", args.recover_epochs, "--no-latency", "--threads", str(args.threads),
                   "--out", str(work / m), "--overwrite") for m in METHODS}
    first = runs[METHODS[0]]
    parent = first["accuracy"]["parent"]["perplexity"]
    before = first["parameters_before"]
    rows = [{"variant": "parent", "experts per MoE layer": str(max(first["experts"]["experts_before"])),
             "total params": f"{before['total']:,}", "active params": f"{before['active']:,}",
             "perplexity before recovery": f"{parent:.4f}", "perplexity after recovery": "", "vs parent": ""}]
    result = {"checkpoint": str(args.checkpoint), "experts": args.experts, "parent_perplexity": parent, "methods": {}}
    for method, run in runs.items():
        acc, after = run["accuracy"], run["parameters_after"]
        final = acc["after_recovery"]["perplexity"]
        result["methods"][method] = {"before_recovery": acc["before_recovery"]["perplexity"], "after_recovery": final,
                                     "relative": final / parent - 1, "parameters": after, "experts": run["experts"]}
        rows.append({"variant": f"{method}, --experts {args.experts}",
                     "experts per MoE layer": str(max(run["experts"]["experts_after"])),
                     "total params": f"{after['total']:,}", "active params": f"{after['active']:,}",
                     "perplexity before recovery": f"{acc['before_recovery']['perplexity']:.4f}",
                     "perplexity after recovery": f"{final:.4f}", "vs parent": f"{100 * (final / parent - 1):+.2f}%"})
    moe_k = first["experts"]["moe_k"]
    title = (f"Expert pruning of `{args.checkpoint.name}` (demo:lm test split): {args.experts} of the routed experts "
             f"removed from every MoE layer, scored on {first['experts']['importance_samples']} training examples, "
             f"then {args.recover_epochs} recovery epoch(s) with KD from the parent; moe_k "
             f"{'clamped to ' + str(moe_k['after']) if moe_k['clamped'] else 'kept at ' + str(moe_k['after'])}")
    summary = {m: {k: v for k, v in r.items() if k in ("after_recovery", "relative")}
               for m, r in result["methods"].items()}
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads,
         summary=summary)
    return result


if __name__ == "__main__":
    main()
