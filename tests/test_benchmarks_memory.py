"""The measurement tools of issue #30: benchmarks/random_checkpoint.py writes checkpoints the loader
reads with the declared shape, and benchmarks/memory.py's measuring function reports a child's peak
resident memory (and its failures) as the OS counts it."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


random_checkpoint = _load("random_checkpoint")
memory = _load("memory")
SMALL = dict(layers=3, hidden=64, ffn=128, heads=4, kv_heads=2, head_dim=16, vocab=4096)  # every width differs
MOE = dict(SMALL, experts=4, moe_ffn=32, moe_k=2, shared_experts=1)


@pytest.fixture(scope="module", params=[("ernie45-0.3b", SMALL), ("ernie45-21b-a3b", MOE)], ids=["dense", "moe"])
def written(request, tmp_path_factory):
    preset, overrides = request.param
    config = random_checkpoint.checkpoint_config(preset, **overrides)
    out = tmp_path_factory.mktemp(preset) / "ckpt"
    summary = random_checkpoint.write_random_checkpoint(out, config, shard_gb=0.5 / 1024)  # 512 KiB shards
    return config, out, summary


def test_random_checkpoint_loads_with_the_declared_shape(written):
    from ernie_compress.checkpoint import load_checkpoint

    config, out, summary = written
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert summary["shards"] == len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in shards) - sum(
        8 + struct.unpack("<Q", (out / s).read_bytes()[:8])[0] for s in shards)  # the data bytes of the shards
    assert all(name.startswith(("model.", "lm_head.")) for name in index["weight_map"])  # Hugging Face names
    ckpt = load_checkpoint(out)
    assert ckpt.config.architecture == config.architecture
    assert (ckpt.config.num_hidden_layers, ckpt.config.hidden_size, ckpt.config.vocab_size) == (3, 64, 4096)
    assert {n: v.shape for n, v in ckpt.state.items()} == config.causal_lm_shapes()
    assert ckpt.tokenizer().vocab_size <= 4096
    qkv = ckpt.state["ernie.layers.1.self_attn.qkv_proj.weight"]
    assert qkv.dtype == np.float32 and 0.018 < qkv.std() < 0.022
    assert np.all(ckpt.state["ernie.layers.2.input_layernorm.weight"] == 1.0)


def test_layers_are_dense_or_moe_as_declared(written):
    config, out, _ = written
    names = set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    assert "model.layers.0.mlp.gate_proj.weight" in names  # layer 0 dense in both (21B-A3B: MoE from layer 1)
    experts = {f"model.layers.2.mlp.experts.{e}.down_proj.weight" for e in range(4)}
    assert (experts <= names) == (config.model_type == "ernie4_5_moe")


def test_bfloat16_rounds_to_nearest_even_and_is_written_as_bf16(tmp_path):
    values = np.array([1.0, 1.00390625, 1.01171875, -2.0009765625, 3.0e-3], np.float32)
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1.0); 1 + 3*2^-8 likewise goes up to 1 + 2^-6
    expected = np.array([0x3F80, 0x3F80, 0x3F82, 0xC000, 0x3B45], np.uint16)
    assert np.array_equal(random_checkpoint.bfloat16_bits(values), expected)
    config = random_checkpoint.checkpoint_config("ernie45-0.3b", **dict(SMALL, layers=1))
    random_checkpoint.write_random_checkpoint(tmp_path / "b", config, dtype="bfloat16")
    raw = (tmp_path / "b" / "model.safetensors").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    norm = header["model.norm.weight"]
    start, end = (8 + size + o for o in norm["data_offsets"])
    assert norm["dtype"] == "BF16" and np.all(np.frombuffer(raw[start:end], "<u2") == 0x3F80)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_measuring_reports_a_childs_peak_rss():
    big = memory.run_measured(_child("""
        import time
        block = b"x" * (300 << 20)  # 300 MiB written, so resident
        time.sleep(0.2)
        del block
    """))
    small = memory.run_measured(_child("block = b'x' * (20 << 20)"))
    assert big.returncode == 0 and big.error is None
    assert big.peak_rss_bytes >= 300 << 20  # the peak, though freed before the exit
    assert small.peak_rss_bytes < 200 << 20  # each child on its own: not the largest one seen so far


def test_measuring_records_a_failure_and_guards_the_budget():
    failed = memory.run_measured(_child("import sys; print('partial'); sys.exit('error: no such checkpoint')"))
    assert failed.returncode == 1 and failed.error == "no such checkpoint"
    killed = memory.run_measured(_child("""
        import time
        blocks = []
        for _ in range(40):
            blocks.append(b"x" * (25 << 20))
            time.sleep(0.05)
    """), limit_bytes=200 << 20, poll_s=0.05)
    assert killed.returncode != 0 and killed.error.startswith("killed at") and "--max-rss-gib" in killed.error
    assert killed.peak_rss_bytes < 900 << 20  # stopped before the 1000 MiB it asked for


def test_a_command_over_the_budget_is_skipped_from_the_shallower_ratio():
    rows = [{"command": "rtn", "status": "ok", "peak_rss_gib": 4.0, "weights_gib": 0.5}]
    assert memory.estimated_peak("rtn", 2 * 2**30, rows, 10.0) == 16 * 2**30  # 8x the 2 GiB of weights
    assert memory.estimated_peak("gptq", 2 * 2**30, rows, 10.0) == 20 * 2**30  # not measured yet: the default
    ratios = memory.depth_ratios([dict(rows[0], layers=6), {"command": "rtn", "status": "ok", "layers": 18,
                                                           "peak_rss_gib": 6.0, "weights_gib": 1.5}])
    assert ratios["rtn"]["peak_ratio"] == pytest.approx(1.5) and ratios["rtn"]["weights_ratio"] == pytest.approx(3.0)
