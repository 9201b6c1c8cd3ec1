"""Distillation losses between a teacher and a student of other depth, width and head count.

- Logits: soft-label KD with temperature (Hinton et al. 2015), in ``ernie_compress.losses``.
- Hidden states: MSE between a learned linear projection of the student's layer output and the
  mapped teacher layer's output (TinyBERT, Jiao et al. 2020), over non-padding tokens.
- Self-attention: MiniLM (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for
  Task-Agnostic Compression of Pre-Trained Transformers") transfers the attention distributions
  softmax(QK^T/sqrt(d)) and the value relation softmax(VV^T/sqrt(d)) of one teacher layer to the
  student's last layer with a KL divergence. To work across different head counts and widths we
  use MiniLMv2's relation heads (Wang et al. 2021): the concatenated queries/keys/values of all
  heads are re-split into R relation heads for both models, so each relation is [batch, R, s, s]
  whatever the original head layout.
"""

from __future__ import annotations

from ..errors import UserError
from ..losses import log_softmax
from ..paddle_env import import_paddle


def relation_log_probs(a, b, relation_heads: int, attn_bias):
    """log softmax(A_r B_r^T / sqrt(d_r)) per relation head.

    a, b: [batch, heads, seq, head_dim] (as recorded by the attention); attn_bias [batch, 1, 1, seq].
    Returns [batch, R, seq, seq].
    """
    paddle = import_paddle()

    def regroup(x):
        bsz, heads, seq, dim = x.shape
        x = paddle.transpose(x, [0, 2, 1, 3])  # [b, s, heads, dim]
        x = paddle.reshape(x, [0, 0, heads * dim])  # [b, s, width]
        width = heads * dim
        x = paddle.reshape(x, [0, 0, relation_heads, width // relation_heads])
        return paddle.transpose(x, [0, 2, 1, 3]), width // relation_heads  # [b, R, s, width/R]

    ra, dim = regroup(a)
    rb, _ = regroup(b)
    scores = paddle.matmul(ra, rb, transpose_y=True) / (dim ** 0.5) + attn_bias
    return log_softmax(scores)


def relation_kl(teacher_log_probs, student_log_probs, valid):
    """Mean over valid query positions of KL(teacher || student); valid: [batch, seq] float."""
    paddle = import_paddle()
    p = paddle.exp(teacher_log_probs)
    kl = paddle.sum(p * (teacher_log_probs - student_log_probs), axis=-1)  # [b, R, s]
    kl = paddle.mean(kl, axis=1) * valid  # [b, s]
    return paddle.sum(kl) / paddle.clip(paddle.sum(valid), min=1.0)


def hidden_mse(student_hidden, teacher_hidden, projection, valid):
    """MSE of projection(student) vs teacher over valid tokens; hidden: [b, s, H_s] / [b, s, H_t]."""
    paddle = import_paddle()
    diff = projection(student_hidden) - teacher_hidden
    per_token = paddle.mean(diff * diff, axis=-1) * valid  # [b, s]
    return paddle.sum(per_token) / paddle.clip(paddle.sum(valid), min=1.0)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i (0-based) -> teacher layer, spread evenly; the last maps to the last."""
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """``"0:1,1:3"`` -> [(0, 1), (1, 3)], validated against both depths."""
    pairs = []
    for item in text.split(","):
        try:
            s, t = (int(x) for x in item.split(":"))
        except ValueError:
            raise UserError(f"--layer-map takes student:teacher pairs like 0:1,1:3, got '{text}'") from None
        if not (0 <= s < student_layers and 0 <= t < teacher_layers):
            raise UserError(f"--layer-map pair {s}:{t} is outside the student's {student_layers} or "
                            f"the teacher's {teacher_layers} layers")
        pairs.append((s, t))
    return pairs
