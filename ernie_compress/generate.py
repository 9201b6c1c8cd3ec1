"""``ernie-compress generate``: text from an ERNIE 4.5 causal-LM checkpoint or export, with a KV cache.

The prompt is run once (prefill) and leaves each layer's keys and values for the KV heads only
(GQA); every further token runs one position against that cache instead of the whole sequence
again, so a step costs one token's compute: ``Ernie45ForCausalLM.forward_cached`` in Paddle for a
checkpoint, the export's ``onnx/decoder.onnx`` in ONNX Runtime for an export (the loop is
``runtime/decoding.py``).
Greedy by default; with ``--temperature`` > 0 the next token is sampled from the softmax at that
temperature, restricted to the smallest set of tokens whose probability reaches ``--top-p``
(nucleus sampling, Holtzman et al. 2020), from a generator seeded by ``--seed``. Generation stops
at the end-of-text token (``</s>``, or ``[SEP]`` for the character vocabulary) or after
``--max-new-tokens``. Time to first token (the prefill plus the first pick) and decode tokens/s
are measured per prompt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .data.sp_tokenizer import load_tokenizer
from .errors import UserError
from .export.decoder_onnx import DECODER_FILE
from .options import check_options, fail, option
from .paddle_env import seed_everything
from .runtime.backends import DEVICES, RuntimeConfig, ThreadsOption
from .runtime.decoding import generate_tokens, prompt_ids
from .runtime.manifest import MANIFEST_FILE, load_manifest
from .runtime.registry import open_session
from .runtime.session import DECODER
from .results import GenerationResult


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(ThreadsOption):
    """``ernie-compress generate``: its options, declared once (``options.py``)."""

    path: Path = option(argument=True, scope="cli", help=(
        "An ERNIE 4.5 causal-LM checkpoint (runs in Paddle dygraph) or its export (runs onnx/decoder.onnx in "
        "ONNX Runtime)."))
    prompt: tuple[str, ...] = option((), help="A prompt (repeatable).")
    prompts: Path | None = option(None, help="A UTF-8 file with one prompt per line (besides --prompt).")
    max_new_tokens: int = option(64, at_least=1, help="Stop after this many new tokens per prompt.")
    temperature: float = option(0.0, at_least=0, help="0: greedy; above 0: sample at this temperature.")
    top_p: float = option(1.0, above=0, at_most=1, help="With --temperature > 0: sample from the smallest set "
                                                        "of tokens whose probability reaches this.")
    seed: int = option(42, help="Seed of the sampling generator: the same seed gives the same text.")
    stream: bool = option(True, flag="--stream/--no-stream", help="Print tokens as they come (not with --json).")
    device: str = option("cpu", choices=DEVICES, help=(
        "Export only: where onnx/decoder.onnx runs (ONNX Runtime: cpu, gpu via CUDA with the KV cache kept on the "
        "GPU, npu via CANN); a checkpoint generates in Paddle dygraph on cpu."))

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


def _open_decoder(cfg: GenerateConfig):
    """(decoder, tokenizer, context length, what it runs on) for a checkpoint or an export."""
    path = Path(cfg.path).expanduser()
    if (path / MANIFEST_FILE).is_file():
        manifest = load_manifest(path)
        entry = manifest.get("files", {}).get("decoder")
        if entry is None:
            raise UserError(f"{path} has no decoder with a KV cache ({DECODER_FILE}): export an ERNIE 4.5 causal-LM "
                            f"checkpoint with --format onnx or all")
        tokenizer = load_tokenizer(path)
        decoder = open_session(path, manifest, RuntimeConfig(device=cfg.device, threads=cfg.threads), kind=DECODER,
                               pad_id=tokenizer.pad_id)
        return decoder, tokenizer, entry["context"], f"{decoder.backend} on {cfg.device} ({entry['model']})"
    from .models import model_from_state
    from .models.families import FAMILIES, family_of

    if cfg.device != "cpu":
        raise UserError(f"{path} is a checkpoint (generates in Paddle dygraph on cpu); export it to generate on "
                        f"--device {cfg.device}")
    ckpt = load_checkpoint(path)
    family = family_of(ckpt.config)
    if not family.serves(ckpt.config, "causal_lm"):
        wanted = ", ".join(f.architecture_for_kind["causal_lm"] for f in FAMILIES.values()
                           if "causal_lm" in f.architecture_for_kind)
        raise UserError(f"generate needs a causal-LM checkpoint ({wanted}); {ckpt.path} is {ckpt.config.architecture}")
    seed_everything(cfg.seed)
    model = model_from_state(ckpt.config, ckpt.state, str(ckpt.path))
    return family.cached_decoder(model), ckpt.tokenizer(), ckpt.config.max_position_embeddings, "paddle dygraph"


def generate(cfg: GenerateConfig) -> GenerationResult:
    """Continue every prompt; streams the text to stdout unless ``cfg.stream`` is off."""
    texts = cfg.prompt_texts()
    decoder, tokenizer, context, runs_on = _open_decoder(cfg)
    rng = np.random.default_rng(cfg.seed)
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
        out = generate_tokens(decoder, ids, cfg.max_new_tokens, tokenizer.sep_id, cfg.temperature, cfg.top_p, rng,
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
    return GenerationResult(path=str(Path(cfg.path).expanduser().resolve()), runs_on=runs_on,
                            temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, results=results)
