#!/usr/bin/env bash
# Re-measure every generated table (README.md and docs/*.md) on this machine, in order, then copy the results
# into those pages (benchmarks/readme_tables.py). About three hours on 2 cores; run it on a quiet
# machine. Each line is also the command the page names next to its table (mostly docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
mkdir -p "$R" runs
ernie-compress --quiet demo --out runs/demo --force
python benchmarks/readme_tables.py --take demo=runs/demo/report.md
python benchmarks/quantization.py runs/demo/teacher --seeds 3 --threads 2 --keep runs/quant-demo \
  --markdown "$R/quantization-demo.md" --json runs/quant-demo.json
ernie-compress --quiet train --task demo:sentiment --preset base --max-steps 1 --batch-size 8 --max-seq-len 32 \
  --out runs/base-1step --overwrite
python benchmarks/quantization.py runs/base-1step --speed-only --threads 2 --rounds 5 --iterations-b1 10 \
  --iterations-b32 3 --calib-samples 64 --keep runs/quant-base --markdown "$R/quantization-base-speed.md" \
  --json runs/quant-base.json
python benchmarks/layer_norm_kernels.py --threads 1,2 --markdown "$R/layer-norm-kernels.md"
ernie-compress --quiet run recipes/ernie45-demo.yaml --out runs/ernie45-demo --force
python benchmarks/readme_tables.py --take ernie45-demo=runs/ernie45-demo/report.md
ernie-compress --quiet run recipes/ner-demo.yaml --out runs/ner-demo --force   # about 2 hours
python benchmarks/readme_tables.py --take ner-demo=runs/ner-demo/report.md
python benchmarks/sentiment_baselines.py --markdown "$R/sentiment-baselines.md"
python benchmarks/decoding.py --rounds 3 --new-tokens 32 --markdown "$R/decoding.md"
python benchmarks/weight_only_quality.py --markdown "$R/weight-only-quality.md"
python benchmarks/kv_cache_quality.py --markdown "$R/kv-cache-quality.md"
python benchmarks/decoder_peers.py --rounds 3 --prompts 128,512,2048 --markdown "$R/decoder-peers.md"   # needs make_reference_venvs.sh
python benchmarks/fused_decoder_ops.py --rounds 5 --markdown "$R/fused-decoder-ops.md"
python benchmarks/search_demo.py --minutes 60 --markdown "$R/search-demo.md"   # about 75 minutes
python benchmarks/search_demo.py --recipe recipes/ner-demo.yaml --minutes 60 --markdown "$R/search-ner.md"   # about 3 hours
# ERNIE 4.5 mixture of experts: one trained ernie45-moe-demo for the quality tables (about 1.5 hours in all)
ernie-compress --quiet train --preset ernie45-moe-demo --task demo:lm --epochs 3 --lr 3e-3 --out runs/moe-demo --overwrite
python benchmarks/weight_only_quality.py --checkpoint runs/moe-demo --variants w8-rtn,w8-gptq,w4-g32-rtn,w4-g32-gptq \
  --workdir runs/moe-woq --markdown "$R/moe-weight-only-quality.md"
python benchmarks/moe_pruning.py --checkpoint runs/moe-demo --experts 0.25 --workdir runs/moe-pruning \
  --markdown "$R/moe-pruning.md"
python benchmarks/moe_distill.py --teacher runs/moe-demo --epochs 1 --workdir runs/moe-distill --markdown "$R/moe-distill.md"
python benchmarks/moe_decoding.py --layers 2 --rounds 3 --markdown "$R/moe-decoding.md"   # 21B-A3B's layer shape, ~14 GB
python benchmarks/interop_counts.py --markdown "$R/interop.md"
# On a GPU machine (onnxruntime-gpu, no Paddle needed), not here: decoding-gpu.md and gpu-runtimes.md
#   python3 benchmarks/decoding.py --device gpu --rounds 3 --new-tokens 32 --markdown "$R/decoding-gpu.md"
#   python3 benchmarks/gpu_runtimes.py measure gpucheck --markdown "$R/gpu-runtimes.md" --log "$R/gpu-runtimes.log"
#   (gpucheck from `python benchmarks/gpu_runtimes.py prepare` here)
# On a many-core host (ONNX Runtime only; layer-norm-kernels-many-core.md, onnx-rewrites-many-core.md):
#   python3 benchmarks/layer_norm_kernels.py --threads 1,2,4,8,16 --rounds 9 --iterations 20 --markdown "$R/layer-norm-kernels-many-core.md"
#   python3 benchmarks/onnx_rewrites.py gpucheck/ernie30-fp32-standard gpucheck/ernie30-int8-standard \
#     --threads 2,4,8,16 --rounds 5 --markdown "$R/onnx-rewrites-many-core.md"
#   (the exports: ernie-compress export runs/demo/teacher|int8 --format onnx --onnx-ops standard --out gpucheck/...)
python benchmarks/readme_tables.py
