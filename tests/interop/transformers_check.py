"""Check ``--layout hf`` ERNIE 4.5 checkpoints against Hugging Face transformers (needs torch + transformers).

    python tests/interop/transformers_check.py DIR   # DIR/<case>/ = our hf-layout save + ours_logits.npy,
                                                     # DIR/input_ids.npy = the padded batch

For each case, ``transformers.AutoModelForCausalLM.from_pretrained`` loads our folder unchanged and its
logits at the non-pad positions must equal ours to 1e-5 relative (CPU, float32); on a GPU the same
model runs too (TF32 off). Prints one JSON line per case and exits 1 on any mismatch. Not part of CI
(transformers needs PyTorch, which the CI machine does not install); run where both are present.
"""

import json
import sys
from pathlib import Path

import numpy as np


def main(root: Path) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = np.load(root / "input_ids.npy")
    real = ids != 0
    failures = 0
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        ours = np.load(case / "ours_logits.npy")
        model = AutoModelForCausalLM.from_pretrained(str(case), dtype=torch.float32)
        model.eval()
        result = {"case": case.name, "transformers": transformers.__version__, "class": type(model).__name__}
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            model.to(device)
            x = torch.tensor(ids, device=device)
            with torch.no_grad():
                theirs = model(input_ids=x, attention_mask=(x != 0).long()).logits.float().cpu().numpy()
            delta = float(np.abs(theirs[real] - ours[real]).max())
            scale = float(np.abs(ours[real]).max())
            ok = delta <= 1e-5 * scale
            failures += not ok
            result[device] = {"max_abs_delta": delta, "scale": scale, "ok": ok}
        print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
