"""Pre-quantized checkpoints (``export --layout compressed-tensors|gptq``) loaded by the real loaders,
with the weight-only checkpoint's logits (ours: Paddle dygraph on its dequantized weights).

- compressed-tensors (pack-quantized) in transformers 5.3 + compressed-tensors 0.20.1, which unpacks
  the int32 words and dequantizes on a CPU: float32 scales, so its weights are exactly ours and the
  logits agree to 1e-5 of the logit scale (float32 summation order), as the float layouts do;
- GPTQ in onnxruntime-genai 0.18's model builder (its GPTQ loader repacks qweight/qzeros/scales into
  MatMulNBits) run by onnxruntime-genai on a CPU with fp32 compute: the format's scales are float16,
  which moves each weight by at most 2**-11 of itself. So its logits equal, to 1e-5 of the logit
  scale, those of our model with the checkpoint's scales rounded to float16 (the format's own
  rounding, computed here in Paddle), and are within 1e-3 of the checkpoint's own (measured 2-3e-4
  here; 5.6e-4 at ERNIE-4.5-0.3B's layer shape). The builder fuses q/k/v into one MatMulNBits per layer.

Cases: random ERNIE 4.5 decoders (head_dim 16: onnxruntime's GroupQueryAttention takes multiples of
16; FFN 64 so that groups of 32 divide every width), quantized by ``quantize --weight-only``: int4 in
groups of 16 (untied head, GQA) and of 32 (tied, MQA), int8 per channel (tied, MHA; compressed-tensors'
channel strategy, GPTQ's group size -1). The head stays float in both formats (exactly the
checkpoint's int8 head values). Planted once each, all failing as named: codes packed high nibble
first (compressed-tensors: every case) or first row in the high bits (GPTQ: every case), GPTQ's
stored zero point without its -1 (every case; int8 by 17x the bound), each row's group scales in
reverse order (compressed-tensors: the grouped cases; per channel has one group), GPTQ's scales
2**-9 too large (every case, against the float16-scale reference: 7-25x its bound).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cases import TRANSFORMERS_BASE
from ours import REAL, outputs, run, save_random
from tests.interop.helpers import assert_close, reference_python, run_reference

pytestmark = pytest.mark.interop
LOADERS = "import compressed_tensors, onnxruntime_genai"
GPTQ_RTOL = 1e-3  # float16 scales: each weight within 2**-11 of ours (see the module docstring)
# name -> (config changes, quantize arguments, formats)
CASES = {
    "w4_g16_untied_gqa": (dict(num_key_value_heads=2, tie_word_embeddings=False),
                          ["--weight-only", "int4", "--group-size", "16"], ("compressed-tensors", "gptq")),
    "w4_g32_tied_mqa": (dict(num_key_value_heads=1, tie_word_embeddings=True),
                        ["--weight-only", "int4", "--group-size", "32"], ("compressed-tensors", "gptq")),
    "w8_channel_tied_mha": (dict(num_key_value_heads=4, tie_word_embeddings=True),
                            ["--weight-only", "int8"], ("compressed-tensors", "gptq")),
}


def _config(changes: dict):
    from ernie_compress.models.families import config_from_dict

    return config_from_dict(dict(TRANSFORMERS_BASE, head_dim=16, intermediate_size=64, num_hidden_layers=2, **changes,
                                 model_type="ernie4_5", architectures=["Ernie4_5ForCausalLM"]))


def _with_float16_scales(directory) -> np.ndarray:
    """Our logits on the padded batch with every quantized Linear's scales rounded to float16, as GPTQ
    stores them (codes recovered from the dequantized weights; the float head as it is)."""
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.export.decoder_onnx import recover_codes
    from ernie_compress.models import model_from_state
    from ernie_compress.quantize.weight_only import dequantize, lm_head_weight

    ckpt = load_checkpoint(directory)
    state, head = dict(ckpt.state), lm_head_weight(ckpt.config)
    for name, spec in ckpt.config.extra["quantization"]["weights"].items():
        if head is None or name != head[0]:
            q = recover_codes(state[name], spec["bits"], spec["group_size"])  # codes [in, out], scales [groups, out]
            state[name] = dequantize(q.codes, q.scales.astype(np.float16).astype(np.float32), q.group_size)
    return run(model_from_state(ckpt.config, state, str(directory)))


def _require_loaders() -> None:
    """The transformers venv built before the loaders were added to it: skip (fail where the interop
    tests are required) until make_reference_venvs.sh adds them."""
    import os
    import subprocess

    check = subprocess.run([str(reference_python("transformers")), "-c", LOADERS], capture_output=True)
    if check.returncode != 0:
        message = "the transformers reference venv has no compressed-tensors / onnxruntime-genai " \
                  "(run tests/interop/make_reference_venvs.sh)"
        if os.environ.get("ERNIE_COMPRESS_INTEROP") == "required":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each case quantized and exported in its formats through the CLI, then one reference run over
    all: (root, our logits per case, export manifests per case and format)."""
    from tests.helpers import NEGATIVE, POSITIVE, cli_json

    _require_loaders()
    root = tmp_path_factory.mktemp("prequantized")
    data = root / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
    ours, manifests = {}, {}
    for seed, (case, (changes, quantize, formats)) in enumerate(CASES.items(), start=3):
        save_random(_config(changes), root / case / "float", "ours", seed=seed)
        cli_json(["quantize", str(root / case / "float"), "--task", "lm", "--data", str(data), *quantize,
                  "--out", str(root / case / "quantized")])
        ours[case], _ = outputs(root / case / "quantized")
        ours[case, "float16 scales"] = _with_float16_scales(root / case / "quantized")
        for layout in formats:
            cli_json(["export", str(root / case / "quantized"), "--format", "onnx", "--layout", layout,
                      "--out", str(root / case / f"export-{layout}")])
            (root / case / layout).symlink_to(root / case / f"export-{layout}" / "checkpoint")
            manifests[case, layout] = json.loads((root / case / f"export-{layout}" / "manifest.json").read_text())
    versions = json.loads(run_reference("transformers", str(root), *CASES, script="reference_prequantized.py"))
    print(versions)
    return root, ours, manifests


@pytest.mark.parametrize("case", [c for c, (_, _, formats) in CASES.items() if "compressed-tensors" in formats])
def test_transformers_loads_our_compressed_tensors_with_our_logits(exported, case):
    root, ours, manifests = exported
    loading = json.loads((root / case / "ct_loading.json").read_text())
    assert loading == {"class": "Ernie4_5ForCausalLM", "quant_method": "compressed-tensors",
                       "missing": [], "unexpected": []}
    entry = manifests[case, "compressed-tensors"]["files"]["checkpoint"]
    assert entry["format"] == "pack-quantized" and entry["quantized_linears"] == 14
    assert_close(ours[case], np.load(root / case / "ct_logits.npy"), REAL, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c, (_, _, formats) in CASES.items() if "gptq" in formats])
def test_onnxruntime_genai_builds_and_runs_our_gptq_with_our_logits(exported, case):
    root, ours, _ = exported
    graph = json.loads((root / case / "og_graph.json").read_text())
    assert graph["MatMulNBits"] == 2 * 5 and graph["MatMul"] == 1  # qkv, o, gate, up, down per layer; float head
    theirs = np.load(root / case / "og_logits.npy")
    assert_close(ours[case, "float16 scales"], theirs, REAL, rtol=1e-5)  # the format's own rounding
    assert_close(ours[case], theirs, REAL, rtol=GPTQ_RTOL)
