"""runtime/registry.py: every registered runtime declares what it runs and opens a session for each
kind it claims (the logits of the checkpoint it came from); a runtime registered here, in the test,
is listed, chosen and run by ``evaluate`` with no edit elsewhere; a runtime that cannot run a kind,
device, precision or profile says so in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ernie_compress.errors import UserError
from ernie_compress.runtime import registry
from ernie_compress.runtime.backends import DEVICES, RuntimeConfig
from ernie_compress.runtime.manifest import load_manifest
from ernie_compress.runtime.onnxruntime_backend import OnnxRuntimeSession, onnx_model_file
from ernie_compress.runtime.registry import (KindSupport, Runtime, choose_runtime, get_runtime, open_session,
                                             register_runtime, runtime_names, runtimes, unregister_runtime)
from ernie_compress.runtime.session import DECODER, ENCODER, KINDS, DecoderSession, Session
from tests.helpers import cli_json

PRECISIONS = {"fp32", "fp16", "int8"}  # what export writes into the manifest


@pytest.fixture(scope="module")
def lm_export(tiny_lm, tmp_path_factory):
    """The tiny causal LM in every format: the Paddle static graph and model.onnx (encoder) and
    onnx/decoder.onnx (decoder)."""
    out = tmp_path_factory.mktemp("registry") / "e"
    cli_json(["export", str(tiny_lm), "--format", "all", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def reference(tiny_lm):
    """Rows of tokens and dygraph's next-token logits after each [rows, vocab] (the checkpoint's own)."""
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.models import model_from_state
    from ernie_compress.models.ernie4_5 import CachedDecoder

    ckpt = load_checkpoint(tiny_lm)
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    model.eval()
    rows = np.random.default_rng(0).integers(5, ckpt.config.vocab_size, size=(3, 9)).astype(np.int64)
    rows[:, 0] = 1
    return rows, np.concatenate([np.asarray(CachedDecoder(model).prefill([row])) for row in rows.tolist()])


def test_every_runtime_declares_what_it_runs():
    assert runtimes() and len(set(runtime_names())) == len(runtimes())
    for runtime in runtimes():
        assert set(runtime.kinds) <= set(KINDS) and runtime.kinds, runtime.name
        assert set(runtime.devices) <= set(DEVICES) and set(runtime.preferred_on) <= set(runtime.devices)
        assert set(runtime.precisions) <= PRECISIONS and runtime.precisions
        for support in runtime.kinds.values():
            assert support.entry and support.what and support.export_format and callable(support.open)
    with pytest.raises(ValueError, match="unknown kinds: \\['tagger'\\]"):  # a kind no caller asks for
        Runtime(name="x", kinds={"tagger": TOY.kinds[ENCODER]}, devices=("cpu",), precisions=("fp32",))
    for kind in KINDS:  # every kind runs on cpu, and each device has a default for what runs there
        assert any(r.runs(kind, "cpu") for r in runtimes())
        for device in DEVICES:
            if any(r.runs(kind, device) for r in runtimes()):
                assert choose_runtime({}, kind, device).runs(kind, device)


CLAIMS = [(r.name, kind, device) for r in runtimes() for kind in r.kinds for device in r.devices]


@pytest.mark.parametrize("name, kind, device", CLAIMS, ids=["-".join(c) for c in CLAIMS])
def test_every_runtime_opens_each_kind_it_claims(lm_export, reference, name, kind, device):
    """Through ``open_session`` alone, on the tiny export: the session says what it is and computes
    the checkpoint's logits (within 1e-3). Devices this machine lacks are skipped, with the
    runtime's own reason."""
    why_not = get_runtime(name).unavailable_on(device)
    if why_not:
        pytest.skip(why_not)
    rows, expected = reference
    session = open_session(lm_export, load_manifest(lm_export), RuntimeConfig(device, backend=name, threads=1),
                           kind=kind, pad_id=0)
    assert isinstance(session, Session) and (session.backend, session.kind, session.device) == (name, kind, device)
    assert "input_ids" in session.input_names
    logits = session.run(rows, np.zeros_like(rows))
    last = logits[:, -1] if logits.ndim == 3 else logits  # an encoder's [b, s, vocab]; a decoder's [b, vocab]
    np.testing.assert_allclose(last, expected, atol=1e-3)
    if kind == DECODER:
        assert isinstance(session, DecoderSession)
        np.testing.assert_allclose(session.prefill(rows[:, :5].tolist()), session.run(rows[:, :5]), atol=1e-5)
        session.run(rows[:, :2])  # a stateless call between steps leaves the cache alone
        for t in range(5, 9):
            step = session.step(rows[:, t])
        np.testing.assert_allclose(step, expected, atol=1e-3)
        assert session.fork().cache_bytes() == 0 < session.cache_bytes()


class ToySession(OnnxRuntimeSession):
    """A third runtime for the test: the export's ONNX model under another name, CPU only, no profile."""

    backend = "toy"


