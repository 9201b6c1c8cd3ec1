"""Weight-only GPTQ, streamed: llm-compressor's sequential pipeline, one decoder layer in memory at a time.

The calibration batches are embedded with the checkpoint's embedding (the "rest" group, whose output
head is then rounded to nearest on its grid, int8 per vocabulary entry by default, and written as the
streamed RTN does). Then, for each
decoder layer in order: its tensors are read (``lazy_checkpoint.py``) into one decoder layer built by
the family (``models.layer_from_state``), the calibration hidden states are run through it while
:func:`~.gptq.observe_hessians` sums each Linear's Hessian (a routed expert's from the non-padding
tokens routed to it, shared experts and dense Linears from every non-padding token: the in-memory
functions themselves), its Linears are rounded by GPTQ (:func:`~.gptq.gptq_roundings`: an expert
with too few tokens to nearest), the layer's outputs are recomputed *with the quantized weights* and
become the next layer's inputs, and its tensors are handed to the writer and dropped. Rotary angles
and the causal + padding attention bias come from the model's own ``layer_inputs``; padding is left out
of every Hessian as in memory.

Relation to the in-memory GPTQ (``stages/quantize.py``): that path takes every Hessian from one
pass through the FP32 parent, so layer i sees the *float* outputs of the float layers before it. Here
layer i sees the outputs of layers 0..i-1 already quantized (as llm-compressor's sequential pipeline
and GPTQModel do, and the GPTQ paper's own code: each layer corrects for the error of those before it).
Layer 0 (whose inputs are the embeddings) and the head are therefore identical to the in-memory
result; later layers differ by design. The streamed result equals the in-memory computation run
sequentially: the whole model with layers < i already quantized, calibrated on layer i's Linears
(``tests/quantize/test_sequential.py`` computes that reference with ``collect_hessians`` on the
full model and finds the dequantized weights equal).

Several ranks (``--nproc``/``--nnodes``, ``calibration_ranks.py``): each embeds and carries its share of
the calibration batches, the Hessians are summed across ranks and the solves divided; every rank rounds the
same layer at the same time (the walk is in lock step) and rank 0's writer writes it.

Memory: one layer (its tensors, the layer module, its Hessians, one GPTQ solve) plus the calibration
hidden states (samples x seq x hidden x 4 bytes, held in memory for the whole run) -- estimated from the
headers by :func:`gptq_memory_need` and refused up front by ``--max-memory``. A progress bar advances per
layer with the peak resident memory so far and the layer's seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..lazy_checkpoint import REST, LazyCheckpoint, layer_of
from ..machine import peak_resident_bytes
from ..models import layer_from_state
from ..models.families import family_of
from ..progress import progress_bar
from .calibration_ranks import solve_divided
from .gptq import gptq_roundings, observe_hessians
from .streaming import GIB, ROUNDING_FIXED, WRITE_FACTOR, MemoryNeed, group_bytes
from .weight_only import INT8_HEAD, HeadGrid, round_head_, round_linears_, store_codes_

FLOAT64 = 8
# bytes of one GPTQ solve per float64 element of H [in, in] (H's copy, its inverse, the Cholesky factor
# and its transpose) and of the weight [in, out] (its float64 copy, the outer-product update, the result)
SOLVE_H, SOLVE_W = 4, 3
# what running any layer adds to the interpreter with Paddle imported, whatever its size: the BLAS library's
# per-thread buffers and the allocators' retained pools (measured 60-70 MB on a 1-layer model of width 32)
RUN_OVERHEAD = 96 << 20


@dataclass(frozen=True)
class GPTQSettings:
    bits: int
    group_size: int | None
    min_expert_tokens: int | None
    head: HeadGrid = INT8_HEAD  # the output head's grid (rounded to nearest)


@dataclass
class Calibration:
    """The calibration batches as the current layer sees them."""

    real: list  # per batch: [b*s] bool, the non-padding positions
    inputs: list  # per batch: (cos [s, d], sin [s, d], bias [b, 1, s, s]) from the model's layer_inputs
    hidden: list  # per batch: [b, s, hidden] float32 paddle tensor, the current layer's input


@dataclass
class SequentialRecord:
    """What the walk did so far: each Linear's rounding ("gptq"/"rtn", None: the function, which holds the
    Linear's Hessian, is dropped with its layer), per routed expert its token record, and the seconds each
    layer took."""

    roundings: dict = field(default_factory=dict)
    experts: dict = field(default_factory=dict)
    seconds: list = field(default_factory=list)


def embed(lazy: LazyCheckpoint, rest: dict[str, np.ndarray] | None, batches, pad_id: int) -> Calibration:
    """The calibration batches (``Batch``) embedded with the rest group's embedding table (a row gather,
    as ``nn.Embedding`` does), with the inputs every layer reads besides its hidden states. Without
    ``rest`` (a resumed walk), no hidden states: they come from the saved walk."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    family = family_of(lazy.config)
    module = family.module()
    table = None if rest is None else np.asarray(rest[family.word_embedding], dtype=np.float32)  # [vocab, hidden]
    calibration = Calibration([], [], [])
    for batch in batches:
        ids = paddle.to_tensor(batch.input_ids)  # [b, s]
        calibration.real.append((batch.input_ids != pad_id).reshape(-1))
        calibration.inputs.append(module.layer_inputs(lazy.config, ids))
        if table is not None:
            calibration.hidden.append(paddle.to_tensor(table[batch.input_ids]))  # [b, s, hidden]
    return calibration


