#!/usr/bin/env bash
# tests/fault_input.sh — the input is trusted only as far as it is checked (label `fault`).
#   - an HDF5 input truncated, rewritten in place or replaced between two layers of a running
#     job: exit 4 naming the file, nothing published (the ranks hold at the start of layer 1,
#     SR_TEST_HOLD, while the test changes the file);
#   - NaN / Inf / overflowing values in q, k or v: exit 4 naming dataset, layer, head, row and
#     dim; accepted with input.allow_nonfinite=true;
#   - a FIFO as input: exit 4 at once, no hang;
#   - a result that fails its own verification (SR_TEST_PERTURB_OUT makes one layer wrong):
#     dense exits 6 by default (verify.max_relerr: the storage type's tolerance), naming layer and
#     head; sparse methods only when verify.max_relerr is set; nothing published.
. "$(dirname "$0")/fault_lib.sh"
unset SR_TEST_HOLD SR_TEST_PERTURB_OUT
fsize() { stat -c %s "$1"; }

# expect_fail_run EXIT REGEX: the last run exited EXIT with one error line matching REGEX and
# out.h5 was not published.
expect_failed() {
  local want=$1 re=$2 rc=$3
  [ "$rc" -eq "$want" ] || fail "exit $rc, expected $want"
  [ "$(grep -c '^sparsering: error: ' "$LOG/err.txt")" -eq 1 ] || fail "expected one error line"
  errline | grep -Eq -- "$re" || fail "message '$(errline)' does not match /$re/"
  [ -e out.h5 ] && fail "out.h5 was published"
  ok "exit $rc: $(errline)"
}

# ---- verification gate (needs no Python) ----
rm -rf out.h5*
SR_TEST_PERTURB_OUT=1 run --set attention.method=dense -o out.h5
expect_failed 6 "verification failed: layer 1, q-head 0: relative error 0\.[0-9]+ > verify\.max_relerr 0\.0001" $?
[ -e out.h5.partial.d ] || fail "layer 0's checkpoint was not kept"
rm -rf out.h5*
SR_TEST_PERTURB_OUT=0 run --set attention.method=dense --set verify.max_relerr=0 -o out.h5 ||
  fail "verify.max_relerr=0 (off) still failed the run (exit $?)"
ok "verify.max_relerr=0 turns the gate off"
rm -rf out.h5*
SR_TEST_PERTURB_OUT=0 run -o out.h5 || fail "a sparse run failed a gate it has not asked for (exit $?)"
ok "sparse methods are not gated by default"
rm -rf out.h5*
run --set verify.max_relerr=1e-9 -o out.h5
expect_failed 6 "verification failed: layer 0, q-head [0-9]+: relative error .* > verify\.max_relerr 1e-09 \(block_sparse" $?
rm -rf out.h5*
run --set attention.method=dense -o out.h5 || fail "an exact dense run failed its gate (exit $?)"
ok "a correct dense run passes the default gate"

# ---- a FIFO as input ----
rm -rf out.h5* fifo.h5 && mkfifo fifo.h5
LIMIT=10 run --set input.source=hdf5 --set input.path=fifo.h5 -o out.h5
expect_failed 4 "fifo.h5: is a FIFO" $?
rm -f fifo.h5

py=$(h5py_python)
if [ -z "$py" ]; then
  echo "skip: HDF5 input cases (no Python with h5py for tools/make_input_h5.py)"
  echo "PASS"
  exit 0
fi
tools=$(cd "$(dirname "$0")/../tools" && pwd)
"$py" "$tools/make_input_h5.py" --force in.h5 --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
  --head-dim 64 --dtype float32 >/dev/null || fail "make_input_h5.py failed"
"$py" "$tools/make_input_h5.py" --force other.h5 --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
  --head-dim 64 --dtype float32 --seed 99 >/dev/null || fail "make_input_h5.py failed"
IN=(--set input.source=hdf5 --set input.path=in.h5 --set model.head_dim=64)
rm -rf out.h5*
run "${IN[@]}" -o out.h5 || fail "the untouched input did not run (exit $?)"
rm -rf out.h5*

# Changes between layers 0 and 1, made while every rank holds at the start of layer 1
# (SR_TEST_HOLD: each rank creates sr_hold.<rank> and waits until the test removes it).
# change NAME COMMAND...: start the run, wait for the holds, change the input, release, wait.
change() {
  local name=$1
  shift
  rm -rf out.h5* sr_hold.*
  "$py" "$tools/make_input_h5.py" --force in.h5 --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
    --head-dim 64 --dtype float32 >/dev/null || fail "make_input_h5.py failed"
  SR_TEST_HOLD=unit_start:1 run "${IN[@]}" -o out.h5 &
  local pid=$! i=0
  while [ ! -e sr_hold.0 ] || [ ! -e sr_hold.1 ]; do
    kill -0 $pid 2>/dev/null || fail "$name: the run ended before holding at layer 1"
    i=$((i + 1)); [ $i -lt 3000 ] || fail "$name: no hold after 30 s"
    sleep 0.01
  done
  "$@"
  rm -f sr_hold.0 sr_hold.1
  wait $pid
  return $?
}
change truncate truncate -s 100000 in.h5
expect_failed 4 "in.h5: (truncated|changed size)" $?
change rewrite cp other.h5 in.h5
expect_failed 4 "in.h5: (modified|changed)" $?
change rename mv other.h5 in.h5
expect_failed 4 "in.h5: replaced by another file" $?

# Non-finite and overflowing values.
for case in "q 1 100 7 nan NaN" "k 0 2047 0 inf infinite.value.inf" "v 1 5 63 1e30 value.1e.30.too.large"; do
  set -- $case
  "$py" "$tools/make_input_h5.py" --force bad.h5 --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
    --head-dim 64 --dtype float32 >/dev/null || fail "make_input_h5.py failed"
  "$py" - "$1" "$2" "$3" "$4" "$5" <<'PY' || fail "writing a bad value failed"
import sys, h5py
w, h, r, c, x = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
with h5py.File("bad.h5", "a") as f:
    f["/layers/2/" + w][h, r, c] = x
PY
  rm -rf out.h5*
  run --set input.source=hdf5 --set input.path=bad.h5 --set model.head_dim=64 -o out.h5
  expect_failed 4 "bad.h5: /layers/2/$1: $6.* at head $2, row $3, dim $4 \(set input.allow_nonfinite=true" $?
  rm -rf out.h5*
  run --set input.source=hdf5 --set input.path=bad.h5 --set model.head_dim=64 \
    --set input.allow_nonfinite=true --set verify.rows=0 -o out.h5 ||
    fail "input.allow_nonfinite=true did not accept the $6 value (exit $?)"
  ok "input.allow_nonfinite=true accepts it"
done
echo "PASS"
