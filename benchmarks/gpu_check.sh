#!/usr/bin/env bash
# The GPU check of the fused neurons and placeholder cycles, as one script for one device call
# (about 6 minutes on an H200): the kernel tests on CUDA, then the benchmark's GPU tables. Results
# go to $OUT (or ./out). Prepare here with `bash scripts/gpu_wheels.sh`, then run it there with
# carry [".whl"]: the image's python3 has torch, Triton, pytest and numpy; the wheels add the peers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
PY="${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-out}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# 1. Correctness: compiled kernels against the reference loop, on the GPU, and the fused path's CPU
#    suite. --noconftest: the shared fixtures import the server, whose gRPC extras the image lacks.
timeout 300 "$PY" -m pytest -q -p no:cacheprovider --noconftest tests/library/test_fused_triton.py tests/library/test_fused.py \
  2>&1 | tee "$OUT/gpu_tests.txt" || true
# 2. Kernel bandwidth and the Open Neuromorphic sizes (Linear + LIF, B=16, T=500, N=4096/8192/16384).
timeout 420 "$PY" benchmarks/neurons.py --full --repeats 5 --sections bw,ff --out "$OUT/neurons_gpu.md" 2>&1 | tail -40
# 3. The recurrent network (placeholder cycle against the same ops by hand, the same ops with each
#    step one CUDA graph, and the peers), smaller: it steps T times in Python for every framework.
timeout 300 "$PY" benchmarks/neurons.py --full --repeats 3 --sections rec --out "$OUT/neurons_gpu_rec.md" 2>&1 | tail -20
