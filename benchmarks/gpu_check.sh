#!/usr/bin/env bash
# The GPU check, as one script for one device call that ends inside 9 minutes (GPU_CHECK_BUDGET,
# 525 s by default): each part runs under `timeout`, capped by its own limit and by what is left of
# the budget, in this order (a part with under 20 s left is skipped, and said so):
#   1. tests        `pytest tests` (not tests/container) with RNNSIM_TEST_DEVICE=cuda: every server
#                   and session manager the tests create in process runs on CUDA (tests/conftest.py);
#                   pytest-xdist and pytest-timeout are used when the image has them. A few failures
#                   are then rerun serially, to tell a flake under parallel load from a failure.
#   2. serving      benchmarks/serving.py --quick --processes --device cuda
#      closed-loop  benchmarks/serving.py --closed-loop --quick --device cuda
#      batching     benchmarks/batching.py --quick (Stacked against its floors; it has no device flag: the CPU)
#   3. neurons      benchmarks/neurons.py --full: kernel bandwidth and the Open Neuromorphic sizes,
#                   then the recurrent network; it gets what is left (its tables are in the log as
#                   they are printed, the .md files only when a run completes).
# Then a table of what passed or failed and how long each part took ($OUT/summary.txt too).
#
# Prepare here with `bash scripts/gpu_wheels.sh`, then one device call with carry [".whl"]:
#   bash benchmarks/gpu_check.sh
# The image's python3 (3.12, torch, Triton, numpy, pytest) gets the wheels of .whl/ that it lacks or
# holds too old; nothing else is installed. Results, 8 files at most, go to $OUT (or ./out).
# Knobs, for a dry run on the CPU (`GPU_CHECK_DEVICE=cpu GPU_CHECK_TESTS=tests/e2e/test_service.py`)
# or a later call that reruns one part: GPU_CHECK_PARTS (default "tests serving closed-loop batching
# neurons"), GPU_CHECK_TESTS (default "tests"), GPU_CHECK_WORKERS (xdist workers, 8), PY.
set -uo pipefail  # no -e: a failing part is recorded and the next one runs
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT="$PWD"
BUDGET="${GPU_CHECK_BUDGET:-525}"
DEADLINE=$((SECONDS + BUDGET))
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PARTS=" ${GPU_CHECK_PARTS-tests serving closed-loop batching neurons} "
read -r -a TESTS <<<"${GPU_CHECK_TESTS:-tests}"
WORKERS="${GPU_CHECK_WORKERS:-8}"
PY="${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-out}"
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
: >"$SUMMARY"
ROWS=()
FAILED=0
PYTEST_TOTALS='^=* ?[0-9]+ [a-z]+.* in [0-9.]+s'
RESERVE=0  # seconds of the budget that part() leaves to the parts after it

row() {  # row PART RESULT SECONDS [NOTE]: a line of the final table
  ROWS+=("| $1 | $2 | $3 | ${4:-} |")
  case "$2" in passed | skipped*) ;; *) FAILED=1 ;; esac
}

part() {  # part NAME CAP LOG CMD...: CMD under timeout (CAP, or less if the budget is running out), output to $OUT/LOG
  local name="$1" cap="$2" log="$OUT/$3" began=$SECONDS left limit rc result note
  shift 3
  left=$((DEADLINE - RESERVE - SECONDS - 10))
  limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    echo "== $name: skipped, ${left} s left of the ${BUDGET} s budget" | tee -a "$log"
    row "$name" "skipped (no time left)" 0
    return 0
  fi
  echo "== $name: $* (timeout ${limit} s)" | tee -a "$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) result=passed ;;
    124 | 137) result="TIMED OUT (${limit} s)" ;;
    *) result="FAILED (exit $rc)" ;;
  esac
  note=""
  if [[ "$name" == tests* ]]; then  # pytest's last line, "2 failed, 1890 passed, 31 skipped in 140.20s"
    note="$(grep -E "$PYTEST_TOTALS" "$log" | tail -1 | tr -d '=')"
  fi
  row "$name" "$result" $((SECONDS - began)) "$note"
  return "$rc"
}

wants() { [[ "$PARTS" == *" $1 "* ]]; }

