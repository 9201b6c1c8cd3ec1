"""export/decoder_onnx.py: the KV-cache decoder graph equals dygraph (prefill and every step, MHA /
GQA / MQA, left-padded batches); MatMulNBits with our packing equals our dequantized weights; the
export verifies the decoder and refuses a wrong one; generate on the export gives the checkpoint's text."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ernie_compress.export import decoder_onnx
from ernie_compress.export.decoder_onnx import (WeightOnlyLinear, build_decoder, decoder_weights, pack_matmul_nbits,
                                                recover_codes)
from ernie_compress.models import build_model, model_state
from ernie_compress.models.ernie4_5 import CachedDecoder
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.quantize.weight_only import dequantize, quantize_rtn
from ernie_compress.runtime.decoding import OnnxDecoder, generate_tokens
from tests.helpers import cli_json

paddle = import_paddle()


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _decoder(kv_heads: int, head_dim: int = 8):
    keys = dict(resolve_preset("ernie45-tiny"), vocab_size=70, num_key_value_heads=kv_heads, head_dim=head_dim,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                rms_norm_eps=0.1 if kv_heads == 1 else 1e-5)  # MQA: an epsilon a hard-coded one would miss
    paddle.seed(kv_heads)
    model = build_model(config_from_dict(keys))
    model.eval()
    return model


ATTENTION = {"standard": dict(), "fused": dict(fused_attention=True)}  # standard ops, GroupQueryAttention


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # MQA, GQA, MHA (4 query heads)
def test_decoder_graph_equals_dygraph_at_prefill_and_every_step(kv_heads, attention):
    model = _decoder(kv_heads, head_dim=16)  # GroupQueryAttention's CPU kernel: a multiple of 16
    graph = build_decoder(model.config, decoder_weights(model.config, model_state(model), None), **ATTENTION[attention])
    assert decoder_onnx.kernel_counts(graph).get("GroupQueryAttention", 0) == (2 if attention == "fused" else 0)
    onnx_decoder = OnnxDecoder(_session(graph))
    prompt = [1, 7, 9, 23, 5, 41, 2]
    expected = generate_tokens(CachedDecoder(model), prompt, 10, eos_id=-1)
    got = generate_tokens(onnx_decoder, prompt, 10, eos_id=-1)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)
    assert got["tokens"] == expected["tokens"]
    # the cache holds the KV heads only, for every position fed so far
    assert [c.shape for c in onnx_decoder.cache] == [(1, kv_heads, len(prompt) + 9, model.config.head_dim)] * 4


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("padded_first", [False, True])
def test_a_left_padded_batch_gives_each_row_its_own_logits(attention, padded_first):
    """Each row of a left-padded batch, prefilled and then stepped 3 times, equals the row alone (the
    fused kernel rotates a prompt by index: a row whose positions did not count its padding would get
    keys rotated by the wrong offset, which the steps after the prefill show)."""
    model = _decoder(2, head_dim=16)
    session = _session(build_decoder(model.config, decoder_weights(model.config, model_state(model), None),
                                     **ATTENTION[attention]))
    rows = [[1, 7, 9, 23, 5, 41], [1, 30, 12]][::-1 if padded_first else 1]
    batch = OnnxDecoder(session)
    logits = [batch.prefill(rows)]  # [2, vocab]; the shorter row is padded on the left
    for _ in range(3):
        logits.append(batch.step(logits[-1].argmax(axis=1)))
    for i, row in enumerate(rows):
        alone = OnnxDecoder(session)
        np.testing.assert_allclose(logits[0][i], alone.prefill([row])[0], atol=1e-5)
        for step in range(3):
            token = np.array([logits[step][i].argmax()])
            np.testing.assert_allclose(logits[step + 1][i], alone.step(token)[0], atol=1e-5)


def _matmul_nbits(linear: WeightOnlyLinear, block: int) -> ort.InferenceSession:
    k, n = linear.codes.shape
    packed, scales = pack_matmul_nbits(linear, block)
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n,
                            bits=linear.bits, block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [helper.make_tensor("b", TensorProto.UINT8, packed.shape, packed.tobytes(), raw=True),
                               helper.make_tensor("s", TensorProto.FLOAT, scales.shape, scales)])
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid("com.microsoft", 1)]))


@pytest.mark.parametrize("bits, group, block", [(4, 16, 16), (4, 32, 32), (8, None, 32), (8, 64, 64)])
def test_matmul_nbits_with_our_packing_equals_the_dequantized_weights(bits, group, block):
    rng = np.random.default_rng(bits)
    weight = rng.normal(size=(64, 24)).astype(np.float32)  # [in, out]
    codes, scales = quantize_rtn(weight, bits, group)
    reference = dequantize(codes, scales, group)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y = _matmul_nbits(WeightOnlyLinear(codes, scales, bits, group), block).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("magnitude", [1.0, 1e-9])
def test_codes_are_recovered_when_no_element_reaches_the_grid_end(magnitude):
    """GPTQ can leave a group whose largest code is below qmax; any exact (codes, scale) pair works.
    Exact relative to the group's size: at 1e-9-sized weights an absolute tolerance accepts any grid."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-5, 6, size=(32, 8)).astype(np.int8)  # int4: |code| <= 5 < qmax 7
    codes[0], codes[16] = 5, -5  # every group's largest |code| is 5
    scales = (rng.uniform(0.01, 0.1, size=(2, 8)) * magnitude).astype(np.float32)
    weight = dequantize(codes, scales, 16)
    recovered = recover_codes(weight, 4, 16)
    np.testing.assert_allclose(dequantize(recovered.codes, recovered.scales, 16), weight, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(recovered.codes, codes)  # the one exact pair with |code| <= 7 here
    assert np.abs(recovered.codes).max() <= 7
    with pytest.raises(Exception, match="not on a 4-bit grid"):
        recover_codes(rng.normal(size=(32, 8)).astype(np.float32), 4, 16)


def test_export_writes_a_verified_decoder_and_generate_runs_it(tiny_lm, tmp_path):
    out = cli_json(["export", str(tiny_lm), "--format", "onnx", "--out", str(tmp_path / "e")])
    check = out["verification"]["decoder"]
    assert check["greedy_tokens_equal"] and check["max_abs_diff"] < 1e-4 and check["prompts"] == 4
    assert out["files"]["decoder"]["kv_heads"] == 2 and (tmp_path / "e" / "onnx" / "decoder.onnx").is_file()
    assert out["files"]["decoder"]["attention"].startswith("GroupQueryAttention")  # --onnx-ops onnxruntime
    assert out["files"]["decoder"]["kernels"]["GroupQueryAttention"] == 2
    standard = cli_json(["export", str(tiny_lm), "--format", "decoder", "--onnx-ops", "standard", "--out",
                         str(tmp_path / "standard")])
    assert standard["files"]["decoder"]["attention"].startswith("standard ops")
    assert "GroupQueryAttention" not in standard["files"]["decoder"]["kernels"]
    prompts = ["--prompt", "质量太差", "--prompt", "服务态度很", "--max-new-tokens", "12"]
    from_export = cli_json(["generate", str(tmp_path / "e"), *prompts])
    from_standard = cli_json(["generate", str(tmp_path / "standard"), *prompts])
    from_checkpoint = cli_json(["generate", str(tiny_lm), *prompts])
    assert from_export["runs_on"].startswith("onnxruntime") and from_checkpoint["runs_on"] == "paddle dygraph"
    assert ([r["tokens"] for r in from_export["results"]] == [r["tokens"] for r in from_standard["results"]]
            == [r["tokens"] for r in from_checkpoint["results"]])
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # this machine: a one-line error
        from typer.testing import CliRunner

        from ernie_compress.cli import app

        res = CliRunner().invoke(app, ["--quiet", "generate", str(tmp_path / "e"), *prompts, "--device", "gpu"])
        assert res.exit_code == 2 and "onnxruntime-gpu" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_wrong_decoder_graph_is_refused_and_nothing_is_written(tiny_lm, tmp_path, monkeypatch):
    real = decoder_onnx.build_decoder

    def wrong_rope(config, weights, **kwargs):  # a planted bug: RoPE at the wrong base frequency
        return real(config.replace(rope_theta=config.rope_theta * 2), weights, **kwargs)

    monkeypatch.setattr(decoder_onnx, "build_decoder", wrong_rope)
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["--quiet", "export", str(tiny_lm), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "decoder export failed verification" in res.stderr, res.output
    assert not (tmp_path / "e").exists()


def test_weight_only_decoder_int8_compute_is_verified_and_a_wrong_scale_is_refused(tiny_lm, tmp_path, monkeypatch):
    cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", "16", "--out", str(tmp_path / "w4")])
    out = cli_json(["export", str(tmp_path / "w4"), "--format", "onnx", "--out", str(tmp_path / "e")])
    check = out["verification"]["decoder"]
    assert check["compute"] == "int8" and out["files"]["decoder"]["matmul_nbits_accuracy_level"] == 4
    assert check["teacher_forced_agreement"] >= 0.95 and check["max_relative_diff"] < 0.02
    exact = cli_json(["export", str(tmp_path / "w4"), "--format", "onnx", "--weight-only-compute", "fp32",
                      "--out", str(tmp_path / "f")])["verification"]["decoder"]
    assert exact["greedy_tokens_equal"] and exact["max_abs_diff"] < 1e-4
    real = decoder_onnx.pack_matmul_nbits

    def wrong_scale(linear, block):  # a planted bug: every scale 25% too large
        packed, scales = real(linear, block)
        return packed, scales * 1.25

    monkeypatch.setattr(decoder_onnx, "pack_matmul_nbits", wrong_scale)
    from typer.testing import CliRunner

    from ernie_compress.cli import app

    res = CliRunner().invoke(app, ["--quiet", "export", str(tmp_path / "w4"), "--format", "onnx", "--out",
                                   str(tmp_path / "bad")])
    assert res.exit_code == 2 and "failed verification" in res.stderr, res.output
    assert "--weight-only-compute fp32 is exact" in res.stderr  # what to do instead
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("head_grid", ["int8", "int4"])
def test_a_tied_quantized_table_is_stored_once_and_read_by_the_gather_and_the_head(tiny_lm_int4, tmp_path, head_grid):
    import onnx

    out = cli_json(["export", str(tiny_lm_int4(16, head_grid)), "--format", "onnx", "--weight-only-compute", "fp32",
                    "--out", str(tmp_path / "e")])
    assert out["verification"]["decoder"]["greedy_tokens_equal"]
    graph = onnx.load(str(tmp_path / "e" / "onnx" / "decoder.onnx")).graph
    table = "ernie.embed_tokens.weight"
    initializers = {t.name: t for t in graph.initializer}
    assert table not in initializers  # no float copy of the table
    nodes = {n.output[0]: n for n in graph.node}
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    (head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits"]
    codes, scales = (nodes[name].input[0] for name in (gather.input[0], gather.input[2]))  # through the Reshapes
    assert (codes, scales) == tuple(head.input[1:3]) and initializers[codes].data_type == onnx.TensorProto.UINT8
    bits = {"int8": 8, "int4": 4}[head_grid]
    attributes = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in (gather, head)]
    assert [a["bits"] for a in attributes] == [bits, bits]  # the grid --head asked for, read by both
    if bits == 4:
        assert attributes[1]["block_size"] == 32  # --head int4's groups
    # the rows it gathers are the checkpoint's (dequantized) table
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [nodes[gather.input[0]], nodes[gather.input[2]], gather], "g",
        [onnx.helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [onnx.helper.make_tensor_value_info(gather.output[0], TensorProto.FLOAT, None)],
        [initializers[codes], initializers[scales], initializers[nodes[gather.input[0]].input[1]],
         initializers[gather.input[3]]]),
        opset_imports=graph_opsets(), ir_version=decoder_onnx.IR_VERSION)
    ids = np.arange(60, dtype=np.int64)[None]
    from ernie_compress.checkpoint import load_checkpoint

    expected = load_checkpoint(tiny_lm_int4(16, head_grid)).state[table][ids]
    np.testing.assert_array_equal(_session(model).run(None, {"input_ids": ids})[0], expected)  # bit for bit


def graph_opsets():
    return [helper.make_opsetid("", decoder_onnx.OPSET), helper.make_opsetid("com.microsoft", 1)]


def test_the_cache_kept_in_the_runtime_gives_the_same_logits_and_the_graph_pins_its_ir_version():
    model = _decoder(2)
    graph = build_decoder(model.config, decoder_weights(model.config, model_state(model), None))
    assert graph.ir_version == decoder_onnx.IR_VERSION == 8  # newer IR versions are refused by older runtimes
    session = _session(graph)
    plain, bound = OnnxDecoder(session), OnnxDecoder(session, cache_on="cpu")  # I/O binding, as on a GPU
    a, b = generate_tokens(plain, [1, 7, 9, 23], 6, eos_id=-1), generate_tokens(bound, [1, 7, 9, 23], 6, eos_id=-1)
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert bound.cache_bytes() == plain.cache_bytes() == 4 * 2 * 2 * 9 * model.config.head_dim * 2


@pytest.mark.parametrize("rows, group, block", [
    # per channel: the largest power of two up to 128 dividing the rows
    (256, None, 128), (512, None, 128), (96, None, 32), (48, None, 16), (40, None, None),
    (64, 16, 16), (64, 32, 32), (256, 128, 128), (96, 24, None), (64, 8, None), (72, 12, None),  # a group is the block
])
def test_kernel_block_size_is_the_group_or_the_largest_power_of_two_up_to_128(rows, group, block):
    assert decoder_onnx.kernel_block_size(rows, group) == block


@pytest.mark.parametrize("magnitude", [1.0, 1e-9])
def test_recovered_codes_are_the_quantizers_codes_with_zero_groups_and_tiny_weights(magnitude):
    """The codes themselves, not a dequantized round trip (which a wrong code of a tiny weight would
    pass): RTN codes reach qmax in every group, so they are the only exact pair. An all-zero group
    (a pruned block) gives zero codes and a finite scale; 1e-9-sized weights are still on their grid."""
    rng = np.random.default_rng(5)
    weight = (rng.normal(size=(48, 6)) * magnitude).astype(np.float32)  # [in, out]
    weight[16:32, 1] = 0.0  # group 1 of column 1
    for bits in (4, 8):
        codes, scales = quantize_rtn(weight, bits, 16)
        recovered = recover_codes(dequantize(codes, scales, 16), bits, 16)
        np.testing.assert_array_equal(recovered.codes, codes)
        assert np.isfinite(recovered.scales).all()
        np.testing.assert_allclose(recovered.scales[[0, 2]], scales[[0, 2]], rtol=1e-6)


@pytest.mark.parametrize("group", [16, None])
def test_codes_recovered_a_few_columns_at_a_time_are_the_same(monkeypatch, group):
    """Recovery in column chunks (a wide head's temporaries) gives the codes and scales of one pass,
    a chunk boundary inside the columns and a last chunk shorter than the others included."""
    rng = np.random.default_rng(3)
    codes, scales = quantize_rtn(rng.normal(size=(32, 11)).astype(np.float32), 8, group)
    weight = dequantize(codes, scales, group)
    whole = recover_codes(weight, 8, group)
    monkeypatch.setattr(decoder_onnx, "RECOVER_COLUMNS", 4)
    chunked = recover_codes(weight, 8, group)
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    np.testing.assert_array_equal(chunked.scales, whole.scales)
    np.testing.assert_array_equal(chunked.codes, codes)


def _file_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_a_model_over_the_protobuf_limit_is_saved_with_external_data(tmp_path, monkeypatch):
    """Past protobuf's 2 GB the weights go to one external file (the limit is lowered here; at 2.4 GB of
    weights ``ModelProto.ByteSize`` itself fails, so the size is taken from the initializers)."""
    model = _decoder(2)
    graph = build_decoder(model.config, decoder_weights(model.config, model_state(model), None))
    assert decoder_onnx._weight_bytes(graph) == sum(v.nbytes for v in model_state(model).values()) + sum(
        len(t.raw_data) for t in graph.graph.initializer if t.name not in model_state(model))
    assert decoder_onnx.save_model(graph, tmp_path / "small" / "decoder.onnx") == ["decoder.onnx"]
    monkeypatch.setattr(decoder_onnx, "PROTOBUF_LIMIT", 1 << 16)
    files = decoder_onnx.save_model(graph, tmp_path / "big" / "decoder.onnx")
    assert files == ["decoder.onnx", "decoder.onnx.data"] and (tmp_path / "big" / "decoder.onnx").stat().st_size < 1 << 16
    prompt = [1, 7, 9, 23]
    small = generate_tokens(OnnxDecoder(_file_session(tmp_path / "small" / "decoder.onnx")), prompt, 4, eos_id=-1)
    big = generate_tokens(OnnxDecoder(_file_session(tmp_path / "big" / "decoder.onnx")), prompt, 4, eos_id=-1)
    np.testing.assert_array_equal(small["logits"], big["logits"])
