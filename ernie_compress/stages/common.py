"""Options every stage shares, declared once (see ``options.py``), and the stage skeleton's parts.

A stage's config inherits the groups it needs: ``data.task_options.TaskOptions`` (which task and
data), :class:`RunOptions` (seed, threads), :class:`CheckpointOutput` (where the new checkpoint goes and in
which layout), :class:`ThreadsOption` and :class:`TrainingOptions` (the loop's batch, step limit and resumable state).
Everything else a stage declares itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..losses import KD_TEMPERATURE_HELP
from ..models.layouts import LAYOUT_HELP, LAYOUTS
from ..options import fail, option
from ..paddle_env import TRAINING_DEVICES
from ..runtime.backends import ThreadsOption
from ..training_loop import LoopConfig

@dataclass(frozen=True, kw_only=True)
class RunOptions(ThreadsOption):
    seed: int = option(42, scope="run", help="Random seed; the same seed gives the same result.")


@dataclass(frozen=True, kw_only=True)
class CheckpointOutput:
    out: Path = option(short="-o", scope="cli", help="Output checkpoint directory.")
    layout: str = option("ours", choices=tuple(LAYOUTS), help=LAYOUT_HELP)
    overwrite: bool = option(False, scope="cli", help="Replace --out if it exists (default: refuse).")


@dataclass(frozen=True, kw_only=True)
class TokenizerOption:
    """Where the input checkpoint's tokenizer is, when its folder holds only weights and config."""

    tokenizer: Path | None = option(None, scope="cli", help=(
        "Folder holding the tokenizer (vocab.txt or tokenizer.model) of a checkpoint that has weights but "
        "no tokenizer (default: the checkpoint's own). Checked against the model's vocab_size before any "
        "weight is read; the output gets a copy."))


@dataclass(frozen=True, kw_only=True)
class ProcessOptions:
    """How many processes a stage runs on, on this machine and across machines (``distributed.py``):
    training divides each global batch between them, GPTQ calibration its samples and solves."""

    nproc: int = option(1, at_least=1, scope="run", help=(
        "Processes on this machine (paddle.distributed: gloo on cpu, NCCL on gpu). Training: data-parallel, "
        "--batch-size stays the global batch. Weight-only GPTQ: the calibration samples and the per-Linear "
        "solves are divided, the Hessians summed (the result equals one process's). Several machines: "
        "--nnodes, or `python -m paddle.distributed.launch` (docs/distributed.md)."))
    nnodes: int = option(1, at_least=1, scope="run", help=(
        "Machines in the run: start the same command on each with its --node-rank and the same --master "
        "(each runs --nproc processes; paddle.distributed.launch underneath)."))
    master: str | None = option(None, scope="run", help="HOST:PORT that node 0 serves and every node reaches "
                                                        "(with --nnodes > 1).")
    node_rank: int = option(0, at_least=0, scope="run", help="This machine's number: 0 .. --nnodes - 1.")

    @property
    def processes(self) -> int:
        """Ranks in the whole run."""
        return self.nproc * self.nnodes

    def check_processes(self) -> None:
        if self.nnodes > 1:
            host, _, port = (self.master or "").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                fail("{nnodes} > 1 needs {master} HOST:PORT (node 0's address and a free port)", "nnodes", "master")
            if self.node_rank >= self.nnodes:
                fail(f"{{node_rank}} {self.node_rank} must be below {{nnodes}} {self.nnodes}", "node_rank", "nnodes")


@dataclass(frozen=True, kw_only=True)
class AcceleratorOptions(ProcessOptions):
    """Where and how a training stage runs (``distributed.py``, ``paddle_env.training_device``)."""

    device: str | None = option(None, choices=TRAINING_DEVICES, scope="run", help=(
        "Where training runs: cpu, gpu or npu (default: gpu when this Paddle has CUDA and sees one, else cpu). "
        "Teacher and student share it."))
    amp: str = option("off", choices=("off", "fp16", "bf16"), scope="run", help=(
        "Mixed precision on a gpu/npu: fp16 (with loss scaling) or bf16; master weights stay FP32 (refused on "
        "cpu)."))
    grad_accum: int = option(1, at_least=1, help=(
        "Micro-batches per optimizer step: a global batch larger than memory, same result."))

    def check_amp(self, device: str | None) -> None:
        """Mixed precision needs an accelerator: checked on the options, and again on the device
        ``--device`` resolved to when it was left out."""
        if self.amp != "off" and device == "cpu":
            fail(f"{{amp}} {self.amp} needs {{device}} gpu or npu: Paddle has no CPU kernels for {self.amp} "
                 f"training", "amp", "device")

    def check_accelerator(self) -> None:
        self.check_amp(self.device)
        self.check_processes()
        batch = getattr(self, "batch_size", None)
        if batch is not None and batch % (self.processes * self.grad_accum):
            fail(f"{{batch_size}} {batch} (the global batch) must divide by {{nproc}} x {{nnodes}} x "
                 f"{{grad_accum}} ({self.nproc} x {self.nnodes} x {self.grad_accum})",
                 "batch_size", "nproc", "nnodes", "grad_accum")


@dataclass(frozen=True, kw_only=True)
class ResumeOption:
    """Continuing an interrupted run from the state it saved beside ``--out`` (``training_loop.resumable``)."""

    resume: bool = option(False, scope="cli", help=(
        "Continue an interrupted run from the state it saved beside --out (training: the last saved step; a "
        "streamed quantize: the last layer written, its shards checked), with the same options and seed; a "
        "recipe resumes by itself."))


@dataclass(frozen=True, kw_only=True)
class TrainingOptions(ResumeOption, AcceleratorOptions, RunOptions):
    """The loop's options; a stage declares its own ``epochs`` (or ``recover_epochs``) and ``lr``,
    whose defaults differ between stages."""

    batch_size: int = option(32, at_least=1, help="Examples per optimizer step.")
    max_steps: int | None = option(None, at_least=1, help="Stop after this many optimizer steps.")
    save_every: int = option(200, at_least=1, help="Save a resumable training state every N steps (beside "
                                                   "--out; removed on success).")

    def loop_config(self, epochs: int, lr: float, **extra) -> LoopConfig:
        """The training loop's settings for this stage."""
        return LoopConfig(epochs=epochs, batch_size=self.batch_size, learning_rate=lr, seed=self.seed,
                          max_steps=self.max_steps, save_every=self.save_every, grad_accum=self.grad_accum,
                          amp=self.amp, **extra)



@dataclass(frozen=True, kw_only=True)
class ParentKDOptions:
    """Recovery / QAT loss ``(1 - kd_weight) * CE + kd_weight * KD`` against the FP32 parent's logits
    (Hinton et al. 2015), when ``distill_from_parent`` (declared by the stage: its default differs)."""

    kd_weight: float = option(0.5, at_least=0, at_most=1, help="With --distill-from-parent: weight of the KD "
                                                               "term (the hard-label loss gets 1 - this).")
    kd_temperature: float | None = option(None, above=0, help="With --distill-from-parent: " + KD_TEMPERATURE_HELP)
