"""Token generation with a KV cache, on any decoder that can prefill a prompt and step one token.

``generate_tokens`` is the loop (greedy, or nucleus sampling: Holtzman et al. 2020) and its
timings: time to first token is the prefill plus the first pick; decode tokens/s counts the tokens
after the first. ``OnnxDecoder`` runs an export's ``onnx/decoder.onnx`` (``export/decoder_onnx.py``
writes it) in ONNX Runtime, for one prompt or a left-padded batch: it is the ``onnxruntime``
runtime's decoder session (``session.DecoderSession``; ``registry.open_session(..., kind="decoder")``
opens it). Paddle is never imported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..models.onnx_graph import SHARED_BUFFER_KEY
from .session import DECODER


CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8}  # ONNX Runtime's input types -> numpy


class Decoder(Protocol):
    """Logits [batch, vocab] of each row's last position, the cache kept inside."""

    def prefill(self, rows: list[list[int]]) -> np.ndarray: ...

    def step(self, tokens: np.ndarray) -> np.ndarray: ...


def prompt_ids(tokenizer, text: str) -> list[int]:
    """``<s>``/``[CLS]`` and the prompt's tokens (no end-of-text: generation continues it)."""
    row = tokenizer.encode_batch([text], None, max_length=10**6).input_ids[0].tolist()
    row = [i for i in row if i != tokenizer.pad_id]
    return row[:-1] if row and row[-1] == tokenizer.sep_id else row


def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy (temperature 0) or nucleus sampling from ``logits`` [vocab]."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = order[:int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)]
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))


def generate_tokens(decoder: Decoder, ids: list[int], max_new_tokens: int, eos_id: int, temperature: float = 0.0,
                    top_p: float = 1.0, rng: np.random.Generator | None = None,
                    on_token: Callable[[int], None] | None = None, forced: list[int] | None = None) -> dict[str, Any]:
    """Greedy or sampled continuation of one prompt: the new tokens, the logits of every step
    [steps, vocab] and the timings. ``forced``: feed these tokens instead of the picks (teacher
    forcing: another decoder's logits at the same positions)."""
    rng = rng or np.random.default_rng(0)
    tokens: list[int] = []
    step_logits = []
    start = time.perf_counter()
    last = decoder.prefill([ids])[0]
    first = decode_start = None
    while len(tokens) < max_new_tokens:
        step_logits.append(last)
        token = pick_token(last, temperature, top_p, rng) if forced is None else forced[len(tokens)]
        if first is None:
            first = time.perf_counter() - start
            decode_start = time.perf_counter()
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token == eos_id or len(tokens) == max_new_tokens:
            break
        last = decoder.step(np.array([token]))[0]
    decode_seconds = time.perf_counter() - decode_start
    decoded = len(tokens) - 1  # tokens after the first
    return {"tokens": tokens, "logits": np.stack(step_logits), "time_to_first_token_ms": first * 1000,
            "decode_tokens_per_s": decoded / decode_seconds if decoded and decode_seconds > 0 else None}


BUFFER_ROOM = 128  # positions a shared buffer holds beyond the prompt before it grows (doubling)


def shares_buffer(session) -> bool:
    """Whether a decoder graph's past and present may be one buffer: its metadata says so where
    GroupQueryAttention computes every present (``export/decoder_onnx.build_decoder``)."""
    return session.get_modelmeta().custom_metadata_map.get(SHARED_BUFFER_KEY) == "shared"


