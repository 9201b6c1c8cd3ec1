#!/usr/bin/env bash
# Build the llama.cpp reference venv for the GGUF interop test (tests/interop/test_llama_cpp.py):
#   $CACHE/llama-cpp   llama-cpp-python 0.3.36 (vendors a llama.cpp with the ernie4_5 and
#                      ernie4_5-moe architectures), compiled from the sdist for the CPU
# GGML_NATIVE=OFF compiles for a fixed x86-64 baseline (SSE4.2, AVX, AVX2, FMA, F16C, BMI2; no
# AVX-512), so the cached build runs on every AVX2 machine, not only the one that built it; the
# multimodal (llava/mtmd) library is left out. A cold build compiles llama.cpp: 17 minutes (1004 s wall,
# 7.5 min CPU) on a shared 2-core machine, about 150 MB; it lives outside the clone, in CACHE (ERNIE_COMPRESS_VENV_CACHE,
# default ~/.cache/ernie-compress/venvs), where tests/interop/helpers.py looks for it. Re-running
# skips a venv that already loads the library; two runs on one machine: the second waits.
set -euo pipefail
PY=${PYTHON:-python3}
CACHE=${ERNIE_COMPRESS_VENV_CACHE:-~/.cache/ernie-compress/venvs}  # ~: also without HOME set
venv="$CACHE/llama-cpp"
check="import llama_cpp
assert llama_cpp.__version__ == '0.3.36', llama_cpp.__version__
llama_cpp.llama_backend_init()"
mkdir -p "$CACHE"
exec 9>"$CACHE/llama-cpp.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "reference venv $venv: ready (cached)"; exit 0
fi
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
start=$(date +%s)
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$venv/bin/python" -m pip install -q --no-binary llama-cpp-python "llama-cpp-python==0.3.36" "numpy<2.4"
"$venv/bin/python" -c "$check"
echo "reference venv $venv: built in $(( $(date +%s) - start )) s"
