#!/usr/bin/env bash
# Build the reference libraries' virtual environments for the interop tests (tests/interop/):
#   .venvs/paddlenlp      paddlepaddle 3.3.1 + PaddleNLP 2.8.1      (ERNIE 3.0)
#   .venvs/paddleformers  paddlepaddle 3.3.1 + PaddleFormers 1.2.0  (ERNIE 4.5)
#   $CACHE/transformers   PyTorch 2.13.0 + transformers 5.0-5.3      (ERNIE 4.5 dense and MoE, the math reference)
#                         + compressed-tensors 0.20.1, onnxruntime-genai 0.18.0 (pre-quantized exports)
#   $CACHE/llama-cpp      llama-cpp-python 0.3.36, built from source   (GGUF; make_llama_cpp_venv.sh)
# They pin conflicting helper packages (aistudio-sdk, huggingface_hub), hence one venv each; the two
# Paddle libraries are installed with --no-deps plus the imports they really need (their full
# dependency sets pull GPU and web-serving stacks). Re-running skips a venv that already imports its
# library (the transformers one: the pinned versions, and torch computes).
# The transformers venv (about 1.2 GB; a cold build takes about a minute where pip finds the
# CPU-only torch 2.13.0 wheel on this machine's disk, several GB of CUDA wheels elsewhere) lives
# outside the clone, in CACHE (ERNIE_COMPRESS_VENV_CACHE, default ~/.cache/ernie-compress/venvs),
# so CI runs on the same machine reuse it; tests/interop/helpers.py looks for it there.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ERNIE_COMPRESS_REFERENCE_VENVS:-.venvs}
PY=${PYTHON:-python3}
CACHE=${ERNIE_COMPRESS_VENV_CACHE:-~/.cache/ernie-compress/venvs}  # ~: also without HOME set

make_venv() {  # name, import check, then pip arguments
  local name=$1 check=$2; shift 2
  local venv="$ROOT/$name"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "reference venv $venv: ready"; return
  fi
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "paddlepaddle==3.3.1" "numpy<2.4" safetensors
  "$@"
  "$venv/bin/python" -c "$check"
  echo "reference venv $venv: built"
}

make_venv paddlenlp "import paddlenlp.transformers as t; t.ErnieForSequenceClassification" bash -c "
  '$ROOT/paddlenlp/bin/python' -m pip install -q --no-deps paddlenlp==2.8.1 &&
  '$ROOT/paddlenlp/bin/python' -m pip install -q colorlog jinja2 jieba scipy regex seqeval fastapi \
      'aistudio-sdk<0.3' 'datasets>=2.19,<3.1' 'huggingface_hub<0.26' sentencepiece protobuf tqdm dill multiprocess"
make_venv paddleformers "from paddleformers.transformers import Ernie4_5ForCausalLM" bash -c "
  '$ROOT/paddleformers/bin/python' -m pip install -q --no-deps paddleformers==1.2.0 &&
  '$ROOT/paddleformers/bin/python' -m pip install -q colorlog regex jinja2 omegaconf orjson importlib_metadata ml_dtypes \
      'transformers>=5.0.0,<5.4.0' 'aistudio-sdk>=0.3.0' sentencepiece protobuf tqdm"

# PyTorch's CUDA build (torch 2.14.1 here) does not import without its nvidia-* packages
# (libcudnn.so.9), so the CPU-only 2.13.0 is pinned; pip takes it from this machine's disk.
make_cached_transformers_venv() {
  local venv="$CACHE/transformers"
  local check="import torch, transformers
from transformers import Ernie4_5ForCausalLM, Ernie4_5_MoeForCausalLM
assert (5, 0) <= tuple(int(v) for v in transformers.__version__.split('.')[:2]) < (5, 4), transformers.__version__
assert float(torch.ones(2) @ torch.ones(2)) == 2.0"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/transformers.lock"
  flock 9  # two runs on one machine: the second waits, then finds the venv ready
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "reference venv $venv: ready (cached)"
  else
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "torch==2.13.0" "numpy<2.4" safetensors "transformers>=5.0.0,<5.4.0"
    "$venv/bin/python" -c "$check"
    echo "reference venv $venv: built"
  fi
  add_prequantized_loaders "$venv"
  exec 9>&-
}

# The loaders of our pre-quantized exports (test_prequantized.py), added to the transformers venv
# (they need its PyTorch and transformers): compressed-tensors (transformers' pack-quantized
# loader) and onnxruntime-genai with its model builder (GPTQ), pinned; torch, transformers and numpy
# are held where they are.
add_prequantized_loaders() {
  local venv=$1
  local check="import compressed_tensors, onnxruntime_genai, onnxruntime, onnx_ir
assert compressed_tensors.__version__.startswith('0.20.1'), compressed_tensors.__version__
assert onnxruntime_genai.__version__ == '0.18.0' and onnxruntime.__version__ == '1.32.0'"
  if "$venv/bin/python" -c "$check" >/dev/null 2>&1; then return; fi
  "$venv/bin/python" -m pip install -q "compressed-tensors==0.20.1" "onnxruntime-genai==0.18.0" "onnxruntime==1.32.0" \
      "onnx-ir==1.1.0" "onnx==1.23.2" "torch==2.13.0" "numpy<2.4" "transformers>=5.0.0,<5.4.0"
  "$venv/bin/python" -c "$check"
  echo "reference venv $venv: pre-quantized loaders added"
}
make_cached_transformers_venv
# llama.cpp for the GGUF export (tests/interop/test_llama_cpp.py): compiled from source, its own script
bash tests/interop/make_llama_cpp_venv.sh
