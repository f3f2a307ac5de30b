#!/usr/bin/env bash
# The GPU check of the fused neurons, as one script for one device call (about 5 minutes on an
# H200): the kernel tests on CUDA, then the benchmark's GPU tables. Results go to $OUT (or ./out).
# Needs the venv with the kernels and bench extras: pip install -e '.[test,bench]' "torch==<pinned>".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
# 1. Correctness: compiled kernels against the reference loop, on the GPU (and the CPU suite of the fused path).
timeout 300 "$PY" -m pytest -q tests/test_fused_triton.py tests/test_fused.py -x 2>&1 | tee "$OUT/gpu_tests.txt"
# 2. Kernel bandwidth and the Open Neuromorphic sizes (Linear + LIF, B=16, T=500, N=4096/8192/16384).
timeout 420 "$PY" benchmarks/neurons.py --full --repeats 5 --sections bw,ff --out "$OUT/neurons_gpu.md" 2>&1 | tail -40
# 3. The recurrent network (placeholder cycle), smaller: it steps T times in Python for every framework.
timeout 300 "$PY" benchmarks/neurons.py --full --repeats 3 --sections rec --out "$OUT/neurons_gpu_rec.md" 2>&1 | tail -20