class OnnxDecoder:
    """``onnx/decoder.onnx`` in an ONNX Runtime session: ``prefill`` left-pads the rows (mask 0,
    positions counted from each row's first slot, as the decoder's interface says), ``step`` feeds one
    token per row.

    ``cache_on`` ("cuda", "cpu"): keep the KV cache where the session computes, through ONNX
    Runtime's I/O binding (each step's present keys/values become the next step's past without a
    copy to the host; only the logits come back). None: plain numpy inputs and outputs. On "cpu",
    a graph whose metadata says its cache may be shared (``SHARED_BUFFER_KEY``: GroupQueryAttention)
    gets one buffer per cache tensor [b, kv, capacity, d], bound as both past and present: the kernel
    then appends the new positions in place instead of copying the whole cache into a new present
    each step (as onnxruntime-genai's ``past_present_share_buffer``); the buffer doubles when full
    (``share_buffer`` False: I/O binding without it)."""

    backend = "onnxruntime"
    kind = DECODER

    def __init__(self, session, pad_id: int = 0, cache_on: str | None = None, share_buffer: bool = True):
        from .onnxruntime_backend import device_of

        self.session = session  # onnxruntime.InferenceSession
        self.device = device_of(session.get_providers())
        self.input_names = [i.name for i in session.get_inputs()]
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [o.name for o in session.get_outputs()][1:]
        self.kv_heads, self.head_dim = inputs[self.past_names[0]].shape[1], inputs[self.past_names[0]].shape[3]
        self.cache_dtype = CACHE_DTYPES[inputs[self.past_names[0]].type]  # float32, or int8 codes (export --kv-cache)
        self.pad_id = pad_id
        self.cache_on = cache_on
        self.shared = share_buffer and cache_on == "cpu" and shares_buffer(session)
        self.cache: list = []  # numpy arrays, or OrtValues where cache_on is set (shared: [b, kv, capacity, d])
        self.mask = self.positions = None

    @classmethod
    def open(cls, path: Path, runtime_cfg, pad_id: int = 0, host_cache: bool = False) -> "OnnxDecoder":
        """A session for ``runtime_cfg``; on a GPU the cache stays there, on a CPU it is one shared
        past/present buffer where the graph allows it (1.03-1.06x / 1.12x the numpy loop's decode
        tokens/s at batch 1 / 8, ERNIE-4.5-0.3B W4, 2 threads: ``benchmarks/decode_loop.py``; the cache in
        OrtValues without sharing gained nothing, so other graphs keep numpy feeds), unless
        ``host_cache`` (for callers that rearrange it with numpy, as continuous batching does)."""
        from .onnxruntime_backend import OnnxRuntimeSession

        session = OnnxRuntimeSession(Path(path), runtime_cfg).session
        if host_cache:
            return cls(session, pad_id)
        if runtime_cfg.device == "gpu":
            return cls(session, pad_id, "cuda")
        return cls(session, pad_id, "cpu" if shares_buffer(session) else None)

    @property
    def length(self) -> int:
        """Cached positions per row (the mask's width)."""
        return 0 if self.mask is None else self.mask.shape[1]

    def fork(self) -> "OnnxDecoder":
        """A decoder over the same session with its own, empty cache (where this one keeps its cache)."""
        return type(self)(self.session, self.pad_id, self.cache_on, self.shared)

    def run(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Logits [batch, vocab] at the last position of rows of equal length [batch, seq], every
        position a real token; this decoder's cache is left as it was."""
        return self.fork().prefill(np.asarray(input_ids).tolist())

    def _run(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.cache_on is None:
            feeds = {"input_ids": ids, "attention_mask": self.mask, "position_ids": positions,
                     **dict(zip(self.past_names, self.cache))}
            logits, *self.cache = self.session.run(None, feeds)
            return logits
        binding = self.session.io_binding()
        for name, value in (("input_ids", ids), ("attention_mask", self.mask), ("position_ids", positions)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past_names, self.cache):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(self.present_names, self.cache):
            if self.shared:  # the kernel writes the new positions into the past buffer itself
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, self.cache_on)
        self.session.run_with_iobinding(binding)
        if self.shared:
            return binding.get_outputs()[0].numpy()
        logits, *self.cache = binding.get_outputs()
        return logits.numpy()

    def _empty_cache(self, batch: int, width: int) -> list:
        from onnxruntime import OrtValue

        if self.shared:  # a buffer with room for the prompt and BUFFER_ROOM more positions
            return [OrtValue.ortvalue_from_numpy(np.zeros((batch, self.kv_heads, width + BUFFER_ROOM, self.head_dim),
                                                          self.cache_dtype), "cpu", 0) for _ in self.past_names]
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), self.cache_dtype)
        if self.cache_on is None:
            return [empty for _ in self.past_names]
        return [OrtValue.ortvalue_from_numpy(empty, self.cache_on, 0) for _ in self.past_names]

    def _make_room(self) -> None:
        """A shared buffer full before a step: copied into one of twice its capacity."""
        if not self.shared or self.length < (capacity := self.cache[0].shape()[2]):
            return
        from onnxruntime import OrtValue

        grown = []
        for value in self.cache:
            old = value.numpy()  # [b, kv, capacity, d]
            new = np.zeros((*old.shape[:2], 2 * capacity, old.shape[3]), old.dtype)
            new[:, :, :capacity] = old
            grown.append(OrtValue.ortvalue_from_numpy(new, "cpu", 0))
        self.cache = grown

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        self.mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            self.mask[i, width - len(row):] = 1
        # every row's positions count from its first slot, padding included: RoPE scores depend on
        # differences of positions only, and GroupQueryAttention rotates a prompt's tokens by their index
        positions = np.broadcast_to(np.arange(width, dtype=np.int64), (len(rows), width))  # [b, s]
        self.positions = positions[:, -1]
        self.cache = self._empty_cache(len(rows), width)
        return self._run(ids, positions)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self._make_room()
        self.positions = self.positions + 1
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        return self._run(np.asarray(tokens, np.int64).reshape(-1, 1), self.positions.reshape(-1, 1))

    def cache_bytes(self) -> int:
        """Bytes of the cached positions (of a shared buffer, the positions in use, not its capacity)."""
        item = np.dtype(self.cache_dtype).itemsize
        if self.shared:
            return int(sum(item * np.prod(c.shape()[:2]) * self.length * c.shape()[3] for c in self.cache))
        return int(sum(item * np.prod(c.shape() if callable(c.shape) else c.shape) for c in self.cache))