@dataclass(frozen=True)
class SavedWalk:
    """What a streamed GPTQ walk saves so that ``--resume`` can continue it (``shard_progress.py`` keeps the
    shards). Before group g is handed to the writer: the calibration hidden states that are group g+1's
    inputs (this rank's, one ``.npz``) and group g's rounding record (one ``.json``); the hidden states of
    groups before g are then removed (a resume after group g's shard is recorded needs group g+1's, one
    interrupted before needs group g's). Files are named by the run's ``tag`` and the rank (every rank
    writes its own: ranks on other machines have their own folders)."""

    directory: Path
    tag: str  # the run's fingerprint digest (shard_progress.fingerprint_tag)
    rank: int

    def _hidden(self, group: int) -> Path:
        return self.directory / f"gptq-{self.tag}-hidden-{group:05d}-rank{self.rank}.npz"

    def _record(self, group: int) -> Path:
        return self.directory / f"gptq-{self.tag}-record-{group:05d}-rank{self.rank}.json"

    def save(self, group: int, hidden: list, record: dict | None) -> None:
        """Group ``group``'s inputs (``hidden``: per batch [b, s, hidden]; None after the last layer) and the
        rounding record of the group before it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if record is not None:
            _replace(self._record(group - 1), lambda f: f.write(json.dumps(record).encode()))
        if hidden is not None:
            _replace(self._hidden(group), lambda f: np.savez(f, *[h.numpy() for h in hidden]))
        for old in self.directory.glob(f"gptq-{self.tag}-hidden-*-rank{self.rank}.npz"):
            if int(old.name.split("-")[3]) < group - 1:
                old.unlink()

    def remove(self) -> None:
        """This rank's files (the run is complete)."""
        for path in self.directory.glob(f"gptq-{self.tag}-*-rank{self.rank}.*"):
            path.unlink(missing_ok=True)

    def has(self, group: int) -> bool:
        return self._hidden(group).is_file()

    def load(self, group: int) -> tuple[list, SequentialRecord]:
        """Group ``group``'s inputs (as paddle tensors) and the record of the groups before it."""
        from ..paddle_env import import_paddle

        paddle = import_paddle()
        with np.load(self._hidden(group)) as saved:
            hidden = [paddle.to_tensor(saved[f"arr_{i}"]) for i in range(len(saved.files))]
        record = SequentialRecord()
        for earlier in range(1, group):
            done = json.loads(self._record(earlier).read_text(encoding="utf-8"))
            record.roundings.update((name, (how, None)) for name, how in done["roundings"].items())
            record.experts.update(done["experts"])
            record.seconds.append(done["seconds"])
        return hidden, record


