"""The hard-label loss of each head (losses.task_loss) against a numpy reference written here.

Token-level heads (tagging, causal LM) average over the labelled positions only: Paddle's own
``reduction="mean"`` with ``ignore_index`` divides by every position (PaddlePaddle/Paddle#48663),
which scales the loss by the batch's label density. The batches below label rows at different
densities (and one row not at all), so a loss divided by every position cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from ernie_compress.losses import IGNORE_INDEX, logit_kd_loss, soft_label_kd, task_loss


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_token_mean(logits: np.ndarray, labels: np.ndarray) -> float:
    """-log p(label) summed over the labelled positions, divided by their count (float64)."""
    lp = log_softmax(logits.astype(np.float64))
    total, count = 0.0, 0
    for b, s in zip(*np.nonzero(labels != IGNORE_INDEX)):
        total -= lp[b, s, labels[b, s]]
        count += 1
    return total / count if count else 0.0


def token_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """logits [4, 9, 6]; rows labelled at 7, 2, 0 and 9 of 9 positions."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(4, 9, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=(4, 9)).astype(np.int64)
    labels[0, 7:] = IGNORE_INDEX
    labels[1, [0, 3, 4, 5, 6, 7, 8]] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX
    return logits, labels


def tensor(x):
    from ernie_compress.paddle_env import import_paddle

    return import_paddle().to_tensor(x)


@pytest.mark.parametrize("kind", ["token_classification", "causal_lm"])
def test_token_loss_is_the_mean_over_labelled_positions(kind):
    logits, labels = token_batch()
    got = float(task_loss(kind, tensor(logits), tensor(labels)))
    assert got == pytest.approx(reference_token_mean(logits, labels), rel=1e-5)
    one_row = float(task_loss(kind, tensor(logits[1:2]), tensor(labels[1:2])))  # 2 of 9 labelled
    assert one_row == pytest.approx(reference_token_mean(logits[1:2], labels[1:2]), rel=1e-5)


@pytest.mark.parametrize("kind", ["token_classification", "causal_lm"])
def test_token_loss_without_labelled_positions_is_zero_with_zero_gradient(kind):
    logits, labels = token_batch()
    x = tensor(logits[2:3])
    x.stop_gradient = False
    loss = task_loss(kind, x, tensor(labels[2:3]))
    loss.backward()
    assert float(loss) == 0.0 and np.all(x.grad.numpy() == 0.0)


def test_token_loss_gradient_is_the_labelled_mean_gradient():
    """d loss / d logits = (softmax - onehot) / labelled count at labelled positions, 0 elsewhere."""
    logits, labels = token_batch(1)
    x = tensor(logits)
    x.stop_gradient = False
    task_loss("token_classification", x, tensor(labels)).backward()
    mask = labels != IGNORE_INDEX
    expected = np.exp(log_softmax(logits.astype(np.float64)))
    expected[mask, labels[mask]] -= 1.0
    expected *= mask[..., None] / mask.sum()
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-6)


def test_sequence_and_span_losses_are_the_mean_over_rows():
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    expected = -log_softmax(logits.astype(np.float64))[np.arange(5), labels].mean()
    assert float(task_loss("classification", tensor(logits), tensor(labels))) == pytest.approx(expected, rel=1e-5)
    spans, positions = rng.normal(size=(3, 7, 2)).astype(np.float32), np.array([[1, 3], [0, 0], [4, 6]])
    lp = log_softmax(spans.transpose(0, 2, 1).astype(np.float64))  # [b, 2, s]
    expected = -np.mean([lp[b, e, positions[b, e]] for b in range(3) for e in range(2)])
    got = float(task_loss("question_answering", tensor(spans), tensor(positions)))
    assert got == pytest.approx(expected, rel=1e-5)


class _Fixed:
    """A model whose logits are given (teacher or student), for the KD mix."""

    def __init__(self, logits, kind):
        self.logits, self.task_kind, self.training = logits, kind, False

    def __call__(self, input_ids, token_type_ids=None):
        return tensor(self.logits)

    def eval(self):
        pass

    def parameters(self):
        return []


