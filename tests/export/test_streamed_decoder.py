"""``export --stream`` (export/streamed_decoder.py, export/numpy_reference.py): the streamed NumPy
reference equals dygraph; the decoder written group by group holds the in-memory export's graph and
tensors; a wrong export is refused against the NumPy reference; what streaming cannot do is refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from ernie_compress.checkpoint import save_checkpoint
from ernie_compress.cli import app
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.export import decoder_onnx, streamed_decoder
from ernie_compress.export.numpy_reference import reference_logits
from ernie_compress.lazy_checkpoint import open_checkpoint
from ernie_compress.models import build_model, model_state
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset
from ernie_compress.paddle_env import import_paddle
from ernie_compress.runtime.backends import RuntimeConfig
from ernie_compress.runtime.decoding import OnnxDecoder, generate_tokens
from ernie_compress.runtime.evaluate_export import TEACHER_FORCED
from tests.helpers import cli_json
from tests.test_lazy_checkpoint import _saved

paddle = import_paddle()
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4e00 + i) for i in range(75)]


def _random_checkpoint(out, seed: int, preset: str = "ernie45-tiny", **changes):
    """A random ERNIE 4.5 causal LM with weights large enough for logits of order one (MoE: a random
    correction bias, so that the biased choice and the unbiased mixing differ)."""
    keys = dict(resolve_preset(preset), vocab_size=len(VOCAB), hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, initializer_range=0.2, **changes)
    paddle.seed(seed)
    model = build_model(config_from_dict(keys))
    model.eval()
    for layer in model.ernie.layers:
        statics = getattr(layer.mlp, "moe_statics", None)
        if statics is not None:
            bias = statics.e_score_correction_bias
            bias.set_value(paddle.uniform(bias.shape, min=0, max=0.2))
    save_checkpoint(out, model.config, model_state(model), ErnieTokenizer(VOCAB), {"name": "random"})
    return model


@pytest.mark.parametrize("changes", [
    {},  # tied head, GQA (4 query heads, 2 KV heads)
    {"tie_word_embeddings": False, "num_key_value_heads": 1, "rms_norm_eps": 0.1},  # lm_head, MQA
    {"num_key_value_heads": 4, "use_bias": True, "rope_theta": 500.0},  # MHA, biases, another RoPE base
    {"preset": "ernie45-moe-tiny"},  # MoE layers (routed and shared experts) beside dense ones
    {"preset": "ernie45-moe-tiny", "moe_num_shared_experts": 0, "moe_use_aux_free": False, "moe_norm_min": 0.5},
])
def test_the_streamed_numpy_reference_equals_dygraphs_logits(tmp_path, changes):
    model = _random_checkpoint(tmp_path / "m", seed=len(changes), **changes)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(5, len(VOCAB), n).tolist() for n in (9, 13)]
    got = reference_logits(open_checkpoint(tmp_path / "m"), sequences, [1, 4])
    for ids, start, logits in zip(sequences, [1, 4], got):
        with paddle.no_grad():
            expected = model(paddle.to_tensor([ids])).numpy()[0, start - 1:-1]  # [steps, vocab]
        assert logits.shape == expected.shape and np.abs(expected).max() > 1.0
        np.testing.assert_allclose(logits, expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


@pytest.fixture(scope="module")
def w4(tiny_lm_int4):
    return tiny_lm_int4(16)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _graph_without_data(path) -> bytes:
    graph = onnx.load(str(path), load_external_data=False).graph
    for tensor in graph.initializer:
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return graph.SerializeToString()


def _offsets(path) -> list[tuple[int, int]]:
    """(offset, length) of each tensor in the external-data file."""
    graph = onnx.load(str(path), load_external_data=False).graph
    entries = [{e.key: e.value for e in t.external_data} for t in graph.initializer]
    return [(int(e["offset"]), int(e["length"])) for e in entries if e]


def test_the_streamed_decoder_is_the_in_memory_one_and_is_verified_against_numpy(w4, tmp_path, monkeypatch):
    monkeypatch.setattr(streamed_decoder, "ALIGN_FROM", 2048)  # the tiny model's larger tensors get aligned too
    streamed = cli_json(["export", str(w4), "--format", "onnx", "--stream", "--out", str(tmp_path / "s")])
    memory = cli_json(["export", str(w4), "--format", "onnx", "--out", str(tmp_path / "m")])
    check = streamed["verification"]["decoder"]
    assert check["against"] == "streamed NumPy reference" and check["compute"] == "int8"
    assert check["teacher_forced_agreement"] >= 0.95 and check["max_relative_diff"] < 0.02
    assert streamed["files"]["decoder"]["files"] == ["onnx/decoder.onnx", "onnx/decoder.onnx.data"]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["reference"]["backend"] == "streamed NumPy reference" and set(manifest["files"]) == {"decoder"}
    assert streamed["files"]["decoder"]["kernels"] == memory["files"]["decoder"]["kernels"]
    s, m = tmp_path / "s" / decoder_onnx.DECODER_FILE, tmp_path / "m" / decoder_onnx.DECODER_FILE
    assert _graph_without_data(s) == _graph_without_data(m)  # the same nodes, initializers in the same order
    a, b = _initializers(s), _initializers(m)
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    offsets = _offsets(s)  # appended in order, the larger ones at 4 KiB boundaries
    assert all(o % 4096 == 0 for o, n in offsets if n >= 2048) and sum(n >= 2048 for _, n in offsets) > 2
    assert all(o1 + n1 <= o2 for (o1, n1), (o2, _) in zip(offsets, offsets[1:]))
    decoders = [OnnxDecoder.open(d, RuntimeConfig(device="cpu"), 0) for d in (s, m)]  # read from the files
    logits = [generate_tokens(d, [1, 7, 9, 23], 6, eos_id=-1)["logits"] for d in decoders]
    np.testing.assert_array_equal(*logits)
    exact = cli_json(["export", str(w4), "--format", "onnx", "--stream", "--weight-only-compute", "fp32",
                      "--out", str(tmp_path / "f")])["verification"]["decoder"]
    assert exact["greedy_tokens_equal"] and exact["max_abs_diff"] < 1e-4
    prompts = ["--prompt", "质量太差", "--max-new-tokens", "8"]
    assert (cli_json(["generate", str(tmp_path / "s"), *prompts])["results"][0]["tokens"]
            == cli_json(["generate", str(tmp_path / "m"), *prompts])["results"][0]["tokens"])
    evaluated = {d: cli_json(["evaluate", str(tmp_path / d)]) for d in ("s", "m")}
    # the decoder alone: perplexity by teacher forcing through the KV cache, as the full-sequence model gives it
    assert evaluated["s"]["scored_with"] == TEACHER_FORCED and evaluated["s"]["latency"] == []
    assert "scored_with" not in evaluated["m"]
    got, full = (evaluated[d]["metrics"] for d in ("s", "m"))
    assert got["tokens"] == full["tokens"] and abs(got["perplexity"] / full["perplexity"] - 1) < 1e-3, (got, full)
    assert evaluated["s"]["generation"]["decode"] and evaluated["s"]["generation"]["time_to_first_token"]
    res = CliRunner().invoke(app, ["--quiet", "evaluate", str(tmp_path / "s"), "--task", "demo:sentiment"])
    assert res.exit_code == 2 and "has labels the model does not know" in res.stderr, res.output  # one line
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("experts", ["auto", "dispatch"])  # QMoE for the int4 experts, or MatMulNBits per expert
def test_a_streamed_moe_decoder_is_the_in_memory_one(tmp_path, experts):
    _random_checkpoint(tmp_path / "moe", seed=3, preset="ernie45-moe-tiny")
    cli_json(["quantize", str(tmp_path / "moe"), "--weight-only", "int4", "--group-size", "16", "--stream",
              "--out", str(tmp_path / "w4")])
    args = ["export", str(tmp_path / "w4"), "--format", "onnx", "--weight-only-compute", "fp32",
            "--moe-experts", experts]
    streamed = cli_json([*args, "--stream", "--out", str(tmp_path / "s")])
    memory = cli_json([*args, "--out", str(tmp_path / "m")])
    check = streamed["verification"]["decoder"]
    assert check["greedy_tokens_equal"] and check["max_abs_diff"] < 1e-4
    assert check["against"] == "streamed NumPy reference"
    kernels = streamed["files"]["decoder"]["kernels"]
    assert kernels == memory["files"]["decoder"]["kernels"] and ("QMoE" in kernels) == (experts == "auto")
    s, m = tmp_path / "s" / decoder_onnx.DECODER_FILE, tmp_path / "m" / decoder_onnx.DECODER_FILE
    assert _graph_without_data(s) == _graph_without_data(m)
    a, b = _initializers(s), _initializers(m)
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def _refused(args: list[str], out) -> str:
    res = CliRunner().invoke(app, ["--quiet", *args, "--out", str(out)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert not out.exists()
    return res.stderr


def test_a_wrong_streamed_decoder_is_refused_against_the_numpy_reference(w4, tmp_path, monkeypatch):
    real = decoder_onnx.pack_matmul_nbits

    def wrong_scale(linear, block):  # a planted bug: every scale 25% too large
        packed, scales = real(linear, block)
        return packed, scales * 1.25

    monkeypatch.setattr(decoder_onnx, "pack_matmul_nbits", wrong_scale)
    line = _refused(["export", str(w4), "--format", "onnx", "--stream"], tmp_path / "bad")
    assert "failed verification" in line


def test_what_streaming_cannot_export_is_refused_in_one_line(w4, tiny_lm, tmp_path):
    stream = ["--stream", "--format", "onnx"]
    assert "--format onnx" in _refused(["export", str(w4), "--stream"], tmp_path / "a")  # all
    assert "--format onnx" in _refused(["export", str(w4), "--stream", "--format", "paddle"], tmp_path / "b")
    assert "--layout" in _refused(["export", str(w4), *stream, "--layout", "hf"], tmp_path / "c")
    assert "weight-only" in _refused(["export", str(tiny_lm), *stream], tmp_path / "d")
    encoder = _saved(tmp_path, "encoder", "ours")
    assert "exports decoders" in _refused(["export", str(encoder), *stream], tmp_path / "e")


def test_too_little_disk_for_the_streamed_decoder_is_refused_before_any_weight_is_read(w4, tmp_path, monkeypatch):
    import shutil

    from ernie_compress.lazy_weights import SafetensorsWeights

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    monkeypatch.setattr(SafetensorsWeights, "read", lambda *a: pytest.fail("a weight was read"))
    line = _refused(["export", str(w4), "--stream", "--format", "onnx"], tmp_path / "out")
    assert "the decoder's weights need" in line and "GiB free" in line


def test_the_disk_check_counts_the_integer_weights_at_their_bits(w4, tmp_path, monkeypatch):
    """Free space between what the W4 decoder needs and what its weights take as float32 is enough (the
    21B-A3B-shaped run was refused: its weights were counted at 4 bytes each)."""
    import shutil

    from ernie_compress.lazy_checkpoint import open_checkpoint

    lazy = open_checkpoint(w4)
    bits = {name: spec["bits"] for name, spec in lazy.config.extra["quantization"]["weights"].items()}
    shapes, dtypes = lazy.shapes(), lazy.dtypes()
    floats = sum(int(np.prod(s)) * dtypes[n].itemsize for n, s in shapes.items())
    need = sum(int(np.prod(s)) * (bits[n] / 8 + 4 / 16) if n in bits else int(np.prod(s)) * dtypes[n].itemsize
               for n, s in shapes.items())
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=int((need + floats) / 2)))
    cli_json(["export", str(w4), "--stream", "--format", "onnx", "--out", str(tmp_path / "out")])
