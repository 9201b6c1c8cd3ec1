"""How each command's result looks on a terminal (``--json`` prints the result itself instead).

Each renderer registers itself for its command's name (``@renders("prune")``); the command line
looks its commands' renderers up in :data:`RENDERERS`, and a contract test checks that every
declared stage (``stages/registry.py``) has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Renderer = Callable[[dict[str, Any]], None]
RENDERERS: dict[str, Renderer] = {}  # command name -> how its result is shown


def renders(*commands: str) -> Callable[[Renderer], Renderer]:
    """Decorator: ``fn`` shows the result of each command in ``commands``."""

    def wrap(fn: Renderer) -> Renderer:
        for name in commands:
            if name in RENDERERS:
                raise AssertionError(f"two renderers for '{name}': {RENDERERS[name].__name__} and {fn.__name__}")
            RENDERERS[name] = fn
        return fn

    return wrap


def renderer_for(command: str) -> Renderer:
    """The renderer of ``command``; a clear error (not a KeyError at first use) when it has none."""
    try:
        return RENDERERS[command]
    except KeyError:
        raise LookupError(f"no renderer for '{command}': decorate one in render.py with "
                          f"@renders({command!r})") from None


def _console():
    """Tables on stdout; wide enough to stay readable when piped to a file or a CI log."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _metrics_table(metrics: dict[str, dict[str, float]], title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("split")
    names = sorted({k for m in metrics.values() for k in m if k != "examples"})
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("examples", justify="right")
    for split, values in metrics.items():
        table.add_row(split, *(f"{values[n]:.4f}" if n in values else "" for n in names),
                      str(values.get("examples", "")))
    return table


@renders("train")
def render_stage(result: dict[str, Any]) -> None:
    console = _console()
    console.print(_metrics_table(result["metrics"], f"{result['stage']}: {result['task']}"))
    p = result["parameters"]
    console.print(f"parameters: {p['total']:,} total, {p['non_embedding']:,} non-embedding")
    console.print(f"trained {result['steps']} steps in {result['train_seconds']:.0f} s; "
                  f"wrote [bold]{result['out']}[/bold]")


@renders("pretrain")
def render_pretrain(result: dict[str, Any]) -> None:
    p = result["parameters"]
    _console().print(f"pre-trained on {result['texts']:,} texts for {result['steps']} steps in "
                     f"{result['train_seconds']:.0f} s (final masked-LM loss {result['final_loss']:.3f}); "
                     f"{p['non_embedding']:,} non-embedding parameters; wrote [bold]{result['out']}[/bold]")


@renders("evaluate")
def render_evaluation(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    where = f"{result['backend']} on {result['device']}"
    scored = f" (scored through {result['scored_with']})" if result.get("scored_with") else ""
    console.print(_metrics_table({result["split"]: result["metrics"]}, f"{result['task']}: {where}{scored}"))
    if result.get("delta_points") is not None:
        ref = result["reference_metrics"][result["primary_metric"]]
        console.print(f"{result['primary_metric']} vs the source checkpoint in Paddle dygraph "
                      f"({ref:.4f}): {result['delta_points']:+.2f} points")
    if result.get("latency"):
        table = Table(title=f"latency ({where}, seq {result['latency'][0]['seq_len']})")
        for col in ("batch", "p50 ms", "p95 ms", "p99 ms", "QPS"):
            table.add_column(col, justify="right")
        for row in result["latency"]:
            table.add_row(str(row["batch_size"]), f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}",
                          f"{row['p99_ms']:.2f}", f"{row['qps']:.1f}")
        console.print(table)
    if result.get("generation"):
        _render_generation_speed(console, result["generation"], where)
    if result.get("profile"):
        table = Table(title="where the time goes (per operator type)")
        for col in ("op", "total ms", "calls", "share"):
            table.add_column(col, justify="right")
        for row in result["profile"]:
            table.add_row(row["op"], f"{row['total_ms']:.2f}", str(row["calls"]), f"{row['share']:.1%}")
        console.print(table)


def _spread(v: dict[str, float]) -> str:
    return f"{v['median']:.1f} ({v['min']:.1f}-{v['max']:.1f})"


