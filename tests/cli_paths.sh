#!/usr/bin/env bash
# cli_paths.sh — file names on the command line are the names, byte for byte. Before, the value
# of -o / --json / --set output.path=... was parsed as YAML: `-o null` wrote nothing, `-o
# '#run1.h5'` was a comment (nothing written, exit 0), `-o '"q".h5'` wrote another name or was
# refused, and `-o 'run: 1.h5'` was refused with a YAML message. Each name below must produce
# exactly one file of exactly that name (an HDF5 file for -o / output.path, JSON for --json /
# report.json), and nothing else may appear in the directory.
# Environment (tests/errors.cmake): SR_BIN, MPIEXEC.
set -u
rm -rf run && mkdir run && cd run || exit 1
ARGS=(--set seq_len=2048 --set verify.rows=4 --set threads=1 --set output.checkpoint=false -q)
fail() { echo "FAIL: $*"; [ -s err.txt ] && { echo "--- err.txt:"; tail -5 err.txt; }; exit 1; }

run() {
  timeout -k 5 60 "$MPIEXEC" -np 2 "$SR_BIN" "${ARGS[@]}" "$@" >/dev/null 2>err.txt
}
is_hdf5() { [ "$(head -c 8 -- "$1" | od -An -tx1 | tr -d ' \n')" = 894844460d0a1a0a ]; }
is_json() { head -c 1 -- "$1" | grep -q '{' && tail -c 2 -- "$1" | grep -q '}'; }
# Exactly these names are in the directory (besides err.txt).
only() {
  local want got
  want=$(printf '%s\n' "$@" err.txt | LC_ALL=C sort)
  got=$(LC_ALL=C ls -A | LC_ALL=C sort)
  [ "$want" = "$got" ] || fail "expected files [$(echo $want)], found [$(echo $got)]"
}

names=(null '~' '#run1.h5' '"q".h5' 'run: 1.h5' "'q'" 'yes' '[x]' 'a #b.h5' ' lead.h5')
for n in "${names[@]}"; do
  rm -rf -- * 2>/dev/null
  # -o NAME, and the report through --set report.json=NAME.json
  run -o "$n" --set "report.json=$n.json" || fail "-o '$n': exit $?"
  only "$n" "$n.json"
  is_hdf5 "$n" || fail "-o '$n': '$n' is not an HDF5 file"
  is_json "$n.json" || fail "report.json='$n.json' is not JSON"
  rm -f -- "$n" "$n.json"
  # --json NAME, and the output through --set output.path=NAME.h5
  run --json "$n" --set "output.path=$n.h5" || fail "--json '$n': exit $?"
  only "$n" "$n.h5"
  is_json "$n" || fail "--json '$n': '$n' is not JSON"
  is_hdf5 "$n.h5" || fail "output.path='$n.h5' is not an HDF5 file"
  echo "ok: '$n' (-o, --json, --set output.path, --set report.json)"
done

# input.path is literal too: '#in.h5' is a file name (missing here), not a YAML comment.
rm -rf -- * 2>/dev/null
run --set input.source=hdf5 --set 'input.path=#in.h5'
rc=$?
[ $rc -eq 4 ] || fail "input.path='#in.h5': exit $rc, expected 4"
grep -q "^sparsering: error: #in.h5: " err.txt || fail "input.path='#in.h5': $(cat err.txt)"
echo "ok: input.path '#in.h5' is a name: $(grep '^sparsering: error' err.txt)"

# An empty name is an error, not "no output".
run -o ''
rc=$?
[ $rc -eq 2 ] && grep -q "^sparsering: error: option -o/--output needs a file name" err.txt ||
  fail "-o '': exit $rc: $(cat err.txt)"
echo "ok: -o '' refused"
echo PASS
