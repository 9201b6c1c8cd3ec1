"""``quantize --weight-only ... --store codes``: the checkpoint keeps integer codes and scales instead of the
dequantized floats; every reader expands them to the very weights ``--store float`` writes (in memory and
streamed, RTN and GPTQ, dense and MoE), the files are a fraction of the size, the export is the same
file, and another layout is refused."""

from __future__ import annotations

import json

import pytest

from ernie_compress.checkpoint import load_checkpoint
from ernie_compress.lazy_checkpoint import open_checkpoint
from ernie_compress.models.stored_codes import CODES
from tests.helpers import cli_json
from tests.quantize.test_streaming import _refused, parents  # noqa: F401  (the fixture: tied, untied, moe)


def _quantize(parent, out, *extra: str) -> dict:
    return cli_json(["quantize", str(parent), "--weight-only", "int4", "--group-size", "16", "--out", str(out), *extra])


def _weight_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


@pytest.mark.parametrize(("model", "extra"), [
    ("tied", []), ("moe", ["--method", "gptq", "--calib-samples", "40"]),
    ("untied", ["--stream"]), ("moe", ["--stream", "--method", "gptq", "--calib-samples", "40"]),
])
def test_stored_codes_read_back_as_the_float_storage(parents, tmp_path, model, extra):  # noqa: F811
    floats = _quantize(parents[model], tmp_path / "float", *extra)
    codes = _quantize(parents[model], tmp_path / "codes", *extra, "--store", "codes")
    assert codes["scheme"] == dict(floats["scheme"], storage="codes") and floats["scheme"]["storage"] == "float"
    if "--stream" not in extra:
        assert codes["metrics"] == floats["metrics"]  # the model evaluated holds the same weights
    a, b = load_checkpoint(tmp_path / "float"), load_checkpoint(tmp_path / "codes")
    assert sorted(a.state) == sorted(b.state)
    for name, value in a.state.items():
        assert value.dtype == b.state[name].dtype and value.tobytes() == b.state[name].tobytes(), name
    lazy = open_checkpoint(tmp_path / "codes")
    assert lazy.shapes() == open_checkpoint(tmp_path / "float").shapes()
    stored = json.loads((tmp_path / "codes" / "config.json").read_text())["quantization"]["weights"]
    for group, state in lazy.iter_groups():  # streamed readers expand group by group
        assert all(state[k].tobytes() == a.state[k].tobytes() for k in state), group
    names = set(_names(tmp_path / "codes"))
    assert {k + CODES for k in stored} <= names and not set(stored) & names  # every quantized weight as codes


def _names(directory) -> list[str]:
    from safetensors import safe_open

    names = []
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), "np") as f:
            names += list(f.keys())
    return names


def test_w4_codes_take_a_fraction_of_the_float_files(parents, tmp_path):  # noqa: F811
    _quantize(parents["untied"], tmp_path / "float")
    _quantize(parents["untied"], tmp_path / "codes", "--store", "codes")
    names = _names(tmp_path / "codes")
    assert "lm_head.weight.qcodes" in names and "lm_head.weight" not in names  # the int8 head too
    assert _weight_bytes(tmp_path / "codes") < 0.4 * _weight_bytes(tmp_path / "float")  # the embedding stays float


def test_the_export_of_stored_codes_is_the_same_file(parents, tmp_path):  # noqa: F811
    for store in ("float", "codes"):
        _quantize(parents["tied"], tmp_path / store, "--store", store)
        cli_json(["export", str(tmp_path / store), "--format", "onnx", "--out", str(tmp_path / f"{store}-onnx")])
    decoder = [(tmp_path / f"{s}-onnx" / "onnx" / "decoder.onnx").read_bytes() for s in ("float", "codes")]
    assert decoder[0] == decoder[1]


def test_codes_in_another_layout_are_refused(parents, tmp_path):  # noqa: F811
    line = _refused(["quantize", str(parents["tied"]), "--weight-only", "int4", "--store", "codes", "--layout", "hf"],
                    tmp_path / "o")
    assert "--store codes is our layout's; --layout hf holds float weights" in line
