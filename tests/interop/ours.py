"""Our side of the interop tests: outputs of a loaded checkpoint, and random models to hand over."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cases import INPUT_IDS

IDS = np.array(INPUT_IDS, dtype="int64")
REAL = IDS != 0  # [b, s]: positions that are not padding


def outputs(directory: Path) -> tuple[np.ndarray, object]:
    """(outputs on the padded batch, config) of the checkpoint in ``directory``, loaded by our reader."""
    from ernie_compress.checkpoint import load_checkpoint
    from ernie_compress.models import model_from_state

    ckpt = load_checkpoint(directory)
    return run(model_from_state(ckpt.config, ckpt.state, str(directory))), ckpt.config


def run(model) -> np.ndarray:
    import paddle

    with paddle.no_grad():
        out = model(paddle.to_tensor(IDS)).numpy()
    if getattr(model, "task_kind", "") == "masked_lm":
        out = out.reshape(IDS.shape[0], IDS.shape[1], -1)  # [b*s, vocab] -> [b, s, vocab]
    return out


def vocab_tokenizer(size: int):
    from ernie_compress.data.tokenizer import ErnieTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return ErnieTokenizer(specials + [chr(0x4E00 + i) for i in range(size - len(specials))])


def save_random(config, out: Path, layout: str, seed: int = 7) -> np.ndarray:
    """A randomly initialised model of ``config`` written with ``--layout``; its outputs on the batch."""
    import paddle

    from ernie_compress.checkpoint import save_checkpoint
    from ernie_compress.models import build_model, model_state

    paddle.seed(seed)
    model = build_model(config)
    model.eval()
    for name, p in model.named_parameters():  # norms away from 1 and biases away from 0, so a mix-up shows
        if name.endswith(("norm.weight", "layernorm.weight", "norm1.weight", "norm2.weight", ".bias")):
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5) if "weight" in name
                        else paddle.uniform(p.shape, min=-0.5, max=0.5))
    save_checkpoint(out, config, model_state(model), vocab_tokenizer(config.vocab_size),
                    {"name": "init"}, layout=layout)
    return run(model)
