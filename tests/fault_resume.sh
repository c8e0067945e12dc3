#!/usr/bin/env bash
# fault_resume.sh — what a resume accepts and refuses (docs/CHECKPOINT.md):
#   refused, one line, exit 2: a result-affecting key changed (the message names it), another
#   input file, another rank count; exit 5: a checkpoint exists and neither --resume nor -f;
#   accepted: keys that cannot change a result (threads, report.*, -q, -f), a moved input file
#   with the same content; -f discards the checkpoint; --resume without a checkpoint starts
#   from layer 0.
. "$(dirname "$0")/fault_lib.sh"

reference --resume
rm -rf out.h5 out.h5.partial.d
SR_TEST_CRASH=after_manifest:1 run --resume -o out.h5
[ -f out.h5.partial.d/manifest.json ] || fail "no checkpoint"
cp -a out.h5.partial.d pristine.d
again() { rm -rf out.h5 out.h5.partial.d; cp -a pristine.d out.h5.partial.d; }

expect_fail 2 "another configuration \(attention.sparsity: 0.9 in the checkpoint, 0.8 now\)" \
  --resume --set attention.sparsity=0.8 -o out.h5
expect_fail 2 "another configuration \(input.seed: 1234 in the checkpoint, 99 now\)" \
  --resume --set input.seed=99 -o out.h5
expect_fail 2 "another configuration \(model.layers: 4 in the checkpoint, 5 now\)" \
  --resume --set model.layers=5 -o out.h5
NP=1 expect_fail 2 "written by 2 ranks, this run has 1: resume with 2 ranks" --resume -o out.h5
expect_fail 5 "out.h5.partial.d: checkpoint of an interrupted run \(2 of 4 layers done\): continue it with --resume, or discard it with -f" -o out.h5
cmp -s out.h5.partial.d/manifest.json pristine.d/manifest.json || fail "a refused run changed the checkpoint"

# Keys outside the result: threads, report.json, progress (no -q). Datasets, selection, config
# and non-timing metrics are identical; timing metrics and the thread count in metrics_json
# are the resumed run's.
again
saved=("${ARGS[@]}")
ARGS=(--set seq_len=2048 --set model.layers=4 --set model.q_heads=4 --set model.kv_heads=2
      --set verify.rows=4 --set threads=2 --set report.json=r.json)
run --resume -o out.h5 || fail "resume with other threads / report keys failed (exit $?)"
grep -q "^# resumed: layers 0-1 from out.h5.partial.d" "$LOG/out.txt" || fail "no resume line in the report"
[ -s r.json ] || fail "no JSON report"
same "resumed with threads=2, a JSON report and progress on"
ARGS=("${saved[@]}")

# -f discards the checkpoint and starts over.
again
run -f -o out.h5 || fail "-f over a checkpoint failed (exit $?)"
[ -e out.h5.partial.d ] && fail "checkpoint left after -f"

# --resume with nothing to resume starts from layer 0.
rm -rf out.h5 out.h5.partial.d
run --resume -o out.h5 || fail "--resume without a checkpoint failed (exit $?)"
same "--resume without a checkpoint" --bytes

# Checkpointing off: no directory, same datasets; --resume then is a config error.
rm -rf out.h5
run --set output.checkpoint=false -o out.h5 || fail "output.checkpoint=false failed"
[ -e out.h5.partial.d ] && fail "a checkpoint directory without output.checkpoint"
expect_fail 2 "output.resume: needs output.checkpoint: true" -f --resume --set output.checkpoint=false -o out.h5
expect_fail 2 "output.resume: needs output.path" --resume

# The input: another file is refused; the same content under another name is accepted.
py=$(h5py_python)
if [ -n "$py" ]; then
  tools=$(cd "$(dirname "$0")/../tools" && pwd)
  mk() { "$py" "$tools/make_input_h5.py" "$1" --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
           --head-dim 64 --dtype float16 --seed "$2" --force >/dev/null || fail "make_input_h5.py"; }
  mk a.h5 1
  mk b.h5 2
  rm -rf out.h5 out.h5.partial.d ref.h5
  reference --resume --set input.source=hdf5 --set input.path=a.h5
  SR_TEST_CRASH=after_manifest:1 run --resume --set input.source=hdf5 --set input.path=a.h5 -o out.h5
  expect_fail 2 "b.h5: not the input the checkpoint in out.h5.partial.d was computed from" \
    --resume --set input.source=hdf5 --set input.path=b.h5 -o out.h5
  mkdir -p moved && cp a.h5 moved/a.h5
  run --resume --set input.source=hdf5 --set input.path=moved/a.h5 -o out.h5 ||
    fail "resume with the input moved failed (exit $?)"
  same "input file moved, same content"
else
  echo "skip: input fingerprint (no Python with h5py for tools/make_input_h5.py)"
fi
echo "PASS"
