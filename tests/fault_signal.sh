#!/usr/bin/env bash
# fault_signal.sh — SIGUSR1 / SIGTERM stop a run at the next layer boundary on every rank, with
# the checkpoint written, exit code 75 and one line saying how to resume; the resumed result is
# identical to an uninterrupted run.
#   - SIGUSR1 to mpirun (it forwards SIGUSR1 to every rank: Slurm's --signal=B:USR1 path);
#   - SIGTERM to the ranks themselves (what srun / Slurm deliver to the tasks);
#   - SIGUSR1 to one rank only: the others learn it at the boundary and stop with it.
. "$(dirname "$0")/fault_lib.sh"

reference --resume
rm -rf out.h5 out.h5.partial.d

# start: the run in the background with slow layers; sets $pid (timeout) and $mp (mpirun).
start() {
  rm -rf out.h5 out.h5.partial.d
  SR_TEST_DELAY_MS=60 timeout -k 5 60 "$MPIEXEC" -np "$NP" "$SR_BIN" "${ARGS[@]}" --resume \
    -o out.h5 >"$LOG/out.txt" 2>"$LOG/err.txt" &
  pid=$!
  sleep "$1"
  mp=$(children_of "$pid" | head -1)
  [ -n "$mp" ] || fail "mpirun not found"
}
finish() {
  wait "$pid"
  local rc=$?
  [ $rc -eq 75 ] || fail "$1: exit $rc, expected 75"
  grep -Eq "^sparsering: interrupted by $2 before layer [0-9]+ of 4: checkpoint of [0-9]+ layers? kept in out.h5.partial.d \(run again with --resume\)" "$LOG/err.txt" ||
    fail "$1: no interruption line: $(grep sparsering "$LOG/err.txt" | head -2)"
  [ "$(grep -c '^sparsering: ' "$LOG/err.txt")" -eq 1 ] || fail "$1: expected one line from rank 0"
  [ -f out.h5.partial.d/manifest.json ] || fail "$1: no checkpoint"
  [ -e out.h5 ] && fail "$1: output published by an interrupted run"
  ok "$1: $(grep '^sparsering: ' "$LOG/err.txt")"
}

# Each case starts from nothing and is signalled during layer 0 or 1 (layers last ~0.5 s).
start 0.7
kill -USR1 "$mp"
finish "SIGUSR1 to mpirun" SIGUSR1
run --resume -o out.h5 || fail "resume after SIGUSR1 failed (exit $?)"
same "stopped by SIGUSR1, resumed" --bytes

start 0.7
kill -TERM $(ranks_of "$mp")
finish "SIGTERM to every rank" SIGTERM

start 0.7
set -- $(ranks_of "$mp")
kill -USR1 "$2"
finish "SIGUSR1 to rank 1 only" SIGUSR1
run --resume -o out.h5 || fail "resume after the signals failed (exit $?)"
same "stopped by SIGUSR1 on one rank, resumed" --bytes
echo "PASS"