# -- setup: the wheels the image lacks, into its python3's environment (it is the device's own) ------
began=$SECONDS
setup="passed"
if [ -d .whl ] && [ "$PY" != .venv/bin/python ] && [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
  install() {  # pip install from .whl only, its messages to the summary too
    timeout 120 "$PY" -m pip install -q --no-index --no-cache-dir --no-compile --disable-pip-version-check "$@" 2>&1 |
      tee -a "$SUMMARY"
    return "${PIPESTATUS[0]}"
  }
  into=()
  # Only what is missing, or older than .whl/requirements.txt asks for, is installed; the rest stays.
  if ! install --find-links .whl -r .whl/requirements.txt; then
    echo "installing into $PY's environment failed: into /tmp/site instead, on PYTHONPATH" | tee -a "$SUMMARY"
    into=(--target /tmp/site)
    install --find-links .whl "${into[@]}" -r .whl/requirements.txt || setup="FAILED (pip)"
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  if compgen -G ".whl/peers/*.whl" >/dev/null; then
    install --no-deps ${into[@]+"${into[@]}"} .whl/peers/*.whl || setup="FAILED (pip, peers)"
  fi
  if compgen -G ".whl/original/*.whl" >/dev/null; then
    install --no-deps --target /tmp/rnnbuilder-original .whl/original/*.whl || setup="FAILED (pip, original)"
  fi
fi
if [ -z "${RNNBUILDER_ORIGINAL:-}" ] && [ "$PY" != .venv/bin/python ]; then
  # The oracle of tests/original.py; with no wheel, an empty folder makes its tests skip at once
  # (instead of each pytest worker asking PyPI, unreachable there).
  mkdir -p /tmp/rnnbuilder-original
  export RNNBUILDER_ORIGINAL=/tmp/rnnbuilder-original
fi
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.mem,driver_version --format=csv 2>&1 || true
  "$PY" - <<'EOF' 2>&1 || true
import importlib.metadata as metadata, sys, torch

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"

names = "torch triton numpy grpcio protobuf grpcio-tools hypothesis pytest pytest-xdist pytest-timeout".split()
print("python", sys.version.split()[0], sys.executable)
print(", ".join(f"{name} {version(name)}" for name in names))
print("cuda:", torch.cuda.get_device_name() if torch.cuda.is_available() else "not available")
EOF
} | tee -a "$SUMMARY"
row setup "$setup" $((SECONDS - began)) "${RNNBUILDER_ORIGINAL:+RNNBUILDER_ORIGINAL=$RNNBUILDER_ORIGINAL}"

# -- 1. the test suite, its servers on the GPU -------------------------------------------------------
if wants tests; then
  pytest_run=(env RNNSIM_TEST_DEVICE="$DEVICE" "$PY" -m pytest "${TESTS[@]}" --ignore=tests/container
    -o cache_dir=/tmp/gpu-check-pytest-cache -ra --durations=15)
  parallel=()
  if "$PY" -c "import xdist" 2>/dev/null && ((WORKERS > 1)); then
    # A module stays on one worker (its shared server too); 2 torch threads each on 16 cores.
    parallel=(-n "$WORKERS" --dist loadfile)
    pytest_run=(env OMP_NUM_THREADS=2 "${pytest_run[@]}")
  fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    pytest_run+=(--timeout 150)  # one hung test fails alone instead of eating the budget
  fi
  part tests 240 tests.txt "${pytest_run[@]}" ${parallel[@]+"${parallel[@]}"}
  rc=$?
  failed=$(grep -E "$PYTEST_TOTALS" "$OUT/tests.txt" | tail -1 | grep -oE '[0-9]+ (failed|errors?)' |
    awk '{n += $1} END {print n + 0}')
  if [ "$rc" = 1 ] && ((failed >= 1 && failed <= 20 && DEADLINE - SECONDS > 300)); then
    part "tests: the failures again, serially" 60 tests.txt "${pytest_run[@]}" --last-failed
  fi
fi

# -- 2. serving and batching benchmarks on the GPU --------------------------------------------------
if wants serving; then
  part "serving --quick --processes" 120 serving_processes.txt \
    "$PY" benchmarks/serving.py --quick --processes --device "$DEVICE"
fi
if wants closed-loop; then
  part "serving --closed-loop --quick" 150 serving_closed_loop.txt \
    "$PY" benchmarks/serving.py --closed-loop --quick --device "$DEVICE"
fi
if wants batching; then
  part "batching --quick" 90 batching.txt "$PY" benchmarks/batching.py --quick
fi

# -- 3. the neuron benchmark (kernel bandwidth, Open Neuromorphic sizes, then the recurrent network) -
if wants neurons; then
  # Linear + LIF, B=16, T=500, N=4096/8192/16384, and the kernel's bandwidth; 60 s kept for rec
  # unless that would leave this part (the H200 goals) under 3 minutes.
  RESERVE=$((DEADLINE - SECONDS > 240 ? 60 : 0))
  part "neurons --sections bw,ff" 420 neurons.txt \
    "$PY" benchmarks/neurons.py --full --repeats 5 --sections bw,ff --device "$DEVICE" --out "$OUT/neurons_gpu.md"
  # The placeholder cycle against the same ops by hand, as CUDA graphs, and the peers: T Python steps each.
  RESERVE=0
  part "neurons --sections rec" 300 neurons.txt \
    "$PY" benchmarks/neurons.py --full --repeats 3 --sections rec --device "$DEVICE" --out "$OUT/neurons_gpu_rec.md"
fi

{
  echo
  echo "gpu_check.sh on ${DEVICE}, $((SECONDS)) s of the ${BUDGET} s budget; logs in $OUT"
  echo
  echo "| part | result | seconds | notes |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$SUMMARY"
exit "$FAILED"
