"""How fast a decoder export generates: time to first token at several prompt lengths, and per
batch size the prefill and the decode steps timed apart (time per output token, tokens/s), with
the KV cache's size and the process's peak memory.

Time to first token (TTFT) is the prefill of one prompt plus the first pick, what a user waits for;
decode is memory-bound (every step reads every weight), so tokens/s grows with the batch while the
time per step barely does. Prompts are real token ids: the task's texts, concatenated and cut to
each length. Nothing here imports Paddle.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..machine import peak_resident_bytes
from .session import DecoderSession


@dataclass(frozen=True)
class GenerationConfig:
    prompt_lengths: tuple[int, ...] = (32, 128, 512)
    batch_sizes: tuple[int, ...] = (1, 8)
    new_tokens: int = 32
    decode_prompt: int = 32  # prompt tokens of each row before the timed decode steps
    repeats: int = 3  # timed repeats per measurement (the median is reported, with min and max)


def token_stream(tokenizer, texts: list[str], length: int) -> list[int]:
    """``length`` real token ids: ``<s>`` then the texts' tokens one after another (repeated if short)."""
    ids: list[int] = []
    for text in texts:
        row = tokenizer.encode_batch([text], None, max_length=10**6).input_ids[0].tolist()
        ids += [i for i in row if i not in (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id)]
        if len(ids) >= length:
            break
    if not ids:
        raise ValueError("the task's texts give no tokens")
    ids = (ids * (length // len(ids) + 1))[:length - 1]
    return [tokenizer.cls_id, *ids]


def _spread(values: list[float], digits: int = 2) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_generation(decoder: DecoderSession, tokenizer, texts: list[str], context: int,
                       cfg: GenerationConfig) -> dict[str, Any]:
    """TTFT per prompt length and decode speed per batch size (greedy picks), on ``decoder``."""
    longest = max([*cfg.prompt_lengths, cfg.decode_prompt])
    stream = token_stream(tokenizer, texts, longest)
    decoder.prefill([stream[:8]])  # the first run allocates
    ttft, skipped = [], []
    for length in cfg.prompt_lengths:
        if length + 1 > context:
            skipped.append(f"prompt {length}: longer than the context of {context}")
            continue
        times = [_timed(lambda: int(np.argmax(decoder.prefill([stream[:length]])[0]))) * 1000
                 for _ in range(cfg.repeats)]
        ttft.append({"prompt_tokens": length, "ttft_ms": _spread(times)})
    decode = []
    for batch in cfg.batch_sizes:
        if cfg.decode_prompt + cfg.new_tokens > context:
            skipped.append(f"batch {batch}: prompt + new tokens exceed the context of {context}")
            continue
        rows = [stream[i % 4:cfg.decode_prompt + i % 4] for i in range(batch)]  # rows that differ a little
        prefill_ms, step_ms = [], []
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            picks = decoder.prefill(rows).argmax(axis=1)
            prefill_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            for _ in range(cfg.new_tokens):
                picks = decoder.step(picks).argmax(axis=1)
            step_ms.append((time.perf_counter() - start) * 1000 / cfg.new_tokens)
        per_token = statistics.median(step_ms)
        decode.append({"batch_size": batch, "prefill_ms": _spread(prefill_ms), "ms_per_step": _spread(step_ms, 4),
                       "tokens_per_s": round(batch * 1000 / per_token, 1),
                       "kv_cache_mib": round(decoder.cache_bytes() / 2**20, 2)})
    peak = peak_resident_bytes() / 2**20
    return {"new_tokens": cfg.new_tokens, "decode_prompt_tokens": cfg.decode_prompt, "repeats": cfg.repeats,
            "time_to_first_token": ttft, "decode": decode, "peak_rss_mib": round(peak, 1), "skipped": skipped}