def _open_toy(request: registry.SessionRequest) -> ToySession:
    return ToySession(request.export_dir / onnx_model_file(request.files, request.config.device), request.config)


TOY = Runtime(name="toy", kinds={ENCODER: KindSupport("toy", "toy model", "toy", _open_toy)},
              devices=("cpu",), precisions=("fp32",))


@pytest.fixture
def toy():
    register_runtime(TOY)
    yield TOY
    unregister_runtime(TOY.name)


def _with_toy_files(manifest: dict, keep: tuple[str, ...] = ()) -> dict:
    """The manifest with the toy's files (the ONNX model's entry) besides those named in ``keep``."""
    files = {k: v for k, v in manifest["files"].items() if k in keep}
    return {**manifest, "files": {**files, "toy": manifest["files"]["onnx"]}}


def test_a_runtime_registered_in_a_test_is_listed_chosen_and_evaluated(toy, lm_export, tmp_path):
    from ernie_compress.runtime.evaluate_export import EvaluateExportConfig, evaluate_export
    from ernie_compress.runtime.generation_metrics import GenerationConfig
    from ernie_compress.runtime.latency import LatencyConfig

    assert runtime_names()[-1] == "toy" and RuntimeConfig("cpu", backend="toy").backend == "toy"
    manifest = load_manifest(lm_export)
    assert open_session(lm_export, _with_toy_files(manifest), RuntimeConfig("cpu")).backend == "toy"  # by its files
    assert choose_runtime(manifest["files"], ENCODER, "cpu").name == "onnxruntime"  # preferred on cpu, files there
    with pytest.raises(UserError, match=r"no Paddle static graph; re-export with --format paddle "
                                        r"\(or use --backend toy\)$"):
        open_session(lm_export, _with_toy_files(manifest), RuntimeConfig("cpu", backend="paddle"))
    # evaluate names it, and its decoder (the toy runs none) goes where one runs
    (export := tmp_path / "e").mkdir()
    for item in lm_export.iterdir():
        (export / item.name).symlink_to(item)
    (export / "manifest.json").unlink()
    (export / "manifest.json").write_text(json.dumps(_with_toy_files(manifest, ("decoder",))))
    result = evaluate_export(EvaluateExportConfig(
        export, runtime=RuntimeConfig("cpu", backend="toy", threads=1),
        latency=LatencyConfig(batch_sizes=(1,), seq_len=16, iterations=2, warmup=1),
        generation=GenerationConfig(prompt_lengths=(4,), batch_sizes=(1,), new_tokens=2)))
    assert result.backend == "toy" and result.metrics["perplexity"] > 1
    assert [row["prompt_tokens"] for row in result.generation["time_to_first_token"]] == [4]


def test_what_a_runtime_cannot_run_is_one_line(toy, lm_export, monkeypatch):
    manifest = load_manifest(lm_export)
    cases = [
        (RuntimeConfig("cpu", backend="paddle"), DECODER, manifest,
         "the paddle runtime cannot run a decoder (it runs: encoder); use --backend onnxruntime"),
        (RuntimeConfig("gpu", backend="toy"), ENCODER, _with_toy_files(manifest, ("onnx", "paddle")),
         "the toy runtime does not run on gpu (it runs on: cpu); use --backend paddle or onnxruntime"),
        (RuntimeConfig("cpu", backend="paddle"), ENCODER, {**manifest, "precision": "int8"},
         "the paddle runtime cannot run int8 exports (it runs: fp32, fp16); use --backend onnxruntime"),
        (RuntimeConfig("cpu", backend="toy", profile=True), ENCODER, _with_toy_files(manifest),
         "the toy runtime has no per-operator profile; leave out --profile"),
        (RuntimeConfig("cpu"), DECODER, {**manifest, "files": {"onnx": manifest["files"]["onnx"]}},
         "this export has no decoder with a KV cache (onnx/decoder.onnx); re-export with --format onnx"),
    ]
    for config, kind, which, message in cases:
        with pytest.raises(UserError) as err:
            open_session(lm_export, which, config, kind=kind)
        assert str(err.value) == f"{lm_export}: {message}"
    monkeypatch.setattr(registry, "_RUNTIMES", {"paddle": get_runtime("paddle")})
    with pytest.raises(UserError, match="^no registered runtime runs a decoder on cpu \\(registered: paddle\\)$"):
        open_session(lm_export, manifest, RuntimeConfig("cpu"), kind=DECODER)


def test_evaluate_keeps_backend_for_the_kinds_it_runs():
    assert RuntimeConfig("cpu", backend="onnxruntime").for_kind(DECODER).backend == "onnxruntime"
    assert RuntimeConfig("cpu", backend="paddle").for_kind(DECODER).backend is None
    assert RuntimeConfig("cpu", backend="paddle").for_kind(ENCODER).backend == "paddle"
