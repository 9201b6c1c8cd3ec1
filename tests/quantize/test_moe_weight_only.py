"""Weight-only INT8/INT4 of an ERNIE 4.5 mixture-of-experts model (quantize --weight-only, stages/quantize.py;
quantize/gptq.py per expert): GPTQ from the CLI, the router and its correction bias left FP32 byte for byte,
every expert on the integer grid, each expert's Hessian from exactly its routed non-pad tokens (against a
numpy routing of the block inputs), the RTN fallback of experts with too few calibration tokens, GPTQ's
output error below RTN's on the calibration tokens, and the one-line refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.cli import app
from ernie_compress.models.families import family_of
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize.gptq import collect_hessians
from ernie_compress.quantize.scheme import quantized_linear_names
from ernie_compress.quantize.weight_only import dequantize, qmax, quantize_rtn
from ernie_compress.stages.skeleton import start_from
from tests.helpers import NEGATIVE, POSITIVE, cli_json

paddle = import_paddle()
ROUTER = re.compile(r".*\.mlp\.(gate\.weight|moe_statics\.e_score_correction_bias)")  # the router's FP32 tensors
LINEARS, EXPERTS = 28, 8  # ernie45-moe-tiny: 3 layers (0 dense), 4 experts of 2 Linears + 1 shared expert per MoE layer


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A tiny MoE causal LM trained a little on the sentiment texts (routing that depends on the token)."""
    root = tmp_path_factory.mktemp("moe_wo")
    data = root / "lm"
    data.mkdir()
    for split, copies in (("train", 4), ("dev", 1), ("test", 1)):
        (data / f"{split}.txt").write_text("\n".join((POSITIVE + NEGATIVE) * copies), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-moe-tiny", "--out", str(root / "m"),
              "--epochs", "6", "--lr", "5e-3", "--batch-size", "8"])
    return root


@pytest.fixture(scope="module")
def calibration(moe):
    """The parent, and the calibration data GPTQ reads (all 64 training texts: fewer than --calib-samples),
    in batches of 8 rows of different lengths, so that every batch holds padding."""
    start = start_from(moe / "m", None)
    train = start.splits["train"]
    batches = [train.rows(np.arange(i, i + 8)) for i in range(0, len(train), 8)]
    assert all((b.input_ids == start.tokenizer.pad_id).any() for b in batches)
    return start, batches


# --- an independent routing of the block inputs ------------------------------------------------
def _route(x, block) -> np.ndarray:
    """The experts [T, k] the block picks for tokens x [T, h]: top-k of softmax + correction bias (numpy)."""
    logits = x.astype(np.float64) @ block.gate.weight.numpy().astype(np.float64)  # [T, E]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.argsort(-(probs + block.moe_statics.e_score_correction_bias.numpy()), -1, kind="stable")[:, :block.top_k]


def _block_inputs(model, batches, pad_id):
    """Per MoE block: its input tokens [T, h] over all batches and whether each is real (not padding) [T]."""
    blocks = model.moe_blocks()
    seen = {i: ([], []) for i in range(len(blocks))}
    real = {}

    def hook(i):
        def record(layer, inputs):
            seen[i][0].append(inputs[0].numpy().reshape(-1, inputs[0].shape[-1]))
            seen[i][1].append(real["rows"])
        return record

    handles = [block.register_forward_pre_hook(hook(i)) for i, block in enumerate(blocks)]
    with paddle.no_grad():
        for batch in batches:
            real["rows"] = (batch.input_ids != pad_id).reshape(-1)
            model(paddle.to_tensor(batch.input_ids))
    for handle in handles:
        handle.remove()
    return [(np.concatenate(xs), np.concatenate(rs)) for xs, rs in seen.values()]


def _expert_inputs(model, batches, pad_id, *, pads=False, every_token=False):
    """Per routed expert Linear name: its calibration inputs X [n, in] as the routing sends them (numpy);
    ``pads`` and ``every_token`` give the two classic mistakes (padding counted; the whole block input)."""
    family, layers = family_of(model.config), dict(model.named_sublayers())
    inputs = {}
    for (x, real), block in zip(_block_inputs(model, batches, pad_id), model.moe_blocks()):
        chosen = _route(x, block)  # [T, k]
        for name in quantized_linear_names(model):
            site = family.routed_expert(name)
            if site is None or layers[site.block] is not block:
                continue
            mask = (chosen == site.index).any(-1) & (real | pads) | every_token & real  # [T]
            up_gate = layers[site.expert].up_gate_proj.weight.numpy().astype(np.float64)  # [h, 2f]
            gate, up = np.split(x[mask].astype(np.float64) @ up_gate, 2, axis=-1)  # [n, f] each
            first = layers[name] is layers[site.expert].up_gate_proj
            inputs[name] = x[mask].astype(np.float64) if first else gate / (1 + np.exp(-gate)) * up
    return inputs


