"""Run inside a reference library's virtual environment (``make_reference_venvs.sh``), never ours.

    python reference.py save paddlenlp|paddleformers CASE DIR   # the library builds, saves, runs a model
    python reference.py load paddlenlp|paddleformers ARCH MODEL_DIR OUT.npy   # it loads ours and runs it
    python reference.py save_moe CASE DIR          # PaddleFormers builds and saves a tiny MoE LM
    python reference.py load_moe MODEL_DIR OUT.npz  # PaddleFormers loads an MoE LM: its state dict

``save`` writes DIR/model (the library's own save_pretrained), DIR/logits.npy; ``load`` runs
``from_pretrained(MODEL_DIR)`` on the cases' padded batch and writes its outputs to OUT.npy.
``save_moe`` writes DIR/model and DIR/state.npz (the model's state dict, PaddleFormers' own names);
no logits: PaddleFormers 1.2.0's MoE layer runs a GPU-only kernel, so its MoE forward cannot run on
a CPU. Outputs: classification [b, labels], tokens [b, s, labels], QA [b, s, 2] (start, end), LMs [b, s, vocab].
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import (ERNIE3_BASE, ERNIE3_CASES, ERNIE45_BASE, ERNIE45_CASES, ERNIE45_MOE_BASE,  # noqa: E402
                   ERNIE45_MOE_CASES, INPUT_IDS)


def _outputs(model, arch):
    import paddle

    ids = paddle.to_tensor(INPUT_IDS, dtype="int64")
    with paddle.no_grad():
        if arch.startswith("Ernie4_5"):
            mask = paddle.cast(ids != 0, "int64")
            out = model(input_ids=ids, attention_mask=mask, return_dict=True).logits
            return out.numpy()
        out = model(ids)
    if arch == "ErnieForQuestionAnswering":
        return np.stack([out[0].numpy(), out[1].numpy()], axis=-1)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _classes(library):
    if library == "paddlenlp":
        import paddlenlp.transformers as t
        return t, t.ErnieConfig
    from paddleformers.transformers import Ernie4_5Config
    from paddleformers.transformers.ernie4_5 import modeling
    return modeling, Ernie4_5Config


def save(library, case, out_dir):
    import paddle

    paddle.seed(1234)
    module, config_cls = _classes(library)
    if library == "paddlenlp":
        arch, changes = ERNIE3_CASES[case]
        config, kwargs = config_cls(**dict(ERNIE3_BASE, **changes)), {}
    else:
        changes, kwargs = ERNIE45_CASES[case]
        arch = "Ernie4_5ForCausalLM"
        config = config_cls(**dict(ERNIE45_BASE, **changes), fuse_rms_norm=False)
    model = getattr(module, arch)(config)
    model.eval()
    model.save_pretrained(os.path.join(out_dir, "model"), **kwargs)
    np.save(os.path.join(out_dir, "logits.npy"), _outputs(model, arch))


def load(library, arch, model_dir, out_file):
    module, _ = _classes(library)
    kwargs = {"fuse_rms_norm": False} if library == "paddleformers" else {}
    model = getattr(module, arch).from_pretrained(model_dir, **kwargs)
    model.eval()
    np.save(out_file, _outputs(model, arch))


def _moe_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def save_moe(case, out_dir):
    import paddle
    from paddleformers.transformers import Ernie4_5_MoeConfig
    from paddleformers.transformers.ernie4_5_moe import modeling

    paddle.seed(1234)
    changes, kwargs = ERNIE45_MOE_CASES[case]
    config = Ernie4_5_MoeConfig(**dict(ERNIE45_MOE_BASE, **changes), fuse_rms_norm=False)
    model = modeling.Ernie4_5_MoeForCausalLM(config)
    with paddle.no_grad():  # norms and correction biases away from their constant init, so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "e_score_correction_bias")):
                p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5))
    model.save_pretrained(os.path.join(out_dir, "model"), **kwargs)
    np.savez(os.path.join(out_dir, "state.npz"), **_moe_state(model))


def load_moe(model_dir, out_file):
    from paddleformers.transformers.ernie4_5_moe import modeling

    model = modeling.Ernie4_5_MoeForCausalLM.from_pretrained(model_dir, fuse_rms_norm=False)
    np.savez(out_file, **_moe_state(model))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"save": save, "load": load, "save_moe": save_moe, "load_moe": load_moe}[command](*args)
