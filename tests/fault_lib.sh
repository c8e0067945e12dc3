# tests/fault_lib.sh — sourced by the fault tests (tests/fault_*.sh, label `fault`).
#
# Environment (set by tests/fault.cmake): SR_BIN (the sparsering CLI), SR_CMP (fault_cmp),
# MPIEXEC. Each test works in a fresh directory `run` below its working directory. The run is
# small (4 layers of 2048 tokens on 2 ranks, a fraction of a second) so that a test can afford
# many of them; every mpirun has a time limit, so a hang fails the test instead of stalling CI.
#
# Every run writes out.h5 in the working directory: the output path is part of the config that
# the file stores, so the uninterrupted reference is made at the same path and moved aside.
# SR_TEST_FIXED_TIMES=1 writes times as 0, which makes the files comparable byte for byte.
set -u
# A fresh directory for every run of a test (nothing left from an earlier one).
mountpoint -q run/small 2>/dev/null && umount run/small
rm -rf run && mkdir run && cd run || exit 1
NP=${NP:-2}
ARGS=(--set seq_len=2048 --set model.layers=4 --set model.q_heads=4 --set model.kv_heads=2
      --set verify.rows=4 --set threads=1 -q)
export SR_TEST_FIXED_TIMES=1
unset SR_TEST_CRASH SR_TEST_DELAY_MS SR_TEST_HOLD

fail() {
  echo "FAIL: $*"
  [ -s "$LOG/err.txt" ] && { echo "--- err.txt:"; tail -5 "$LOG/err.txt"; }
  exit 1
}
ok() { echo "ok: $*"; }

# Logs of the last run: $LOG/out.txt and $LOG/err.txt (LOG: another directory when the working
# directory may be full).
LOG=${LOG:-$PWD}

# run [sparsering args...]: the CLI on NP ranks with a 60 s limit; stderr in err.txt; returns
# the exit code (124 = timed out).
run() {
  timeout -k 5 "${LIMIT:-60}" "$MPIEXEC" -np "$NP" "$SR_BIN" "${ARGS[@]}" "$@" >"$LOG/out.txt" \
    2>"$LOG/err.txt"
}

# The one "sparsering: error:" line of err.txt.
errline() { grep '^sparsering: error: ' "$LOG/err.txt"; }

# expect_fail CODE REGEX [args...]: the run exits CODE with one error line matching REGEX.
expect_fail() {
  local want=$1 re=$2
  shift 2
  run "$@"
  local rc=$?
  [ $rc -eq 124 ] && fail "hang: $*"
  [ $rc -eq "$want" ] || fail "exit $rc, expected $want: $*"
  [ "$(grep -c '^sparsering: error: ' "$LOG/err.txt")" -eq 1 ] || fail "expected one error line: $*"
  errline | grep -Eq -- "$re" || fail "message does not match /$re/: $(errline)"
  ok "exit $rc: $(errline | cut -c1-160)"
}

# The uninterrupted run whose result every test compares against: ref.h5.
reference() {
  rm -rf out.h5 out.h5.partial.d
  run "$@" -o out.h5 || fail "reference run failed (exit $?)"
  mv out.h5 ref.h5
}

# same WHAT [--bytes]: out.h5 equals ref.h5 (datasets, config and attributes bit for bit).
same() {
  local what=$1
  shift
  "$SR_CMP" ref.h5 out.h5 "$@" >cmp.txt || fail "$what: $(cat cmp.txt)"
  ok "$what: $(cat cmp.txt)"
}

# The PIDs of the children of process $1 (from /proc: no procps needed), e.g. the ranks of an
# mpirun, or the mpirun under a `timeout`.
children_of() {
  local want=$1 st rest
  for st in /proc/[0-9]*/stat; do
    read -r rest <"$st" 2>/dev/null || continue
    rest=${rest##*) } # the fields after "pid (comm) ": state ppid ...
    set -- $rest
    [ "${2:-}" = "$want" ] && { st=${st#/proc/}; echo "${st%/stat}"; }
  done
}
ranks_of() { children_of "$1"; }

# wait_for SECONDS PID WHAT COMMAND...: waits until COMMAND succeeds (an event: a file appears
# or goes, a line is printed), polling; fails the test when process PID (the run in the
# background) ends first, or after SECONDS (a generous bound against a hang, not a timing
# assumption: on a quiet machine the event comes in well under a second).
wait_for() {
  local limit=$1 pid=$2 what=$3 i
  shift 3
  for ((i = 0; i < limit * 20; i++)); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || { "$@" && return 0; fail "the run ended before: $what"; }
    sleep 0.05
  done
  fail "no $what after $limit s"
}

# unit_field L DATASET KEY: a field (offset, bytes) of a dataset of layer L's unit file.
unit_field() {
  awk -v ds="\"$2\"" -v key="\"$3\":" '
    $1 == "\"name\":" { cur = $2; sub(/,$/, "", cur) }
    $1 == key && cur == ds { v = $2; sub(/,$/, "", v); print v; exit }
  ' "out.h5.partial.d/unit-$(printf %06d "$1").json"
}

# A Python with h5py and numpy for tools/make_input_h5.py, or nothing.
h5py_python() {
  for py in /usr/bin/python3 python3; do
    "$py" -c 'import h5py, numpy' 2>/dev/null && { echo "$py"; return; }
  done
}
