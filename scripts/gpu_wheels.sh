#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what benchmarks/gpu_check.sh needs and the GPU image lacks, for its
# Python 3.12 on x86-64 Linux, built here where pip can reach an index; the device has no network.
# Then: one device call `bash benchmarks/gpu_check.sh` with carry [".whl"] (about 40 MB of 64 MiB).
#
#   .whl/*.whl             the runtime and test dependencies the image lacks or may hold too old:
#                          cp312 manylinux / pure-Python wheels with their dependencies, at the
#                          versions of this project's .venv (pip freeze)
#   .whl/requirements.txt  what gpu_check.sh installs from them (`pip install --no-index`): floors
#                          for packages the image has (kept when new enough), pins for the rest
#   .whl/peers/            the peers of benchmarks/neurons.py (pure Python, installed --no-deps)
#   .whl/original/         rnnbuilder 0.1.1 from PyPI, the oracle of tests/original.py
#
# The image (/work/.library/device/KINDS.md) already has torch, triton, numpy, scipy, scikit-learn,
# matplotlib, pyyaml, tqdm, pytest (with xdist and timeout) and versions of grpcio, protobuf,
# hypothesis and prometheus-client that may be older than ours.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_PIP="${VENV_PIP:-.venv/bin/pip}"
PIP=(python3 -m pip --disable-pip-version-check)
# Wheels for the device's interpreter, not this one.
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

rm -rf .whl && mkdir -p .whl/peers .whl/original
# The versions of this venv, as constraints (torch and the editable project itself excluded).
"$VENV_PIP" freeze --exclude-editable | grep -Ev '^(#|-e |torch==)' >.whl/constraints.txt

# Floors (pyproject.toml and the generated code's needs) where the image has a copy; pins elsewhere.
pin() { grep -i "^$1==" .whl/constraints.txt || { echo "$1 is not in .venv" >&2; exit 1; }; }
{
  echo "grpcio>=1.85.1"         # rnnbuilder_sim/v1/simulator_pb2_grpc.py needs grpcio>=1.85.1
  echo "protobuf>=7.35.1"       # simulator_pb2.py is gencode for protobuf 7.35.1
  echo "prometheus-client>=0.20"
  echo "hypothesis>=6.100"
  for name in grpcio-status grpcio-health-checking grpcio-reflection grpcio-tools googleapis-common-protos \
    python-json-logger kubernetes-validate; do
    pin "$name"
  done
} >.whl/requirements.txt

# With their dependencies (what the image has is skipped there), at this venv's versions.
"${PIP[@]}" download -q "${TARGET[@]}" -c .whl/constraints.txt -d .whl -r .whl/requirements.txt

# The neuron benchmark's peers, pinned to the versions of the CPU tables; norse is only an sdist,
# which builds to a pure-Python wheel.
"${PIP[@]}" download -q --no-deps -d .whl/peers \
  snntorch==1.0.0 norse==1.1.0 nir==1.0.8 nirtorch==2.6 spikingjelly==2.0.0 loguru==0.7.3
for sdist in .whl/peers/*.tar.gz; do
  [ -e "$sdist" ] || continue
  "${PIP[@]}" wheel -q --no-deps -w .whl/peers "$sdist"
  rm "$sdist"
done
"${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d .whl/original rnnbuilder==0.1.1

for wheel in .whl/*.whl .whl/peers/*.whl; do  # everything must install on CPython 3.12, x86-64 Linux
  case "$wheel" in
    *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-*manylinux*x86_64*.whl | *-abi3-*manylinux*x86_64*.whl) ;;
    *) echo "not for CPython 3.12 on x86-64 Linux: $wheel" >&2; exit 1 ;;
  esac
done
(cd .whl && printf "%s\n" ./*.whl peers/*.whl original/*.whl | sed "s|^\./||")
du -sh .whl
