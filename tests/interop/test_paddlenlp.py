"""ERNIE 3.0 against PaddleNLP 2.8.1, both directions: logits on a padded batch agree to 1e-5 relative.

PaddleNLP -> us: the library builds a random model for each case and saves it with its own
``save_pretrained`` (default labels left out of config.json, LayerNorm epsilon 1e-12 at run time,
task-type ids from ``task_id``, the MLM head's ``cls.predictions.decoder.*``); our reader loads it.
Us -> PaddleNLP: we write a random model with ``--layout paddlenlp``; PaddleNLP's ``from_pretrained``
loads it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cases import ERNIE3_BASE, ERNIE3_CASES
from tests.interop.helpers import assert_close, run_reference
from ours import REAL, outputs, save_random

pytestmark = pytest.mark.interop


def _mask(arch: str):
    return REAL if arch == "ErnieForQuestionAnswering" else None  # ours scores padding -1e4 for QA spans


@pytest.mark.parametrize("case", sorted(ERNIE3_CASES))
def test_a_paddlenlp_save_loads_with_its_logits(tmp_path, case):
    arch, changes = ERNIE3_CASES[case]
    run_reference("paddlenlp", "save", "paddlenlp", case, str(tmp_path))
    theirs = np.load(tmp_path / "logits.npy")
    ours, config = outputs(tmp_path / "model")
    assert config.architecture == arch and config.layer_norm_eps == 1e-12
    if arch == "ErnieForSequenceClassification":  # default labels are not in config.json: read from the head
        saved = json.loads((tmp_path / "model" / "config.json").read_text())
        assert ("id2label" in saved) == ("num_labels" in changes)  # 2 default labels: left out
        assert config.labels == [f"LABEL_{i}" for i in range(changes.get("num_labels", 2))]
    assert_close(ours, theirs, _mask(arch))


@pytest.mark.parametrize("case", sorted(ERNIE3_CASES))
def test_our_paddlenlp_layout_loads_in_paddlenlp(tmp_path, case):
    from ernie_compress.models.config import ErnieConfig

    arch, changes = ERNIE3_CASES[case]
    keys = dict(ERNIE3_BASE, **{k: v for k, v in changes.items() if k != "num_labels"}, architectures=[arch])
    if arch != "ErnieForQuestionAnswering" and arch != "ErnieForMaskedLM":
        keys["id2label"] = {i: f"L{i}" for i in range(changes.get("num_labels", 2))}
    ours = save_random(ErnieConfig.from_dict(keys), tmp_path / "ours", "paddlenlp")
    run_reference("paddlenlp", "load", "paddlenlp", arch, str(tmp_path / "ours"), str(tmp_path / "theirs.npy"))
    assert_close(ours, np.load(tmp_path / "theirs.npy"), _mask(arch))