def _render_generation_speed(console, g: dict[str, Any], where: str) -> None:
    from rich.table import Table

    table = Table(title=f"time to first token ({where}; decoder with a KV cache)")
    for col in ("prompt tokens", "TTFT ms (min-max)"):
        table.add_column(col, justify="right")
    for row in g["time_to_first_token"]:
        table.add_row(str(row["prompt_tokens"]), _spread(row["ttft_ms"]))
    console.print(table)
    table = Table(title=f"decoding: {g['new_tokens']} greedy steps after {g['decode_prompt_tokens']}-token prompts")
    for col in ("batch", "prefill ms", "ms per step", "tokens/s", "KV cache MiB"):
        table.add_column(col, justify="right")
    for row in g["decode"]:
        table.add_row(str(row["batch_size"]), _spread(row["prefill_ms"]), _spread(row["ms_per_step"]),
                      f"{row['tokens_per_s']:.1f}", f"{row['kv_cache_mib']:.2f}")
    console.print(table)
    console.print(f"peak memory of the process: {g['peak_rss_mib']:.0f} MiB"
                  + "".join(f"; skipped {s}" for s in g["skipped"]))


def _int8_line(s: dict[str, Any], result: dict[str, Any]) -> str:
    return (f"{result['quantized_layers']} Linear layers quantized: {s['weight_bits']}-bit weights per "
            f"channel{' (reduce_range)' if s['reduce_range'] else ''}, {s['activation_bits']}-bit "
            f"activations ({s['activation_observer']})")


def _weight_only_line(s: dict[str, Any], result: dict[str, Any]) -> str:
    group = f"groups of {s['group_size']} rows" if s["group_size"] else "per output channel"
    return f"{result['quantized_layers']} Linear layers: {s['weight_bits']}-bit weights ({group}), float activations"


def _expert_rounding_line(s: dict[str, Any]) -> str | None:
    """How a weight-only run rounded a mixture-of-experts model's Linears and routed experts, and which
    experts GPTQ left to RTN for want of calibration tokens; None for a model without routed experts."""
    rounding = s["rounding"]
    if not any(c["experts"] for c in rounding.values()):
        return None
    parts = [f"{how.upper()} {c['linears']} Linears ({c['experts']} routed experts)" for how, c in rounding.items()]
    line = "rounding: " + ", ".join(parts)
    fallback = s.get("rtn_fallback")  # GPTQ of an MoE model only
    if fallback:
        shown = ", ".join(f"{expert} got {v['tokens']} < {v['needed']}" for expert, v in list(fallback.items())[:3])
        line += (f"; {len(fallback)} routed experts fell back to RTN for want of calibration tokens "
                 f"(--min-expert-tokens): {shown}{', ...' if len(fallback) > 3 else ''}")
    elif fallback is not None:
        line += f"; none fell back to RTN (the fewest calibration tokens an expert got: {s['fewest_expert_tokens']})"
    return line


# per quantization scheme (quantize/registry.py): (how the metrics table names it, the summary line)
_SCHEME_LINES = {
    "int8": (lambda s: "int8, fake-quant", _int8_line),
    "weight_only": (lambda s: f"weight-only {s['dtype']}", _weight_only_line),
    "fp16": (lambda s: "fp16", lambda s, result: f"{result['quantized_layers']} tensors in FP16"),
}


@renders("quantize")
def render_quantize(result: dict[str, Any]) -> None:
    console = _console()
    from .quantize.registry import scheme_of

    s = result["scheme"]
    label, line = _SCHEME_LINES[scheme_of(s).name]
    tables = {f"{split} ({label(s)})": m for split, m in result["metrics"].items()}
    tables.update({f"{split} (FP32 parent)": m for split, m in result["parent_metrics"].items()})
    if result["delta_points"] is None:  # --stream: written layer by layer, not evaluated
        console.print(f"{line(s, result)}; not evaluated (streamed): run `ernie-compress evaluate {result['out']}`")
    else:
        console.print(_metrics_table(tables, f"{result['stage']}: {result['task']}"))
        console.print(f"{line(s, result)}; {result['delta_points']:+.2f} points vs FP32")
    experts = _expert_rounding_line(s) if "rounding" in s else None  # weight-only schemes
    if experts:
        console.print(experts)
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