def test_token_level_distillation_mixes_the_labelled_mean_by_kd_weight():
    """(1 - alpha) * CE + alpha * KD with both terms averaged over the same labelled positions."""
    from ernie_compress.training_loop import TensorBatch

    logits, labels = token_batch(3)
    teacher_logits = np.random.default_rng(4).normal(size=logits.shape).astype(np.float32)
    ids = np.ones(labels.shape, dtype=np.int64)
    batch = TensorBatch(tensor(ids), tensor(np.zeros_like(ids)), tensor(labels), np.arange(len(ids)))
    loss, parts = logit_kd_loss(_Fixed(teacher_logits, "token_classification"), alpha=0.3,
                                temperature=2.0)(_Fixed(logits, "token_classification"), batch)
    ce = reference_token_mean(logits, labels)
    kd = float(soft_label_kd(tensor(logits), tensor(teacher_logits), 2.0, "token_classification", tensor(labels)))
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-5)


class _Counting(_Fixed):
    """A teacher that returns fixed logits and counts its forwards."""

    calls = 0

    def __call__(self, input_ids, token_type_ids=None):
        self.calls += 1
        return super().__call__(input_ids, token_type_ids)


@pytest.mark.parametrize("budget_rows, calls", [(10, 1), (1.5, 2)])
def test_teacher_logits_are_cached_within_the_memory_budget(budget_rows, calls):
    """Causal-LM rows [length, vocab] (lengths 5 and 3 of 6): with room for every row the teacher runs
    once and later batches come from the cache (padded with PAD_LOGIT); past the budget the teacher runs
    again for each batch, and the cache holds no more than the budget."""
    from ernie_compress.losses import PAD_LOGIT, TeacherLogitCache
    from ernie_compress.training_loop import TensorBatch

    logits = np.random.default_rng(5).normal(size=(2, 6, 7)).astype(np.float32)
    ids = np.array([[1, 5, 6, 7, 8, 0], [1, 5, 6, 0, 0, 0]], dtype=np.int64)
    batch = TensorBatch(tensor(ids), tensor(np.zeros_like(ids)), tensor(ids), np.arange(2))
    teacher = _Counting(logits, "causal_lm")
    cache = TeacherLogitCache(teacher, pad_id=0, max_bytes=int(budget_rows * 5 * 7 * 4))
    first, second = cache(batch).numpy(), cache(batch).numpy()
    assert teacher.calls == calls and cache.bytes <= cache.max_bytes
    real = ids != 0
    for out in (first, second):
        np.testing.assert_array_equal(out[real], logits[real])  # what KD reads
    if calls == 1:
        assert (second[~real] == PAD_LOGIT).all() and len(cache.rows) == 2


class _WithAux(_Fixed):
    """A student with an auxiliary training term (an MoE router's), as ``model.auxiliary_loss()``."""

    def auxiliary_loss(self):
        return tensor(np.float32(0.25))


def test_logit_kd_adds_the_students_auxiliary_loss():
    """Pruning recovery and QAT distil with logit_kd_loss: an MoE student's load balancing goes in too."""
    from ernie_compress.training_loop import TensorBatch

    logits, labels = token_batch(6)
    ids = np.ones(labels.shape, dtype=np.int64)
    batch = TensorBatch(tensor(ids), tensor(np.zeros_like(ids)), tensor(labels), np.arange(len(ids)))
    teacher = _Fixed(np.zeros_like(logits), "causal_lm")
    plain_loss, plain = logit_kd_loss(teacher)(_Fixed(logits, "causal_lm"), batch)
    loss, parts = logit_kd_loss(teacher)(_WithAux(logits, "causal_lm"), batch)
    assert "aux" not in plain and float(parts["aux"]) == 0.25
    assert float(loss) == pytest.approx(float(plain_loss) + 0.25, rel=1e-6)


def test_kd_temperature_defaults_to_1_for_causal_lm_and_2_for_label_heads():
    """The default the stages use when --kd-temperature is not given (losses.KD_TEMPERATURE_BY_KIND):
    soft_label_kd with None equals the kind's temperature, and a given temperature wins."""
    import paddle

    from ernie_compress.losses import kd_temperature, soft_label_kd

    assert kd_temperature("causal_lm", None) == 1.0 and kd_temperature("classification", None) == 2.0
    assert kd_temperature("causal_lm", 3.0) == 3.0
    rng = np.random.default_rng(0)
    s, t = (paddle.to_tensor(rng.normal(size=(2, 5, 7)).astype("float32") * 3) for _ in range(2))
    labels = paddle.to_tensor(np.array([[1, 2, 3, -100, -100], [4, 5, 6, 1, -100]]))
    default = float(soft_label_kd(s, t, None, "causal_lm", labels))
    assert default == float(soft_label_kd(s, t, 1.0, "causal_lm", labels))
    assert default != float(soft_label_kd(s, t, 2.0, "causal_lm", labels))
