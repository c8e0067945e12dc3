#!/usr/bin/env bash
# fault_signal.sh — SIGUSR1 / SIGTERM stop a run at the next layer boundary on every rank, with
# the checkpoint written, exit code 75 and one line saying how to resume; the resumed result is
# identical to an uninterrupted run.
#   - SIGUSR1 to mpirun (it forwards SIGUSR1 to every rank: Slurm's --signal=B:USR1 path);
#   - SIGTERM to the ranks themselves (what srun / Slurm deliver to the tasks);
#   - SIGUSR1 to one rank only: the others learn it at the boundary and stop with it.
# Every wait is for an event, never a guessed sleep (which failed about half the time on a
# loaded 2-core machine: MPI start-up alone can take longer than the sleep): each rank stops at
# the start of layer 1 (SR_TEST_HOLD=unit_start:1, after layer 0 was computed and written) and
# says so with a marker file sr_hold.<rank>; the test signals only once both markers exist. A
# rank leaves the hold when its signal has arrived (its marker goes) or when the test removes
# its marker; the run then stops at the boundary before layer 2 with layers 0 and 1 kept.
. "$(dirname "$0")/fault_lib.sh"

reference --resume
rm -rf out.h5 out.h5.partial.d

# start: the run in the background, held at the start of layer 1 on every rank; sets $pid
# (timeout), $mp (mpirun) and rank_pid[r] (from the markers: the process of rank r).
start() {
  rm -rf out.h5 out.h5.partial.d sr_hold.*
  SR_TEST_HOLD=unit_start:1 timeout -k 5 120 "$MPIEXEC" -np "$NP" "$SR_BIN" "${ARGS[@]}" \
    --resume -o out.h5 >"$LOG/out.txt" 2>"$LOG/err.txt" &
  pid=$!
  local r
  rank_pid=()
  for ((r = 0; r < NP; r++)); do
    wait_for 60 "$pid" "hold marker of rank $r" test -e "sr_hold.$r"
    read -r rank_pid[r] <"sr_hold.$r" || fail "unreadable marker sr_hold.$r"
  done
  mp=$(children_of "$pid" | head -1)
  [ -n "$mp" ] || fail "mpirun not found"
  for r in "${rank_pid[@]}"; do
    [ "$(children_of "$mp" | grep -cx "$r")" -eq 1 ] || fail "rank process $r is not under mpirun $mp"
  done
}
# released R...: waits until each rank R has left its hold (its signal arrived).
released() {
  local r
  for r in "$@"; do wait_for 60 "$pid" "release of rank $r by its signal" test ! -e "sr_hold.$r"; done
}
finish() {
  wait "$pid"
  local rc=$?
  [ $rc -eq 75 ] || fail "$1: exit $rc, expected 75"
  grep -Eq "^sparsering: interrupted by $2 before layer 2 of 4: checkpoint of 2 layers kept in out.h5.partial.d \(run again with --resume\)" "$LOG/err.txt" ||
    fail "$1: no interruption line: $(grep sparsering "$LOG/err.txt" | head -2)"
  [ "$(grep -c '^sparsering: ' "$LOG/err.txt")" -eq 1 ] || fail "$1: expected one line from rank 0"
  [ -f out.h5.partial.d/manifest.json ] || fail "$1: no checkpoint"
  [ -e out.h5 ] && fail "$1: output published by an interrupted run"
  ls sr_hold.* >/dev/null 2>&1 && fail "$1: a hold marker was left"
  ok "$1: $(grep '^sparsering: ' "$LOG/err.txt")"
}

start
kill -USR1 "$mp"
finish "SIGUSR1 to mpirun" SIGUSR1
run --resume -o out.h5 || fail "resume after SIGUSR1 failed (exit $?)"
same "stopped by SIGUSR1, resumed" --bytes

start
kill -TERM "${rank_pid[@]}"
finish "SIGTERM to every rank" SIGTERM

start
kill -USR1 "${rank_pid[1]}"
released 1       # rank 1 has its signal...
rm -f sr_hold.0  # ...then rank 0 goes on without one and learns it at the boundary
finish "SIGUSR1 to rank 1 only" SIGUSR1
run --resume -o out.h5 || fail "resume after the signals failed (exit $?)"
same "stopped by SIGUSR1 on one rank, resumed" --bytes
echo "PASS"
