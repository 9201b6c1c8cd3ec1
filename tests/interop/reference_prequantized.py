"""Run inside the transformers reference venv (``make_reference_venvs.sh``: PyTorch, transformers,
compressed-tensors, onnxruntime-genai), never ours.

    python reference_prequantized.py ROOT CASE...

For each CASE, in ROOT/CASE/:

- ``compressed-tensors/`` (our ``export --layout compressed-tensors`` checkpoint), when present:
  ``AutoModelForCausalLM.from_pretrained`` (compressed-tensors' quantizer, which decompresses the
  packed weights on a CPU) loads it; its float32 logits on the padded batch (attention mask, right
  padding) go to ``ct_logits.npy`` [b, s, vocab], its class, quantization method and the weights it
  found missing or unexpected to ``ct_loading.json``;
- ``gptq/`` (our ``--layout gptq`` checkpoint), when present: onnxruntime-genai's model builder
  (``onnxruntime_genai.models.builder``, its GPTQ loader) writes an int4/int8 ONNX model for the CPU
  with fp32 compute (``accuracy_level=1``; its CPU default 4 would quantize the activations to int8)
  and with the embedding and head left as the checkpoint's floats (``nodes_to_exclude``; by default it
  would quantize them itself, which is not our checkpoint's rounding); onnxruntime-genai runs it, each
  row's real tokens as one prompt; the prefill logits go to ``og_logits.npy`` [b, s, vocab] (zeros at
  padding) and the graph's operator counts to ``og_graph.json``. The builder also reads the folder's
  tokenizer through ``AutoTokenizer``: the test models' vocab.txt is a WordPiece vocabulary, so the
  builder gets a copy of the folder whose tokenizer_config.json names BertTokenizer (weights and
  config.json untouched).

Prints the library versions as JSON.
"""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import INPUT_IDS  # noqa: E402

OG_OPTIONS = ["nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather", "accuracy_level=1"]


def load_compressed_tensors(folder, out_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    model.eval()
    ids = torch.tensor(INPUT_IDS, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits.float().numpy()
    np.save(os.path.join(out_dir, "ct_logits.npy"), logits)
    with open(os.path.join(out_dir, "ct_loading.json"), "w") as f:
        json.dump({"class": type(model).__name__, "quant_method": model.config.quantization_config.quant_method,
                   "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"])}, f)


def _builder_input(folder, scratch):
    """A copy of ``folder`` whose tokenizer AutoTokenizer reads (see the module docstring)."""
    shutil.copytree(folder, scratch)
    path = os.path.join(scratch, "tokenizer_config.json")
    with open(path) as f:
        settings = json.load(f)
    settings["tokenizer_class"] = "BertTokenizer"
    with open(path, "w") as f:
        json.dump(settings, f)
    return scratch


def load_gptq(folder, out_dir):
    import onnx
    import onnxruntime_genai as og

    source = _builder_input(folder, os.path.join(out_dir, "gptq_builder_input"))
    model_dir = os.path.join(out_dir, "og_model")
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", source, "-o", model_dir,
                           "-p", "int4", "-e", "cpu", "-c", os.path.join(out_dir, "og_cache"),
                           "--extra_options", *OG_OPTIONS], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"onnxruntime-genai's builder failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    model = og.Model(model_dir)
    logits = []
    for row in INPUT_IDS:
        real = [t for t in row if t != 0]  # right padding: the real tokens are a prefix
        generator = og.Generator(model, og.GeneratorParams(model))
        generator.append_tokens(np.array([real], dtype=np.int32))
        out = generator.get_output("logits")[0]  # [real, vocab]
        logits.append(np.concatenate([out, np.zeros((len(row) - len(real), out.shape[1]), out.dtype)]))
    np.save(os.path.join(out_dir, "og_logits.npy"), np.stack(logits))  # [b, s, vocab]
    graph = onnx.load(os.path.join(model_dir, "model.onnx"), load_external_data=False).graph
    with open(os.path.join(out_dir, "og_graph.json"), "w") as f:
        json.dump(Counter(node.op_type for node in graph.node), f)


def main(root, cases):
    import compressed_tensors
    import onnxruntime
    import onnxruntime_genai
    import torch
    import transformers

    for case in cases:
        out_dir = os.path.join(root, case)
        if os.path.isdir(os.path.join(out_dir, "compressed-tensors")):
            load_compressed_tensors(os.path.join(out_dir, "compressed-tensors"), out_dir)
        if os.path.isdir(os.path.join(out_dir, "gptq")):
            load_gptq(os.path.join(out_dir, "gptq"), out_dir)
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                      "compressed_tensors": compressed_tensors.__version__,
                      "onnxruntime_genai": onnxruntime_genai.__version__, "onnxruntime": onnxruntime.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
