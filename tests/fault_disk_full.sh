#!/usr/bin/env bash
# fault_disk_full.sh — the disk fills up during a run: one error line (exit 4) saying what
# failed and that the checkpoint is kept; the previous checkpoint is intact (after the space is
# back, --resume gives the identical result). When not even the first layer fits, nothing is
# left behind. Needs to mount a small tmpfs (root; CI runs as root): exit 77 (skipped) where
# mounting is not permitted.
. "$(dirname "$0")/fault_lib.sh"
top=$PWD
LOG=$top
mnt=$top/small
mkdir -p "$mnt"
mountpoint -q "$mnt" && umount "$mnt" 2>/dev/null # a leftover of an interrupted test
if ! mount -t tmpfs -o size=64m tmpfs "$mnt" 2>/dev/null; then
  echo "skip: cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)"
  exit 77
fi
trap 'cd "$top"; umount "$mnt" 2>/dev/null' EXIT
cd "$mnt"
resize() { mount -o remount,size="$1" "$mnt" || fail "cannot resize the tmpfs to $1"; }

# The reference on the same path (the path is part of the stored config), kept outside.
reference --resume
mv ref.h5 "$top/ref.h5"
ln -s "$top/ref.h5" ref.h5

# ~2.1 MB per layer and 1 MiB held for closing (sr_h5.c): 6 MB hold two layers, not three.
resize 6m
expect_fail 4 "(No space left|H5Dwrite|H5Fflush|H5Fclose|write failed).*checkpoint of [12] of 4 layers kept in out.h5.partial.d: resume with --resume" \
  --resume -o out.h5
[ -e out.h5 ] && fail "an output was published on a full disk"
done=$(grep -o '"units_done":[[:space:]]*[0-9]*' out.h5.partial.d/manifest.json | grep -o '[0-9]*$')
ok "disk full with ${done} layer(s) recorded"
# Still full: the resume fails the same way and the checkpoint stays.
expect_fail 4 "(No space left|H5Dwrite|H5Fflush|H5Fclose|write failed).*kept in out.h5.partial.d" --resume -o out.h5
resize 64m
run --resume -o out.h5 || fail "resume after freeing space failed (exit $?)"
same "disk full, space freed, resumed" --bytes

# Not even layer 0 fits: nothing is kept, nothing is published.
rm -f out.h5
resize 2m
expect_fail 4 "(No space left|H5Dwrite|H5Fflush|H5Fclose|write failed)" --resume -o out.h5
errline | grep -q "kept in" && fail "claims a checkpoint with no layer done"
[ -e out.h5 ] || [ -e out.h5.partial.d ] && fail "files left behind after a failed first layer"
ok "nothing left behind"
echo "PASS"