def _render_latency(console, result: dict[str, Any], before: str, after: str) -> None:
    """The latency comparison the command added (``--latency``), per batch size."""
    if not result.get("latency"):
        return
    for a, b in zip(result["latency"][before], result["latency"][after]):
        console.print(f"batch {a['batch_size']}: {before} {a['p50_ms']:.2f} ms -> {after} {b['p50_ms']:.2f} ms "
                      f"({a['p50_ms'] / b['p50_ms']:.2f}x)")


@renders("distill")
def render_distill(result: dict[str, Any]) -> None:
    console = _console()
    m = result["metric"]
    p = result["parameters"]
    console.print(f"teacher {result['teacher_metrics'][m]:.4f}  student {result['student_metrics'][m]:.4f} "
                  f"({result['percent_of_teacher']:.1f}% of the teacher)"
                  + (f"  no-distillation baseline {result['baseline']['metrics'][m]:.4f}" if result["baseline"] else ""))
    console.print(f"non-embedding parameters: teacher {p['teacher']['non_embedding']:,}, student "
                  f"{p['student']['non_embedding']:,} ({p['non_embedding_ratio']:.1%})")
    if "active" in p["teacher"] or "active" in p["student"]:  # a mixture of experts on either side
        console.print("parameters (total / active per token): " + ", ".join(
            f"{who} {c['total']:,} / {c.get('active', c['total']):,}" for who, c in
            (("teacher", p["teacher"]), ("student", p["student"]))))
    if result.get("aux_loss"):
        a = result["aux_loss"]
        console.print(f"student's router auxiliary loss: {a['first']:.4f} over the first {a['window']} steps, "
                      f"{a['last']:.4f} over the last {a['window']}")
    _render_latency(console, result, "teacher", "student")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


