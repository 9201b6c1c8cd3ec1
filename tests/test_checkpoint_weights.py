"""Reading a checkpoint folder's weights: sharded saves (``*.index.json``) and folders that hold two layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from ernie_compress.checkpoint import read_weights
from ernie_compress.errors import UserError


def _sharded(tmp_path, drop: str | None = None):
    tensors = {"a.weight": np.ones((2, 3), np.float32), "b.weight": np.zeros(4, np.float32)}
    save_file({"a.weight": tensors["a.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": tensors["b.weight"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
    if drop:
        (tmp_path / drop).unlink()
    return tensors


def test_a_sharded_save_reads_every_tensor_from_its_shard(tmp_path):
    tensors = _sharded(tmp_path)
    state = read_weights(tmp_path)
    assert sorted(state) == sorted(tensors)
    np.testing.assert_array_equal(state["a.weight"], tensors["a.weight"])


def test_an_index_naming_a_missing_shard_is_refused_by_name(tmp_path):
    _sharded(tmp_path, drop="model-00002-of-00002.safetensors")
    with pytest.raises(UserError, match="names shard model-00002-of-00002.safetensors, which is missing"):
        read_weights(tmp_path)


def test_a_shard_outside_the_folder_is_refused(tmp_path):
    _sharded(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "../x.safetensors"}}))
    with pytest.raises(UserError, match="not a file name in the checkpoint folder"):
        read_weights(tmp_path)


def test_weights_in_two_layouts_are_refused(tmp_path):
    _sharded(tmp_path)
    save_file({"a.weight": np.ones(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="more than one layout .*model.safetensors, model.safetensors.index.json"):
        read_weights(tmp_path)
