#!/usr/bin/env bash
# jobs/build.sh [BUILD_DIR] [extra cmake args...] — configure and build (Release) if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
"$PWD/jobs/deps.sh"
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null
echo "# built $dir/sparsering"
