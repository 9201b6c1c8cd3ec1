"""``export --layout gguf`` against llama.cpp itself: llama-cpp-python 0.3.36 (its vendored llama.cpp has
the ``ernie4_5`` architecture), compiled from source for the CPU by ``make_llama_cpp_venv.sh``.

Random ERNIE 4.5 models (widths multiples of 32, GQA, heads wider than hidden / heads as ERNIE-4.5-0.3B's,
a non-default RMSNorm epsilon and RoPE base that matter at their activation scale, an embedding
padded past the sentencepiece tokenizer; and an
``ernie4_5-moe`` one: a dense first layer, 4 experts top-2 with correction biases, a shared expert)
are quantized by our CLI (W4 groups of 32 -> Q4_0; W8 per channel -> Q8_0; the int8 head -> Q8_0)
and exported; llama.cpp loads the GGUF and evaluates fixed token ids. Two bounds, measured here:

- the GGUF as written: llama.cpp's CPU matmul quantizes the activations to Q8_0 blocks (32 values,
  one fp16 scale) before its Q4_0/Q8_0 dot products, which moves the logits by a few percent of
  their scale (``MAX_BLOCKS``), and the top token agrees on ``MIN_AGREEMENT`` of the positions;
- the same file with its blocks decoded to F32 by the gguf package (llama.cpp then multiplies in
  float): only the scales' fp16 rounding and llama.cpp's f16 KV cache remain, as much as a plain fp16
  cast of our weights changes (printed beside it): ``MAX_DECODED``, 20x tighter.

Greedy continuations (llama.cpp's KV cache, one token at a time) of the decoded file equal ours (the
file as written may flip a near-tie of these random models: printed), and llama.cpp's tokenization
of texts equals our sentencepiece tokenizer's. The test tokenizer is a BPE sentencepiece
model with byte-fallback pieces and no normalizer, which is what llama.cpp's SPM tokenizer implements:
it does not apply a tokenizer.model's normalization rules (sentencepiece's default nmt_nfkc maps a
full-width comma to ',', llama.cpp keeps it and falls back to bytes), tokenizes a unigram model by
BPE-style merges, and aborts on a symbol that is no piece when there are no byte pieces.

Planted once each, all fail here: Q4_0 nibbles swapped, the offset 8 dropped, a weight written
untransposed (as [in, out]), the RMSNorm epsilon and the RoPE base written as llama.cpp's defaults.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from tests.helpers import NEGATIVE, POSITIVE, cli_json
from tests.interop.helpers import run_reference

pytestmark = pytest.mark.interop
SEQUENCE = 24  # token ids evaluated at once
PROMPTS, NEW_TOKENS = 3, 8
TEXTS = POSITIVE[:3] + NEGATIVE[:2]
# Measured bounds (the printed differences): max |logit difference| over the logits' scale (max |logit|)
MAX_BLOCKS = 0.05  # the GGUF as written: llama.cpp quantizes the activations to Q8_0 (measured 2.1e-2 to 3.4e-2)
MAX_DECODED = 2.5e-3  # its blocks decoded to F32: fp16 scales and llama.cpp's f16 KV cache (measured 1.0e-3 to
#   1.2e-3, as much as casting all our weights to fp16 changes: 1.2e-3 to 1.5e-3)
MIN_AGREEMENT = 0.85  # the GGUF as written: share of positions whose top token is ours (measured 92% to 100%)


def _gguf_available() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        message = "the gguf package is not installed (pip install 'ernie-compress[gguf]')"
        if os.environ.get("ERNIE_COMPRESS_INTEROP") == "required":
            pytest.fail(message)
        pytest.skip(message)


def _sentencepiece_model() -> bytes:
    """A small sentencepiece model with byte-fallback pieces (<0x00>..<0xFF>), as ERNIE 4.5's has:
    llama.cpp's SPM tokenizer falls back to them for any symbol that is not a piece (and aborts
    when they are missing)."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter((POSITIVE + NEGATIVE) * 20), model_writer=proto,
                                   vocab_size=330, character_coverage=1.0, model_type="bpe", bos_id=1, eos_id=2,
                                   unk_id=0, pad_id=-1, byte_fallback=True, normalization_rule_name="identity",
                                   minloglevel=2)
    return proto.getvalue()


DENSE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             num_hidden_layers=2, rms_norm_eps=0.02, rope_theta=1000.0, max_position_embeddings=256,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# routed experts from layer 1 (layer 0 dense), 4 experts top-2 of width 32, one shared expert
MOE = dict(DENSE, num_hidden_layers=3, moe_num_experts=4, moe_k=2, moe_intermediate_size=32,
           moe_num_shared_experts=1, moe_layer_start_index=1)
CASES = {"Q4_0": ("ernie45-tiny", DENSE, ["--weight-only", "int4", "--group-size", "32"]),
         "Q8_0": ("ernie45-tiny", DENSE, ["--weight-only", "int8"]),
         "Q4_0-moe": ("ernie45-moe-tiny", MOE, ["--weight-only", "int4", "--group-size", "32"])}


