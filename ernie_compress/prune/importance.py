"""How much each attention head and FFN neuron matters, measured on task data.

Heads — Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?": put a mask
``xi_h = 1`` on every head's attention output and take ``I_h = E_x |dL/dxi_h|``, the expected
sensitivity of the loss to removing the head (a first-order Taylor estimate), then normalise the
scores within each layer by their L2 norm so that layers compare. ``magnitude`` is the cheaper
alternative: the L2 norm of the head's slices of the q/k/v and output projections.

FFN neurons — the product of the L2 norms of a neuron's input column (``linear1``) and output
row (``linear2``) — the family's FFN input and output Linears — normalised per layer the same way.
"""

from __future__ import annotations

import numpy as np

from ..data.batching import EncodedSplit
from ..errors import UserError
from ..losses import task_kind, task_loss
from ..models.families import family_of
from ..paddle_env import import_paddle
from ..progress import progress_bar

HEAD_METHODS = ("gradient", "magnitude")


def _normalise_per_layer(scores: list[np.ndarray]) -> list[np.ndarray]:
    return [s / (np.linalg.norm(s) + 1e-12) if s.size else s for s in scores]


def gradient_head_importance(model, split: EncodedSplit, samples: int = 512, batch_size: int = 32,
                             seed: int = 0) -> list[np.ndarray]:
    """Per layer, ``|dL/d mask|`` summed over ``samples`` training examples: [heads_in_layer]."""
    paddle = import_paddle()
    config = model.config
    masks = [paddle.ones([config.heads_in_layer(i)], dtype="float32")
             for i in range(config.num_hidden_layers)]
    for m in masks:
        m.stop_gradient = False
    model.eval()  # no dropout: the scores measure the model, not the noise
    totals = [np.zeros(config.heads_in_layer(i)) for i in range(config.num_hidden_layers)]
    order = np.random.default_rng(seed).permutation(len(split))[:samples]
    with progress_bar(-(-len(order) // batch_size), "head importance") as bar:
        for start in range(0, len(order), batch_size):
            _add_mask_gradients(model, split, np.sort(order[start:start + batch_size]), masks, totals)
            bar.advance()
    model.clear_gradients()
    return _normalise_per_layer(totals)


def _add_mask_gradients(model, split: EncodedSplit, idx: np.ndarray, masks: list, totals: list[np.ndarray]) -> None:
    """Add ``|dL/d mask|`` of the rows ``idx`` to ``totals`` (layers without heads have empty masks)."""
    paddle = import_paddle()
    seq = int(split.lengths[idx].max())
    logits = model(paddle.to_tensor(split.input_ids[idx, :seq]), paddle.to_tensor(split.token_type_ids[idx, :seq]),
                   head_mask=[m if m.shape[0] else None for m in masks])
    labels = split.labels[idx, :seq] if split.token_level else split.labels[idx]
    loss = task_loss(task_kind(model), logits, paddle.to_tensor(labels))
    live = [i for i, m in enumerate(masks) if m.shape[0]]
    grads = paddle.grad(loss, [masks[i] for i in live], allow_unused=True)
    for i, g in zip(live, grads):
        if g is not None:
            totals[i] += np.abs(g.numpy())


def magnitude_head_importance(state: dict[str, np.ndarray], config) -> list[np.ndarray]:
    """Per layer, the L2 norm of each head's q/k/v columns and output-projection rows."""
    d = config.head_dim
    names = family_of(config).names
    scores = []
    for i in range(config.num_hidden_layers):
        heads = config.heads_in_layer(i)
        s = np.zeros(heads)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for proj in names.attention_in:
                s[h] += np.sum(state[names.in_layer(i, proj)][:, cols] ** 2)
            s[h] += np.sum(state[names.in_layer(i, names.attention_out)][cols, :] ** 2)
        scores.append(np.sqrt(s))
    return _normalise_per_layer(scores)


def ffn_importance(state: dict[str, np.ndarray], config) -> list[np.ndarray]:
    """Per layer, ``||W1[:, j]|| * ||W2[j, :]||`` for each FFN neuron j."""
    names = family_of(config).names
    (ffn_in,) = names.ffn_in
    scores = []
    for i in range(config.num_hidden_layers):
        if config.ffn_in_layer(i) == 0:
            scores.append(np.zeros(0))
            continue
        w1 = state[names.in_layer(i, ffn_in)]  # [hidden, ffn]
        w2 = state[names.in_layer(i, names.ffn_out)]  # [ffn, hidden]
        scores.append(np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1))
    return _normalise_per_layer(scores)


def head_importance(method: str, model, state, split: EncodedSplit | None, samples: int) -> list[np.ndarray]:
    if method == "gradient":
        if split is None:
            raise UserError("gradient head importance needs task data")
        return gradient_head_importance(model, split, samples)
    if method == "magnitude":
        return magnitude_head_importance(state, model.config)
    raise UserError(f"--importance must be one of {', '.join(HEAD_METHODS)}, got '{method}'")
