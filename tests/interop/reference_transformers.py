"""Run inside the transformers reference venv (``make_reference_venvs.sh``: PyTorch + transformers), never ours.

    python reference_transformers.py ROOT CASE...   # CASE: a name in cases.TRANSFORMERS_CASES

All cases in one process (importing torch and transformers costs seconds). For each CASE, in ROOT/CASE/:

- ``ours/`` (our ``--layout hf`` save), when present: ``AutoModelForCausalLM.from_pretrained`` loads it;
  its logits on the padded batch go to ``ours_in_transformers.npy`` and its class and the weights it
  found missing or unexpected to ``loading.json``;
- ``theirs/``: transformers builds a random model of the case (weights redrawn, see
  :func:`_randomize`) and ``save_pretrained``\\ s it there with the case's keyword arguments; its logits
  go to ``theirs_logits.npy``.

Logits are float32 on the CPU, with the batch's attention mask (right padding), [b, s, vocab].
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import INPUT_IDS, TRANSFORMERS_BASE, TRANSFORMERS_CASES  # noqa: E402


def _logits(model):
    import torch

    ids = torch.tensor(INPUT_IDS, dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != 0).long()).logits.float().numpy()


def _randomize(model, seed):
    """Every weight redrawn (transformers' init is N(0, 0.02), under which the router's softmax is
    nearly uniform): norms in [0.5, 1.5], the router N(0, 0.3) so tokens prefer different experts,
    the correction bias in [-0.15, 0.15] so it changes some tokens' top-k and not all (left at zero
    where ``moe_use_aux_free`` is false: transformers adds it all the same), others N(0, 0.15)."""
    import torch

    torch.manual_seed(seed)
    aux_free = getattr(model.config, "moe_use_aux_free", True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("e_score_correction_bias"):
                p.uniform_(-0.15, 0.15) if aux_free else p.zero_()
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)


def save(case, out_dir, seed):
    import transformers

    arch, changes, save_kwargs = TRANSFORMERS_CASES[case]
    config_class = transformers.Ernie4_5_MoeConfig if "Moe" in arch else transformers.Ernie4_5Config
    model = getattr(transformers, arch)(config_class(**dict(TRANSFORMERS_BASE, **changes)))
    model.eval()
    _randomize(model, seed)
    model.save_pretrained(os.path.join(out_dir, "theirs"), **save_kwargs)
    np.save(os.path.join(out_dir, "theirs_logits.npy"), _logits(model))


def load(out_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(os.path.join(out_dir, "ours"), dtype=torch.float32,
                                                       output_loading_info=True)
    model.eval()
    np.save(os.path.join(out_dir, "ours_in_transformers.npy"), _logits(model))
    with open(os.path.join(out_dir, "loading.json"), "w") as f:
        json.dump({"class": type(model).__name__, "missing": sorted(info["missing_keys"]),
                   "unexpected": sorted(info["unexpected_keys"])}, f)


def main(root, cases):
    import torch
    import transformers

    torch.set_num_threads(1)
    for seed, case in enumerate(cases, start=1234):
        out_dir = os.path.join(root, case)
        os.makedirs(out_dir, exist_ok=True)
        if os.path.isdir(os.path.join(out_dir, "ours")):
            load(out_dir)
        save(case, out_dir, seed)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
