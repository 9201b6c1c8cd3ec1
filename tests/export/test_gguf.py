"""export/gguf.py, gguf_blocks.py, gguf_vocab.py: our codes as Q4_0/Q8_0 blocks decode (by the gguf
package's own dequantizer, llama.cpp's Python reference) to our dequantized weights up to the scales'
fp16 rounding; ``export --layout gguf`` writes llama.cpp's ERNIE 4.5 tensors and keys and refuses, in
one line with nothing written, what the blocks cannot hold. llama.cpp itself runs the files in
tests/interop/test_llama_cpp.py."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.export.gguf_blocks import BLOCK, block_scales, pack_blocks
from ernie_compress.export.gguf_vocab import wordpiece_vocab
from ernie_compress.quantize.weight_only import dequantize, quantize_rtn
from tests.helpers import cli_json

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("kind, bits, group", [("Q4_0", 4, 32), ("Q4_0", 4, 64), ("Q4_0", 4, None),
                                               ("Q8_0", 8, None), ("Q8_0", 8, 32), ("Q8_0", 8, 128)])
def test_blocks_decode_to_our_dequantized_weights_up_to_fp16_scales(kind, bits, group):
    rng = np.random.default_rng(bits)
    weight = rng.normal(0, 0.05, (128, 48)).astype(np.float32)  # [in, out]
    codes, scales = quantize_rtn(weight, bits, group)
    packed = pack_blocks(codes.T, block_scales(scales, 128, group).T, kind)  # [out, in / 32 * bytes]
    decoded = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[kind])  # [out, in]
    half = dequantize(codes, scales.astype(np.float16).astype(np.float32), group)  # our codes, fp16 scales
    np.testing.assert_array_equal(decoded, half.T)
    ours = dequantize(codes, scales, group)
    assert np.abs(decoded - ours.T).max() <= 2 ** -11 * np.abs(ours).max()


def test_q4_0_puts_value_j_in_the_low_nibble_and_j_plus_16_in_the_high_one():
    codes = np.arange(-7, 8).repeat(3)[:BLOCK].reshape(1, BLOCK).astype(np.int8)  # [1 out, 32 in]
    packed = pack_blocks(codes, np.ones((1, 1), np.float32), "Q4_0")
    assert packed.shape == (1, 18) and packed[0, :2].view(np.float16)[0] == 1.0
    assert [packed[0, 2] & 15, packed[0, 2] >> 4] == [codes[0, 0] + 8, codes[0, 16] + 8]


def test_wordpiece_tokens_get_the_phantom_space_as_llama_cpps_converter_writes_bert():
    tokens, types = wordpiece_vocab(["[PAD]", "[CLS]", "word", "##piece", "中"])
    assert tokens == [b"[PAD]", b"[CLS]", "\u2581word".encode(), b"piece", "\u2581中".encode()]
    assert types == [3, 3, 1, 1, 1]


@pytest.fixture(scope="module")
def w4(tiny_lm_int4):
    return tiny_lm_int4(32)


def test_export_writes_llama_cpps_ernie4_5_tensors_keys_and_our_codes(w4, tmp_path):
    from ernie_compress.checkpoint import load_checkpoint

    out = cli_json(["export", str(w4), "--format", "onnx", "--layout", "gguf", "--out", str(tmp_path / "e")])
    entry = out["files"]["checkpoint"]
    assert (entry["layout"], entry["file"], entry["blocks"]) == ("gguf", "model-Q4_0.gguf", "Q4_0")
    assert 0 < entry["max_scale_rounding"] <= 2 ** -11
    reader = gguf.GGUFReader(tmp_path / "e" / "checkpoint" / entry["file"])
    config = load_checkpoint(w4).config
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "ernie4_5" and fields["general.file_type"] == 2
    assert (fields["ernie4_5.attention.layer_norm_rms_epsilon"], fields["ernie4_5.rope.freq_base"]) == pytest.approx(
        (config.rms_norm_eps, config.rope_theta))
    assert fields["ernie4_5.attention.key_length"] == config.head_dim
    assert fields["tokenizer.ggml.model"] == "bert" and len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    tensors = {t.name: t for t in reader.tensors}
    h, d, f = config.hidden_size, config.head_dim, config.intermediate_size
    kv = config.num_key_value_heads * d
    shapes = {"token_embd.weight": (h, config.vocab_size), "output_norm.weight": (h,),
              "blk.1.attn_q.weight": (h, config.num_attention_heads * d), "blk.1.attn_k.weight": (h, kv),
              "blk.1.attn_v.weight": (h, kv), "blk.1.ffn_gate.weight": (h, f), "blk.1.ffn_down.weight": (f, h)}
    assert {name: tuple(int(n) for n in tensors[name].shape) for name in shapes} == shapes  # GGML ne: [in, out]
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # the tied int8 head
    assert tensors["blk.1.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert "output.weight" not in tensors and len(tensors) == 2 + 9 * config.num_hidden_layers
    state = load_checkpoint(w4).state
    up = gguf.quants.dequantize(tensors["blk.1.ffn_up.weight"].data, gguf.GGMLQuantizationType.Q4_0)  # [f, h]
    expected = state["ernie.layers.1.mlp.up_gate_proj.weight"][:, f:].T  # up is the second half
    np.testing.assert_allclose(up, expected, rtol=0, atol=2 ** -11 * np.abs(expected).max())


def _refused(args, tmp_path, *phrases):
    res = CliRunner().invoke(app, ["--quiet", *args, "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert all(p in res.stderr for p in phrases), res.stderr
    assert not (tmp_path / "e").exists()


def test_a_float_checkpoint_is_refused_with_the_quantize_flags_that_fit(tiny_lm, tmp_path):
    _refused(["export", str(tiny_lm), "--format", "onnx", "--layout", "gguf"], tmp_path,
             "weight-only", "--weight-only int4 --group-size 32")


def test_groups_smaller_than_a_block_are_refused_with_the_group_size_that_fits(tiny_lm, tmp_path):
    cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", "16", "--out", str(tmp_path / "w")])
    _refused(["export", str(tmp_path / "w"), "--format", "onnx", "--layout", "gguf"], tmp_path,
             "groups of 16", "--group-size 32")


def test_moe_experts_are_stacked_and_the_moe_keys_written(tiny_lm, tmp_path):
    """ernie4_5-moe: a layer's experts as [E, f, h] / [E, h, f] blocks, the router [E, h] and correction
    bias [E] in F32, the shared expert, and the keys llama.cpp reads."""
    from ernie_compress.checkpoint import load_checkpoint, save_checkpoint
    from ernie_compress.data.tokenizer import ErnieTokenizer
    from ernie_compress.models import build_model, model_state
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    tokenizer = ErnieTokenizer.from_dir(tiny_lm)
    config = config_from_dict(dict(resolve_preset("ernie45-moe-tiny"), moe_intermediate_size=32,
                                   vocab_size=tokenizer.vocab_size))
    save_checkpoint(tmp_path / "m", config, model_state(build_model(config)), tokenizer, {"name": "init"})
    cli_json(["quantize", str(tmp_path / "m"), "--weight-only", "int8", "--group-size", "32", "--task", "lm",
              "--data", str(tiny_lm.parent / "data"), "--out", str(tmp_path / "w8")])
    out = cli_json(["export", str(tmp_path / "w8"), "--format", "onnx", "--weight-only-compute", "fp32",
                    "--layout", "gguf", "--out", str(tmp_path / "e")])
    reader = gguf.GGUFReader(tmp_path / "e" / "checkpoint" / out["files"]["checkpoint"]["file"])
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "ernie4_5-moe"
    keys = ("expert_count", "expert_used_count", "leading_dense_block_count", "expert_feed_forward_length",
            "expert_shared_feed_forward_length")
    assert [fields[f"ernie4_5-moe.{k}"] for k in keys] == [4, 2, 1, 32, 32]
    tensors = {t.name: t for t in reader.tensors}
    h = config.hidden_size
    assert tuple(int(n) for n in tensors["blk.1.ffn_gate_exps.weight"].shape) == (h, 32, 4)  # ne: [in, out, E]
    assert tuple(int(n) for n in tensors["blk.1.ffn_down_exps.weight"].shape) == (32, h, 4)
    assert tuple(int(n) for n in tensors["blk.1.ffn_gate_inp.weight"].shape) == (h, 4)
    assert tuple(int(n) for n in tensors["blk.1.exp_probs_b.bias"].shape) == (4,)
    assert "blk.0.ffn_gate.weight" in tensors and "blk.1.ffn_up_shexp.weight" in tensors
    state = load_checkpoint(tmp_path / "w8").state
    up = gguf.quants.dequantize(tensors["blk.2.ffn_up_exps.weight"].data,
                                gguf.GGMLQuantizationType.Q8_0)  # [E, f, h]
    expected = state["ernie.layers.2.mlp.experts.3.up_gate_proj.weight"][:, 32:].T  # expert 3's up half [f, h]
    np.testing.assert_allclose(up[3], expected, rtol=0, atol=2 ** -11 * np.abs(expected).max())
    router = tensors["blk.2.ffn_gate_inp.weight"].data  # [E, h]
    np.testing.assert_array_equal(router, state["ernie.layers.2.mlp.gate.weight"].T)


def test_moe_experts_narrower_than_a_block_are_refused(tiny_lm, tmp_path):
    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.data.tokenizer import ErnieTokenizer
    from ernie_compress.models import build_model, model_state
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    tokenizer = ErnieTokenizer.from_dir(tiny_lm)
    # experts 16 wide
    config = config_from_dict(dict(resolve_preset("ernie45-moe-tiny"), vocab_size=tokenizer.vocab_size))
    save_checkpoint(tmp_path / "m", config, model_state(build_model(config)), tokenizer, {"name": "init"})
    cli_json(["quantize", str(tmp_path / "m"), "--weight-only", "int8", "--task", "lm",
              "--data", str(tiny_lm.parent / "data"), "--out", str(tmp_path / "w8")])
    _refused(["export", str(tmp_path / "w8"), "--format", "onnx", "--layout", "gguf"], tmp_path, "multiples of 32")
