#!/usr/bin/env bash
# jobs/demo.sh — builds if needed, then runs the demo: `mpirun -np 4` on configs/demo.yaml
# (Block-Sparse at sparsity 0.9, 16K tokens, synthetic input with sinks, locality, heavy
# hitters and needles), printing the report table. Extra arguments go to sparsering,
# e.g. jobs/demo.sh --set exchange=dense_ring
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh
[ -x build/sparsering ] || jobs/build.sh build
cmake --build build -j"$(nproc)" >/dev/null
exec mpirun -np "${NP:-4}" build/sparsering run -c configs/demo.yaml "$@"
