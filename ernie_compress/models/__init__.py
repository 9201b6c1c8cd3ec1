"""Building models and moving weights in and out of them; the families are in ``families.py``.

Importing this package does not import Paddle; :func:`build_model` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import UserError
import numpy as np

from .config import ErnieConfig
from .families import FAMILIES, family_of


def build_model(config: ErnieConfig):
    """A freshly initialised Paddle model for ``config`` (its architecture and head)."""
    architectures = family_of(config).module().ARCHITECTURES
    cls = architectures.get(config.architecture)
    if cls is None:
        raise UserError(f"architecture '{config.architecture}' is not supported "
                        f"(supported: {', '.join(architectures)})")
    return cls(config)


def count_parameters(shapes: Mapping[str, Sequence[int]], config=None) -> dict[str, int]:
    """Total parameters and those outside the embeddings (the part that compression shrinks); with
    the ``config`` of a mixture-of-experts model (one with ``active_parameters``), also ``active``:
    the parameters one token's forward pass reads (embeddings included, ``moe_k`` of each layer's
    routed experts)."""
    total = embeddings = 0
    for name, shape in shapes.items():
        n = int(math.prod(shape))
        total += n
        if ".embeddings." in f".{name}" or ".embed_tokens." in f".{name}" or name == "lm_head.weight":
            embeddings += n
    counts = {"total": total, "embeddings": embeddings, "non_embedding": total - embeddings}
    active = getattr(config, "active_parameters", None)
    if active is not None:
        counts["active"] = active(shapes)
    return counts


# task-specific parameters, re-initialised for a new label set
HEAD_PREFIXES = tuple(dict.fromkeys(f"{head}." for f in FAMILIES.values() for head in f.names.task_heads))


def model_state(model) -> dict:
    """A model's parameters and buffers as numpy arrays, by PaddleNLP name."""
    return {name: value.numpy() for name, value in model.state_dict().items()}


def load_state_(model, state: dict, where: str, allow_new_head: bool = False) -> list[str]:
    """Copy ``state`` into ``model`` after checking names and shapes; return the names skipped.

    With ``allow_new_head`` the task head may be missing or shaped for other labels: it keeps its
    fresh initialisation (fine-tuning a pre-trained encoder on a new task).
    """
    expected = {name: list(p.shape) for name, p in model.state_dict().items()}
    config = model.config
    if allow_new_head:
        head = {n for n in expected if n.startswith(HEAD_PREFIXES)}
        reuse = {n for n in head if n in state and list(state[n].shape) == expected[n]}
        if reuse != head:
            expected = {n: s for n, s in expected.items() if n not in head}
    check_state_matches(config, state, expected, where)
    import warnings

    with warnings.catch_warnings():  # a new head is "skipped" on purpose
        warnings.simplefilter("ignore")
        model.set_state_dict({name: _as_param_dtype(state[name]) for name in expected})
    return sorted(set(state) - set(expected))


def check_state_matches(config: ErnieConfig, state: dict[str, np.ndarray],
                        expected_shapes: dict[str, list[int]], where: str) -> None:
    """Refuse weights whose names or shapes disagree with the model the config describes."""
    missing = sorted(set(expected_shapes) - set(state))
    if missing:
        raise UserError(f"{where}: the weights lack {len(missing)} parameter(s) the config needs, "
                        f"e.g. {missing[0]}")
    for name, shape in expected_shapes.items():
        if list(state[name].shape) != list(shape):
            raise UserError(f"{where}: {name} has shape {list(state[name].shape)} but config.json "
                            f"implies {list(shape)}; config and weights do not match")
    embedding = family_of(config).word_embedding
    if embedding in state and state[embedding].shape[0] != config.vocab_size:
        raise UserError(f"{where}: the embedding has {state[embedding].shape[0]} rows but vocab_size is "
                        f"{config.vocab_size}")


def _as_param_dtype(value):
    """FP16-stored weights compute in FP32 on the CPU (Paddle has no CPU FP16 kernels)."""
    return value.astype(np.float32) if value.dtype == np.float16 else value


def model_from_state(config: ErnieConfig, state: dict, where: str):
    """Build the model ``config`` describes and load ``state`` into it (names/shapes checked)."""
    model = build_model(config)
    load_state_(model, state, where)
    model.eval()
    return model


def layer_from_state(config: ErnieConfig, index: int, state: dict, where: str):
    """Decoder layer ``index`` of a decoder on its own (its family implementation's ``build_layer``)
    loaded with ``state``: that layer's tensors under their full names (``ernie.layers.{index}.…``),
    names and shapes checked; run it as ``layer(x, *module.layer_inputs(config, input_ids))``."""
    family = family_of(config)
    build = getattr(family.module(), "build_layer", None)
    if build is None:
        raise UserError(f"{family.title} models are not built layer by layer here")
    layer = build(config, index)
    prefix = family.names.layer(index)
    check_state_matches(config, state, {prefix + name: list(p.shape) for name, p in layer.state_dict().items()},
                        where)
    layer.set_state_dict({name[len(prefix):]: _as_param_dtype(value) for name, value in state.items()})
    layer.eval()
    return layer