def _replace(path: Path, write) -> None:
    """Write ``path`` through a temporary sibling renamed over it (a kill mid-write leaves the old one)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


def quantize_layer_(lazy: LazyCheckpoint, index: int, state: dict[str, np.ndarray], names: list[str],
                   calibration: Calibration, settings: GPTQSettings, kept: dict | None = None) -> tuple[dict, dict]:
    """In place: layer ``index``'s Linears ``names`` in ``state`` (its tensors, full names) rounded by
    GPTQ from the Hessians of ``calibration``'s hidden states, and ``calibration.hidden`` replaced by
    the layer's outputs computed with the rounded weights. Returns (roundings, experts) as
    :func:`~.gptq.gptq_roundings` gives them."""
    config, family = lazy.config, family_of(lazy.config)
    layer = layer_from_state(config, index, state, str(lazy.path))
    prefix = family.names.layer(index)
    sublayers = {prefix + name: sub for name, sub in layer.named_sublayers()}
    passes = [(real, _forward(layer, hidden, inputs))
              for real, hidden, inputs in zip(calibration.real, calibration.hidden, calibration.inputs)]
    seen = observe_hessians(sublayers, family, names, passes, skip_starved=True,
                            min_expert_tokens=settings.min_expert_tokens)
    widths = {name: sublayers[name].weight.shape[0] for name in names}
    roundings, experts = gptq_roundings(family, names, seen, widths, settings.bits, settings.group_size,
                                        settings.min_expert_tokens)
    roundings = solve_divided(roundings, state, settings.group_size)  # several ranks: each solves its share
    del seen, passes
    round_linears_(state, {name: rounding for name, (_, rounding) in roundings.items()}, settings.bits,
                   settings.group_size, kept)
    layer.set_state_dict({key[len(prefix):]: value for key, value in state.items()})  # the rounded weights
    _propagate(layer, calibration)
    return roundings, experts


def _forward(layer, hidden, inputs):
    return lambda: layer(hidden, *inputs)


def _propagate(layer, calibration: Calibration) -> None:
    """Each batch's hidden states replaced by ``layer``'s outputs on them (one batch alive at a time)."""
    from ..paddle_env import import_paddle

    paddle = import_paddle()
    with paddle.no_grad():
        for i, inputs in enumerate(calibration.inputs):
            calibration.hidden[i] = layer(calibration.hidden[i], *inputs)  # [b, s, hidden]


def stream_gptq(lazy: LazyCheckpoint, names: list[str], batches, pad_id: int, settings: GPTQSettings,
                record: SequentialRecord, saved: SavedWalk | None = None, start: int = 0,
                store: dict[str, dict] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each group's tensors in our layout, the rest first (its head rounded to ``settings.head``), then each
    decoder layer with its Linears (``names``) rounded by GPTQ on the quantized model's hidden states (module
    docstring): one group in memory at a time. ``record`` is filled as the layers are done. With ``saved``
    the walk's state is kept for a resume; ``start`` > 0 continues a walk from group ``start`` with the
    hidden states and records ``saved`` holds. With ``store`` (the scheme's weights) each group is handed
    over with its codes stored (``models/stored_codes.py``) instead of its dequantized weights."""
    groups = list(lazy.groups)  # the rest, then the layers
    if start == 0:
        rest = lazy.load_group(REST)
        calibration = embed(lazy, rest, batches, pad_id)
        kept = {} if store is not None else None
        round_head_(rest, lazy.config, kept, settings.head)
        if saved is not None:
            saved.save(1, calibration.hidden, None)
        yield rest if store is None else store_codes_(rest, kept, store)
        del rest
    else:
        calibration = embed(lazy, None, batches, pad_id)
        calibration.hidden, earlier = saved.load(start)
        record.roundings.update(earlier.roundings)
        record.experts.update(earlier.experts)
        record.seconds.extend(earlier.seconds)
    todo = groups[max(start, 1):]
    with progress_bar(len(todo), "gptq layer by layer" + (f" (from layer {start - 1})" if start > 1 else "")) as bar:
        for group in todo:
            started = time.perf_counter()
            index = int(group.split(".", 1)[1])
            state = lazy.load_group(group)
            mine = [name for name in names if layer_of(name) == index]
            kept = {} if store is not None else None
            roundings, experts = quantize_layer_(lazy, index, state, mine, calibration, settings, kept)
            hows = {name: how for name, (how, _) in roundings.items()}
            record.roundings.update((name, (how, None)) for name, how in hows.items())  # not the Hessians
            record.experts.update(experts)
            record.seconds.append(time.perf_counter() - started)
            if saved is not None:
                last = groups.index(group) == len(groups) - 1
                saved.save(groups.index(group) + 1, None if last else calibration.hidden,
                           {"roundings": hows, "experts": experts, "seconds": record.seconds[-1]})
            bar.advance({"peak GiB": peak_resident_bytes() / GIB, "s/layer": record.seconds[-1]})
            yield state if store is None else store_codes_(state, kept, store)
            del state


