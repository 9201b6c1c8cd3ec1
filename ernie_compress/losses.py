"""Training losses shared by stages, for each kind of task head.

Shapes by head (``model.task_kind``):

- ``classification``: logits [b, labels], labels [b];
- ``token_classification``: logits [b, s, labels], labels [b, s] with ``IGNORE_INDEX`` (-100) where
  a position carries no tag ([CLS], [SEP], padding, continuation word pieces);
- ``question_answering``: logits [b, s, 2] (start, end; padding already at -1e4 by the model),
  labels [b, 2] token positions, 0 (= [CLS]) when the answer is not in the window. The span loss is
  the mean of the start and end cross-entropies over sequence positions (Devlin et al. 2019, §4.2).

Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"): the student matches the teacher's temperature-softened distribution,
``KL(softmax(t/T) || softmax(s/T)) * T^2`` (the T^2 keeps gradient magnitudes comparable across
temperatures), mixed with the hard-label loss. The distributions are over the labels for
classification and tagging (tagged positions only) and over the sequence positions for span
starts and ends. Pruning recovery, QAT and distillation all use these.
"""

from __future__ import annotations

import numpy as np

from .paddle_env import import_paddle

IGNORE_INDEX = -100
PAD_LOGIT = -1e4  # what the span head puts on padding; cached teacher rows are padded with it


def task_kind(model) -> str:
    return getattr(model, "task_kind", "classification")


def _span_major(logits):
    """[b, s, 2] -> [b, 2, s]: a distribution over positions for the start and for the end."""
    return import_paddle().transpose(logits, [0, 2, 1])


def labelled_mean_cross_entropy(logits, labels):
    """Cross-entropy averaged over the positions whose label is not :data:`IGNORE_INDEX`
    (logits [b, s, classes], labels [b, s]); 0, with zero gradients, when none is labelled.

    Computed here because Paddle's ``cross_entropy(..., ignore_index=..., reduction="mean")``
    divides the sum by every position (PaddlePaddle/Paddle#48663), which would scale the loss by
    the batch's label density and break the token weighting of ``training_loop.batch_weight``.
    """
    paddle = import_paddle()
    per_position = paddle.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX,
                                                      reduction="none")
    per_position = paddle.cast(paddle.reshape(per_position, labels.shape), "float32")  # [b, s], 0 if ignored
    labelled = paddle.cast(labels != IGNORE_INDEX, "float32")  # [b, s]
    return paddle.sum(per_position * labelled) / paddle.clip(paddle.sum(labelled), min=1.0)


