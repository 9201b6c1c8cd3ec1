"""The bad-input corpus: every case gives one `error:` line on stderr, exit code 2, no traceback,
and leaves no output (nor temporary directory) behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ernie_compress.cli import app
from tests.helpers import train_tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    ckpt, data = train_tiny_checkpoint(root, epochs=2)
    export = root / "export"
    assert runner.invoke(app, ["--quiet", "export", str(ckpt), "--out", str(export), "--format", "onnx"]).exit_code == 0
    int8 = root / "int8"
    assert runner.invoke(app, ["--quiet", "quantize", str(ckpt), "--ptq", "int8", "--calib-samples", "8",
                               "--out", str(int8)]).exit_code == 0
    decoder = root / "decoder"
    assert runner.invoke(app, ["--quiet", "train", "--task", "text", "--data", str(data), "--preset", "ernie45-tiny",
                               "--max-steps", "2", "--out", str(decoder)]).exit_code == 0
    return {"root": root, "ckpt": ckpt, "data": data, "export": export, "int8": int8, "decoder": decoder}


def _broken_copy(world, tmp: Path, name: str, mutate) -> Path:
    target = tmp / name
    shutil.copytree(world["ckpt"], target)
    mutate(target)
    return target


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    (d / "compression.json").unlink()  # integrity check out of the way: the reader must catch it


def _json_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _files(world, tmp):
    """Inputs that the cases build in their own temporary folder."""
    empty = tmp / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "dev.jsonl").write_text("")
    badjson = tmp / "badjson"
    badjson.mkdir()
    (badjson / "train.jsonl").write_text('{"text": "好", "label": "a"}\n{"text": oops}\n')
    (badjson / "dev.jsonl").write_text('{"text": "好", "label": "a"}\n')
    odd = tmp / "odd"
    odd.mkdir()
    (odd / "train.jsonl").write_text('{"text": "好", "label": "a"}\n{"text": "差", "label": "b"}\n')
    (odd / "dev.jsonl").write_text('{"text": "好", "label": "c"}\n')
    recipe_unknown = tmp / "unknown.yaml"
    recipe_unknown.write_text("task: demo:sentiment\nstages:\n  - train: {preset: tiny, epoch: 1}\n")
    recipe_yaml = tmp / "broken.yaml"
    recipe_yaml.write_text("task: [demo\n")
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    badqa = tmp / "badqa"
    badqa.mkdir()
    good = '{"data": [{"paragraphs": [{"context": "张三住在北京。", "qas": [{"id": "q1", "question": "张三住在哪里？", "answers": [{"text": "北京", "answer_start": 4}]}]}]}]}'
    (badqa / "train.json").write_text(good.replace('"answer_start": 4', '"answer_start": "4"'), encoding="utf-8")
    (badqa / "dev.json").write_text(good, encoding="utf-8")
    badlm = tmp / "badlm"
    badlm.mkdir()
    (badlm / "train.txt").write_text("\n\n")
    (badlm / "dev.txt").write_text("好\n", encoding="utf-8")
    moe = tmp / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"model_type": "ernie4_5_moe", "moe_num_experts": 64,
                                                 "moe_group_experts": True}))  # expert groups: not computed here
    missing_shard = tmp / "missing_shard"  # a sharded save whose index names a shard that is not there
    shutil.copytree(world["ckpt"], missing_shard)
    (missing_shard / "model.safetensors").rename(missing_shard / "model-00001-of-00002.safetensors")
    (missing_shard / "compression.json").unlink()
    names = json.loads((missing_shard / "config.json").read_text())  # any tensor names will do for the index
    (missing_shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "ernie.embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors",
        "classifier.weight": "model-00002-of-00002.safetensors"}, "config": bool(names)}))
    two_layouts = tmp / "two_layouts"  # weights in two layouts side by side
    shutil.copytree(world["ckpt"], two_layouts)
    (two_layouts / "model_state.pdparams").write_bytes(b"\x80\x04}\x94.")
    return {"missing_shard": missing_shard, "two_layouts": two_layouts, "empty": empty, "badjson": badjson, "odd": odd, "recipe_unknown": recipe_unknown,
            "recipe_yaml": recipe_yaml, "a_file": a_file, "badqa": badqa, "badlm": badlm, "moe": moe}


CASES = {
    # train
    "train: data folder missing": ["train", "--task", "text", "--data", "{tmp}/nope", "--preset", "tiny", "--out", "{new}"],
    "train: --data is a file": ["train", "--task", "text", "--data", "{a_file}", "--preset", "tiny", "--out", "{new}"],
    "train: empty data files": ["train", "--task", "text", "--data", "{empty}", "--preset", "tiny", "--out", "{new}"],
    "train: invalid JSON line": ["train", "--task", "text", "--data", "{badjson}", "--preset", "tiny", "--out", "{new}"],
    "train: label not in train": ["train", "--task", "text", "--data", "{odd}", "--preset", "tiny", "--out", "{new}"],
    "train: unknown preset": ["train", "--task", "text", "--data", "{data}", "--preset", "giant", "--out", "{new}"],
    "train: unknown task": ["train", "--task", "squad", "--data", "{data}", "--preset", "tiny", "--out", "{new}"],
    "train: negative epochs": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny", "--out", "{new}", "--epochs", "-1"],
    "train: zero learning rate": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny", "--out", "{new}", "--lr", "0"],
    "train: tiny max length": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny", "--out", "{new}", "--max-seq-len", "4"],
    "train: output exists": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny", "--out", "{ckpt}"],
    "train: preset and --from": ["train", "--preset", "tiny", "--from", "{ckpt}", "--out", "{new}"],
    "train: no task": ["train", "--preset", "tiny", "--out", "{new}"],
    "train: malformed CMRC2018 answer": ["train", "--task", "cmrc2018", "--data", "{badqa}", "--preset", "tiny", "--out", "{new}"],
    "train: cmrc2018 without --data": ["train", "--task", "cmrc2018", "--preset", "tiny", "--out", "{new}"],
    "train: lm file without texts": ["train", "--task", "lm", "--data", "{badlm}", "--preset", "ernie45-tiny", "--out", "{new}"],
    "train: causal LM on an encoder": ["train", "--task", "demo:lm", "--preset", "tiny", "--out", "{new}"],
    "train: NER on a decoder": ["train", "--task", "demo:ner", "--preset", "ernie45-tiny", "--out", "{new}"],
    # evaluate / info
    "evaluate: missing checkpoint": ["evaluate", "{tmp}/nope"],
    "evaluate: a file, not a folder": ["evaluate", "{a_file}"],
    "evaluate: truncated weights": ["evaluate", "{truncated}"],
    "evaluate: config.json invalid JSON": ["evaluate", "{badconfig}"],
    "evaluate: config does not match weights": ["evaluate", "{mismatch}"],
    "evaluate: vocab does not match embeddings": ["evaluate", "{badvocab}"],
    "evaluate: changed weights (integrity)": ["evaluate", "{tampered}"],
    "evaluate: unknown split": ["evaluate", "{ckpt}", "--split", "holdout"],
    "evaluate: labels not in the model": ["evaluate", "{ckpt}", "--task", "demo:sentiment"],
    "evaluate: checkpoint on gpu": ["evaluate", "{ckpt}", "--device", "gpu"],
    "evaluate: unknown device": ["evaluate", "{export}", "--device", "tpu"],
    "evaluate: unknown backend": ["evaluate", "{export}", "--backend", "tvm"],
    "evaluate: gpu provider missing": ["evaluate", "{export}", "--device", "gpu", "--backend", "onnxruntime"],
    "evaluate: bad batch sizes": ["evaluate", "{export}", "--batch-sizes", "0"],
    "info: not a checkpoint": ["info", "{empty}"],
    "info: compression.json invalid": ["info", "{badlineage}"],
    "info: ERNIE 4.5 MoE with expert groups": ["info", "{moe}"],
    "info: sharded index names a missing shard": ["info", "{missing_shard}"],
    "info: two weight layouts in one folder": ["info", "{two_layouts}"],
    # export / bench
    "export: unknown format": ["export", "{ckpt}", "--out", "{new}", "--format", "tflite"],
    "export: opset out of range": ["export", "{ckpt}", "--out", "{new}", "--opset", "5"],
    "export: int8 to paddle": ["export", "{int8}", "--out", "{new}", "--format", "paddle"],
    "bench: zero clients": ["bench", "{export}", "--concurrency", "0"],
    "bench: not an export": ["bench", "{ckpt}"],
    # quantize / prune / distill / pretrain
    "quantize: int4": ["quantize", "{ckpt}", "--qat", "int4", "--out", "{new}"],
    "quantize: already quantized": ["quantize", "{int8}", "--ptq", "int8", "--out", "{new}"],
    "quantize: no calibration samples": ["quantize", "{ckpt}", "--ptq", "int8", "--calib-samples", "0", "--out", "{new}"],
    "prune: ratio above 1": ["prune", "{ckpt}", "--heads", "1.5", "--out", "{new}"],
    "prune: negative ratio": ["prune", "{ckpt}", "--heads", "-0.1", "--out", "{new}"],
    "prune: every head": ["prune", "{ckpt}", "--heads", "0.99", "--out", "{new}", "--no-latency"],
    "prune: quantized checkpoint": ["prune", "{int8}", "--heads", "0.2", "--out", "{new}"],
    "prune: unknown GQA mode": ["prune", "{decoder}", "--heads", "0.5", "--gqa", "kv", "--out", "{new}"],
    "prune: pruned heads in --layout paddlenlp": ["prune", "{ckpt}", "--heads", "0.5", "--uniform", "--layout",
                                                  "paddlenlp", "--out", "{new}", "--no-latency"],
    "prune: FFN widths differ, --layout paddlenlp": ["prune", "{ckpt}", "--params", "0.2", "--layout", "paddlenlp",
                                                     "--out", "{new}", "--no-latency"],
    "train: decoder layout for an encoder": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny",
                                             "--layout", "paddleformers", "--out", "{new}"],
    "train: unknown layout": ["train", "--task", "text", "--data", "{data}", "--preset", "tiny", "--layout", "onnx",
                              "--out", "{new}"],
    "quantize: encoder layout for a decoder": ["quantize", "{decoder}", "--fp16", "--layout", "paddlenlp",
                                               "--out", "{new}"],
    "distill: classifier decoder in --layout hf": ["distill", "--teacher", "{decoder}", "--student", "ernie45-tiny",
                                                   "--layout", "hf", "--out", "{new}"],
    "export: unknown layout": ["export", "{ckpt}", "--out", "{new}", "--layout", "onnx"],
    "distill: unknown student": ["distill", "--teacher", "{ckpt}", "--student", "colossal", "--out", "{new}"],
    "distill: missing teacher": ["distill", "--teacher", "{tmp}/nope", "--student", "tiny", "--out", "{new}"],
    "pretrain: unknown corpus": ["pretrain", "--corpus", "{tmp}/none.txt", "--out", "{new}"],
    # recipes / report
    "run: missing recipe": ["run", "{tmp}/none.yaml", "--out", "{new}"],
    "run: unknown key": ["run", "{recipe_unknown}", "--out", "{new}"],
    "run: invalid YAML": ["run", "{recipe_yaml}", "--out", "{new}"],
    "report: no report": ["report", "{empty}"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(world, tmp_path, case):
    files = _files(world, tmp_path)
    paths = dict(
        world, **files, tmp=tmp_path, new=tmp_path / "new",
        truncated=_broken_copy(world, tmp_path, "truncated", _truncate),
        badconfig=_broken_copy(world, tmp_path, "badconfig", lambda d: (d / "config.json").write_text("{nope")),
        mismatch=_broken_copy(world, tmp_path, "mismatch", lambda d: _json_config(d, intermediate_size=48)),
        badvocab=_broken_copy(world, tmp_path, "badvocab", lambda d: (d / "vocab.txt").write_text(
            (d / "vocab.txt").read_text() + "额外\n")),
        tampered=_broken_copy(world, tmp_path, "tampered", lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:-4] + b"    ")),
        badlineage=_broken_copy(world, tmp_path, "badlineage", lambda d: (d / "compression.json").write_text("[")),
    )
    before = set(tmp_path.iterdir())
    args = [a.format(**paths) for a in CASES[case]]
    result = runner.invoke(app, ["--quiet"] + args)
    assert result.exit_code == 2, (case, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.stderr)
    assert "Traceback" not in result.output
    assert set(tmp_path.iterdir()) == before, case  # nothing written, no temporary folder left
    assert not [p for p in world["root"].iterdir() if ".tmp-" in p.name]


def test_the_corpus_is_large():
    assert len(CASES) >= 30


def test_disk_full_while_writing_weights(world, tmp_path, monkeypatch):
    """ENOSPC from the weights writer: one line, exit 2, nothing left behind."""
    import errno

    import ernie_compress.checkpoint as checkpoint

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", full)
    res = runner.invoke(app, ["--quiet", "quantize", str(world["ckpt"]), "--ptq", "int8", "--calib-samples", "8",
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 2 and "no space left on device" in res.stderr.lower(), res.output
    assert len(res.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_disk_full_seen_by_a_silent_writer(world, tmp_path, monkeypatch):
    """Paddle's C++ writers do not report a full disk; the failure that follows is reported as one."""
    from collections import namedtuple

    import ernie_compress.checkpoint as checkpoint
    import ernie_compress.export.static_graph as static_graph

    def broken(*_):
        raise RuntimeError("Cannot read tensor desc size")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(static_graph, "export_static_graph", broken)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: usage(10, 10, 0))
    res = runner.invoke(app, ["--quiet", "export", str(world["ckpt"]), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no space left on device" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
