"""Training losses shared by stages: soft-label knowledge distillation on logits.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the student matches
the teacher's temperature-softened distribution, ``KL(softmax(t/T) || softmax(s/T)) * T^2``
(the T^2 keeps gradient magnitudes comparable across temperatures), mixed with the hard-label
cross-entropy. Pruning recovery and QAT use it with the parent model as teacher.
"""

from __future__ import annotations

import numpy as np

from .paddle_env import import_paddle


def soft_label_kd(student_logits, teacher_logits, temperature: float):
    """KL divergence between temperature-softened teacher and student, times T^2."""
    F = import_paddle().nn.functional
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, axis=-1), F.softmax(teacher_logits / t, axis=-1),
                    reduction="batchmean") * (t * t)


def logit_kd_loss(teacher, alpha: float = 0.5, temperature: float = 2.0):
    """A :class:`~ernie_compress.train.LossFn`: ``(1-alpha) * CE + alpha * KD`` against ``teacher``.

    The teacher runs in eval mode without gradients; its logits are cached per example (padding
    does not change them) so later epochs do not run it again.
    """
    paddle = import_paddle()
    F = paddle.nn.functional
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    cache: dict[int, object] = {}

    def loss_fn(model, batch):
        if any(int(i) not in cache for i in batch.index):
            with paddle.no_grad():
                rows = teacher(batch.input_ids, batch.token_type_ids).numpy()
            cache.update(zip(batch.index.tolist(), rows))
        teacher_logits = paddle.to_tensor(np.stack([cache[int(i)] for i in batch.index]))
        logits = model(batch.input_ids, batch.token_type_ids)
        ce = F.cross_entropy(logits, batch.labels)
        kd = soft_label_kd(logits, teacher_logits, temperature)
        return (1 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}

    return loss_fn
