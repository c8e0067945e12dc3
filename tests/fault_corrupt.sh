#!/usr/bin/env bash
# fault_corrupt.sh — damaged checkpoints and inputs give one clear error line (and never a
# result); damage the checkpoint repairs by design does not.
#   - metadata bytes of data.h5 overwritten, garbage appended (what a killed later session can
#     leave): repaired by the restore, result identical;
#   - a flipped byte in a completed layer's raw data: checksum mismatch, exit 4;
#   - data.h5 truncated or missing, manifest / unit file / snapshot damaged: exit 4;
#   - an HDF5 input file truncated or with a damaged header: exit 4 (needs h5py for
#     tools/make_input_h5.py; skipped without it).
. "$(dirname "$0")/fault_lib.sh"

reference --resume
# A checkpoint with layers 0-2 done (killed after recording layer 2), made once and copied.
rm -rf out.h5 out.h5.partial.d
SR_TEST_CRASH=after_manifest:2 run --resume -o out.h5
[ -f out.h5.partial.d/manifest.json ] || fail "no checkpoint to damage"
cp -a out.h5.partial.d pristine.d
make_ckpt() {
  rm -rf out.h5 out.h5.partial.d
  cp -a pristine.d out.h5.partial.d
}
D=out.h5.partial.d
fsize() { stat -c %s "$1"; }

# Metadata overwritten (superblock, root group, everything in the first 4 KiB outside raw
# data) and junk after the end: the restore puts the file back, the result is identical.
make_ckpt
off=$(unit_field 0 out offset)
n=$(( off < 4096 ? off : 4096 ))
head -c "$n" /dev/urandom | dd of=$D/data.h5 conv=notrunc status=none
head -c 100000 /dev/urandom >>$D/data.h5
run --resume -o out.h5 || fail "resume over scribbled metadata failed (exit $?)"
same "metadata scribbled, junk appended, restored" --bytes

# A byte of layer 1's raw output flipped: the checksum catches it.
make_ckpt
off=$(unit_field 1 out offset)
printf '\x5a' | dd of=$D/data.h5 bs=1 seek=$(( off + 1000 )) conv=notrunc status=none
expect_fail 4 "data.h5: /layers/1/out: checksum mismatch .*start over with -f" --resume -o out.h5
[ -e out.h5 ] && fail "a result was published from a damaged checkpoint"
# ... and -f starts over.
run -f -o out.h5 || fail "-f over a damaged checkpoint failed (exit $?)"

# A byte of layer 0's selection indices.
make_ckpt
off=$(unit_field 0 selection/indices offset)
printf '\x7f' | dd of=$D/data.h5 bs=1 seek=$(( off + 4 )) conv=notrunc status=none
expect_fail 4 "/layers/0/selection/indices: checksum mismatch" --resume -o out.h5

make_ckpt
truncate -s $(( $(fsize $D/data.h5) / 2 )) $D/data.h5
expect_fail 4 "data.h5: [0-9]+ bytes, the checkpoint needs [0-9]+ \(truncated\)" --resume -o out.h5

make_ckpt
rm $D/data.h5
expect_fail 4 "data.h5: No such file" --resume -o out.h5

make_ckpt
truncate -s $(( $(fsize $D/manifest.json) / 2 )) $D/manifest.json
expect_fail 4 "manifest.json: damaged checkpoint file \(not JSON\)" --resume -o out.h5
# without --resume a damaged checkpoint is not silently discarded
expect_fail 5 "manifest is damaged.*-f" -o out.h5

make_ckpt
sed -i 's/"units_done":[[:space:]]*3/"units_done":\t7/' $D/manifest.json
expect_fail 4 "manifest.json: damaged checkpoint file" --resume -o out.h5

make_ckpt
sed -i 's/"offset":/"offset": 1 +/' $D/unit-000001.json
expect_fail 4 "unit-000001.json: damaged checkpoint file \(checksum differs" --resume -o out.h5

make_ckpt
snap=$D/snap-000002.bin
printf '\x01' | dd of="$snap" bs=1 seek=40 conv=notrunc status=none
expect_fail 4 "snap-000002.bin: damaged checkpoint file" --resume -o out.h5

# Damaged HDF5 input files.
py=$(h5py_python)
if [ -n "$py" ]; then
  tools=$(cd "$(dirname "$0")/../tools" && pwd)
  "$py" "$tools/make_input_h5.py" in.h5 --layers 4 --q-heads 4 --kv-heads 2 --seq-len 2048 \
    --head-dim 64 --dtype bfloat16 >/dev/null || fail "make_input_h5.py failed"
  IN=(--set input.source=hdf5 --set input.path=in.h5)
  rm -rf out.h5 out.h5.partial.d
  run "${IN[@]}" -o out.h5 || fail "run on a bfloat16 input failed (exit $?)"
  cp in.h5 cut.h5
  truncate -s $(( $(fsize in.h5) / 2 )) cut.h5
  expect_fail 4 "cut.h5: .*(truncated|H5Fopen|read)" --set input.source=hdf5 --set input.path=cut.h5 -f -o out.h5
  cp in.h5 hdr.h5
  head -c 512 /dev/urandom | dd of=hdr.h5 conv=notrunc status=none
  expect_fail 4 "hdr.h5: not an HDF5 file" --set input.source=hdf5 --set input.path=hdr.h5 -f -o out.h5
else
  echo "skip: damaged input files (no Python with h5py for tools/make_input_h5.py)"
fi
echo "PASS"
