#!/usr/bin/env bash
# check_times.sh FILE — the per-layer times of a JSON report are consistent: every layer has
# "download" and "attention", attention > 0, and attention (each rank's plan + exchange + compute,
# max over ranks) is at most exchange + compute (each the max over ranks) and at least the larger
# of them. A report without layers fails.
set -u
awk '
  /"time_s":/ { inl = 1; ex = co = at = ""; dl = 0; next }
  inl && /"exchange":/  { ex = $2 + 0 }
  inl && /"compute":/   { co = $2 + 0 }
  inl && /"download":/  { dl = 1 }
  inl && /"attention":/ {
    at = $2 + 0; n++; inl = 0
    big = ex > co ? ex : co
    if (ex == "" || co == "" || !dl) { print "FAIL: layer " n ": exchange, compute or download missing"; bad = 1 }
    else if (!(at > 0)) { print "FAIL: layer " n ": attention " at " is not positive"; bad = 1 }
    else if (at > ex + co + 1e-9 || at < big - 1e-9) {
      print "FAIL: layer " n ": attention " at " outside [" big ", " ex + co "]"; bad = 1
    } else print "ok: layer " n ": attention " at " in [" big ", " ex + co "]"
  }
  END { if (!n) { print "FAIL: no per-layer times in " FILENAME; exit 1 } exit bad }
' FS='[:,][[:space:]]*' "$1"
