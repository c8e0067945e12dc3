#!/usr/bin/env bash
# fault_columns.sh — the key-column datasets of vertical_slash (selection/col_indptr and
# selection/col_indices, docs/HDF5.md) are covered by the checkpoint like indptr / indices
# (docs/CHECKPOINT.md "Checksums"):
#   - the unit files record their extents and checksums;
#   - a resume of an intact checkpoint gives a file identical, byte for byte, to an
#     uninterrupted run;
#   - a flipped byte in a completed layer's col_indices or col_indptr: checksum mismatch, exit 4
#     (were they not raw extents, the restore would silently write the snapshot's copy back).
. "$(dirname "$0")/fault_lib.sh"

ARGS=(--set seq_len=4096 --set model.layers=3 --set model.q_heads=4 --set model.kv_heads=2
      --set attention.method=vertical_slash --set attention.block_q=64
      --set attention.block_k=64 --set verify.rows=4 --set threads=1 -q)

reference --resume
# A checkpoint with layers 0-1 done (killed after recording layer 1), made once and copied.
rm -rf out.h5 out.h5.partial.d
SR_TEST_CRASH=after_manifest:1 run --resume -o out.h5
[ -f out.h5.partial.d/manifest.json ] || fail "no checkpoint"
[ -e out.h5 ] && fail "a result was published by the interrupted run"
cp -a out.h5.partial.d pristine.d
again() {
  rm -rf out.h5 out.h5.partial.d
  cp -a pristine.d out.h5.partial.d
}
D=out.h5.partial.d

# The raw data offset of /layers/L/NAME in data.h5, from the file itself (h5dump; empty
# without it).
h5_offset() {
  command -v h5dump >/dev/null || return 0
  h5dump -p -H -d "/layers/$1/$2" $D/data.h5 2>/dev/null |
    awk '$1 == "OFFSET" { print $2; exit }'
}

# flip L DATASET AT: inverts the byte AT bytes into the raw data of /layers/L/DATASET.
flip() {
  local off pos b
  off=$(h5_offset "$1" "$2")
  [ -n "$off" ] || off=$(unit_field "$1" "$2" offset)
  [ -n "$off" ] || fail "no offset for /layers/$1/$2"
  pos=$((off + $3))
  b=$(od -An -tu1 -j "$pos" -N1 $D/data.h5 | tr -d ' ')
  printf "\\$(printf %03o $((b ^ 0xff)))" | dd of=$D/data.h5 bs=1 seek="$pos" conv=notrunc \
    status=none
}

# Intact: the resumed file is the uninterrupted one, byte for byte.
again
run --resume -o out.h5 || fail "resume failed (exit $?)"
same "vertical_slash resumed after layer 1" --bytes

# A byte of layer 0's key columns.
again
flip 0 selection/col_indices 4
expect_fail 4 "data.h5: /layers/0/selection/col_indices: checksum mismatch .*start over with -f" \
  --resume -o out.h5
[ -e out.h5 ] && fail "a result was published from a damaged checkpoint"

# A byte of layer 1's column row pointer (a row length changes: the granules move).
again
flip 1 selection/col_indptr 9
expect_fail 4 "data.h5: /layers/1/selection/col_indptr: checksum mismatch" --resume -o out.h5
[ -e out.h5 ] && fail "a result was published from a damaged checkpoint"

# The unit files record both datasets, at the offsets the file has them.
again
for l in 0 1; do
  for ds in selection/col_indptr selection/col_indices; do
    uo=$(unit_field $l $ds offset)
    [ -n "$uo" ] || fail "unit-$(printf %06d $l).json does not record /layers/$l/$ds"
    [ "$(unit_field $l $ds bytes)" -gt 0 ] || fail "/layers/$l/$ds: no bytes recorded"
    ho=$(h5_offset $l $ds)
    [ -z "$ho" ] || [ "$ho" = "$uo" ] || fail "/layers/$l/$ds: unit file offset $uo, h5dump $ho"
  done
done
ok "unit files record col_indptr and col_indices"

# -f over the checkpoint starts over (the stored config then says overwrite: true).
run -f -o out.h5 || fail "-f over a checkpoint failed (exit $?)"
[ -e out.h5.partial.d ] && fail "checkpoint left after -f"

# Methods without key columns (block_sparse, dense) record the four datasets as before.
for m in block_sparse dense; do
  rm -rf out.h5 out.h5.partial.d
  SR_TEST_CRASH=after_manifest:0 run --resume --set attention.method=$m -o out.h5
  [ -f $D/unit-000000.json ] || fail "$m: no checkpoint"
  n=$(grep -c '"name":' $D/unit-000000.json)
  grep -q col_ $D/unit-000000.json && fail "$m: the unit file names column datasets"
  [ "$n" -eq 4 ] || fail "$m: $n datasets in the unit file, expected 4"
  ok "$m: unit file without column datasets"
done
echo "PASS"
