"""``quantize --weight-only ... --method gptq --stream`` (quantize/sequential.py): GPTQ layer by layer, each
layer calibrated on the outputs of the layers before it *already quantized*.

The in-memory GPTQ calibrates every layer on the FP32 model in one pass, so the two agree on layer 0 and
the head only. The reference for the whole result is the in-memory computation run sequentially, built
here from the full model (its own embedding, rotary angles, causal + padding mask and MoE routing): for
each layer i, ``collect_hessians`` on layer i's Linears through the whole model whose layers < i hold
their rounded weights, then the same roundings. The streamed checkpoint must hold exactly its tensors
(byte for byte: the same Paddle ops on the same inputs, batch by batch)."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.lazy_checkpoint import layer_of, open_checkpoint
from ernie_compress.models import load_state_
from ernie_compress.models.families import family_of
from ernie_compress.quantize.gptq import calibration_batches, collect_hessians, gptq_roundings
from ernie_compress.quantize.scheme import quantized_linear_names
from ernie_compress.quantize.sequential import gptq_memory_need
from ernie_compress.quantize.streaming import quantized_linears
from ernie_compress.quantize.weight_only import round_head_, round_linears_
from ernie_compress.stages.skeleton import start_from
from tests.helpers import cli_json
from tests.quantize.test_streaming import _refused, parents  # noqa: F401  (the fixture: tied, untied, moe)

GRID = (4, 16)  # int4, --group-size 16
SAMPLES = 40  # two calibration batches (32 + 8 rows), each padded to its longest row


def sequential_reference(parent, bits: int, group: int, min_tokens: int | None = None) -> dict[str, np.ndarray]:
    """The parent's weights GPTQ-rounded layer after layer through the full model (module docstring)."""
    start = start_from(parent, None)
    model, state = start.model, dict(start.parent.state)
    family, names = family_of(model.config), quantized_linear_names(model)
    batches = calibration_batches(start.splits["train"], SAMPLES)
    sublayers = dict(model.named_sublayers())
    for i in range(model.config.num_hidden_layers):
        mine = [name for name in names if layer_of(name) == i]
        seen = collect_hessians(model, mine, batches, start.tokenizer.pad_id)
        widths = {name: sublayers[name].weight.shape[0] for name in mine}
        roundings, _ = gptq_roundings(family, mine, seen, widths, bits, group, min_tokens)
        round_linears_(state, {name: how for name, (_, how) in roundings.items()}, bits, group)
        load_state_(model, state, "reference")  # layers 0..i rounded for the next layer's calibration
    round_head_(state, model.config)
    return state


def _quantize(parent, out, stream: bool, *extra: str) -> dict:
    return cli_json(["quantize", str(parent), "--weight-only", "int4", "--group-size", str(GRID[1]), "--method",
                     "gptq", "--calib-samples", str(SAMPLES), "--out", str(out), *(["--stream"] if stream else []),
                     *extra])


@pytest.mark.parametrize(("model", "min_tokens"), [("tied", None), ("untied", None), ("moe", None), ("moe", 250)])
def test_streamed_gptq_equals_the_sequential_reference(parents, tmp_path, model, min_tokens):  # noqa: F811
    """With --min-expert-tokens 250 some experts of the MoE get fewer tokens and are rounded to nearest."""
    extra = ["--min-expert-tokens", str(min_tokens)] if min_tokens else []
    result = _quantize(parents[model], tmp_path / "s", True, *extra)
    streamed = load_checkpoint(tmp_path / "s").state
    reference = sequential_reference(parents[model], *GRID, min_tokens)
    assert sorted(streamed) == sorted(reference)
    for name, value in reference.items():
        assert streamed[name].dtype == value.dtype, name
        assert streamed[name].tobytes() == value.tobytes(), name  # exactly: the same ops on the same inputs
    assert result["scheme"]["method"] == "weight_only_gptq" and result["delta_points"] is None
    assert result["quantized_layers"] == result["scheme"]["linears"] == len(result["scheme"]["weights"]) - 1
    assert ("rtn" in result["scheme"]["rounding"]) == bool(min_tokens), result["scheme"]["rounding"]


def test_only_layer_0_and_the_head_equal_the_in_memory_gptq(parents, tmp_path):  # noqa: F811
    """In memory every layer is calibrated on float inputs: layer 0's (the embeddings) are the same."""
    memory, streamed = (_quantize(parents["untied"], tmp_path / d, stream=d == "s") for d in ("m", "s"))
    a, b = load_checkpoint(tmp_path / "m").state, load_checkpoint(tmp_path / "s").state
    changed = {name for name in a if a[name].tobytes() != b[name].tobytes()}
    assert changed and all(layer_of(name) not in (None, 0) for name in changed), sorted(changed)
    assert {k: v for k, v in memory["scheme"].items()} == streamed["scheme"]


def test_the_estimate_holds_the_calibration_hidden_states(parents):  # noqa: F811
    lazy = open_checkpoint(parents["moe"])
    names, train = quantized_linears(lazy), start_from(parents["moe"], None).splits["train"]
    few, many = (calibration_batches(train, n) for n in (8, 40))
    hidden = sum(b.input_ids.size for b in many) - sum(b.input_ids.size for b in few)  # tokens
    grown = gptq_memory_need(lazy, names, many).bytes - gptq_memory_need(lazy, names, few).bytes
    assert grown >= hidden * lazy.config.hidden_size * 4


def test_a_max_memory_below_the_layer_and_its_calibration_is_refused_in_one_line(parents, tmp_path):  # noqa: F811
    line = _refused(["quantize", str(parents["moe"]), "--weight-only", "int4", "--group-size", "16", "--method",
                     "gptq", "--stream", "--max-memory", "0.01"], tmp_path / "out")
    assert "--max-memory 0.01 GiB is below what the largest group needs" in line
    assert "calibration hidden states, Hessians and GPTQ solve" in line


def test_experts_rounded_to_nearest_get_no_hessian(parents):  # noqa: F811
    """skip_starved: a first pass counts each expert's tokens; the experts GPTQ will round to nearest are
    left out of the Hessian pass (their Hessians were most of an MoE layer's calibration memory); the
    others' Hessians and every token count are those of the full pass."""
    from ernie_compress.quantize.gptq import expert_tokens

    start = start_from(parents["moe"], None)
    model, family = start.model, family_of(start.model.config)
    names = quantized_linear_names(model)
    batches = calibration_batches(start.splits["train"], SAMPLES)
    full = collect_hessians(model, names, batches, start.tokenizer.pad_id)
    routed = [n for n in names if family.routed_expert(n) is not None]
    threshold = sorted(full.tokens[n] for n in routed)[len(routed) // 2]  # about half the experts fall short
    skipped = collect_hessians(model, names, batches, start.tokenizer.pad_id, skip_starved=True,
                               min_expert_tokens=threshold)
    layers = dict(model.named_sublayers())
    experts = expert_tokens(family, routed, full.tokens, {n: layers[n].weight.shape[0] for n in routed}, threshold)
    starved = {n for n in routed if experts[family.routed_expert(n).expert]["starved"]}
    assert starved and starved != set(routed)  # some of each
    assert skipped.tokens == full.tokens and set(skipped.hessians) == set(names) - starved
    for name, hessian in skipped.hessians.items():
        assert hessian.tobytes() == full.hessians[name].tobytes(), name
