"""The ``ernie-compress`` command line: parse options, build a config, call one library function.

Paddle, paddleslim and onnxruntime are imported inside the command bodies, so ``--help`` answers
at once. Errors the user can fix are one line on stderr with exit code 2 (``--debug`` shows the
traceback); ``--json`` prints one JSON object with the result on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
from .errors import UserError
from .models.layouts import LAYOUT_HELP

app = typer.Typer(
    name="ernie-compress",
    help="Make ERNIE models small and fast: train, distill, prune, quantize, export, evaluate.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Settings:
    debug = False
    json = False
    quiet = False


settings = _Settings()

# --- shared options --------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists (default: refuse).")]
TaskOpt = Annotated[Optional[str], typer.Option(
    "--task", "-t", help="Task: demo:sentiment, demo:ner, demo:lm (built in), or with --data: tnews, afqmc, "
                         "text, text-pair, msra-ner, cmrc2018, lm. Default: the task the checkpoint was "
                         "trained on.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Folder with train, dev and (optional) test files (.json, .jsonl, .tsv, .txt) for --task.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
SaveEveryOpt = Annotated[int, typer.Option(
    "--save-every", help="Save a resumable training state every N steps (beside --out; removed on success).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run from its saved state (same options and seed).")]
LayoutOpt = Annotated[str, typer.Option("--layout", help=LAYOUT_HELP)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ernie-compress {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON (any command).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Load model_state.pdparams with full pickle (can run code: only for files "
                               "you trust). By default only numpy arrays are unpickled.")] = False,
    ignore_integrity: Annotated[bool, typer.Option(
        "--ignore-integrity", help="Load weights whose sha256 differs from compression.json.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Every stage reads a checkpoint directory and writes a new one; `export` turns one into
    deployable files and `evaluate` checks them on a runtime."""
    settings.debug, settings.json, settings.quiet = debug, json_out, quiet
    from .checkpoint import load_policy

    load_policy.trust_pickle, load_policy.ignore_integrity = trust_pickle, ignore_integrity


def run_command(body: Callable[[], dict[str, Any]], json_out: bool,
                render: Callable[[dict[str, Any]], None] | None = None,
                threads: int | None = None) -> None:
    """Run a command body: configure output, map errors to exit code 2, print the result."""
    from . import progress

    as_json = json_out or settings.json
    progress.set_enabled(not settings.quiet)
    from .paddle_env import sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM unwinds like Ctrl-C: temporary outputs are removed
    if not settings.debug:
        import warnings

        warnings.filterwarnings("ignore")  # library chatter (paddle, setuptools) is not for users
    if threads is not None:
        if threads < 1:
            _fail("--threads must be >= 1")
        from .paddle_env import set_default_threads

        set_default_threads(threads)
    try:
        with _native_stdout_to_stderr(as_json):
            result = body()
    except UserError as exc:
        if settings.debug:
            raise
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        if settings.debug:
            raise
        hint = f" ({exc.args[0]})" if exc.args else ""
        typer.echo(f"error: interrupted; no output was written{hint}", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, default=str))
    elif render is not None:
        render(result)


@contextlib.contextmanager
def _native_stdout_to_stderr(active: bool):
    """With --json, stdout carries one JSON object: C++ libraries that print to file descriptor 1
    (Paddle Inference's oneDNN passes do) are sent to stderr while the command runs."""
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded use)
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


