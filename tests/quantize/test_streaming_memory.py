"""Memory of ``quantize --weight-only int4 --stream`` and ``info``, measured by the OS in a child
process on a deep, narrow ERNIE 4.5 decoder written for the test (~320 MB of float32 weights, 32 layers
of 12 MB): both must stay far below the checkpoint's size on top of the interpreter's baseline, which is
what reading the whole model would cost (the bug this catches)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from ernie_compress.checkpoint import WEIGHTS_FILE, save_checkpoint
from ernie_compress.data.tokenizer import ErnieTokenizer
from ernie_compress.models.families import config_from_dict
from ernie_compress.models.presets import resolve_preset

MIB = 1 << 20
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4e00 + i) for i in range(1019)]
# the child's peak (ru_maxrss of its own children, so earlier children of pytest do not count), in bytes
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stderr.write(r.stdout + r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _write_decoder(out, layers: int, hidden: int, ffn: int) -> None:
    config = config_from_dict(dict(resolve_preset("ernie45-tiny"), vocab_size=len(VOCAB), hidden_size=hidden,
                                   intermediate_size=ffn, num_attention_heads=8, num_key_value_heads=2,
                                   num_hidden_layers=layers, tie_word_embeddings=False))
    rng = np.random.default_rng(0)
    state = {name: rng.standard_normal(shape, dtype=np.float32) * 0.02 for name, shape in config.causal_lm_shapes().items()}
    save_checkpoint(out, config, state, ErnieTokenizer(VOCAB), {"name": "random"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    _write_decoder(root / "deep", layers=32, hidden=512, ffn=1536)
    _write_decoder(root / "tiny", layers=1, hidden=32, ffn=64)
    return root


def _peak(args: list[str]) -> int:
    """The peak resident bytes of ``ernie-compress ARGS`` run as a child process (it must succeed)."""
    done = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "ernie_compress", *args],
                          capture_output=True, text=True, timeout=300)
    rc, kib = done.stdout.split()
    assert rc == "0", done.stderr[-2000:]
    return int(kib) * 1024


def test_streamed_quantize_and_info_stay_far_below_the_checkpoints_size(models, tmp_path):
    size = (models / "deep" / WEIGHTS_FILE).stat().st_size  # ~320 MB
    baseline = _peak(["info", str(models / "tiny")])  # the interpreter and our imports (~50 MB)
    bound = baseline + size // 2
    info = _peak(["info", str(models / "deep")])
    assert info < baseline + size // 8, f"info peaked at {info / MIB:.0f} MiB (baseline {baseline / MIB:.0f} MiB)"
    limit = f"{bound / (1 << 30):.3f}"  # the run's own estimate must fit the bound too
    peak = _peak(["quantize", str(models / "deep"), "--weight-only", "int4", "--stream", "--max-memory", limit,
                  "--out", str(tmp_path / "w4")])
    assert peak < bound, (f"quantize --stream peaked at {peak / MIB:.0f} MiB; bound {bound / MIB:.0f} MiB "
                          f"(baseline {baseline / MIB:.0f} MiB + half of {size / MIB:.0f} MiB of weights)")
    index = json.loads((tmp_path / "w4" / (WEIGHTS_FILE + ".index.json")).read_text())
    assert len(set(index["weight_map"].values())) == 33


@pytest.fixture(scope="module")
def narrow(models):
    """Decoders of 64 and 8 narrow layers (~156 and ~20 MB: hidden 256, FFN 768, 2.4 MB a layer; narrow, so
    that the unblocked GPTQ solve stays quick) and a causal-LM task of 64 texts of ~100 characters."""
    _write_decoder(models / "narrow", layers=64, hidden=256, ffn=768)
    _write_decoder(models / "shallow", layers=8, hidden=256, ffn=768)
    data = models / "lm"
    data.mkdir()
    rng = np.random.default_rng(1)
    texts = ["".join(rng.choice(VOCAB[5:], size=int(rng.integers(60, 120)))) for _ in range(64)]
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("\n".join(texts), encoding="utf-8")
    return models


def _need(args: list[str]) -> float:
    """The GiB a streamed run says it needs, from its refusal under a --max-memory far too low."""
    done = subprocess.run([sys.executable, "-m", "ernie_compress", *args, "--max-memory", "0.001"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    return float(re.search(r"needs: \S+ ([0-9.]+) GiB", done.stderr).group(1))


def test_streamed_gptq_stays_within_its_estimate_and_flat_in_depth(narrow, tmp_path):
    """GPTQ holds one layer, its Hessians (float64), one solve and the calibration hidden states (16 x
    <=122 x 256 x 4 bytes): the peak stays within the run's own estimate (what --max-memory is checked
    against), and 64 layers peak within a quarter of their weights of 8 layers of the same shape (reading
    the model whole would add seven eighths)."""
    size = (narrow / "narrow" / WEIGHTS_FILE).stat().st_size
    gptq = ["quantize", "--weight-only", "int4", "--group-size", "16", "--method", "gptq", "--stream", "--task", "lm",
            "--data", str(narrow / "lm"), "--calib-samples", "16"]
    shallow = _peak([*gptq, str(narrow / "shallow"), "--out", str(tmp_path / "shallow")])
    need = _need([*gptq, str(narrow / "narrow"), "--out", str(tmp_path / "refused")])
    peak = _peak([*gptq, str(narrow / "narrow"), "--max-memory", f"{need:.2f}", "--out", str(tmp_path / "w4")])
    assert peak <= need * (1 << 30), f"peaked at {peak / MIB:.0f} MiB; the run estimated {need:.2f} GiB"
    assert peak < shallow + size // 4, (f"64 layers peaked at {peak / MIB:.0f} MiB, 8 layers at {shallow / MIB:.0f} "
                                        f"MiB ({size / MIB:.0f} MiB of weights)")
    index = json.loads((tmp_path / "w4" / (WEIGHTS_FILE + ".index.json")).read_text())
    assert len(set(index["weight_map"].values())) == 65
