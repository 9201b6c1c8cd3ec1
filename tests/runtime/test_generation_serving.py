"""Decoder metrics of evaluate EXPORT (TTFT per prompt length, decode per batch size, KV cache size)
and bench on generation requests (continuous batching gives every request the tokens it gets alone)."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.runtime.continuous_batching import serve_generation
from ernie_compress.runtime.decoding import OnnxDecoder
from tests.helpers import cli_json


@pytest.fixture(scope="module")
def lm_export(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-export") / "e"
    cli_json(["export", str(tiny_lm), "--format", "onnx", "--out", str(out)])
    return out


def test_evaluate_reports_ttft_per_prompt_length_and_decode_per_batch(lm_export):
    r = cli_json(["evaluate", str(lm_export), "--iterations", "2", "--warmup", "1", "--batch-sizes", "1",
                  "--prompt-lengths", "8,32,600", "--decode-batch-sizes", "1,4", "--new-tokens", "8"])
    g = r["generation"]
    assert [row["prompt_tokens"] for row in g["time_to_first_token"]] == [8, 32]  # 600 > the context of 512
    assert g["skipped"] == ["prompt 600: longer than the context of 512"]
    assert all(row["ttft_ms"]["min"] > 0 for row in g["time_to_first_token"])
    by_batch = {row["batch_size"]: row for row in g["decode"]}
    # the cache after 32 prompt tokens and 8 steps: batch x layers 2 x (k, v) x kv heads 2 x 40 x head_dim 16 x 4 bytes
    for batch in (1, 4):
        assert by_batch[batch]["kv_cache_mib"] == round(batch * 2 * 2 * 2 * 40 * 16 * 4 / 2**20, 2)
        assert by_batch[batch]["tokens_per_s"] == pytest.approx(batch * 1000 / by_batch[batch]["ms_per_step"]["median"],
                                                                rel=0.02)
    assert g["peak_rss_mib"] > 0


def test_continuous_batching_gives_each_request_its_own_tokens(lm_export):
    from ernie_compress.runtime.backends import OnnxRuntimeSession, RuntimeConfig

    decoder = OnnxDecoder(OnnxRuntimeSession(lm_export / "onnx" / "decoder.onnx", RuntimeConfig()).session)
    rng = np.random.default_rng(0)
    prompts = [[2, *rng.integers(5, 60, size=n).tolist()] for n in (3, 11, 6, 17, 4, 9, 14, 5)]  # different lengths
    alone = serve_generation(decoder, prompts, 10, concurrency=4, max_batch=1, eos_id=-1)
    batched = serve_generation(decoder, prompts, 10, concurrency=4, max_batch=4, eos_id=-1)
    assert batched["tokens"] == alone["tokens"]
    assert alone["stats"]["mean_decode_batch"] == 1.0 and batched["stats"]["mean_decode_batch"] > 2
    assert batched["stats"]["tokens"] == alone["stats"]["tokens"] == 80


def test_continuous_batching_equals_decoding_each_prompt_alone_and_stops_at_eos(lm_export):
    """Against an independent path (``generate_tokens``, one prompt, no batch rows or joins) rather
    than the scheduler at max_batch 1, which shares join/step with the batched run. The end-of-text
    id is one the model really emits (eos -1 never ends a row), so rows leave the batch mid-way."""
    from ernie_compress.runtime.backends import OnnxRuntimeSession, RuntimeConfig
    from ernie_compress.runtime.decoding import generate_tokens

    session = OnnxRuntimeSession(lm_export / "onnx" / "decoder.onnx", RuntimeConfig()).session
    rng = np.random.default_rng(1)
    prompts = [[2, *rng.integers(5, 60, size=n).tolist()] for n in (3, 11, 6, 17, 4, 9, 14, 5)]

    def alone(eos: int) -> list[list[int]]:
        return [generate_tokens(OnnxDecoder(session), p, 10, eos_id=eos)["tokens"] for p in prompts]

    free = alone(-1)
    # an emitted token that ends some rows early and not others
    eos = next(t for t in sorted({t for row in free for t in row[1:-1]})
               if 0 < sum(t in row[:-1] for row in free) < len(prompts))
    expected = alone(eos)
    assert len({len(row) for row in expected}) > 1
    batched = serve_generation(OnnxDecoder(session), prompts, 10, concurrency=4, max_batch=4, eos_id=eos)
    assert batched["tokens"] == expected
    assert serve_generation(OnnxDecoder(session), prompts, 10, concurrency=4, max_batch=4, eos_id=-1)["tokens"] == free


def test_bench_on_a_decoder_export_serves_generation_requests(lm_export):
    r = cli_json(["bench", str(lm_export), "--requests", "12", "--concurrency", "4", "--max-batch", "4",
                  "--new-tokens", "6"])
    assert r["mode"] == "generation" and r["same_tokens"] == 1.0
    assert r["continuous_batching"]["mean_decode_batch"] > 1 and r["one_at_a_time"]["mean_decode_batch"] <= 1
    for key in ("one_at_a_time", "continuous_batching"):
        assert r[key]["ttft_p99_ms"] >= r[key]["ttft_p50_ms"] > 0


def test_bench_takes_requests_from_user_data(lm_export, tmp_path):
    data = tmp_path / "texts"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text("质量很好\n服务态度很差\n物流太慢了\n", encoding="utf-8")
    r = cli_json(["bench", str(lm_export), "--task", "lm", "--data", str(data), "--requests", "6",
                  "--concurrency", "2", "--max-batch", "2", "--new-tokens", "4"])
    assert r["mode"] == "generation" and r["requests"] == 6 and r["same_tokens"] == 1.0