# --- train -----------------------------------------------------------------------------------
@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint directory.")],
    task: TaskOpt = None,
    data: DataOpt = None,
    preset: Annotated[Optional[str], typer.Option(
        help="Train a fresh model of this size: xbase (alias xxl), base, medium, mini, micro, nano, "
             "demo-teacher, demo-base, demo-mini, tiny.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        "--from", help="Fine-tune this checkpoint instead of a fresh model.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear warm-up/decay).")] = 5e-4,
    warmup: Annotated[float, typer.Option(help="Fraction of steps spent warming up.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    max_seq_len: Annotated[int, typer.Option(help="Truncate inputs to this many tokens.")] = 128,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        help="Also evaluate on dev every N steps (default: each epoch).")] = None,
    save_every: SaveEveryOpt = 200,
    resume: ResumeOpt = False,
    seed: SeedOpt = 42,
    threads: ThreadsOpt = None,
    layout: LayoutOpt = "ours",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model from a preset (or fine-tune a checkpoint) on a task; keep the best epoch."""

    def body():
        from .finetune import FinetuneConfig, finetune
        from .train import TrainConfig

        train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr,
                                warmup_ratio=warmup, weight_decay=weight_decay, seed=seed,
                                max_steps=max_steps, eval_every=eval_every, save_every=save_every)
        spec = _task_spec(task, data)
        return finetune(FinetuneConfig(task=spec, out=out,
                                       preset=preset, init_from=init_from,
                                       max_seq_length=max_seq_len, train=train_cfg,
                                       overwrite=overwrite, resume=resume, layout=layout))

    run_command(body, json_out, _render_stage, threads)


# --- pretrain --------------------------------------------------------------------------------
@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint directory.")],
    corpus: Annotated[list[str], typer.Option(
        help="Unlabeled text to learn from (repeatable): demo:sentiment (its train split), "
             "demo:peoples-daily (demo:ner's train sentences), or a UTF-8 file with one text per line; "
             "built-in corpora hold no dev/test text of any built-in task.")],
    preset: Annotated[str, typer.Option(help="Model size to pre-train (see `train --help`).")] = "demo-teacher",
    steps: Annotated[int, typer.Option(help="Optimizer steps of masked-LM training.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Texts per step.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-3,
    max_seq_len: Annotated[int, typer.Option(help="Truncate texts to this many tokens.")] = 64,
    mask_prob: Annotated[float, typer.Option(help="Fraction of tokens to mask and predict.")] = 0.15,
    seed: SeedOpt = 42,
    threads: ThreadsOpt = None,
    layout: LayoutOpt = "ours",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Masked-LM pre-training of a fresh encoder on unlabeled text (then `train --from` it)."""

    def body():
        from .pretrain import PretrainConfig, pretrain as run_pretrain
        from .train import TrainConfig

        return run_pretrain(PretrainConfig(
            corpora=tuple(corpus), out=out, preset=preset, max_seq_length=max_seq_len,
            mask_probability=mask_prob, overwrite=overwrite, layout=layout,
            train=TrainConfig(epochs=10**6, batch_size=batch_size, learning_rate=lr, seed=seed,
                              max_steps=steps)))

    run_command(body, json_out, _render_pretrain, threads)


# --- quantize --------------------------------------------------------------------------------
@app.command()
def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="The FP32 checkpoint to quantize.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint directory.")],
    qat: Annotated[Optional[str], typer.Option(
        help="Quantization-aware training to this type (int8): fake-quantized weights (per channel) "
             "and activations, fine-tuned on the task.")] = None,
    ptq: Annotated[Optional[str], typer.Option(
        help="Post-training quantization to this type (int8) from calibration samples; no training.")] = None,
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="Half-precision weights, for GPU/NPU deployment (ONNX FP16, TensorRT FP16).")] = False,
    task: TaskOpt = None,
    data: DataOpt = None,
    epochs: Annotated[int, typer.Option(help="QAT: passes over the training data.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="QAT: peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="QAT: examples per step.")] = 32,
    max_steps: Annotated[Optional[int], typer.Option(help="QAT: stop after this many steps.")] = None,
    distill_from_parent: Annotated[bool, typer.Option(
        help="QAT: add logit distillation from the FP32 parent to the loss.")] = False,
    kd_alpha: Annotated[float, typer.Option(help="QAT with distillation: weight of the KD term.")] = 0.5,
    kd_temperature: Annotated[float, typer.Option(help="QAT with distillation: softmax temperature.")] = 2.0,
    calib_samples: Annotated[int, typer.Option(help="PTQ: training examples to calibrate on.")] = 512,
    observer: Annotated[str, typer.Option(
        help="PTQ activation observer: abs_max, percentile, mse or kl.")] = "abs_max",
    percentile: Annotated[float, typer.Option(help="PTQ with --observer percentile: which percentile.")] = 99.99,
    reduce_range: Annotated[Optional[bool], typer.Option(
        "--reduce-range/--full-range",
        help="7-bit weights (needed on CPUs without VNNI) or 8-bit. Default: by this CPU.")] = None,
    save_every: SaveEveryOpt = 200,
    resume: ResumeOpt = False,
    seed: SeedOpt = 42,
    threads: ThreadsOpt = None,
    layout: LayoutOpt = "ours",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """INT8 quantization (QAT or PTQ); ends with the held-out metric against the FP32 parent."""

    def body():
        from .quantize import QuantizeConfig, quantize_checkpoint
        from .train import TrainConfig

        spec = _task_spec(task, data)
        return quantize_checkpoint(QuantizeConfig(
            checkpoint=checkpoint, out=out, qat=qat, ptq=ptq, fp16=fp16, task=spec, reduce_range=reduce_range,
            distill_from_parent=distill_from_parent, kd_alpha=kd_alpha, kd_temperature=kd_temperature,
            calib_samples=calib_samples, observer=observer, percentile=percentile, overwrite=overwrite, layout=layout,
            resume=resume, train=TrainConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size,
                                             max_steps=max_steps, seed=seed, save_every=save_every)))

    run_command(body, json_out, _render_quantize, threads)