def task_loss(kind: str, logits, labels):
    """The hard-label loss of one batch (mean over examples, or over labelled positions)."""
    F = import_paddle().nn.functional
    if kind == "question_answering":
        return F.cross_entropy(_span_major(logits), labels)  # labels [b, 2]
    if kind in ("token_classification", "causal_lm"):  # labels [b, s], next tokens for causal LM
        return labelled_mean_cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)  # labels [b]


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` along ``axis``: the same values as ``paddle.nn.functional.log_softmax``,
    which on Paddle 3.3.1's CPU is 8x slower forward and 15x slower forward + backward over a causal
    LM's [batch, seq, vocab] logits (32 x 128 x 3758: 5.4 s vs 0.65 s forward; it made LM distillation
    5x slower than training)."""
    paddle = import_paddle()
    return x - paddle.logsumexp(x, axis=axis, keepdim=True)


def _masked_kl(student_logits, teacher_logits, mask, temperature: float):
    """Mean over rows where ``mask`` is 1 of KL over the last axis, times T^2."""
    paddle = import_paddle()
    t = temperature
    log_p_student = log_softmax(student_logits / t)
    log_p_teacher = log_softmax(teacher_logits / t)
    kl = paddle.sum(paddle.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)  # mask's shape
    return paddle.sum(kl * mask) / paddle.clip(paddle.sum(mask), min=1.0) * (t * t)


# KD temperature when the user gives none: Hinton et al.'s softened targets (T 2) for heads over a few
# labels; T 1 for a causal LM's next-token distribution over the whole vocabulary, whose flattened
# tail (what T 2 weights up) a small student cannot follow: on demo:lm T 1 gave the lower student
# perplexity both after 150 steps and after an epoch (benchmarks/moe_distill.py, docs/benchmarks.md).
KD_TEMPERATURE = 2.0
KD_TEMPERATURE_BY_KIND = {"causal_lm": 1.0}
KD_TEMPERATURE_HELP = "KD softmax temperature (default: 1 for causal-LM tasks, 2 for the others)."


def kd_temperature(kind: str, temperature: float | None) -> float:
    """The temperature KD uses for ``kind``: the user's, else the kind's default (above)."""
    return KD_TEMPERATURE_BY_KIND.get(kind, KD_TEMPERATURE) if temperature is None else temperature


def soft_label_kd(student_logits, teacher_logits, temperature: float | None, kind: str = "classification",
                  labels=None):
    """The KD term for ``kind`` (``labels`` tells which positions are tagged for token tasks);
    ``temperature`` None: the kind's default (:func:`kd_temperature`)."""
    paddle = import_paddle()
    temperature = kd_temperature(kind, temperature)
    if kind == "question_answering":
        s, t = _span_major(student_logits), _span_major(teacher_logits)  # [b, 2, s]
        return _masked_kl(s, t, paddle.ones(s.shape[:2], dtype="float32"), temperature)
    if kind in ("token_classification", "causal_lm"):  # per tagged / predicted position
        mask = paddle.cast(labels != IGNORE_INDEX, "float32")  # [b, s]
        return _masked_kl(student_logits, teacher_logits, mask, temperature)
    return _masked_kl(student_logits, teacher_logits,
                      paddle.ones(student_logits.shape[:1], dtype="float32"), temperature)


def auxiliary_loss(model):
    """The model's own training term from its last forward (``model.auxiliary_loss()``: a
    mixture-of-experts router's weighted load-balancing loss), or None for a model without one."""
    term = getattr(model, "auxiliary_loss", None)
    return None if term is None else term()


def with_auxiliary_loss(model, loss, parts: dict):
    """``(loss, parts)`` of a training loss after a forward of ``model``, plus the model's auxiliary
    loss (:func:`auxiliary_loss`, reported as ``aux``) when it has one: every loss a stage trains a
    model with (hard labels, KD, distillation) ends here, so an MoE router is balanced whatever the
    other terms are."""
    aux = auxiliary_loss(model)
    if aux is None:
        return loss, parts
    return loss + aux, {**parts, "aux": aux}


def hard_label_loss(model, batch):
    """The fine-tuning loss (a :class:`~ernie_compress.training_loop.LossFn`), plus the model's
    auxiliary loss (reported as ``aux``) when it has one."""
    loss = task_loss(task_kind(model), model(batch.input_ids, batch.token_type_ids), batch.labels)
    return with_auxiliary_loss(model, loss, {"ce": loss})


class TeacherLogitCache:
    """Teacher outputs per training row, computed once (dropout off, padding does not change them),
    as long as they fit in ``max_bytes``; rows past that are computed again whenever a batch holds
    them. A causal LM's rows are [length, vocab] each: demo:lm's training split would take ~12 GB.

    Rows of token and span heads are stored cut to the example's length and padded back to the
    batch's length with :data:`PAD_LOGIT` (ignored by the tag mask; zero probability for spans).
    A batch with rows that are not stored gets the teacher's output for the whole batch.
    """

    def __init__(self, teacher, pad_id: int, max_bytes: int = 1 << 30):
        self.teacher = teacher
        self.pad_id = pad_id
        self.max_bytes = max_bytes
        self.bytes = 0  # held in rows
        self.full = False  # a row did not fit: no more are stored
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, batch):
        paddle = import_paddle()
        if any(int(i) not in self.rows for i in batch.index):
            with paddle.no_grad():
                out = self.teacher(batch.input_ids, batch.token_type_ids)
            if not self._keep(batch, out):
                return out
        rows = [self.rows[int(i)] for i in batch.index]
        if rows[0].ndim == 1:
            return paddle.to_tensor(np.stack(rows))
        seq = int(batch.input_ids.shape[1])
        padded = np.full((len(rows), seq, rows[0].shape[-1]), PAD_LOGIT, dtype=np.float32)
        for r, row in enumerate(rows):
            padded[r, :len(row)] = row
        return paddle.to_tensor(padded)

    def _keep(self, batch, out) -> bool:
        """Store the batch's missing rows of ``out`` while the budget allows; True when every row of
        the batch is stored."""
        if self.full:
            return False
        out = out.numpy()
        lengths = (batch.input_ids.numpy() != self.pad_id).sum(axis=1)
        for row, i in enumerate(batch.index.tolist()):
            if i in self.rows:
                continue
            value = (out[row] if out.ndim == 2 else out[row, :lengths[row]]).copy()  # [labels] or [len, labels]
            if self.bytes + value.nbytes > self.max_bytes:
                self.full = True
                return False
            self.rows[i] = value
            self.bytes += value.nbytes
        return True


def logit_kd_loss(teacher, alpha: float = 0.5, temperature: float | None = None, pad_id: int = 0):
    """A :class:`~ernie_compress.training_loop.LossFn`: ``(1-alpha) * hard + alpha * KD`` against ``teacher``.

    The teacher runs in eval mode without gradients; its logits are cached per example so later
    epochs do not run it again. The student's auxiliary loss (a mixture-of-experts router's) is added
    unweighted by ``alpha``, as :func:`hard_label_loss` adds it.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    cached = TeacherLogitCache(teacher, pad_id)
    kind = task_kind(teacher)

    def loss_fn(model, batch):
        teacher_logits = cached(batch)
        logits = model(batch.input_ids, batch.token_type_ids)
        ce = task_loss(kind, logits, batch.labels)
        kd = soft_label_kd(logits, teacher_logits, temperature, kind, batch.labels)
        return with_auxiliary_loss(model, (1 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd})

    return loss_fn


def predicted_classes(kind: str, logits: np.ndarray) -> np.ndarray:
    """What a head predicts, for agreement checks: the label (per example or position), or the
    start and end positions of a span head ([b, 2])."""
    return logits.argmax(1) if kind == "question_answering" else logits.argmax(-1)
