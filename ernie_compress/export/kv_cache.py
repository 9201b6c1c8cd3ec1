"""An int8 KV cache for ``onnx/decoder.onnx``: static, calibrated scales per channel for keys and values.

What is cached per token and layer is 2 x kv_heads x head_dim numbers: 4 bytes each in float32,
1 in int8. A scale per token (per head) would be cached beside the codes and put the bytes above a
quarter of float32 (0.25 + 2 to 4 bytes per head and token); static scales cost nothing per token,
so the int8 cache is exactly 1/4 of float32 (1/2 of float16). Keys are quantized per channel, as
KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache") found keys
must be: their outliers sit in fixed channels (after RoPE a channel pair shares one rotation
amplitude). Values get a scale per channel too, which is what lets the graph skip dequantizing the
cache entirely:

    scores = q . (codes_k * s_k)^T = (q * s_k) . codes_k^T          s_k folded into the queries
    out    = p . (codes_v * s_v)   = (p . codes_v) * s_v             s_v applied to the output

so the cache is read as ``Cast(int8 -> float)`` of the codes alone (``models/ernie4_5_onnx.attention``).
ONNX Runtime's GroupQueryAttention takes per-channel key scales as well (``k_quant_type``).

The scales are calibrated as static activation scales are (Jacob et al. 2018): the largest |value| of
each channel over the keys and values the float-cache decoder writes while prefilling calibration
texts (the task's train split), divided by 127; codes are ``clip(round(x / s), -127, 127)``. A value
past the calibrated range is clipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

KV_CACHE = ("float32", "int8")  # export --kv-cache
QMAX = 127
SMALLEST_SCALE = 1e-8  # a channel that is zero on every calibration token (its codes stay 0)


def channel_amax(caches: Iterable[list[np.ndarray]], layers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the largest |key| and |value| of each channel [kv, d] over every cache in
    ``caches`` (each the decoder's present tensors, key and value per layer, [b, kv, T, d], every
    position a real token)."""
    amax: list[list[np.ndarray | None]] = [[None, None] for _ in range(layers)]
    for cache in caches:
        for i, tensor in enumerate(cache):
            peak = np.abs(np.asarray(tensor, np.float32)).max(axis=(0, 2))  # [kv, d]
            layer, kind = divmod(i, 2)
            held = amax[layer][kind]
            amax[layer][kind] = peak if held is None else np.maximum(held, peak)
    if any(a is None for pair in amax for a in pair):
        raise ValueError("no calibration cache covered every layer")
    return [(k, v) for k, v in amax]


def scales_from_amax(amax: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Symmetric int8 scales: amax / 127 per channel (at least :data:`SMALLEST_SCALE`)."""
    return [tuple(np.maximum(a / QMAX, SMALLEST_SCALE).astype(np.float32) for a in pair) for pair in amax]


def calibration_prompts(task, tokenizer, max_length: int, count: int) -> list[list[int]]:
    """The first ``count`` train texts of ``task`` (a loaded task) as token ids, as training feeds them
    (end-of-text included, cut to ``max_length``), padding removed: what :func:`calibrate` prefills."""
    texts = [e.text_a for e in task.split("train")[:count]]
    rows = tokenizer.encode_batch(texts, None, max_length=max_length).input_ids
    return [[int(i) for i in row if i != tokenizer.pad_id] for row in rows]


def calibrate(decoder, prompts: list[list[int]], layers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Static scales (key, value [kv, d]) per layer from ``decoder`` (a float-cache ``OnnxDecoder``)
    prefilling each prompt alone (no padding enters the maxima)."""

    def caches():
        for ids in prompts:
            decoder.prefill([ids])
            yield decoder.cache

    return scales_from_amax(channel_amax(caches(), layers))


def scales_summary(scales: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """For the manifest: the range of the scales (what a reader checks for a degenerate calibration)."""
    keys = np.concatenate([k.ravel() for k, _ in scales])
    values = np.concatenate([v.ravel() for _, v in scales])
    return {"key_scale_min": float(keys.min()), "key_scale_max": float(keys.max()),
            "value_scale_min": float(values.min()), "value_scale_max": float(values.max())}
