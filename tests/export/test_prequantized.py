"""Pre-quantized layouts (``export --layout compressed-tensors|gptq``): the bit layout of the packed
words against a bit-by-bit reading of the formats' descriptions, what the checkpoint folder holds,
and the refusals. That the engines load them with our logits is tests/interop/test_prequantized.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from ernie_compress.cli import app
from ernie_compress.errors import UserError
from ernie_compress.export.prequantized import HfCodes, QuantizedHf
from ernie_compress.export.prequantized_compressed_tensors import pack_int32
from ernie_compress.export.prequantized_gptq import check_widths, pack_rows
from tests.helpers import cli_json


def _words(bits_string: list[int]) -> list[int]:
    """A bit string (lowest first) as signed 32-bit words."""
    words = []
    for start in range(0, len(bits_string), 32):
        value = sum(bit << j for j, bit in enumerate(bits_string[start:start + 32]))
        words.append(value - (1 << 32) if value >= 1 << 31 else value)
    return words


def _bit_string(values, bits: int, length: int) -> list[int]:
    """Element i's ``bits`` bits at positions i*bits upward, zero-padded to ``length`` bits."""
    string = [(int(v) >> b) & 1 for v in values for b in range(bits)]
    return string + [0] * (length - len(string))


@pytest.mark.parametrize("bits, cols", [(4, 16), (4, 10), (8, 12), (8, 6)])
def test_pack_quantized_words_hold_the_codes_in_order_from_the_low_bits(bits, cols):
    rng = np.random.default_rng(bits + cols)
    qmax = 2 ** (bits - 1) - 1
    codes = rng.integers(-qmax, qmax + 1, size=(3, cols)).astype(np.int8)  # [rows, cols]
    words = -(-cols * bits // 32)
    expected = [_words(_bit_string(row.astype(int) + 2 ** (bits - 1), bits, words * 32)) for row in codes]
    assert pack_int32(codes, bits).dtype == np.int32
    assert pack_int32(codes, bits).tolist() == expected


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_qweight_packs_consecutive_input_rows_from_the_low_bits(bits):
    rng = np.random.default_rng(bits)
    unsigned = rng.integers(0, 2 ** bits, size=(16, 3))  # [in, out]
    expected = np.array([_words(_bit_string(unsigned[:, c], bits, 16 * bits)) for c in range(3)]).T  # [words, out]
    assert pack_rows(unsigned, bits).tolist() == expected.tolist()


def test_gptq_refuses_widths_its_words_cannot_hold():
    odd = HfCodes(np.zeros((12, 16), np.int8), np.ones((12, 1), np.float32), 4, None)  # out 12: not 8 per word
    with pytest.raises(UserError, match=r"packs 8 4-bit codes .* \[12, 16\]"):
        check_widths(QuantizedHf({}, {}, {"model.layers.0.self_attn.k_proj": odd}, 4, None))


@pytest.fixture(scope="module")
def int4(tiny_lm_int4):
    return tiny_lm_int4(16)


def test_compressed_tensors_checkpoint_holds_packed_codes_and_the_config(int4, tmp_path):
    cli_json(["export", str(int4), "--format", "onnx", "--layout", "compressed-tensors", "--out", str(tmp_path / "e")])
    folder = tmp_path / "e" / "checkpoint"
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    q = config["quantization_config"]
    assert (q["quant_method"], q["format"], q["ignore"]) == ("compressed-tensors", "pack-quantized", ["lm_head"])
    assert q["config_groups"]["group_0"]["weights"] | {"num_bits": 4, "group_size": 16, "strategy": "group",
                                                       "symmetric": True} == q["config_groups"]["group_0"]["weights"]
    h, f = config["hidden_size"], config["intermediate_size"]
    prefix = "model.layers.0.mlp.down_proj."
    assert tensors[prefix + "weight_packed"].shape == (h, f // 8) and tensors[prefix + "weight_packed"].dtype == np.int32
    assert tensors[prefix + "weight_scale"].shape == (h, f // 16) and tensors[prefix + "weight_shape"].tolist() == [h, f]
    assert not any(name.endswith("proj.weight") for name in tensors)  # no float copy of a quantized Linear
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["files"]["checkpoint"]["layout"] == "compressed-tensors"


@pytest.mark.parametrize("layout", ["compressed-tensors", "gptq"])
def test_a_checkpoint_that_is_not_weight_only_is_refused(tiny_lm, tmp_path, layout):
    res = CliRunner().invoke(app, ["--quiet", "export", str(tiny_lm), "--format", "onnx", "--layout", layout,
                                   "--out", str(tmp_path / "e")])
    assert res.exit_code == 2, res.output
    assert "weight-only" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("layout", ["compressed-tensors", "gptq"])
def test_a_mixture_of_experts_checkpoint_is_refused_with_the_loaders_reason(tmp_path, layout):
    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.models import build_model, model_state
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.data.tokenizer import ErnieTokenizer
    from ernie_compress.models.presets import resolve_preset

    config = config_from_dict(dict(resolve_preset("ernie45-moe-tiny"), vocab_size=40))
    tokenizer = ErnieTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(0x4E00 + i) for i in range(35)])
    save_checkpoint(tmp_path / "moe", config, model_state(build_model(config)), tokenizer, {"name": "init"})
    res = CliRunner().invoke(app, ["--quiet", "export", str(tmp_path / "moe"), "--format", "onnx", "--layout", layout,
                                   "--out", str(tmp_path / "e")])
    assert res.exit_code == 2, res.output
    assert "not Ernie4_5_MoeForCausalLM" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()
