#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] — builds the libFuzzer targets with clang (tests/fuzz/
# CMakeLists.txt) and runs each for SECONDS (default 60) from its corpus in tests/fuzz/corpus/.
# Zero crashes, leaks aside (Open MPI and HDF5 keep allocations until exit): any crash,
# sanitizer report or violated property fails, and the input that did it is left in
# $FUZZ_DIR/artifacts/ (default build-fuzz/ in the checkout) (add it to the corpus once fixed). New inputs found go to a scratch
# copy of the corpus, not into the repository. Needs clang-14 and libclang-rt-14-dev (Debian).
set -euo pipefail
secs=${1:-${FUZZ_SECONDS:-60}}
src=$(cd "$(dirname "$0")" && pwd)
# The build lives in the checkout (build-fuzz/, git-ignored) unless FUZZ_DIR says otherwise; a
# build folder left by another checkout is started afresh rather than failing in CMake.
dir=${FUZZ_DIR:-$(cd "$src/../.." && pwd)/build-fuzz}
if [ -f "$dir/build/CMakeCache.txt" ] &&
   ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$dir/build/CMakeCache.txt"; then
  echo "# fuzz: $dir/build was configured for another source tree; starting it afresh"
  rm -rf "$dir/build"
fi
cc=${FUZZ_CC:-$(command -v clang-14 || command -v clang)}
[ -n "$cc" ] || { echo "fuzz: no clang (Debian: apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cmake -S "$src" -B "$dir/build" -DCMAKE_C_COMPILER="$cc" >/dev/null
cmake --build "$dir/build" -j"$(nproc)" >/dev/null
mkdir -p "$dir/artifacts"
status=0
for t in config h5_input ckpt; do
  rm -rf "$dir/corpus-$t" && cp -r "$src/corpus/$t" "$dir/corpus-$t"
  echo "# fuzz_$t: ${secs} s from $(ls "$src/corpus/$t" | wc -l) corpus inputs"
  if ! ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      "$dir/build/fuzz_$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
      -artifact_prefix="$dir/artifacts/$t-" -print_final_stats=1 "$dir/corpus-$t" \
      >"$dir/fuzz_$t.log" 2>&1; then
    echo "FAIL: fuzz_$t found a problem (log $dir/fuzz_$t.log, input in $dir/artifacts/):"
    grep -E "ERROR|property violated|SUMMARY|Test unit written" "$dir/fuzz_$t.log" | head -8
    status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$dir/fuzz_$t.log" |
      tr '\n' ' '
    echo
  fi
done
exit $status
