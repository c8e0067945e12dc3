#!/usr/bin/env bash
# fault_decode.sh [quest|snapkv|signal] — the checkpoint of decode runs (attention.phase: decode, 3 layers on 2 ranks,
# CPU backend): kill -9 in the middle of a layer's decode steps (SR_TEST_CRASH=decode_mid:L,
# every rank, or decode_mid:L:R, one rank), then --resume: the final file is identical byte for
# byte to an uninterrupted run; quest (the default: per-step page selections) also checks that
# two uninterrupted runs are byte-identical; snapkv: the same crashes (kept tokens). signal
# (quest): SIGTERM to every rank while it is held in the middle of layer 1's steps
# (SR_TEST_HOLD=decode_mid:1): the run finishes layer 1, stops at the boundary before layer 2
# with exit 75, two layers kept and one line, and the resume is identical byte for byte.
# tests/fault_decode.cmake runs the three as separate tests (each about 15 s on 2 cores).
#
# Every comparison is made twice: fault_cmp without --bytes (datasets and attributes bit for bit,
# the timing attributes time_s and metrics_json aside) must pass at once; a --bytes difference
# is collected and fails the test at the end, so that one cause (e.g. a time that
# SR_TEST_FIXED_TIMES leaves in metrics_json) does not hide the rest. The first check is that
# two uninterrupted runs are byte-identical at all.
mode=${1:-quest}
method=$mode
[ "$mode" = signal ] && method=quest
. "$(dirname "$0")/fault_lib.sh"

byte_fail=()
# same_dec WHAT: out.h5 equals ref.h5 as a result (else fail now) and byte for byte (else noted).
same_dec() {
  same "$1"
  if "$SR_CMP" ref.h5 out.h5 --bytes >cmp.txt; then
    ok "$1 (byte for byte)"
  else
    echo "NOT BYTE-IDENTICAL: $1: $(cat cmp.txt)"
    byte_fail+=("$1")
  fi
}

# The decode config: 2048 tokens of prompt (4 chunks of 512 = 32 pages each), 24 steps of 2
# sequences (decode pages 0 and 1: one per rank), verification on.
base=(--set backend=cpu --set attention.phase=decode --set seq_len=2048 --set model.layers=3
      --set model.q_heads=4 --set model.kv_heads=2 --set attention.sparsity=0.9
      --set decode.steps=24 --set decode.batch=2 --set verify.rows=4 --set threads=1 -q)

# crash_resume POINT: killed at POINT, nothing published, resumed: identical bytes.
crash_resume() {
  local p=$1
  rm -rf out.h5 out.h5.partial.d
  SR_TEST_CRASH=$p run --resume -o out.h5
  local rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "$method $p: the run was not killed (exit $rc)"
  grep -q "test failpoint decode_mid" "$LOG/err.txt" || fail "$method $p: the failpoint did not fire"
  [ -e out.h5 ] && fail "$method $p: out.h5 exists after a crash before the commit"
  run --resume -o out.h5 || fail "$method $p: resume failed (exit $?)"
  [ -e out.h5.partial.d ] && fail "$method $p: checkpoint directory left after success"
  same_dec "$method: crash at $p, resumed"
}

ARGS=("${base[@]}" --set attention.method=$method)
reference --resume
if [ "$mode" = quest ]; then
  # Two uninterrupted runs with SR_TEST_FIXED_TIMES=1 must already be identical byte for byte
  # (when not, the differing metrics_json lines are shown).
  run --resume -o out.h5 || fail "second reference run failed (exit $?)"
  same_dec "$method: two uninterrupted runs"
  if [ ${#byte_fail[@]} -gt 0 ] && command -v h5dump >/dev/null; then
    diff <(h5dump -A ref.h5 2>/dev/null | grep -E '"[a-z_]+":') \
         <(h5dump -A out.h5 2>/dev/null | grep -E '"[a-z_]+":') | grep '^[<>]' | head -4
  fi
fi
finish() {
  if [ ${#byte_fail[@]} -gt 0 ]; then
    printf 'FAIL: not byte-identical (fault_cmp --bytes): %s\n' "${byte_fail[@]}"
    exit 1
  fi
  echo "PASS"
  exit 0
}
if [ "$mode" != signal ]; then
  # decode_mid:0: nothing kept yet; decode_mid:1 and 2: layers before kept (or still syncing);
  # decode_mid:2:1: rank 1 alone is killed (mpirun takes rank 0 down wherever it is).
  for p in decode_mid:0 decode_mid:1 decode_mid:2:1; do crash_resume "$p"; done
  finish
fi

# SIGTERM while every rank is held in the middle of layer 1's decode steps.
rm -rf out.h5 out.h5.partial.d sr_hold.*
SR_TEST_HOLD=decode_mid:1 timeout -k 5 120 "$MPIEXEC" -np "$NP" "$SR_BIN" "${ARGS[@]}" \
  --resume -o out.h5 >"$LOG/out.txt" 2>"$LOG/err.txt" &
pid=$!
rank_pid=()
for ((r = 0; r < NP; r++)); do
  wait_for 60 "$pid" "hold marker of rank $r at decode_mid:1" test -e "sr_hold.$r"
  read -r rank_pid[r] <"sr_hold.$r" || fail "unreadable marker sr_hold.$r"
done
# Layer 0 may still be syncing (its sync runs while layer 1 computes); the stop comes at the
# boundary after layer 1 with both layers kept either way.
kill -TERM "${rank_pid[@]}"
wait "$pid"
rc=$?
[ $rc -eq 75 ] || fail "SIGTERM at decode_mid:1: exit $rc, expected 75"
grep -Eq "^sparsering: interrupted by SIGTERM before layer 2 of 3: checkpoint of 2 layers kept in out.h5.partial.d \(run again with --resume\)" "$LOG/err.txt" ||
  fail "SIGTERM at decode_mid:1: no interruption line: $(grep sparsering "$LOG/err.txt" | head -2)"
[ "$(grep -c '^sparsering: ' "$LOG/err.txt")" -eq 1 ] || fail "SIGTERM: expected one line from rank 0"
[ -f out.h5.partial.d/manifest.json ] || fail "SIGTERM: no checkpoint"
[ -e out.h5 ] && fail "SIGTERM: output published by an interrupted run"
ls sr_hold.* >/dev/null 2>&1 && fail "SIGTERM: a hold marker was left"
ok "SIGTERM at decode_mid:1: $(grep '^sparsering: ' "$LOG/err.txt")"
run --resume -o out.h5 || fail "resume after SIGTERM failed (exit $?)"
[ -e out.h5.partial.d ] && fail "SIGTERM: checkpoint directory left after success"
same_dec "stopped by SIGTERM in the middle of layer 1's steps, resumed"
finish