def gptq_memory_need(lazy: LazyCheckpoint, names: list[str], batches) -> MemoryNeed:
    """The group of the highest estimated peak of :func:`stream_gptq`: the calibration hidden states
    (every batch's [b, s, hidden] float32, held throughout) plus, for the rest, what the streamed RTN
    needs; for a layer, its tensors read, loaded into the layer module and written (``WRITE_FACTOR`` + 1
    copies), its Linears' Hessians (float64 [in, in] each, summed and scaled: 2 copies), the largest GPTQ
    solve, one batch's forward through the layer and :data:`RUN_OVERHEAD`. Paddle itself is not counted:
    the caller measures its baseline with Paddle imported."""
    config = lazy.config
    activations = sum(b.input_ids.size for b in batches) * config.hidden_size * 4
    forward = max((_forward_bytes(config, b.input_ids.shape) for b in batches), default=0)
    sizes, mine = group_bytes(lazy, set(names)), set(names)
    need = {}
    for group, (total, largest) in sizes.items():
        if group == REST:
            need[group] = WRITE_FACTOR * total + 3 * largest + ROUNDING_FIXED + activations
            continue
        linears = [shape for name, (shape, _) in lazy.group_specs(group).items()
                   if name.endswith(".weight") and name[:-len(".weight")] in mine]  # [in, out] each
        hessians = 2 * FLOAT64 * sum(rows * rows for rows, _ in linears)
        solve = max((FLOAT64 * (SOLVE_H * rows * rows + SOLVE_W * rows * cols) for rows, cols in linears), default=0)
        need[group] = (WRITE_FACTOR + 1) * total + hessians + solve + activations + forward + RUN_OVERHEAD
    group = max(need, key=need.get)
    return MemoryNeed(group, need[group], "calibration hidden states, Hessians and GPTQ solve")


def _forward_bytes(config, shape: tuple[int, int]) -> int:
    """One batch [b, s] through one decoder layer: a dozen [b, s, hidden] temporaries, the widest MLP's
    [b, s, 2 x ffn] (an MoE layer's tokens are gathered once per chosen expert) and three attention
    score tensors [b, heads, s, s], float32."""
    rows, seq = shape
    ffn = max(config.intermediate_size, getattr(config, "moe_intermediate_size", 0) or 0)
    k = getattr(config, "moe_k", 1) or 1
    tokens = rows * seq
    return 4 * (tokens * (12 + 2 * k) * config.hidden_size + tokens * 4 * ffn
                + 3 * rows * config.num_attention_heads * seq * seq)


def layer_seconds(record: SequentialRecord) -> float:
    """The mean seconds per decoder layer of a finished walk."""
    return round(sum(record.seconds) / max(1, len(record.seconds)), 2)
