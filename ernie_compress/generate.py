"""``ernie-compress generate``: text from an ERNIE 4.5 causal-LM checkpoint, with a KV cache.

The prompt is run once (prefill) and leaves each layer's keys and values for the KV heads only
(GQA); every further token runs one position against that cache (``Ernie45ForCausalLM.
forward_cached``) instead of the whole sequence again, so a step costs one token's compute.
Greedy by default; with ``--temperature`` > 0 the next token is sampled from the softmax at that
temperature, restricted to the smallest set of tokens whose probability reaches ``--top-p``
(nucleus sampling, Holtzman et al. 2020), from a generator seeded by ``--seed``. Generation stops
at the end-of-text token (``</s>``, or ``[SEP]`` for the character vocabulary) or after
``--max-new-tokens``. Time to first token (the prefill plus the first pick) and decode tokens/s
are measured per prompt.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import load_checkpoint
from .errors import UserError
from .options import check_options, fail, option
from .paddle_env import import_paddle, seed_everything
from .runtime.backends import ThreadsOption
from .runtime.manifest import MANIFEST_FILE

@dataclass(frozen=True, kw_only=True)
class GenerateConfig(ThreadsOption):
    """``ernie-compress generate``: its options, declared once (``options.py``)."""

    path: Path = option(argument=True, scope="cli", help="An ERNIE 4.5 causal-LM checkpoint directory.")
    prompt: tuple[str, ...] = option((), help="A prompt (repeatable).")
    prompts: Path | None = option(None, help="A UTF-8 file with one prompt per line (besides --prompt).")
    max_new_tokens: int = option(64, at_least=1, help="Stop after this many new tokens per prompt.")
    temperature: float = option(0.0, at_least=0, help="0: greedy; above 0: sample at this temperature.")
    top_p: float = option(1.0, above=0, at_most=1, help="With --temperature > 0: sample from the smallest set "
                                                        "of tokens whose probability reaches this.")
    seed: int = option(42, help="Seed of the sampling generator: the same seed gives the same text.")
    stream: bool = option(True, flag="--stream/--no-stream", help="Print tokens as they come (not with --json).")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.prompt and self.prompts is None:
            fail("pass {prompt} TEXT or {prompts} FILE", "prompt", "prompts")

    def prompt_texts(self) -> list[str]:
        texts = list(self.prompt)
        if self.prompts is not None:
            path = Path(self.prompts).expanduser()
            if not path.is_file():
                raise UserError(f"--prompts {path} does not exist")
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts or any(not t.strip() for t in texts):
            raise UserError("a prompt is empty")
        return texts


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


def generate_tokens(model, ids: list[int], max_new_tokens: int, eos_id: int, temperature: float = 0.0,
                    top_p: float = 1.0, rng: np.random.Generator | None = None,
                    on_token: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Greedy or sampled continuation of ``ids`` with a KV cache; the new tokens, the logits of
    every step [steps, vocab] and the timings."""
    paddle = import_paddle()
    rng = rng or np.random.default_rng(0)
    tokens: list[int] = []
    step_logits = []
    with paddle.no_grad():
        start = time.perf_counter()
        logits, cache = model.forward_cached(paddle.to_tensor([ids], dtype="int64"))  # [1, s, vocab]
        last = logits[0, -1].numpy()
        first = None
        decode_start = None
        while len(tokens) < max_new_tokens:
            step_logits.append(last)
            token = pick_token(last, temperature, top_p, rng)
            if first is None:
                first = time.perf_counter() - start
                decode_start = time.perf_counter()
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token == eos_id or len(tokens) == max_new_tokens:
                break
            logits, cache = model.forward_cached(paddle.to_tensor([[token]], dtype="int64"), cache)
            last = logits[0, -1].numpy()
        decode_seconds = time.perf_counter() - decode_start
    decoded = len(tokens) - 1  # tokens after the first
    return {"tokens": tokens, "logits": np.stack(step_logits), "cache": cache,
            "time_to_first_token_ms": first * 1000,
            "decode_tokens_per_s": decoded / decode_seconds if decoded and decode_seconds > 0 else None}


def generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Continue every prompt; streams the text to stdout unless ``cfg.stream`` is off."""
    from .models import model_from_state

    if (Path(cfg.path) / MANIFEST_FILE).is_file():
        raise UserError(f"{cfg.path} is an export; generation runs on a checkpoint so far (the decoder export "
                        f"with a KV cache is not built yet)")
    texts = cfg.prompt_texts()
    ckpt = load_checkpoint(cfg.path)
    if ckpt.config.architecture != "Ernie4_5ForCausalLM":
        raise UserError(f"generate needs an ERNIE 4.5 causal-LM checkpoint (Ernie4_5ForCausalLM); {ckpt.path} "
                        f"is {ckpt.config.architecture}")
    tokenizer = ckpt.tokenizer()
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    context = ckpt.config.max_position_embeddings
    results = []
    for text in texts:
        ids = prompt_ids(tokenizer, text)
        if len(ids) + cfg.max_new_tokens > context:
            raise UserError(f"the prompt ({len(ids)} tokens) and --max-new-tokens {cfg.max_new_tokens} exceed the "
                            f"model's context of {context} positions")
        shown: list[int] = []

        def stream(token: int, shown=shown) -> None:
            if token == tokenizer.sep_id:
                return
            before = tokenizer.decode(shown)
            shown.append(token)
            sys.stdout.write(tokenizer.decode(shown)[len(before):])
            sys.stdout.flush()

        if cfg.stream:
            sys.stdout.write(text)
        out = generate_tokens(model, ids, cfg.max_new_tokens, tokenizer.sep_id, cfg.temperature, cfg.top_p, rng,
                              stream if cfg.stream else None)
        if cfg.stream:
            sys.stdout.write("\n")
        new = [t for t in out["tokens"] if t != tokenizer.sep_id]
        results.append({"prompt": text, "prompt_tokens": len(ids), "text": tokenizer.decode(new),
                        "tokens": out["tokens"], "stopped_at_eos": out["tokens"][-1] == tokenizer.sep_id,
                        "streamed": cfg.stream,
                        "time_to_first_token_ms": round(out["time_to_first_token_ms"], 2),
                        "decode_tokens_per_s": (round(out["decode_tokens_per_s"], 1)
                                                if out["decode_tokens_per_s"] else None)})
    return {"checkpoint": str(ckpt.path), "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
            "results": results}