# --- the tests ---------------------------------------------------------------------------------
def test_the_router_has_no_linear_role_and_is_not_quantized(calibration):
    start, _ = calibration
    model, family = start.model, family_of(start.model.config)
    routers = [name for name, _ in model.named_sublayers() if name.endswith(".mlp.gate")]
    assert len(routers) == 2 and all(family.linear_role(name) is None for name in routers)
    names = quantized_linear_names(model)
    assert len(names) == LINEARS and not set(routers) & set(names)
    assert sum(family.routed_expert(name) is not None for name in names) == 2 * EXPERTS


def test_an_experts_hessian_is_from_exactly_its_routed_non_pad_tokens(calibration):
    """Against the numpy routing of the block inputs: H = 2 XᵀX / n over the tokens routed to the expert
    that are not padding, for both its Linears (down_proj's X is SwiGLU of them). The data feeds the
    bugs: no expert gets every token, and pads are routed to half of them (the others get none), so
    taking the block's whole input, or counting pads, changes H (checked below against the same numbers)."""
    start, batches = calibration
    model, pad = start.model, start.tokenizer.pad_id
    names = quantized_linear_names(model)
    seen = collect_hessians(model, names, batches, pad)
    assert not any(block.keep_dispatch or block.dispatch for block in model.moe_blocks())  # no record left behind
    expected = _expert_inputs(model, batches, pad)
    with_pads = _expert_inputs(model, batches, pad, pads=True)
    every = _expert_inputs(model, batches, pad, every_token=True)
    assert len(expected) == 2 * EXPERTS
    for name, x in expected.items():
        h = 2 * x.T @ x / len(x)
        assert seen.tokens[name] == len(x) and 0 < len(x)
        np.testing.assert_allclose(seen.hessians[name], h, rtol=1e-4, atol=1e-5 * np.abs(h).max())
        assert len(every[name]) > len(x)  # tokens the expert did not get
        for bug in (with_pads[name], every[name]):
            planted = 2 * bug.T @ bug / len(bug)
            assert len(bug) == len(x) or np.abs(planted - seen.hessians[name]).max() > 1e-3 * np.abs(h).max(), name
    assert sum(len(with_pads[name]) > len(x) for name, x in expected.items()) >= EXPERTS  # half get pads
    real = np.concatenate([(b.input_ids != pad).reshape(-1) for b in batches])
    for name in names:  # dense and shared Linears: every non-pad token
        assert family_of(model.config).routed_expert(name) is not None or seen.tokens[name] == real.sum()


@pytest.fixture(scope="module")
def quantized(moe):
    """GPTQ int4 (groups of 16) and int8, and RTN int4, of the tiny MoE from the CLI."""
    runs = {"gptq4": ["int4", "--group-size", "16", "--method", "gptq"], "gptq8": ["int8", "--method", "gptq"],
            "rtn4": ["int4", "--group-size", "16"]}
    return {name: cli_json(["quantize", str(moe / "m"), "--weight-only", *args, "--out", str(moe / name)])
            for name, args in runs.items()}


