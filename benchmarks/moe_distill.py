"""What distillation from a mixture-of-experts teacher gives a small dense ERNIE 4.5: an
``ernie45-moe-demo`` teacher trained on demo:lm (or ``--teacher DIR``), ``distill`` into a dense
preset, and the same preset trained on demo:lm without KD for the same steps (same epochs, learning
rate, batch and seed); held-out (test split) perplexity of all three, with total and active
parameters. Everything runs through the CLI, as a user would:

    python benchmarks/moe_distill.py [--teacher DIR] [--student ernie45-mini] [--epochs 3] [--lr 3e-3]
        [--teacher-epochs 3] [--hidden-weight 1] [--kd-temperatures 1,2] [--max-steps N] [--workdir runs/moe-distill]
        [--markdown benchmarks/results/moe-distill.md] [--json out.json]

The default student is ``ernie45-mini`` (2 layers, width 64, 8 query heads on 2 KV heads): 1/7 of the
teacher's active and 1/14 of its total non-embedding parameters, so the student is a real "small
model" rather than the teacher's active path made dense (``ernie45-demo`` has as many non-embedding
parameters as the teacher activates per token); its width differs from the teacher's 128, so the
hidden-state loss goes through the learned projection; and it is the student of the dense ERNIE 4.5
demo chain (``recipes/ernie45-demo.yaml``), so the two distillations can be compared. ``--max-steps``
caps every training (a quick check that the script runs; the numbers then mean little).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import cli  # noqa: E402


def _teacher(args, work: Path, common: list[str]) -> tuple[Path, dict | None]:
    """The teacher checkpoint: ``--teacher``, or ernie45-moe-demo trained on demo:lm here."""
    if args.teacher:
        return args.teacher.resolve(), None
    out = work / "teacher"
    trained = cli("train", "--task", "demo:lm", "--preset", "ernie45-moe-demo", "--epochs", str(args.teacher_epochs),
                  "--lr", str(args.teacher_lr), "--out", str(out), *common)
    return out, trained


def _row(model: str, how: str, parameters: dict, perplexity: float, teacher_perplexity: float) -> dict:
    return {"model": model, "trained": how, "total params": f"{parameters['total']:,}",
            "active params": f"{parameters.get('active', parameters['total']):,}",
            "non-embedding": f"{parameters['non_embedding']:,}", "test perplexity": f"{perplexity:.3f}",
            "vs teacher": f"{perplexity / teacher_perplexity - 1:+.1%}"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None, help="an ERNIE 4.5 MoE checkpoint trained on demo:lm")
    parser.add_argument("--student", default="ernie45-mini", help="a dense ERNIE 4.5 preset")
    parser.add_argument("--epochs", type=int, default=3, help="of the distillation and of the no-KD training")
    parser.add_argument("--lr", type=float, default=3e-3, help="of the distillation and of the no-KD training")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="distill's hidden-state loss weight")
    parser.add_argument("--kd-temperatures", default="1,2",
                        help="one distillation per KD temperature (1: distill's default for causal LMs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every training (a quick check)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("runs/moe-distill"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import emit

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--overwrite"]
    cap = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    teacher, trained = _teacher(args, work, common + cap)
    temperatures = [float(t) for t in args.kd_temperatures.split(",")]
    runs = {t: cli("distill", "--teacher", str(teacher), "--student", args.student, "--epochs", str(args.epochs),
                   "--lr", str(args.lr), "--hidden-weight", str(args.hidden_weight), "--kd-temperature", str(t),
                   "--no-latency", "--out", str(work / f"distilled-T{t:g}"), *common, *cap) for t in temperatures}
    distilled = runs[temperatures[0]]
    steps = distilled["steps"]  # the no-KD training: the same epochs (learning-rate schedule) and steps
    plain = cli("train", "--task", "demo:lm", "--preset", args.student, "--epochs", str(args.epochs),
                "--lr", str(args.lr), "--out", str(work / "no-kd"), *common, "--max-steps", str(steps))
    if plain["steps"] != steps:
        sys.exit(f"the no-KD training ran {plain['steps']} steps, the distillation {steps}")
    t_ppl = distilled["teacher_metrics"]["perplexity"]
    s_ppl = {t: run["student_metrics"]["perplexity"] for t, run in runs.items()}
    p_ppl = plain["metrics"]["test"]["perplexity"]
    params = distilled["parameters"]
    rows = [_row("ernie45-moe-demo" if not args.teacher else str(args.teacher), "teacher", params["teacher"], t_ppl,
                 t_ppl),
            *(_row(args.student, f"distilled from it, KD temperature {t:g} ({steps} steps)", params["student"],
                   s_ppl[t], t_ppl) for t in temperatures),
            _row(args.student, f"without KD ({steps} steps)", plain["parameters"], p_ppl, t_ppl)]
    result = {"teacher": str(teacher), "teacher_training": trained and {"steps": trained["steps"],
                                                                         "epochs": args.teacher_epochs,
                                                                         "lr": args.teacher_lr},
              "student": args.student, "epochs": args.epochs, "lr": args.lr, "steps": steps,
              "batch_size": args.batch_size, "hidden_weight": args.hidden_weight, "max_steps": args.max_steps,
              "teacher_perplexity": t_ppl, "distilled_perplexity": {f"{t:g}": v for t, v in s_ppl.items()},
              "no_kd_perplexity": p_ppl,
              "parameters": {"teacher": params["teacher"], "student": params["student"]}}
    title = (f"MoE -> dense distillation on demo:lm (test split): {args.student} distilled from an ERNIE 4.5 MoE "
             f"teacher (logit KD at each temperature, hidden-state weight {args.hidden_weight:g}) vs the same preset "
             f"trained without KD, {steps} steps each")
    emit(title, rows, list(rows[0]), result, args.json, markdown_path=args.markdown, threads=args.threads)
    return result


if __name__ == "__main__":
    main()
