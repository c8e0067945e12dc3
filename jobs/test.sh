#!/usr/bin/env bash
# jobs/test.sh — builds (installing Debian packages when run as root) and runs the whole CTest
# suite. SR_SANITIZE=1 builds with ASan + UBSan into build-sanitize/ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh
exclude=()
if [ "${SR_SANITIZE:-0}" = 1 ]; then
  dir=build-sanitize
  jobs/build.sh "$dir" -DSR_SANITIZE=ON -DSR_BUILD_BENCH=OFF -DSR_CUDA=OFF
  # Open MPI's own allocations at exit are not ours: leak checking off, everything else on.
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
  # The two-emulated-node tests check Slurm and Open MPI orchestration, not our memory: the
  # plain build runs them.
  exclude=(-LE twonode)
else
  dir=build
  jobs/build.sh "$dir"
fi
ctest --test-dir "$dir" --output-on-failure -j"${SR_TEST_JOBS:-2}" --timeout 300 ${exclude[@]+"${exclude[@]}"}