def _random_checkpoint(out, tokenizer, preset: str, changes: dict, padding: int = 8) -> None:
    """A random ERNIE 4.5 whose hidden states are large enough for its epsilon (0.02) to matter; MoE:
    routers N(0, 0.3) and correction biases in [-0.15, 0.15], so tokens prefer different experts."""
    import paddle

    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.models import build_model, model_state
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    config = config_from_dict(dict(resolve_preset(preset), **changes, vocab_size=tokenizer.vocab_size + padding))
    paddle.seed(11)
    model = build_model(config)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5))
        elif name.endswith("e_score_correction_bias"):
            p.set_value(paddle.uniform(p.shape, min=-0.15, max=0.15))
        elif name.endswith("mlp.gate.weight"):
            p.set_value(paddle.normal(0.0, 0.3, p.shape))
        else:
            p.set_value(p * 6.0)  # N(0, 0.12): logits of a few units, hidden RMS near sqrt(eps)
    save_checkpoint(out, config, model_state(model), tokenizer, {"name": "init"})


def _ours(checkpoint, ids: list[int], prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list]:
    """(logits [len, vocab], the same with every weight cast to fp16 and back, greedy continuations)."""
    import paddle

    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.models import model_from_state
    from ernie_compress.models.families import family_of
    from ernie_compress.runtime.decoding import generate_tokens

    ckpt = load_checkpoint(checkpoint)
    model = model_from_state(ckpt.config, ckpt.state, str(checkpoint))
    half = {k: v.astype(np.float16).astype(np.float32) for k, v in ckpt.state.items()}
    model16 = model_from_state(ckpt.config, half, str(checkpoint))
    with paddle.no_grad():
        logits = [m(paddle.to_tensor([ids])).numpy()[0] for m in (model, model16)]
    greedy = [generate_tokens(family_of(ckpt.config).cached_decoder(model), p, NEW_TOKENS, eos_id=-1)["tokens"]
              for p in prompts]
    return logits[0], logits[1], greedy


def _decoded_copy(checkpoint, out) -> None:
    """The same GGUF with every block tensor decoded to F32 by the gguf package's dequantizer (llama.cpp's
    Python reference of the formats): llama.cpp then multiplies in float, without quantizing activations."""
    import gguf

    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.data.sp_tokenizer import load_tokenizer
    from ernie_compress.export import gguf as ours
    from ernie_compress.quantize.scheme import quantization_info

    def decoded(t):
        if t.kind == "F32":
            return t
        as_float = lambda t=t: gguf.quants.dequantize(t.make(), gguf.GGMLQuantizationType[t.kind])  # noqa: E731
        return ours.Planned(t.name, t.shape, "F32", as_float)

    ckpt = load_checkpoint(checkpoint)
    real = ours.plan_tensors
    try:
        ours.plan_tensors = lambda *args: [decoded(t) for t in real(*args)]
        ours.write_gguf(out, ckpt.config, ckpt.state, load_tokenizer(checkpoint), quantization_info(ckpt.config))
    finally:
        ours.plan_tensors = real


def _exchange(root, block: str, data, ids, prompts) -> tuple:
    """Quantize and export one case with our CLI, run both GGUFs in llama.cpp; everything to compare."""
    preset, changes, flags = CASES[block]
    cli_json(["quantize", str(root / f"{block}-fp32"), *flags, "--method", "rtn", "--task", "lm", "--data",
              str(data), "--out", str(root / block)])
    out = cli_json(["export", str(root / block), "--format", "onnx", "--weight-only-compute", "fp32",
                    "--layout", "gguf", "--out", str(root / f"{block}-export")])
    entry = out["files"]["checkpoint"]
    _decoded_copy(root / block, root / f"{block}-decoded.gguf")
    request = {"gguf": str(root / f"{block}-export" / "checkpoint" / entry["file"]), "ids": ids, "prompts": prompts,
               "also": {"decoded": str(root / f"{block}-decoded.gguf")}, "new_tokens": NEW_TOKENS, "texts": TEXTS,
               "out": str(root / f"{block}-llama")}
    (root / f"{block}.json").write_text(json.dumps(request))
    run_reference("llama-cpp", str(root / f"{block}.json"), script="reference_llama_cpp.py")
    theirs = {name: np.load(root / f"{block}-llama" / f"logits{suffix}.npy")
              for name, suffix in (("blocks", ""), ("decoded", "_decoded"))}
    result = json.loads((root / f"{block}-llama" / "result.json").read_text())
    return (*_ours(root / block, ids, prompts), theirs, result, entry)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: our logits, fp16-cast logits, greedy tokens; llama.cpp's logits (blocks, decoded), its
    greedy tokens and tokenization; the manifest's entry."""
    from ernie_compress.data.sp_tokenizer import SentencePieceTokenizer

    _gguf_available()
    root = tmp_path_factory.mktemp("llama_cpp")
    tokenizer = SentencePieceTokenizer(_sentencepiece_model())
    rng = np.random.default_rng(3)
    ids = [tokenizer.cls_id, *rng.integers(3, tokenizer.vocab_size, SEQUENCE - 1).tolist()]
    prompts = [[tokenizer.cls_id, *rng.integers(3, tokenizer.vocab_size, 6).tolist()] for _ in range(PROMPTS)]
    data = root / "data"  # the quantize stage asks for a task (RTN reads none of it)
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
    results = {}
    for block, (preset, changes, _) in CASES.items():
        _random_checkpoint(root / f"{block}-fp32", tokenizer, preset, changes)
        results[block] = _exchange(root, block, data, ids, prompts)
    return tokenizer, results


