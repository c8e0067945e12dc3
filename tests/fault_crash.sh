#!/usr/bin/env bash
# fault_crash.sh — kill -9 at every named point of a layer's life (SR_TEST_CRASH failpoints,
# docs/CHECKPOINT.md), on all ranks or on one, then resume: the final file must be identical,
# byte for byte, to an uninterrupted run. Also: a crash during the resume itself, and a first
# run without --resume resumed later (the file carries the first run's config).
. "$(dirname "$0")/fault_lib.sh"

reference --resume

# point:layer[:rank]. Layer -1 = the commit. Rank given = only that rank dies (mpirun then
# takes the others down at whatever point they are).
points="unit_start:0 after_out:0 after_data:0 after_close:0
unit_start:1 after_compute:1 after_out:1 after_data:1 before_close:1 after_close:1
after_sync:1 after_unit_file:1 after_snapshot:1 after_manifest:1 after_out:2:1 after_close:2:0
after_sync:2:1
after_snapshot:3:0 before_commit commit_closed:-1 after_publish"
for p in $points; do
  rm -rf out.h5 out.h5.partial.d
  SR_TEST_CRASH=$p run --resume -o out.h5
  rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "$p: the run was not killed (exit $rc)"
  if [ "${p%%:*}" = after_publish ]; then
    # Killed after the rename: the output is complete; the leftover checkpoint goes quietly.
    same "$p (no resume needed)" --bytes
    expect_fail 5 "out.h5: output exists and is complete" --resume -o out.h5
    [ -e out.h5.partial.d ] && fail "$p: leftover checkpoint directory not removed"
    continue
  fi
  [ -e out.h5 ] && fail "$p: out.h5 exists after a crash before the commit"
  run --resume -o out.h5 || fail "$p: resume failed (exit $?)"
  [ -e out.h5.partial.d ] && fail "$p: checkpoint directory left after success"
  same "crash at $p, resumed" --bytes
done

# A resume that is itself killed (after its restore), then resumed again.
rm -rf out.h5 out.h5.partial.d
SR_TEST_CRASH=after_manifest:2 run --resume -o out.h5
SR_TEST_CRASH=after_restore run --resume -o out.h5
[ $? -ne 0 ] || fail "after_restore: the resume was not killed"
run --resume -o out.h5 || fail "resume after a killed resume failed (exit $?)"
same "killed during its resume, resumed again" --bytes

# The first run without --resume; the resumed file still equals an uninterrupted run of that
# first command line (its stored config is the first run's).
rm -rf out.h5 out.h5.partial.d ref.h5
reference
SR_TEST_CRASH=after_close:2 run -o out.h5
run --resume -o out.h5 || fail "resume of a run started without --resume failed"
same "started without --resume, resumed with it" --bytes
echo "PASS"
