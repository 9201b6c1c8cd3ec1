"""Weight-only RTN quantization (quantize/weight_only.py, quantize --weight-only): the grid, the
groups, what it costs in perplexity on a small decoder, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.errors import UserError
from ernie_compress.quantize.weight_only import check_group_sizes, dequantize, qmax, quantize_rtn
from tests.helpers import cli_json


@pytest.mark.parametrize("bits, group", [(8, None), (4, 16), (4, 32), (8, 8)])
def test_rtn_codes_their_grid_and_their_error(bits, group):
    w = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)  # [in, out]
    codes, scales = quantize_rtn(w, bits, group)
    size = group or 64
    assert scales.shape == (64 // size, 24) and codes.dtype == np.int8
    assert np.abs(codes).max() == qmax(bits)  # each group's largest weight lands on the grid's end
    restored = dequantize(codes, scales, group)
    step = np.repeat(scales, size, axis=0)  # [in, out]: each element's scale
    assert np.all(np.abs(restored - w) <= step / 2 + 1e-6)  # round to nearest
    np.testing.assert_array_equal(np.rint(restored / step), codes)  # the codes are recoverable
    per_group = codes.reshape(64 // size, size, 24)
    assert all(len(np.unique(per_group[g, :, c])) <= 2 * qmax(bits) + 1 for g in range(64 // size) for c in range(24))


def test_a_group_size_that_does_not_divide_the_width_is_refused_with_one_that_does():
    check_group_sizes({"x": 64, "y": 96}, 32)
    with pytest.raises(UserError, match="--group-size 48 does not divide the input width 64 of x; "
                                        "--group-size 32 divides every quantized Linear's$"):
        check_group_sizes({"x": 64, "y": 96}, 48)
    with pytest.raises(UserError, match="--group-size 16 divides"):  # a kernel block size (power of 2, >= 16)
        check_group_sizes({"x": 48, "y": 96}, 32)  # before 24, which divides both too
    with pytest.raises(UserError, match="--group-size 24 divides"):  # no kernel block size divides 24
        check_group_sizes({"x": 24}, 32)


def test_weight_only_on_a_small_decoder(tiny_lm, tmp_path):
    results = {name: cli_json(["quantize", str(tiny_lm), "--weight-only", *args, "--out", str(tmp_path / name)])
               for name, args in (("w8", ["int8"]), ("w4", ["int4", "--group-size", "16"]))}
    fp32 = results["w8"]["parent_metrics"]["test"]["perplexity"]
    assert results["w8"]["metrics"]["test"]["perplexity"] <= fp32 * 1.01  # the bound for W8
    assert results["w4"]["metrics"]["test"]["perplexity"] <= fp32 * 1.05
    scheme = {"method": "weight_only_rtn", "dtype": "int4", "weight_bits": 4, "group_size": 16, "linears": 8}
    written = json.loads((tmp_path / "w4" / "config.json").read_text())["quantization"]
    assert results["w4"]["scheme"] == written and {k: written[k] for k in scheme} == scheme
    # the 8 Linears at int4, and the tied embedding as the output head at int8 per vocabulary entry
    assert len(written["weights"]) == 9 and sum(w["bits"] == 4 for w in written["weights"].values()) == 8
    assert written["weights"]["ernie.embed_tokens.weight"] == {"bits": 8, "group_size": None, "transposed": True}
    exported = cli_json(["export", str(tmp_path / "w4"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert exported["precision"] == "fp32" and exported["verification"]["onnx"]["max_abs_diff"] < 1e-3
    assert exported["files"]["decoder"]["kernels"]["MatMulNBits"] == 9  # every quantized weight as its kernel
    assert exported["verification"]["decoder"]["greedy_tokens_equal"]


def test_an_int4_head_is_rounded_in_groups_of_32_and_exported_as_4_bit_kernels(tiny_lm, tmp_path):
    from ernie_compress.checkpoint import load_checkpoint

    result = cli_json(["quantize", str(tiny_lm), "--weight-only", "int8", "--head", "int4", "--out", str(tmp_path / "q")])
    table = "ernie.embed_tokens.weight"
    assert result["scheme"]["weights"][table] == {"bits": 4, "group_size": 32, "transposed": True}
    head = load_checkpoint(tmp_path / "q").state[table].T  # [hidden, vocab], stored dequantized
    codes, scales = quantize_rtn(head, 4, 32)
    np.testing.assert_array_equal(dequantize(codes, scales, 32), head)  # on the int4 grid, exactly
    assert result["metrics"]["test"]["perplexity"] <= result["parent_metrics"]["test"]["perplexity"] * 1.05
    exported = cli_json(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert exported["verification"]["decoder"]["greedy_tokens_equal"]


def test_an_int4_head_whose_groups_do_not_divide_the_hidden_size_is_refused(tiny_lm, tmp_path, monkeypatch):
    from ernie_compress.quantize import weight_only

    monkeypatch.setattr(weight_only, "HEAD_INT4_GROUP", 64)  # the tiny model's hidden size is 32
    res = CliRunner().invoke(app, ["--quiet", "quantize", str(tiny_lm), "--weight-only", "int4", "--head", "int4",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "hidden size 32 is not a multiple" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--weight-only", "int4", "--group-size", "48"], "--group-size 48 does not divide the input width 32"),
    (["--weight-only", "int4", "--head", "int2"], "--head must be one of int8, int4"),
    (["--weight-only", "int2"], "--weight-only must be one of int8, int4"),
    (["--weight-only", "int8", "--qat", "int8"], "pass exactly one of"),
    (["--weight-only", "int8", "--observer", "mse"], "--observer does not apply to --weight-only"),
])
def test_bad_weight_only_options(tiny_lm, tmp_path, args, message):
    res = CliRunner().invoke(app, ["--quiet", "quantize", str(tiny_lm), *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "o").exists()


def test_gptq_corrects_rounding_errors_that_rtn_leaves():
    from ernie_compress.quantize.gptq import gptq_quantize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 64)) + 0.1 * rng.normal(size=(2000, 64))  # correlated inputs
    w = rng.normal(size=(64, 32)).astype(np.float32)
    hessian = 2 * x.T @ x / len(x)
    for group in (16, 32):
        codes, scales = gptq_quantize(w, hessian, 4, group)
        assert np.abs(codes).max() <= qmax(4) and scales.shape == (64 // group, 32)
        gptq = np.linalg.norm(x @ dequantize(codes, scales, group) - x @ w)
        rtn = np.linalg.norm(x @ dequantize(*quantize_rtn(w, 4, group), group) - x @ w)
        assert gptq < 0.5 * rtn  # measured 0.29 (group 16) and 0.25 (group 32) of RTN's output error


def test_gptq_beats_rtn_on_the_small_decoder(tiny_lm, tmp_path):
    results = {m: cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", "16", "--method", m,
                            "--out", str(tmp_path / m)]) for m in ("rtn", "gptq")}
    ppl = {m: r["metrics"]["test"]["perplexity"] for m, r in results.items()}
    assert ppl["gptq"] < ppl["rtn"], ppl
    for m, r in results.items():  # a dense model: every Linear by the method, no expert bookkeeping
        assert r["scheme"]["rounding"] == {m: {"linears": 8, "experts": 0}} and "rtn_fallback" not in r["scheme"]


def reference_gptq(weight, hessian, bits, group_size, damp=0.01):
    """GPTQ in its Optimal-Brain-Quantizer form (Frantar et al. 2023, eqs. 2-3; no Cholesky): after
    row i is rounded, the rows not yet quantized F absorb ``-(w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_{F,i}``
    and row/column i leave H_F^-1 by Gaussian elimination. Dead inputs (zero diagonal) are dropped,
    H damped by ``damp`` times its mean diagonal, a group's scale taken from its rows as updated."""
    w = weight.astype(np.float64).copy()  # [in, out]
    rows = len(w)
    h = hessian.astype(np.float64).copy()  # [in, in]
    for j in np.flatnonzero(np.diag(hessian) == 0):
        h[j, j], w[j] = 1.0, 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(rows)
    inverse = np.linalg.inv(h)  # H_F^-1 over F = all rows, shrunk row by row
    size, top = group_size or rows, qmax(bits)
    codes, scales = np.zeros(w.shape, dtype=np.int8), np.zeros((rows // size, w.shape[1]))
    for i in range(rows):
        if i % size == 0:
            peak = np.abs(w[i:i + size]).max(axis=0)  # [out]
            scales[i // size] = np.where(peak > 0, peak / top, 1.0)
        codes[i] = np.clip(np.rint(w[i] / scales[i // size]), -top, top)
        error = (w[i] - codes[i] * scales[i // size]) / inverse[i, i]  # [out]
        w[i + 1:] -= np.outer(inverse[i + 1:, i], error)
        inverse = inverse - np.outer(inverse[:, i], inverse[i, :]) / inverse[i, i]  # eliminate row/column i
    return codes, scales


@pytest.mark.parametrize("case", ["ill-conditioned", "dead inputs"])
def test_gptq_equals_the_optimal_brain_quantizer_form(case):
    """Against an independent implementation (no Cholesky factor), on Hessians where the safeguards
    matter: rank-deficient inputs (fewer samples than inputs: undamped, H is singular) and inputs
    that never occur (zero rows and columns of H)."""
    from ernie_compress.quantize.gptq import gptq_quantize

    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 4)) @ rng.normal(size=(4, 32))  # [24 samples, 32 inputs], rank 4
    if case == "dead inputs":
        x = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
        x[:, [3, 17, 18]] = 0.0  # inputs 3, 17 and 18 never occur
    w = rng.normal(size=(32, 12)).astype(np.float32)  # [in, out]
    hessian = 2 * x.T @ x / len(x)
    for bits, group in ((4, 8), (4, None), (8, 16)):
        ref_codes, ref_scales = reference_gptq(w, hessian, bits, group)
        for block in (128, 8, 5):  # one block; lazy batches of whole groups (5: cut to the group, or 5 rows)
            codes, scales = gptq_quantize(w, hessian, bits, group, block=block)
            np.testing.assert_allclose(scales, ref_scales, rtol=1e-5)
            assert np.mean(codes != ref_codes) < 0.01, (bits, group, block)  # a rare rounding tie may differ
            if case == "dead inputs":
                assert not codes[[3, 17, 18]].any()  # a weight no input reaches is stored as zero


def test_rtn_an_all_zero_group_gives_zero_codes_and_a_finite_scale():
    """A pruned or never-trained group (all zeros) must not divide by a zero scale: codes 0, scale
    finite, and the other groups of that column unaffected."""
    w = np.random.default_rng(2).normal(size=(32, 6)).astype(np.float32)  # [in, out]
    w[8:16, 2] = 0.0  # group 1 of column 2 (group size 8)
    w[:, 4] = 0.0  # all of column 4
    codes, scales = quantize_rtn(w, 4, 8)
    assert np.isfinite(scales).all() and (scales > 0).all()
    assert not codes[8:16, 2].any() and not codes[:, 4].any()
    np.testing.assert_array_equal(dequantize(codes, scales, 8)[:, 4], 0.0)
    np.testing.assert_array_equal(codes[:8, 2], quantize_rtn(w[:8, 2:3], 4, 8)[0][:, 0])


def _rtn_whole_matrix(weight, bits, group):
    """The rounding on the whole matrix at once (quantize_rtn before it went in column blocks)."""
    rows, cols = weight.shape
    size = rows if group is None else group
    grouped = weight.astype(np.float64).reshape(rows // size, size, cols)
    scales = np.abs(grouped).max(axis=1) / qmax(bits)
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(grouped / scales[:, None, :]), -qmax(bits), qmax(bits))
    return codes.reshape(rows, cols).astype(np.int8), scales.astype(np.float32)


@pytest.mark.parametrize("bits, group", [(4, 16), (8, None)])
def test_rounding_in_column_blocks_is_the_whole_matrix_rounding_byte_for_byte(monkeypatch, bits, group):
    import ernie_compress.quantize.weight_only as weight_only

    monkeypatch.setattr(weight_only, "COLUMN_BLOCK_BYTES", 64 * 8 * 3)  # blocks of 3 columns: the last one short
    w = np.random.default_rng(1).standard_normal((64, 20)).astype(np.float32)
    w[:16, 4] = 0.0  # an all-zero group
    for matrix in (w, np.ascontiguousarray(w.T).T):  # contiguous, and a transposed view (the tied head)
        codes, scales = quantize_rtn(matrix, bits, group)
        expected = _rtn_whole_matrix(matrix, bits, group)
        assert codes.tobytes() == expected[0].tobytes() and scales.tobytes() == expected[1].tobytes()
