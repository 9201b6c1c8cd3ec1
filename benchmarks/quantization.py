"""Our INT8 against ONNX Runtime's own quantization, fairly: same FP32 ONNX, same weight range,
same or labelled op coverage, QAT separated from the extra training it includes; one run, timings
interleaved.

Variants (all through ONNX Runtime on CPU, the same held-out texts):

* ``fp32, standard ONNX ops`` — the checkpoint's FP32 export with ``--onnx-ops standard`` (the
  converter's graph, which every ONNX Runtime tool below starts from); every ratio is against it.
* ``fp32 (ours)`` — the default export: attention fused into ``MultiHeadAttention``, residual sums
  kept out of ONNX Runtime's CPU ``SkipLayerNormalization`` (``export/onnx_attention.py``,
  ``export/onnx_layer_norm.py``).
* ``fp32 + QAT's extra epoch`` — the same fine-tuning QAT does (logit KD from the parent, same
  epochs, learning rate and seed) without fake quantization: what the extra training alone gives.
* ``PTQ int8 (ours)``, ``QAT int8 (ours)`` — our exports (``weight_bits`` as ``quantize`` picks it:
  8 on CPUs with VNNI, else 7), encoder Linears only; ``PTQ int8 (ours, standard ops)`` is the same
  with ``--onnx-ops standard``: what the graph rewrite adds to INT8.
* ``PTQ int8 (ours, --int8-attention qattention)`` — the same checkpoint with each layer's q/k/v
  integer projections and attention core in ONNX Runtime's ``QAttention`` (``export/onnx_qattention.py``).
* ``ORT dynamic 8-bit / 7-bit, encoder Linears`` — ``onnxruntime.quantization.quantize_dynamic``
  (per-channel QInt8 weights, activation ranges computed per batch) restricted to the MatMuls our
  INT8 quantizes: equal coverage.
* ``ORT dynamic 8-bit / 7-bit, default ops`` — ``quantize_dynamic`` with its defaults, which also
  quantize the embedding Gathers, the pooler/classifier and attention's activation MatMuls.
* ``ORT optimizer + dynamic 8-bit`` — the best pipeline a user can assemble from ONNX Runtime's
  tools: ``onnxruntime.transformers.optimizer`` (model_type bert: fused Attention, SkipLayerNorm,
  BiasGelu where it recognises the graph) then ``quantize_dynamic``; the table says how many
  Attention nodes it fused.
* ``ORT dynamic 8-bit, encoder Linears, SkipLayerNormFusion off`` — the same model in a session
  created with ``disabled_optimizers=["SkipLayerNormFusion"]``: what a user who knows that session
  option gets without our graph.
* ``ORT dynamic 8-bit, encoder Linears, on our FP32 graph`` — ``quantize_dynamic`` of ``fp32 (ours)``:
  the graph rewrite given to the peer, so that the row against ``PTQ int8 (ours)`` compares the
  quantization alone.

Accuracy differences against FP32 come with a 95% paired-bootstrap interval over the test texts;
with ``--seeds N`` the trained variants (QAT, FP32 control) are repeated with N seeds. Latency:
``--rounds`` interleaved rounds (each times every variant in turn at batch 1 and 32), median with
min-max; speed-ups are per-round ratios. ``--speed-only`` skips accuracy and training (for real
sizes such as ERNIE 3.0 ``base`` whose weights are not trained here).

    python benchmarks/quantization.py CKPT [--seeds 1] [--threads 2] [--rounds 7] [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved_rounds, interval, ratio_rounds  # noqa: E402


def fp32_control(ckpt: Path, out: Path, train_cfg, kd_weight: float, kd_temperature: float) -> None:
    """Fine-tune the FP32 checkpoint exactly as QAT --distill-from-parent does (same loss, schedule
    and seed), without fake quantization."""
    from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
    from ernie_compress.data.encoding import encode_splits
    from ernie_compress.data.tasks import load_task_for_model
    from ernie_compress.losses import logit_kd_loss
    from ernie_compress.models import model_from_state
    from ernie_compress.training_loop import train_model

    parent = load_checkpoint(ckpt)
    task = load_task_for_model(None, parent.task, parent.config.labels)
    tokenizer = parent.tokenizer()
    splits = encode_splits(task, tokenizer, parent.config.labels, parent.max_seq_length)
    teacher = model_from_state(parent.config, parent.state, str(parent.path))
    model = model_from_state(parent.config, parent.state, str(parent.path))
    result = train_model(model, splits["train"], splits.get("dev"), train_cfg, kind=task.kind,
                         loss_fn=logit_kd_loss(teacher, kd_weight, kd_temperature, tokenizer.pad_id))
    save_checkpoint(out, parent.config, result.best_state, tokenizer, {"name": "fp32-control"}, parent=parent,
                    overwrite=True)


def encoder_linear_nodes(qdq_model: Path) -> list[str]:
    """Names of the MatMuls our INT8 export quantized (weight fed by a DequantizeLinear); the FP32
    ONNX has the same node names."""
    import onnx

    model = onnx.load(str(qdq_model))
    producer = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
            and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"]


def ort_variant(fp32_dir: Path, out: Path, label: str, reduce_range: bool, nodes: list[str] | None,
                optimize: bool = False, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """An export folder holding ONNX Runtime's quantization of ``fp32_dir``'s model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32_dir, out)
    source, info = fp32_dir / "onnx" / "model.onnx", {}
    if optimize:
        from onnxruntime.transformers.optimizer import optimize_model

        # opt_level 0: the Python fusions only (level 1 first runs ORT's own optimizer, which
        # onnxruntime 1.32 does by importing torch); ORT applies its level-1 rewrites at load anyway
        optimized = optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=0)
        info["fused"] = {op: sum(1 for n in optimized.model.graph.node if n.op_type == op)
                         for op in ("Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")}
        source = out / "onnx" / "optimized.onnx"
        optimized.save_model_to_file(str(source))
    quantize_dynamic(str(source), str(out / "onnx" / "model.onnx"), per_channel=True, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    if optimize:
        source.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["precision"] = "int8"  # what the runtimes run (the registry refuses a precision it does not know)
    manifest["peer"] = label
    (out / "manifest.json").write_text(json.dumps(manifest))
    return info


BASELINE = "fp32, standard ONNX ops"
OURS = "PTQ int8 (ours)"
QATTENTION = "PTQ int8 (ours, --int8-attention qattention)"
SESSION_TUNED = "ORT dynamic 8-bit, encoder Linears, SkipLayerNormFusion off"


def open_variant(name: str, path: Path, runtime, profile_dir: Path | None = None):
    """The session a variant is measured in (the tuned-session row: its own; the rest: ours);
    ``profile_dir``: with ``runtime.profile``, where ONNX Runtime writes its profile."""
    from ernie_compress.runtime.backends import OnnxRuntimeSession, open_session
    from ernie_compress.runtime.manifest import load_manifest

    if name == SESSION_TUNED:
        return OnnxRuntimeSession(path / "onnx" / "model.onnx", runtime, profile_dir,
                                  disabled_optimizers=("SkipLayerNormFusion",))
    return open_session(path, load_manifest(path), runtime, profile_dir)


def held_out_correct(name: str, export_dir: Path, runtime) -> np.ndarray:
    """Per held-out example, whether the export's prediction equals the label [examples, 1]."""
    from ernie_compress.data.encoding import encode_split
    from ernie_compress.data.sp_tokenizer import load_tokenizer
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.runtime.manifest import load_manifest
    from ernie_compress.metrics import scored_split

    manifest = load_manifest(export_dir)
    task = load_task(TaskSpec.from_dict(manifest["task"]))
    split = encode_split(task.kind, task.split(task.held_out), load_tokenizer(export_dir), manifest["labels"],
                         manifest.get("max_seq_length", 128))
    return scored_split(open_variant(name, export_dir, runtime).run, split)[1]  # [examples, 1]


def latency_timers(variants: dict[str, Path], runtime, seq_len: int, iterations: dict[int, int]):
    """One timer per (variant, batch size): p50 ms of ``iterations[batch]`` runs on held-out texts."""
    from ernie_compress.data.sp_tokenizer import load_tokenizer
    from ernie_compress.data.tasks import TaskSpec, load_task
    from ernie_compress.runtime.manifest import load_manifest
    from ernie_compress.runtime.evaluate_export import latency_inputs
    from ernie_compress.runtime.latency import LatencyConfig, measure_latency

    first = next(iter(variants.values()))
    manifest = load_manifest(first)
    task = load_task(TaskSpec.from_dict(manifest["task"]))
    enc = latency_inputs(task.split(task.held_out), load_tokenizer(first), seq_len)
    timers = {}
    for name, path in variants.items():
        session = open_variant(name, path, runtime)
        for batch, n in iterations.items():
            config = LatencyConfig(batch_sizes=(batch,), seq_len=seq_len, iterations=n, warmup=2)
            timers[(name, batch)] = (lambda s=session, b=batch, c=config:
                                     measure_latency(s.run, enc.input_ids, enc.token_type_ids, b, c)["p50_ms"])
    return timers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--iterations-b1", type=int, default=30)
    parser.add_argument("--iterations-b32", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="seeds for the trained variants (QAT, FP32 control)")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-max-steps", type=int, default=None)
    parser.add_argument("--qat-lr", type=float, default=5e-5)
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--speed-only", action="store_true", help="no accuracy, no training (untrained weights)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the variants in this folder")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from ernie_compress import progress
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.machine import machine_info, machine_line
    from ernie_compress.metrics import bootstrap_delta
    from ernie_compress.paddle_env import set_default_threads
    from ernie_compress.runtime.backends import RuntimeConfig
    from ernie_compress.stages import run_stage
    from ernie_compress.stages.export import ExportConfig
    from ernie_compress.stages.quantize import PTQConfig, QATConfig

    progress.set_enabled(False)
    logging.disable(logging.INFO)  # onnxruntime.quantization logs a line per tensor
    set_default_threads(args.threads)
    work = Path(args.keep or tempfile.mkdtemp(prefix="quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    config = load_checkpoint(ckpt).config

    def export(src: Path, name: str, onnx_ops: str = "onnxruntime", int8_attention: str = "multihead") -> Path:
        return Path(run_stage(ExportConfig(checkpoint=src, out=work / name, format="onnx", overwrite=True,
                                           onnx_ops=onnx_ops, int8_attention=int8_attention))["out"])

    variants: dict[str, Path] = {BASELINE: export(ckpt, "fp32-standard", "standard"),
                                 "fp32 (ours)": export(ckpt, "fp32")}
    trained: dict[str, list[Path]] = {}
    if not args.speed_only:
        for seed in range(args.seeds):
            qat = QATConfig(checkpoint=ckpt, out=work / f"qat-ckpt-{seed}", overwrite=True, distill_from_parent=True,
                            epochs=args.qat_epochs, lr=args.qat_lr, max_steps=args.qat_max_steps, seed=42 + seed)
            fp32_control(ckpt, work / f"fp32-control-ckpt-{seed}", qat.train, qat.kd_weight, qat.kd_temperature)
            trained.setdefault("fp32 + QAT's extra epoch", []).append(export(work / f"fp32-control-ckpt-{seed}",
                                                                             f"fp32-control-{seed}"))
            run_stage(qat)
            trained.setdefault("QAT int8 (ours)", []).append(export(work / f"qat-ckpt-{seed}", f"qat-{seed}"))
        variants["fp32 + QAT's extra epoch"] = trained["fp32 + QAT's extra epoch"][0]
    ptq = run_stage(PTQConfig(checkpoint=ckpt, out=work / "ptq-ckpt", overwrite=True, calib_samples=args.calib_samples))
    weight_bits = ptq["scheme"]["weight_bits"]
    variants["PTQ int8 (ours)"] = export(work / "ptq-ckpt", "ptq")
    variants[QATTENTION] = export(work / "ptq-ckpt", "ptq-qattention", int8_attention="qattention")
    variants["PTQ int8 (ours, standard ops)"] = export(work / "ptq-ckpt", "ptq-standard", "standard")
    if not args.speed_only:
        variants["QAT int8 (ours)"] = trained["QAT int8 (ours)"][0]
    nodes = encoder_linear_nodes(variants["PTQ int8 (ours)"] / "onnx" / "model_qdq.onnx")
    for bits in (8, 7):
        for coverage, chosen in (("encoder Linears", nodes), ("default ops", None)):
            name = f"ORT dynamic {bits}-bit, {coverage}"
            variants[name] = work / f"ort-{bits}-{'linears' if chosen else 'default'}"
            ort_variant(variants[BASELINE], variants[name], name, bits == 7, chosen)
    name = "ORT optimizer + dynamic 8-bit"
    variants[name] = work / "ort-optimized-8"
    fused = ort_variant(variants[BASELINE], variants[name], name, False, None, optimize=True,
                        num_heads=config.num_attention_heads, hidden_size=config.hidden_size)["fused"]
    variants[SESSION_TUNED] = variants["ORT dynamic 8-bit, encoder Linears"]  # the same file, another session
    name = "ORT dynamic 8-bit, encoder Linears, on our FP32 graph"
    variants[name] = work / "ort-8-linears-our-graph"
    ort_variant(variants["fp32 (ours)"], variants[name], name, False, nodes)

    runtime = RuntimeConfig("cpu", "onnxruntime", args.threads)
    rows = {name: {"variant": name} for name in variants}
    for name in ("PTQ int8 (ours)", QATTENTION, "PTQ int8 (ours, standard ops)", "QAT int8 (ours)"):
        if name in rows:
            rows[name]["weight_bits"] = weight_bits
    if not args.speed_only:
        correct = {name: held_out_correct(name, path, runtime) for name, path in variants.items()}
        for name, row in rows.items():
            delta, low, high = bootstrap_delta("accuracy", correct[name], correct[BASELINE], resamples=2000)
            row.update(accuracy=float(correct[name].mean()), delta_points=delta, delta_low=low, delta_high=high)
        for name, paths in trained.items():  # every seed's accuracy
            rows[name]["accuracy_by_seed"] = [float(held_out_correct(name, p, runtime).mean()) for p in paths]

    iterations = {1: args.iterations_b1, 32: args.iterations_b32}
    timings = interleaved_rounds(latency_timers(variants, runtime, args.seq_len, iterations), args.rounds)
    for name, row in rows.items():
        for batch in iterations:
            t = timings[(name, batch)]
            row[f"b{batch}_ms"] = t
            row[f"speedup_b{batch}"] = ratio_rounds(timings[(BASELINE, batch)]["rounds"], t["rounds"])
            # this row's time over our PTQ INT8's in the same round: > 1 where the row is slower than ours
            row[f"vs_ours_b{batch}"] = ratio_rounds(t["rounds"], timings[(OURS, batch)]["rounds"])
        row["size_mb"] = (variants[name] / "onnx" / "model.onnx").stat().st_size / 1e6

    machine = machine_info(args.threads)
    result = {"checkpoint": str(ckpt), "architecture": f"{config.num_hidden_layers} layers, hidden {config.hidden_size}",
              "seq_len": args.seq_len, "rounds": args.rounds, "iterations": iterations, "seeds": args.seeds,
              "weight_bits_ours": weight_bits, "ort_optimizer_fused": fused, "machine": machine,
              "rows": list(rows.values())}
    markdown = render(result, speed_only=args.speed_only) + "\n\n" + machine_line(machine)
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


def render(result: dict, speed_only: bool) -> str:
    head = ["variant"] + ([] if speed_only else ["accuracy", "Δ pt vs FP32 (95% CI)"]) + \
           ["b1 p50 ms", "b32 p50 ms", "speed-up b1", "speed-up b32", "time / ours b1", "time / ours b32", "MB"]
    lines = [f"{result['checkpoint']} ({result['architecture']}), ONNX Runtime CPU, seq {result['seq_len']}, "
             f"{result['machine']['threads']} threads; latency: median (min–max) of {result['rounds']} interleaved "
             f"rounds; speed-up = the time of \"{BASELINE}\" / the row's, time / ours = the row's time / that of "
             f"\"{OURS}\", both per round (median, min–max); our weights {result['weight_bits_ours']}-bit; "
             f"ORT's transformer optimizer fused "
             + ", ".join(f"{n} {op}" for op, n in result["ort_optimizer_fused"].items()), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["variant"]]
        if not speed_only:
            seeds = row.get("accuracy_by_seed")
            accuracy = f"{row['accuracy']:.4f}" + (f" (seeds: {', '.join(f'{a:.4f}' for a in seeds)})"
                                                   if seeds and len(seeds) > 1 else "")
            delta = "" if row["variant"] == BASELINE else \
                f"{row['delta_points']:+.2f} ({row['delta_low']:+.2f} to {row['delta_high']:+.2f})"
            cells += [accuracy, delta]
        cells += [interval(row["b1_ms"], 2), interval(row["b32_ms"], 1),
                  interval(row["speedup_b1"], 2) + "x", interval(row["speedup_b32"], 2) + "x",
                  interval(row["vs_ours_b1"], 2), interval(row["vs_ours_b32"], 2), f"{row['size_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
