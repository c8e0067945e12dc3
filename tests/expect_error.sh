#!/usr/bin/env bash
# expect_error.sh EXIT REGEX NP [--keep FILE] [--absent FILE]... -- COMMAND...
# Runs COMMAND under `mpirun -np NP` with a 10 s limit and checks that a user error behaves:
# the exit code is EXIT, stderr holds exactly one "sparsering: error: ..." line and it matches
# REGEX, every rank is gone within the limit (no hang), and no output file that looks complete
# was left (FILE given with --keep must be byte-identical afterwards; each FILE given with
# --absent must not exist afterwards, nor its .partial / .partial.d; *.partial must not exist).
set -u
want_exit=$1 regex=$2 np=$3
shift 3
keep="" absent=()
while [ $# -gt 0 ]; do
  case $1 in
  --keep) keep=$2; shift 2 ;;
  --absent) absent+=("$2" "$2.partial" "$2.partial.d"); shift 2 ;;
  --) shift; break ;;
  *) break ;;
  esac
done
before=""
[ -n "$keep" ] && before=$(sha256sum "$keep" | cut -d' ' -f1)
for f in "${absent[@]}"; do rm -rf "$f"; done
err=$(mktemp)
timeout -k 2 10 "${MPIEXEC:-mpirun}" -np "$np" "$@" >/dev/null 2>"$err"
rc=$?
fail() { echo "FAIL: $*"; echo "--- stderr:"; cat "$err"; rm -f "$err"; exit 1; }
[ $rc -eq 124 ] || [ $rc -eq 137 ] && fail "ranks still running after 10 s (hang)"
[ $rc -eq "$want_exit" ] || fail "exit code $rc, expected $want_exit"
lines=$(grep -c '^sparsering: error: ' "$err")
[ "$lines" -eq 1 ] || fail "expected one error line from rank 0, got $lines"
grep '^sparsering: error: ' "$err" | grep -Eq -- "$regex" || fail "message does not match /$regex/"
if [ -n "$keep" ]; then
  [ "$(sha256sum "$keep" | cut -d' ' -f1)" = "$before" ] || fail "$keep was modified"
fi
for f in "${absent[@]}"; do [ -e "$f" ] && fail "$f was written by a run that failed"; done
for f in *.partial; do [ -e "$f" ] && fail "partial output $f left behind"; done
echo "ok: exit $rc, $(grep '^sparsering: error: ' "$err")"
rm -f "$err"