def _on_grid(weight: np.ndarray, bits: int, group: int | None) -> bool:
    """Whether every group of input rows of every column of ``weight`` [in, out] is an integer multiple
    (|code| <= qmax) of one scale: its peak / c for some code c in 1..qmax."""
    rows = len(weight)
    size = group or rows
    grouped = weight.astype(np.float64).reshape(rows // size, size, -1)  # [groups, size, out]
    peak = np.abs(grouped).max(axis=1, keepdims=True)  # [groups, 1, out]
    fits = np.zeros(peak.shape, dtype=bool)
    for code in range(1, qmax(bits) + 1):
        q = grouped / (peak / code)
        fits |= np.all(np.abs(q - np.rint(q)) < 1e-4, axis=1, keepdims=True)
    return bool(fits.all())


@pytest.mark.parametrize("run, bits, group", [("gptq4", 4, 16), ("gptq8", 8, None)])
def test_gptq_on_moe_from_the_cli(moe, calibration, quantized, run, bits, group):
    start, batches = calibration
    result = quantized[run]
    scheme = json.loads((moe / run / "config.json").read_text())["quantization"]
    assert result["scheme"] == scheme and scheme["method"] == "weight_only_gptq" and result["quantized_layers"] == LINEARS
    assert scheme["rounding"] == {"gptq": {"linears": LINEARS, "experts": EXPERTS}}  # no expert short of tokens
    assert scheme["rtn_fallback"] == {} and scheme["min_expert_tokens"] is None
    counts = {n: len(x) for n, x in _expert_inputs(start.model, batches, start.tokenizer.pad_id).items()}
    assert scheme["fewest_expert_tokens"] == min(counts.values())
    fp32 = result["parent_metrics"]["test"]["perplexity"]
    assert result["metrics"]["test"]["perplexity"] <= fp32 * (1.01 if bits == 8 else 1.05)  # the bounds
    parent, child = load_checkpoint(moe / "m").state, load_checkpoint(moe / run).state
    routers = [k for k in parent if ROUTER.fullmatch(k)]
    assert len(routers) == 4
    for key in routers:  # unchanged bytes
        assert child[key].dtype == np.float32 and child[key].tobytes() == parent[key].tobytes(), key
    family = family_of(start.model.config)
    experts = [f"{name}.weight" for name in quantized_linear_names(start.model) if family.routed_expert(name)]
    assert len(experts) == 2 * EXPERTS
    for key in experts:
        assert _on_grid(child[key], bits, group) and not _on_grid(parent[key], bits, group), key


def test_gptq_output_error_is_below_rtns_on_the_calibration_tokens(moe, calibration, quantized):
    """||X W_q - X W|| over each expert Linear's routed calibration tokens (X from the FP32 parent)."""
    start, _ = calibration
    train = start.splits["train"]
    every = [train.rows(np.arange(i, min(i + 32, len(train)))) for i in range(0, len(train), 32)]
    inputs = _expert_inputs(start.model, every, start.tokenizer.pad_id)
    parent = load_checkpoint(moe / "m").state
    gptq, rtn = load_checkpoint(moe / "gptq4").state, load_checkpoint(moe / "rtn4").state
    ratios = []
    for name, x in inputs.items():
        w = parent[f"{name}.weight"].astype(np.float64)
        errors = [np.linalg.norm(x @ (q[f"{name}.weight"] - w)) for q in (gptq, rtn)]
        ratios.append(errors[0] / errors[1])
    assert max(ratios) < 1, ratios  # every expert Linear: GPTQ below RTN
    assert np.mean(ratios) < 0.7, ratios  # measured: 0.38-0.81 of RTN's error, mean 0.53


def test_experts_short_of_calibration_tokens_fall_back_to_rtn(moe, calibration):
    start, batches = calibration
    counts = {}
    family = family_of(start.model.config)
    for name, x in _expert_inputs(start.model, batches, start.tokenizer.pad_id).items():
        counts[family.routed_expert(name).expert] = len(x)
    ranked = sorted(set(counts.values()))
    threshold = ranked[len(ranked) // 2]  # some experts below it, some not
    starved = {e: n for e, n in counts.items() if n < threshold}
    assert 0 < len(starved) < EXPERTS
    res = CliRunner().invoke(app, ["quantize", str(moe / "m"), "--weight-only", "int4", "--group-size", "16",
                                   "--method", "gptq", "--min-expert-tokens", str(threshold), "--out", str(moe / "short")])
    assert res.exit_code == 0, res.output
    scheme = json.loads((moe / "short" / "config.json").read_text())["quantization"]
    k = len(starved)
    assert scheme["rounding"] == {"gptq": {"linears": LINEARS - 2 * k, "experts": EXPERTS - k},
                                  "rtn": {"linears": 2 * k, "experts": k}}
    assert scheme["rtn_fallback"] == {e: {"tokens": n, "needed": threshold} for e, n in starved.items()}
    assert scheme["min_expert_tokens"] == threshold
    text = " ".join(res.stdout.split())
    assert (f"rounding: GPTQ {LINEARS - 2 * k} Linears ({EXPERTS - k} routed experts), RTN {2 * k} Linears "
            f"({k} routed experts); {k} routed experts fell back to RTN") in text
    parent, child = load_checkpoint(moe / "m").state, load_checkpoint(moe / "short").state
    for name in quantized_linear_names(start.model):
        site = family.routed_expert(name)
        if site is None:
            continue
        key = f"{name}.weight"
        rtn = dequantize(*quantize_rtn(parent[key], 4, 16), 16)
        assert np.array_equal(child[key], rtn) == (site.expert in starved), key


def test_moe_gptq_output_names_the_rounding(moe, quantized):
    res = CliRunner().invoke(app, ["quantize", str(moe / "m"), "--weight-only", "int8", "--method", "gptq",
                                   "--out", str(moe / "shown")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert f"rounding: GPTQ {LINEARS} Linears ({EXPERTS} routed experts); none fell back to RTN" in text
    assert "vs FP32" in text and "FP32 parent" in text


@pytest.mark.parametrize("args, message", [
    (["--weight-only", "int4"], "--group-size 32 does not divide the input width 16 of ernie.layers.1.mlp.experts.0."
                                "down_proj; --group-size 16 divides every quantized Linear's"),
    (["--weight-only", "int4", "--group-size", "16", "--min-expert-tokens", "8"],
     "--min-expert-tokens applies to --method gptq"),
    (["--weight-only", "int4", "--method", "gptq", "--min-expert-tokens", "0"], "--min-expert-tokens must be"),
])
def test_bad_moe_weight_only_options(moe, tmp_path, args, message):
    res = CliRunner().invoke(app, ["--quiet", "quantize", str(moe / "m"), *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "o").exists()
