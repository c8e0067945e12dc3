#!/usr/bin/env bash
# fault_kill.sh MODE ROUNDS — kill -9 at random moments, then resume: identical result.
#   MODE all: every rank is killed at once; MODE one: one rank, picked at random (mpirun then
#   brings the others down wherever they are).
# Each round starts (or resumes) the run with SR_TEST_DELAY_MS (every failpoint of a layer
# sleeps, so a layer lasts long enough for a random kill to land in computing, writing, closing,
# snapshotting or recording, or in a resume's restore and verification) and kills it after a
# random delay. After ROUNDS rounds a last resume runs to the end. The seed is printed.
. "$(dirname "$0")/fault_lib.sh"
mode=${1:-all}
rounds=${2:-4}
seed=${SR_TEST_SEED:-$(( $(date +%s%N) / 1000 % 100000 ))}
echo "# fault_kill $mode: SR_TEST_SEED=$seed"
RANDOM=$seed

reference --resume
rm -rf out.h5 out.h5.partial.d
kills=0
for ((i = 1; i <= rounds; i++)); do
  [ -e out.h5 ] && break
  SR_TEST_DELAY_MS=25 timeout -k 5 60 "$MPIEXEC" -np "$NP" "$SR_BIN" "${ARGS[@]}" --resume \
    -o out.h5 >"$LOG/out.txt" 2>"$LOG/err.txt" &
  pid=$!
  delay_ms=$(( 100 + RANDOM % 1400 ))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  # timeout's child is mpirun; mpirun's children are the ranks.
  mpirun_pid=$(children_of "$pid" | head -1)
  victims=""
  [ -n "$mpirun_pid" ] && victims=$(ranks_of "$mpirun_pid")
  if [ -n "$victims" ]; then
    if [ "$mode" = one ]; then
      set -- $victims
      shift $(( RANDOM % $# ))
      victims=$1
    fi
    kill -9 $victims 2>/dev/null && kills=$((kills + 1))
  fi
  wait "$pid"
  rc=$?
  layers=$(grep -o '"units_done":[[:space:]]*[0-9]*' out.h5.partial.d/manifest.json 2>/dev/null |
           grep -o '[0-9]*$')
  echo "# round $i: killed $mode after ${delay_ms} ms, exit $rc, layers in the checkpoint: ${layers:-0}"
  [ $rc -eq 124 ] && fail "round $i: hang"
done
if [ ! -e out.h5 ]; then
  run --resume -o out.h5 || fail "final resume failed (exit $?)"
elif [ -e out.h5.partial.d ]; then
  # Killed after the output was published, before its checkpoint was removed: the next run
  # finds the result complete and clears the leftover.
  expect_fail 5 "output exists and is complete" --resume -o out.h5
fi
[ -e out.h5.partial.d ] && fail "checkpoint directory left after success"
same "$kills random kill(s) of $mode rank(s), resumed" --bytes
echo "PASS"
