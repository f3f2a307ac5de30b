#!/usr/bin/env bash
# Fills .whl/ with what benchmarks/gpu_check.sh needs and the H200 image lacks: the benchmark's
# peers (all pure Python, pinned to the versions of the CPU tables), built here where pip can
# reach an index. Then: device run `bash benchmarks/gpu_check.sh` with carry [".whl"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps -d .whl \
  snntorch==1.0.0 norse==1.1.0 nir==1.0.8 nirtorch==2.6 spikingjelly==2.0.0 loguru==0.7.3
for sdist in .whl/*.tar.gz; do  # norse is published as an sdist; it builds to a pure-Python wheel
  [ -e "$sdist" ] || continue
  python3 -m pip wheel -q --no-deps -w .whl "$sdist"
  rm "$sdist"
done
ls -1 .whl