# --- distill ---------------------------------------------------------------------------------
@app.command()
def distill(
    teacher: Annotated[str, typer.Option(
        help="Teacher checkpoint directory, or a name (e.g. xxl) in --models-dir / $ERNIE_COMPRESS_MODELS.")],
    student: Annotated[str, typer.Option(
        help="Student: a preset (mini, micro, nano, demo-mini, tiny, ...) or a checkpoint directory "
             "sharing the teacher's vocabulary.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint directory.")],
    task: TaskOpt = None,
    data: DataOpt = None,
    models_dir: Annotated[Optional[Path], typer.Option(help="Where teacher names resolve.")] = None,
    init_from_teacher: Annotated[bool, typer.Option(
        help="Initialise the student from the teacher's embeddings and every k-th layer (equal widths).")] = False,
    ce_weight: Annotated[float, typer.Option(help="Weight of the hard-label cross-entropy.")] = 0.5,
    kd_weight: Annotated[float, typer.Option(help="Weight of soft-label KD on logits.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="KD softmax temperature.")] = 2.0,
    hidden_weight: Annotated[float, typer.Option(help="Weight of hidden-state MSE (learned projection).")] = 0.0,
    attention_weight: Annotated[float, typer.Option(
        help="Weight of MiniLM attention + value-relation KL (teacher layer -> student's last).")] = 0.0,
    attention_teacher_layer: Annotated[int, typer.Option(
        help="Teacher layer for the attention loss (negative counts from the end).")] = -1,
    relation_heads: Annotated[Optional[int], typer.Option(
        help="Relation heads for the attention loss (default: gcd of the head counts).")] = None,
    layer_map: Annotated[Optional[str], typer.Option(
        help="Hidden-loss layer pairs student:teacher, e.g. 0:1,1:3 (default: uniform).")] = None,
    baseline: Annotated[bool, typer.Option(
        help="Also train the student on hard labels alone for the same steps, for comparison.")] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    latency: Annotated[bool, typer.Option(
        "--latency/--no-latency", help="Time teacher and student on CPU (ONNX Runtime).")] = True,
    save_every: SaveEveryOpt = 200,
    resume: ResumeOpt = False,
    seed: SeedOpt = 42,
    threads: ThreadsOpt = None,
    layout: LayoutOpt = "ours",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Distill a large teacher into a small student (logits, hidden states, MiniLM relations)."""

    def body():
        from .distill import DistillConfig, distill as run_distill
        from .train import TrainConfig

        spec = _task_spec(task, data)
        return run_distill(DistillConfig(
            teacher=teacher, student=student, out=out, task=spec, models_dir=models_dir, layout=layout,
            init_from_teacher=init_from_teacher, ce_weight=ce_weight, kd_weight=kd_weight,
            temperature=temperature, hidden_weight=hidden_weight, attention_weight=attention_weight,
            attention_teacher_layer=attention_teacher_layer, relation_heads=relation_heads,
            layer_map=layer_map, baseline=baseline, measure_latency=latency, overwrite=overwrite,
            resume=resume, train=TrainConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size,
                                             max_steps=max_steps, seed=seed, save_every=save_every)))

    run_command(body, json_out, _render_distill, threads)


# --- prune -----------------------------------------------------------------------------------
@app.command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="The FP32 task checkpoint to prune.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint directory.")],
    heads: Annotated[Optional[float], typer.Option(
        help="Fraction of all attention heads to remove (attention is ~1/3 of a layer's parameters, "
             "so 0.15 removes ~5% of them; see --params).")] = None,
    ffn: Annotated[Optional[float], typer.Option(
        help="Fraction of every layer's FFN neurons to remove.")] = None,
    params: Annotated[Optional[float], typer.Option(
        help="Fraction of non-embedding parameters to remove, choosing heads and FFN neurons.")] = None,
    importance: Annotated[str, typer.Option(
        help="Head scores: gradient (Michel et al. 2019, on task data) or magnitude.")] = "gradient",
    importance_samples: Annotated[int, typer.Option(help="Training examples for gradient scores.")] = 512,
    gqa: Annotated[str, typer.Option(
        help="ERNIE 4.5 (grouped-query attention): 'queries' removes the same number of query heads from "
             "every KV group, 'groups' removes whole KV groups; either way every layer keeps the same "
             "shape, so the result loads in the standard layout.")] = "queries",
    uniform: Annotated[bool, typer.Option(
        "--uniform", help="ERNIE 3.0: remove the same number of heads (and FFN neurons) from every layer, so "
                          "the result stays a standard model (what --layout paddlenlp needs for FFN pruning; "
                          "PaddleNLP cannot express pruned heads at all).")] = False,
    task: TaskOpt = None,
    data: DataOpt = None,
    recover_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after pruning (0 = none).")] = 1,
    no_distill: Annotated[bool, typer.Option(
        "--no-distill", help="Recover with hard labels only (default: + logit KD from the parent).")] = False,
    lr: Annotated[float, typer.Option("--lr", help="Recovery learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Recovery batch size.")] = 32,
    max_steps: Annotated[Optional[int], typer.Option(help="Recovery: stop after this many steps.")] = None,
    latency: Annotated[bool, typer.Option(
        "--latency/--no-latency", help="Time parent and pruned model on CPU (ONNX Runtime).")] = True,
    save_every: SaveEveryOpt = 200,
    resume: ResumeOpt = False,
    seed: SeedOpt = 42,
    threads: ThreadsOpt = None,
    layout: LayoutOpt = "ours",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove the least important attention heads (and FFN neurons), then recover by fine-tuning."""

    def body():
        from .prune import PruneConfig, prune_checkpoint
        from .train import TrainConfig

        spec = _task_spec(task, data)
        return prune_checkpoint(PruneConfig(
            checkpoint=checkpoint, out=out, heads=heads, ffn=ffn, params=params, importance=importance,
            importance_samples=importance_samples, gqa=gqa, uniform=uniform, layout=layout, task=spec,
            recover_epochs=recover_epochs,
            distill_from_parent=not no_distill, measure_latency=latency, overwrite=overwrite,
            resume=resume, train=TrainConfig(epochs=recover_epochs, learning_rate=lr, batch_size=batch_size,
                                             max_steps=max_steps, seed=seed, save_every=save_every)))

    run_command(body, json_out, _render_prune, threads)


# --- export ----------------------------------------------------------------------------------
@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint directory to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output export directory.")],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="paddle (static graph for Paddle Inference), onnx, or all.")] = "all",
    opset: Annotated[int, typer.Option(help="ONNX opset (17 emits LayerNormalization).")] = 17,
    tolerance: Annotated[float, typer.Option(
        help="Largest logit difference against the dygraph model that verification accepts.")] = 1e-3,
    layout: Annotated[Optional[str], typer.Option(
        "--layout", help="Also write the checkpoint in this layout under checkpoint/ for a serving engine or "
                         "library (paddlenlp, paddleformers, hf, ours); the manifest says which.")] = None,
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a checkpoint to a Paddle static graph and/or ONNX, verified against dygraph."""

    def body():
        from .export import ExportConfig, export_checkpoint

        return export_checkpoint(ExportConfig(checkpoint=checkpoint, out=out, format=format,
                                              opset=opset, tolerance=tolerance, overwrite=overwrite,
                                              layout=layout))

    run_command(body, json_out, _render_export, threads)


# --- evaluate --------------------------------------------------------------------------------
def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--batch-sizes takes comma-separated integers, got '{text}'") from None


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(
        help="A checkpoint directory (runs in Paddle dygraph) or an export directory (runs on a "
             "runtime, with latency and throughput).")],
    task: TaskOpt = None,
    data: DataOpt = None,
    split: Annotated[Optional[str], typer.Option(
        help="Which split: train, dev or test (default: the task's held-out split).")] = None,
    device: Annotated[str, typer.Option(help="Export only: cpu, gpu or npu.")] = "cpu",
    backend: Annotated[Optional[str], typer.Option(
        help="Export only: paddle (Paddle Inference) or onnxruntime. Default: onnxruntime on "
             "cpu, paddle on gpu/npu; the other one when the export has only its files.")] = None,
    batch_sizes: Annotated[str, typer.Option(
        help="Export only: batch sizes to time, comma-separated.")] = "1,32",
    seq_len: Annotated[int, typer.Option(help="Export only: sequence length for timing.")] = 128,
    iterations: Annotated[int, typer.Option(help="Export only: timed runs per batch size.")] = 30,
    warmup: Annotated[int, typer.Option(help="Export only: untimed runs first.")] = 5,
    tensorrt: Annotated[bool, typer.Option(help="Export only, gpu: use TensorRT (FP16).")] = False,
    no_mkldnn: Annotated[bool, typer.Option(
        "--no-mkldnn", help="Export only, paddle on cpu: plain kernels instead of oneDNN.")] = False,
    profile: Annotated[bool, typer.Option(help="Export only: show where the time goes, per operator.")] = False,
    top: Annotated[int, typer.Option(help="With --profile: how many operators to list.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass for the metric.")] = 32,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure the task metric on held-out data; for an export also latency p50/p95/p99 and QPS."""

    def body():
        from .export import MANIFEST_FILE

        if (path / MANIFEST_FILE).is_file():
            from .runtime.backends import RuntimeConfig
            from .runtime.evaluate_export import EvaluateExportConfig, evaluate_export
            from .runtime.latency import LatencyConfig

            return evaluate_export(EvaluateExportConfig(
                export_dir=path, task=task, data=_str(data), split=split, eval_batch_size=batch_size,
                runtime=RuntimeConfig(device=device, backend=backend, threads=threads,
                                      tensorrt=tensorrt, mkldnn=not no_mkldnn, profile=profile),
                latency=LatencyConfig(batch_sizes=_batch_sizes(batch_sizes), seq_len=seq_len,
                                      iterations=iterations, warmup=warmup),
                top_ops=top))
        if device != "cpu" or backend:
            raise UserError(f"{path} is a checkpoint (runs in Paddle dygraph on cpu); export it "
                            f"first to evaluate on --device/--backend")
        from .evaluate import evaluate_checkpoint

        return evaluate_checkpoint(path, task, _str(data), split, batch_size)

    run_command(body, json_out, _render_evaluation, threads)


# --- bench -----------------------------------------------------------------------------------
@app.command()
def bench(
    export_dir: Annotated[Path, typer.Argument(help="An export directory.")],
    concurrency: Annotated[int, typer.Option(help="Client threads sending single requests.")] = 8,
    requests: Annotated[int, typer.Option(help="Requests in total (held-out texts).")] = 400,
    max_batch: Annotated[int, typer.Option(help="Largest batch the batcher forms.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        help="Longest a request waits for others to join its batch.")] = 5.0,
    device: Annotated[str, typer.Option(help="cpu, gpu or npu.")] = "cpu",
    backend: Annotated[Optional[str], typer.Option(help="paddle or onnxruntime.")] = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Serving-like load: dynamic batching vs one request per run (QPS, latency percentiles)."""

    def body():
        from .runtime.backends import RuntimeConfig
        from .runtime.bench import BenchConfig, bench_export
        from .runtime.dynamic_batching import BatcherConfig

        return bench_export(BenchConfig(
            export_dir=export_dir, concurrency=concurrency, requests=requests,
            batcher=BatcherConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
            runtime=RuntimeConfig(device=device, backend=backend, threads=threads)))

    run_command(body, json_out, _render_bench, threads)


# --- run / demo / report ----------------------------------------------------------------------
@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see recipes/).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default: runs/NAME).")] = None,
    force: Annotated[bool, typer.Option(help="Run finished stages again instead of resuming.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a recipe: each stage writes its checkpoint under the run directory; re-running resumes."""

    def body():
        from .pipeline import run_recipe

        return run_recipe(recipe, out, force)

    run_command(body, json_out, _render_run)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    force: Annotated[bool, typer.Option(help="Run finished stages again instead of resuming.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The embedded demo: teacher -> Mini student -> pruned -> QAT int8 -> ONNX, on demo:sentiment."""

    def body():
        from .pipeline import run_recipe

        return run_recipe(Path(__file__).parent / "recipes" / "demo.yaml", out, force)

    run_command(body, json_out, _render_run)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (from `run` or `demo`).")],
    json_out: JsonOpt = False,
) -> None:
    """Show a run's report: params, size, accuracy and its loss, latency, QPS per variant."""

    def body():
        from .report import load_report, write_report

        result = load_report(run_dir)
        write_report(run_dir, result)  # regenerate report.md and report.png
        return result

    run_command(body, json_out, _render_report)


# --- info ------------------------------------------------------------------------------------
@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A checkpoint directory.")],
    json_out: JsonOpt = False,
) -> None:
    """Architecture, parameters, heads per layer, size on disk and lineage of a checkpoint."""

    def body():
        from .inspect_checkpoint import describe_checkpoint

        return describe_checkpoint(path)

    run_command(body, json_out, _render_info)


# --- rendering -------------------------------------------------------------------------------
def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _task_spec(task: str | None, data: Path | None):
    """The task named by --task/--data, or None to use the checkpoint's own."""
    from .finetune import resolve_task

    return resolve_task(task, _str(data), None) if task or data else None


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


def _render_stage(result: dict[str, Any]) -> None:
    console = _console()
    console.print(_metrics_table(result["metrics"], f"{result['stage']}: {result['task']}"))
    p = result["parameters"]
    console.print(f"parameters: {p['total']:,} total, {p['non_embedding']:,} non-embedding")
    console.print(f"trained {result['steps']} steps in {result['train_seconds']:.0f} s; "
                  f"wrote [bold]{result['out']}[/bold]")


def _render_pretrain(result: dict[str, Any]) -> None:
    p = result["parameters"]
    _console().print(f"pre-trained on {result['texts']:,} texts for {result['steps']} steps in "
                     f"{result['train_seconds']:.0f} s (final masked-LM loss {result['final_loss']:.3f}); "
                     f"{p['non_embedding']:,} non-embedding parameters; wrote [bold]{result['out']}[/bold]")


def _render_evaluation(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    where = f"{result['backend']} on {result['device']}"
    console.print(_metrics_table({result["split"]: result["metrics"]}, f"{result['task']}: {where}"))
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
    if result.get("profile"):
        table = Table(title="where the time goes (per operator type)")
        for col in ("op", "total ms", "calls", "share"):
            table.add_column(col, justify="right")
        for row in result["profile"]:
            table.add_row(row["op"], f"{row['total_ms']:.2f}", str(row["calls"]), f"{row['share']:.1%}")
        console.print(table)


def _render_quantize(result: dict[str, Any]) -> None:
    console = _console()
    kind = "fp16" if result["scheme"].get("dtype") == "fp16" else "int8, fake-quant"
    tables = {f"{split} ({kind})": m for split, m in result["metrics"].items()}
    tables.update({f"{split} (FP32 parent)": m for split, m in result["parent_metrics"].items()})
    console.print(_metrics_table(tables, f"{result['stage']}: {result['task']}"))
    s = result["scheme"]
    if s.get("dtype") == "fp16":
        console.print(f"{result['quantized_layers']} tensors in FP16; {result['delta_points']:+.2f} points vs FP32")
    else:
        console.print(f"{result['quantized_layers']} Linear layers quantized: {s['weight_bits']}-bit weights per "
                      f"channel{' (reduce_range)' if s['reduce_range'] else ''}, {s['activation_bits']}-bit "
                      f"activations ({s['activation_observer']}); {result['delta_points']:+.2f} points vs FP32")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


def _render_distill(result: dict[str, Any]) -> None:
    console = _console()
    m = result["metric"]
    p = result["parameters"]
    console.print(f"teacher {result['teacher_metrics'][m]:.4f}  student {result['student_metrics'][m]:.4f} "
                  f"({result['percent_of_teacher']:.1f}% of the teacher)"
                  + (f"  no-distillation baseline {result['baseline']['metrics'][m]:.4f}" if result["baseline"] else ""))
    console.print(f"non-embedding parameters: teacher {p['teacher']['non_embedding']:,}, student "
                  f"{p['student']['non_embedding']:,} ({p['non_embedding_ratio']:.1%})")
    if result.get("latency"):
        for t, s in zip(result["latency"]["teacher"], result["latency"]["student"]):
            console.print(f"batch {t['batch_size']}: teacher {t['p50_ms']:.2f} ms -> student {s['p50_ms']:.2f} ms "
                          f"({t['p50_ms'] / s['p50_ms']:.2f}x)")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


def _render_prune(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"prune: {result['task']}")
    for col in ("layer", "heads before", "heads after", "ffn before", "ffn after"):
        table.add_column(col, justify="right")
    for i, row in enumerate(zip(result["heads_before"], result["heads_after"], result["ffn_before"],
                                result["ffn_after"])):
        table.add_row(str(i), *(str(v) for v in row))
    console.print(table)
    b, a = result["parameters_before"], result["parameters_after"]
    console.print(f"parameters: {b['total']:,} -> {a['total']:,} total "
                  f"({result['removed_fraction_total']:.1%} fewer); {b['non_embedding']:,} -> "
                  f"{a['non_embedding']:,} non-embedding ({result['removed_fraction_non_embedding']:.1%} "
                  f"fewer); {result['removed_fraction_heads']:.1%} of heads removed")
    acc, m = result["accuracy"], result["metric"]
    console.print(f"{m}: parent {acc['parent'][m]:.4f}, pruned {acc['before_recovery'][m]:.4f} "
                  f"({result['delta_points_before_recovery']:+.2f}), after recovery "
                  f"{acc['after_recovery'][m]:.4f} ({result['delta_points']:+.2f} points)")
    if result.get("latency"):
        for p, q in zip(result["latency"]["parent"], result["latency"]["pruned"]):
            console.print(f"batch {p['batch_size']}: parent {p['p50_ms']:.2f} ms -> pruned {q['p50_ms']:.2f} ms "
                          f"({p['p50_ms'] / q['p50_ms']:.2f}x)")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.0f} s")


def _render_report(result: dict[str, Any]) -> None:
    from .report import rich_table

    console = _console()
    console.print(rich_table(result))
    console.print(f"report.md, report.json and report.png in {result['run_dir']}")


def _render_run(result: dict[str, Any]) -> None:
    console = _console()
    for name, r in result["stages"].items():
        console.print(f"{name}: {r.get('stage', 'evaluate')} in {r.get('stage_seconds', 0):.0f} s")
    if result.get("report"):
        _render_report(result["report"])
    console.print(f"run finished in {result['seconds']:.0f} s: {result['run_dir']}")


def _render_export(result: dict[str, Any]) -> None:
    console = _console()
    for name, v in result["verification"].items():
        console.print(f"{name}: verified, max logit difference {v['max_abs_diff']:.2e}, "
                      f"predictions agree {v['prediction_agreement']:.1%} on {v['samples']} samples")
    console.print(f"wrote [bold]{result['out']}[/bold] in {result['seconds']:.1f} s")


def _render_bench(result: dict[str, Any]) -> None:
    from rich.table import Table

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


def _render_info(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    p = result["parameters"]
    console.print(f"[bold]{result['path']}[/bold]: {result['architecture']} "
                  f"({result['model_type']}), {result['layers']} layers, hidden {result['hidden_size']}, "
                  f"vocab {result['vocab_size']}")
    console.print(f"parameters: {p['total']:,} total, {p['non_embedding']:,} non-embedding; "
                  f"{result['size_bytes'] / 1e6:.2f} MB on disk")
    if result.get("task"):
        console.print(f"task: {result['task']['name']}  labels: {', '.join(result['labels'])}")
    layers = Table(title="layers")
    for col in ("layer", "heads", "ffn"):
        layers.add_column(col, justify="right")
    for i, (h, f) in enumerate(zip(result["heads_per_layer"], result["ffn_per_layer"])):
        layers.add_row(str(i), str(h), str(f))
    console.print(layers)
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


def entry() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