@renders("prune")
def render_prune(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    experts = result.get("experts")  # mixture of experts: routed experts per layer
    table = Table(title=f"prune: {result['task']}")
    columns = [("heads before", result["heads_before"]), ("heads after", result["heads_after"]),
               ("ffn before", result["ffn_before"]), ("ffn after", result["ffn_after"])]
    if experts:
        columns += [("experts before", experts["experts_before"]), ("experts after", experts["experts_after"])]
    for col in ("layer", *(name for name, _ in columns)):
        table.add_column(col, justify="right")
    for i, row in enumerate(zip(*(values for _, values in columns))):
        table.add_row(str(i), *(str(v) for v in row))
    console.print(table)
    b, a = result["parameters_before"], result["parameters_after"]
    console.print(f"parameters: {b['total']:,} -> {a['total']:,} total "
                  f"({result['removed_fraction_total']:.1%} fewer); {b['non_embedding']:,} -> "
                  f"{a['non_embedding']:,} non-embedding ({result['removed_fraction_non_embedding']:.1%} "
                  f"fewer)" + ("" if experts else f"; {result['removed_fraction_heads']:.1%} of heads removed"))
    if experts:
        k = experts["moe_k"]
        console.print(f"active per token: {b['active']:,} -> {a['active']:,} ({result['removed_fraction_active']:.1%} "
                      f"fewer); {experts['removed_per_moe_layer']} routed experts removed per MoE layer by "
                      f"{experts['importance']} on {experts['importance_samples']} training examples; moe_k "
                      + (f"clamped {k['before']} -> {k['after']}" if k["clamped"] else f"kept at {k['after']}"))
    acc, m = result["accuracy"], result["metric"]
    console.print(f"{m}: parent {acc['parent'][m]:.4f}, pruned {acc['before_recovery'][m]:.4f} "
                  f"({result['delta_points_before_recovery']:+.2f}), after recovery "
                  f"{acc['after_recovery'][m]:.4f} ({result['delta_points']:+.2f} points)")
    _render_latency(console, result, "parent", "pruned")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


@renders("report")
def render_report(result: dict[str, Any]) -> None:
    from .report import rich_table  # report imports every stage: not needed for --help

    console = _console()
    console.print(rich_table(result))
    console.print(f"report.md, report.json and report.png in {result['run_dir']}")


@renders("run", "demo")
def render_run(result: dict[str, Any]) -> None:
    console = _console()
    for name, r in result["stages"].items():
        console.print(f"{name}: {r.get('stage', 'evaluate')} in {r.get('stage_seconds', 0):.0f} s")
    if result.get("report"):
        render_report(result["report"])
    console.print(f"run finished in {result['seconds']:.0f} s: {result['run_dir']}")


@renders("search")
def render_search(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    metric = result["metric"]
    table = Table(title=f"Pareto frontier ({', '.join(result['objectives'])}; teacher dev {metric} "
                        f"{result['teacher_dev']:.2f})")
    for col in ("trial", "values", f"dev {metric}", "p50 ms", "MB"):
        table.add_column(col, justify="left" if col == "values" else "right")
    chosen = (result.get("chosen") or {}).get("number")
    for row in result["frontier"]:
        table.add_row(f"{row['number']}{' *' if row['number'] == chosen else ''}", row["values"],
                      f"{row['accuracy']:.2f}", f"{row['latency']:.2f}", f"{row['size']:.1f}")
    console.print(table)
    console.print("trials: " + ", ".join(f"{n} {state}" for state, n in result["trials"].items() if n))
    if chosen is not None:
        console.print(f"chosen (*): trial {chosen} in {result['chosen'].get('chosen_dir', '')}")
    console.print(f"report: [bold]{result['report']}[/bold] ({result['seconds']:.0f} s)")


@renders("export")
def render_export(result: dict[str, Any]) -> None:
    console = _console()
    for name, v in result["verification"].items():
        if "greedy_tokens_equal" in v:  # the decoder with a KV cache
            whose = "the streamed NumPy reference's" if "NumPy" in v.get("against", "") else "dygraph's"
            text = f"greedy text equal to {whose}" if v["greedy_tokens_equal"] else f"greedy text differs from {whose}"
            console.print(f"{name} ({v['compute']} compute): verified on {v['prompts']} prompts x {v['new_tokens']} "
                          f"tokens, {text}, teacher-forced picks agree {v['teacher_forced_agreement']:.1%}, max "
                          f"logit difference {v['max_abs_diff']:.2e} ({v['max_relative_diff']:.2%} of the logit scale)")
            continue
        console.print(f"{name}: verified, max logit difference {v['max_abs_diff']:.2e}, "
                      f"predictions agree {v['prediction_agreement']:.1%} on {v['samples']} samples")
    kernels = result["files"].get("decoder", {}).get("kernels", {})
    if "MoE" in kernels or "QMoE" in kernels:
        fused = ", ".join(f"{kernels[op]} {op}" for op in ("MoE", "QMoE") if op in kernels)
        console.print(f"decoder experts: {fused} layer(s); {kernels['MatMulNBits']} MatMulNBits, "
                      f"{kernels['MatMul']} MatMul")
    for fmt, why in result.get("skipped", {}).items():
        console.print(f"{fmt}: skipped ({why})")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.1f} s")


@renders("bench")
def render_bench(result: dict[str, Any]) -> None:
    from rich.table import Table

    if result.get("mode") == "generation":
        table = Table(title=f"{result['requests']} generation requests ({result['new_tokens']} tokens each) from "
                            f"{result['concurrency']} clients ({result['backend']} on {result['device']})")
        for col in ("mode", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "request p50 ms", "mean decode batch"):
            table.add_column(col, justify="right")
        for name, key in (("one at a time", "one_at_a_time"), (f"continuous batching (<= {result['max_batch']})",
                                                                "continuous_batching")):
            r = result[key]
            table.add_row(name, f"{r['tokens_per_s']:.1f}", f"{r['ttft_p50_ms']:.1f}", f"{r['ttft_p99_ms']:.1f}",
                          f"{r['latency_p50_ms']:.1f}", f"{r['mean_decode_batch']:.2f}")
        _console().print(table)
        _console().print(f"continuous batching: {result['speedup_tokens_per_s']:.2f}x the tokens/s; the same greedy "
                         f"tokens for {result['same_tokens']:.0%} of the requests")
        return

    table = Table(title=f"{result['requests']} requests from {result['concurrency']} clients "
                        f"({result['backend']} on {result['device']})")
    for col in ("mode", "QPS", "p50 ms", "p95 ms", "p99 ms", "mean batch"):
        table.add_column(col, justify="right")
    for mode in ("no_batching", "dynamic_batching"):
        r = result[mode]
        table.add_row(mode.replace("_", " "), f"{r['qps']:.1f}", f"{r['p50_ms']:.2f}",
                      f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['mean_batch']:.1f}")
    console = _console()
    console.print(table)
    console.print(f"dynamic batching: {result['speedup_qps']:.2f}x QPS; predictions agree "
                  f"{result['predictions_agree']:.1%}, max output difference "
                  f"{result['outputs_max_abs_diff']:.2e}")


@renders("info")
def render_info(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    p = result["parameters"]
    console.print(f"[bold]{result['path']}[/bold]: {result['architecture']} "
                  f"({result['model_type']}), {result['layers']} layers, hidden {result['hidden_size']}, "
                  f"vocab {result['vocab_size']}")
    stored = (f"no weights (from config.json; {4 * p['total'] / 1e9:.2f} GB in FP32)" if result.get("config_only")
              else f"{result['size_bytes'] / 1e6:.2f} MB on disk")
    console.print(f"parameters: {p['total']:,} total, {p['non_embedding']:,} non-embedding; {stored}")
    experts = result.get("experts_per_layer")
    if experts is not None:
        routed = [e for e in experts if e]
        console.print(f"mixture of experts: {p['active']:,} parameters active per token "
                      f"({p['active'] / p['total']:.1%}); {len(routed)} of {len(experts)} layers route each token "
                      f"to {result['experts_per_token']} of {max(routed, default=0)} experts")
    if result.get("task"):
        console.print(f"task: {result['task']['name']}  labels: {', '.join(result['labels'])}")
    console.print(_layers_table(result))
    if result.get("head_importance"):
        scores = result["head_importance"]
        table = Table(title="head importance at the last pruning (layer x head, normalised per layer)")
        table.add_column("layer", justify="right")
        for h in range(max(len(s) for s in scores)):
            table.add_column(str(h), justify="right")
        for i, s in enumerate(scores):
            table.add_row(str(i), *(f"{v:.3f}" for v in s))
        console.print(table)
    lineage = Table(title="lineage")
    for col in ("#", "stage", "time", "metrics"):
        lineage.add_column(col)
    for i, stage in enumerate(result["lineage"]):
        shown = "  ".join(f"{s}: {m.get('accuracy', 0):.4f}" for s, m in stage.get("metrics", {}).items()
                          if isinstance(m, dict) and "accuracy" in m)
        lineage.add_row(str(i), stage.get("name", "?"), stage.get("time", ""), shown)
    console.print(lineage)


def _layers_table(result: dict[str, Any]):
    """Heads and FFN width per layer (a mixture-of-experts layer's FFN is its experts' width), and
    routed experts per layer when the model has any."""
    from rich.table import Table

    experts = result.get("experts_per_layer")
    layers = Table(title="layers")
    for col in ("layer", "heads", "ffn", *(("experts",) if experts is not None else ())):
        layers.add_column(col, justify="right")
    for i, (h, f) in enumerate(zip(result["heads_per_layer"], result["ffn_per_layer"])):
        layers.add_row(str(i), str(h), str(f), *((str(experts[i]) if experts[i] else "dense",) if experts else ()))
    return layers


@renders("generate")
def render_generation(result: dict[str, Any]) -> None:
    console = _console()
    for r in result["results"]:
        if not r.get("streamed"):
            console.print(f"{r['prompt']}[bold]{r['text']}[/bold]", highlight=False)
        speed = f", {r['decode_tokens_per_s']:.1f} tokens/s" if r["decode_tokens_per_s"] else ""
        console.print(f"[dim]{len(r['tokens'])} tokens; first after {r['time_to_first_token_ms']:.1f} ms{speed}"
                      f"{'' if r['stopped_at_eos'] else ' (stopped at --max-new-tokens)'}[/dim]")
