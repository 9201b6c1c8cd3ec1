"""ERNIE 4.5 against PaddleFormers 1.2.0, both directions: logits on a padded batch agree to 1e-5 relative.

PaddleFormers -> us: its default save (Hugging Face layout: 'model.*', [out, in], separate q/k/v and
gate/up, sharded with an index when large, no lm_head when tied) and its other format
('model.*' [in, out] with qkv fused per KV group, config "source": "paddle"), for GQA (2 KV groups),
MQA and MHA, tied and untied. Us -> PaddleFormers: we write with ``--layout paddleformers``.
Positions after the padding are not compared (a causal LM's outputs there are not used).
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import ERNIE45_BASE, ERNIE45_CASES
from tests.interop.helpers import assert_close, run_reference
from ours import REAL, outputs, save_random

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("case", sorted(ERNIE45_CASES))
def test_a_paddleformers_save_loads_with_its_logits(tmp_path, case):
    changes, save_kwargs = ERNIE45_CASES[case]
    run_reference("paddleformers", "save", "paddleformers", case, str(tmp_path))
    if "max_shard_size" in save_kwargs:
        assert (tmp_path / "model" / "model.safetensors.index.json").is_file()
    ours, config = outputs(tmp_path / "model")
    assert (config.num_key_value_heads, config.tie_word_embeddings) == (changes["num_key_value_heads"],
                                                                       changes["tie_word_embeddings"])
    assert_close(ours, np.load(tmp_path / "logits.npy"), REAL)


@pytest.mark.parametrize("heads,kv_heads,tied", [(4, 2, True), (4, 2, False), (4, 1, True), (4, 4, False)])
def test_our_paddleformers_layout_loads_in_paddleformers(tmp_path, heads, kv_heads, tied):
    from ernie_compress.models.ernie4_5_config import Ernie45Config

    config = Ernie45Config.from_dict(dict(ERNIE45_BASE, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                          tie_word_embeddings=tied))
    ours = save_random(config, tmp_path / "ours", "paddleformers")
    assert not (tmp_path / "ours" / "lm_head.weight").exists()
    run_reference("paddleformers", "load", "paddleformers", "Ernie4_5ForCausalLM", str(tmp_path / "ours"),
                  str(tmp_path / "theirs.npy"))
    assert_close(ours, np.load(tmp_path / "theirs.npy"), REAL)
    again, _ = outputs(tmp_path / "ours")  # and our reader takes back what we wrote
    assert_close(again, ours, REAL)


def test_a_weight_only_decoder_exported_for_paddleformers_loads_there(tiny_lm, tmp_path):
    """A weight-only INT4 decoder handed to a serving engine's loader: export --layout paddleformers
    writes its (dequantized) weights, PaddleFormers reads them with the quantized model's logits,
    and the manifest says which file is for which engine."""
    import json

    from tests.helpers import cli_json

    cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", "16", "--out", str(tmp_path / "w4")])
    cli_json(["export", str(tmp_path / "w4"), "--format", "onnx", "--layout", "paddleformers",
              "--out", str(tmp_path / "e")])
    files = json.loads((tmp_path / "e" / "manifest.json").read_text())["files"]
    assert files["checkpoint"]["for"].startswith("PaddleFormers") and "int4" in files["checkpoint"]["weights"]
    assert files["decoder"]["for"].startswith("ONNX Runtime") and files["decoder"]["kernels"]["MatMulNBits"] == 9
    run_reference("paddleformers", "load", "paddleformers", "Ernie4_5ForCausalLM", str(tmp_path / "e" / "checkpoint"),
                  str(tmp_path / "theirs.npy"))
    quantized, _ = outputs(tmp_path / "w4")
    assert_close(quantized, np.load(tmp_path / "theirs.npy"), REAL)