@pytest.mark.parametrize("block", sorted(CASES))
def test_llama_cpp_gives_our_logits_within_the_formats_rounding(exported, block):
    _, results = exported
    ours, fp16_cast, _, theirs, reference, entry = results[block]
    assert entry["blocks"] == block[:4] and reference["n_vocab"] == ours.shape[1]
    assert reference["metadata"]["general.architecture"] == ("ernie4_5-moe" if "moe" in block else "ernie4_5")
    scale = float(np.abs(ours).max())
    relative = {name: float(np.abs(logits - ours).max()) / scale for name, logits in theirs.items()}
    fp16 = float(np.abs(fp16_cast - ours).max()) / scale
    agreement = float(np.mean(theirs["blocks"].argmax(-1) == ours.argmax(-1)))
    print(f"{block}: llama.cpp vs ours, max |Δ| over the logit scale {scale:.3g}: {relative['blocks']:.2e} "
          f"(its Q8_0 activations), {relative['decoded']:.2e} with the blocks decoded to F32 (a plain fp16 cast of "
          f"our weights: {fp16:.2e}; scales' fp16 rounding {entry['max_scale_rounding']:.1e}); top-1 agreement "
          f"{agreement:.0%}; {reference['versions']}")
    assert relative["decoded"] <= MAX_DECODED, f"{relative['decoded']:.3g} > {MAX_DECODED}"
    assert relative["blocks"] <= MAX_BLOCKS, f"{relative['blocks']:.3g} > {MAX_BLOCKS}"
    assert agreement >= MIN_AGREEMENT


@pytest.mark.parametrize("block", sorted(CASES))
def test_llama_cpp_greedy_continuations_are_ours(exported, block):
    """Through llama.cpp's KV cache, one token at a time: the decoded file's continuations are ours; the
    GGUF as written may flip a near-tie of these random models under its Q8_0 activations (printed)."""
    _, results = exported
    _, _, greedy, _, reference, _ = results[block]
    steps = [a == b for mine, theirs in zip(greedy, reference["greedy"]["gguf"]) for a, b in zip(mine, theirs)]
    print(f"{block}: greedy tokens of the GGUF as written equal ours at {np.mean(steps):.0%} of the steps")
    assert reference["greedy"]["decoded"] == greedy


def test_llama_cpp_tokenizes_texts_as_our_sentencepiece_tokenizer(exported):
    tokenizer, results = exported
    _, _, _, _, reference, _ = results["Q4_0"]
    ours = [tokenizer.encode_batch([t], max_length=64).input_ids[0] for t in TEXTS]
    ours = [[i for i in row if i not in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)] for row in ours]
    assert reference["tokenized"] == ours


def test_llama_cpp_tokenizes_texts_as_our_wordpiece_tokenizer(tmp_path):
    """Our own small ERNIE 4.5 models carry a WordPiece vocab.txt: written as llama.cpp's WPM
    (``bert``) vocabulary, it tokenizes as ours (lowercased, CJK characters apart, ``##`` pieces, [UNK])."""
    from ernie_compress.data.tokenizer import ErnieTokenizer, build_vocab

    _gguf_available()
    root = tmp_path
    tokenizer = ErnieTokenizer(build_vocab(POSITIVE + NEGATIVE + ["Hello World, hello again."], min_frequency=1))
    _random_checkpoint(root / "fp32", tokenizer, "ernie45-tiny", DENSE, padding=0)  # vocab.txt: no padding
    data = root / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(POSITIVE + NEGATIVE), encoding="utf-8")
    cli_json(["quantize", str(root / "fp32"), "--weight-only", "int4", "--task", "lm", "--data", str(data),
              "--out", str(root / "w4")])
    out = cli_json(["export", str(root / "w4"), "--format", "onnx", "--weight-only-compute", "fp32",
                    "--layout", "gguf", "--out", str(root / "e")])
    texts = [*TEXTS, "Hello WORLD, hello again!", "hello xyz"]  # capitals, punctuation, an unknown piece
    request = {"gguf": str(root / "e" / "checkpoint" / out["files"]["checkpoint"]["file"]), "ids": [1, 5, 6],
               "prompts": [], "new_tokens": 0, "texts": texts, "out": str(root / "llama")}
    (root / "request.json").write_text(json.dumps(request))
    run_reference("llama-cpp", str(root / "request.json"), script="reference_llama_cpp.py")
    reference = json.loads((root / "llama" / "result.json").read_text())
    assert reference["metadata"]["tokenizer.ggml.model"] == "bert"
    ours = [[i for i in tokenizer.encode_batch([t], max_length=64).input_ids[0].tolist()
             if i not in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)] for t in texts]
    assert reference["tokenized"] == ours
