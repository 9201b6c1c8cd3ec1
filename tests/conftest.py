"""Shared fixtures: tiny models and small task files, built on the fly (nothing downloaded);
the helpers they use are in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import NEGATIVE, POSITIVE, cli_json, write_text_task

os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


@pytest.fixture
def text_task_dir(tmp_path: Path) -> Path:
    return write_text_task(tmp_path / "text_task")


@pytest.fixture
def tiny_config():
    """A 2-layer, hidden-32 ERNIE classifier config (the test suite's model)."""
    from ernie_compress.models.config import ErnieConfig
    from ernie_compress.models.presets import resolve_preset

    return ErnieConfig.from_dict(dict(resolve_preset("tiny"), vocab_size=60,
                                      id2label={0: "neg", 1: "pos"}))


@pytest.fixture
def tiny_vocab() -> list[str]:
    from ernie_compress.data.tokenizer import build_vocab

    return build_vocab(POSITIVE + NEGATIVE, min_frequency=1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state: random-init models are the same each run."""
    import random
    import sys

    random.seed(0)
    np.random.seed(0)
    if "paddle" in sys.modules:
        sys.modules["paddle"].seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """An ERNIE 4.5 tiny trained as a causal LM on the tiny task's sentences (character vocabulary)."""
    root = tmp_path_factory.mktemp("lm")
    data = root / "data"
    data.mkdir()
    texts = POSITIVE + NEGATIVE
    for split, rows in (("train", texts * 6), ("dev", texts), ("test", texts)):
        (data / f"{split}.txt").write_text("\n".join(rows), encoding="utf-8")
    cli_json(["train", "--task", "lm", "--data", str(data), "--preset", "ernie45-tiny", "--out", str(root / "m"),
              "--epochs", "12", "--lr", "5e-3", "--batch-size", "8"])
    return root / "m"


@pytest.fixture(scope="session")
def tiny_lm_int4(tiny_lm, tmp_path_factory):
    """``tiny_lm`` quantized weight-only int4 (RTN) with a given group size (and output head grid), made
    once per session: ``tiny_lm_int4(16)`` is the folder."""
    made: dict[tuple[int, str], Path] = {}

    def quantized(group_size: int, head: str = "int8") -> Path:
        if (group_size, head) not in made:
            out = tmp_path_factory.mktemp("w4") / f"w4-g{group_size}-{head}-head"
            cli_json(["quantize", str(tiny_lm), "--weight-only", "int4", "--group-size", str(group_size),
                      "--head", head, "--out", str(out)])
            made[group_size, head] = out
        return made[group_size, head]

    return quantized
