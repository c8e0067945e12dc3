#!/usr/bin/env bash
# bench/bench_ckpt.sh [OUT.json] — what the checkpoint costs (docs/CHECKPOINT.md "Cost"): the
# same multi-layer run with output.checkpoint true and false, alternated, REPS times each; the
# median wall time of each (sparsering's own wall_s, from its JSON report), the time spent on
# checkpoint work (closing, snapshotting, recording each layer), the bytes written besides the
# data; then a resume of a run killed before its last layer: restore + checksum verification
# time and rate. Writes OUT.json (default bench/results/ckpt_<backend>.json) and prints a summary.
#
# Environment (defaults for a CPU run; on a GPU node e.g.
#   BACKEND=cuda NP=2 CONFIG=configs/prefill-128k.yaml LAYERS=4 bench/bench_ckpt.sh):
#   SR_BIN   the CLI (build/sparsering)      NP      ranks (2)       REPS   repetitions (5)
#   BACKEND  cpu | cuda (cpu)                CONFIG  YAML (configs/demo.yaml)
#   LAYERS   model.layers (8)                DIR     scratch directory for the outputs, on the
#   EXTRA    more sparsering arguments               file system to measure (/tmp/sr-bench-ckpt)
#   LAUNCH   the launcher (mpirun --bind-to none: OpenMP threads get the cores)
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh
bin=${SR_BIN:-build/sparsering}
np=${NP:-2}
reps=${REPS:-5}
backend=${BACKEND:-cpu}
config=${CONFIG:-configs/demo.yaml}
layers=${LAYERS:-8}
dir=${DIR:-/tmp/sr-bench-ckpt}
out=${1:-bench/results/ckpt_${backend}.json}
read -r -a launch <<<"${LAUNCH:-mpirun --bind-to none}"
read -r -a extra <<<"${EXTRA:-}"
[ -x "$bin" ] || { echo "bench_ckpt: $bin not built (jobs/build.sh)" >&2; exit 1; }
mkdir -p "$dir"
rm -rf "$dir"/out.h5 "$dir"/out.h5.partial.d "$dir"/*.json "$dir"/*.txt
args=(run -c "$config" --set backend="$backend" --set model.layers="$layers" --set verify.rows=0
      "${extra[@]}")

# one MODE REP: a run with output.checkpoint=MODE; its report, stdout and file size kept.
one() {
  rm -rf "$dir/out.h5" "$dir/out.h5.partial.d"
  "${launch[@]}" -np "$np" "$bin" "${args[@]}" --set output.checkpoint="$1" -o "$dir/out.h5" \
    --json "$dir/$1-$2.json" >"$dir/$1-$2.txt"
  stat -c %s "$dir/out.h5" >"$dir/$1-$2.size"
}
one false warmup
for ((r = 0; r < reps; r++)); do
  one true "$r"
  one false "$r"
done

# The resume: killed after recording layer L-2 (test failpoint), then resumed.
rm -rf "$dir/out.h5" "$dir/out.h5.partial.d"
SR_TEST_CRASH=after_manifest:$((layers - 2)) "${launch[@]}" -np "$np" "$bin" "${args[@]}" \
  -o "$dir/out.h5" >/dev/null 2>&1 || true
"${launch[@]}" -np "$np" "$bin" "${args[@]}" --resume -o "$dir/out.h5" --json "$dir/resume.json" \
  >"$dir/resume.txt"

python3 - "$dir" "$reps" "$out" "$np" "$backend" "$config" "$layers" "$bin" <<'EOF'
import json, os, re, statistics as st, subprocess, sys, time
d, reps, out, np_, backend, config, layers, binary = sys.argv[1:9]
reps = int(reps)
def report(name): return json.load(open(os.path.join(d, name + ".json")))
def text(name): return open(os.path.join(d, name + ".txt")).read()
def ckpt_line(t):
    m = re.search(r"# checkpoint: \d+ layers? recorded in ([0-9.]+) s \(checksums ([0-9.]+) s, "
                  r"close \+ sync \+ record ([0-9.]+) s\), ([0-9.]+) kB", t)
    return (float(m.group(1)), float(m.group(4)) * 1e3, float(m.group(2)), float(m.group(3))) \
        if m else (0.0, 0.0, 0.0, 0.0)
wall = {m: [report(f"{m}-{r}")["wall_s"] for r in range(reps)] for m in ("true", "false")}
write = {m: [sum(l["time_s"]["write"] for l in report(f"{m}-{r}")["layers"]) for r in range(reps)]
         for m in ("true", "false")}
ck = [ckpt_line(text(f"true-{r}")) for r in range(reps)]
size = {m: int(open(os.path.join(d, f"{m}-0.size")).read()) for m in ("true", "false")}
r0 = report("true-0")
med_t, med_f = st.median(wall["true"]), st.median(wall["false"])
res = re.search(r"# resumed: layers 0-(\d+) from .*, ([0-9.]+) GB verified in ([0-9.]+) s", text("resume"))
host = os.uname().nodename
cpu = ""
try:
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
except Exception:
    pass
result = {
    "benchmark": "bench_ckpt",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": host, "host_cpu": cpu, "versions": r0["versions"],
    "ranks": int(np_), "backend": r0["backend"], "threads_per_rank": r0["threads_per_rank"],
    "config": config, "seq_len": r0["seq_len"], "layers": int(layers), "method": r0["method"],
    "repetitions": reps, "filesystem": subprocess.run(["df", "-T", d], capture_output=True,
                                                      text=True).stdout.split("\n")[1].split()[1],
    "wall_s": {"checkpoint": {"median": med_t, "min": min(wall["true"]), "max": max(wall["true"])},
               "no_checkpoint": {"median": med_f, "min": min(wall["false"]), "max": max(wall["false"])}},
    "write_s_median": {"checkpoint": st.median(write["true"]), "no_checkpoint": st.median(write["false"])},
    "overhead_pct_of_run": 100.0 * (med_t - med_f) / med_f,
    "checkpoint_work_s_median": st.median(c[0] for c in ck),
    "checkpoint_work_breakdown_s_median": {"checksums": st.median(c[2] for c in ck),
                                           "close_sync_record": st.median(c[3] for c in ck)},
    "checkpoint_work_pct_of_run": 100.0 * st.median(c[0] for c in ck) / med_t,
    "bytes": {"output_file": {"checkpoint": size["true"], "no_checkpoint": size["false"]},
              "checkpoint_files_written": int(st.median(c[1] for c in ck)),
              "checkpoint_files_pct_of_output": 100.0 * st.median(c[1] for c in ck) / size["true"],
              "space_reserved_while_writing": 1 << 20},
    "resume": {"layers_verified": int(res.group(1)) + 1 if res else None,
               "gb_verified": float(res.group(2)) if res else None,
               "restore_and_verify_s": float(res.group(3)) if res else None,
               "verify_gb_per_s": (float(res.group(2)) / float(res.group(3)))
                                  if res and float(res.group(3)) > 0 else None},
    "note": "wall_s is sparsering's own (JSON report), from the start of the run to the "
            "published file; write_s includes the checkpoint's close + sync + record; the run "
            "without checkpoint syncs all its data once, at the end (in wall_s, not in write_s); "
            "alternating runs, median.",
}
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
json.dump(result, open(out, "w"), indent=2)
print(f"# {result['backend']} x{np_}, {config}, {layers} layers of {r0['seq_len']} tokens, "
      f"{reps} runs each ({result['filesystem']} at {d})")
print(f"  wall median: checkpoint {med_t:.3f} s, none {med_f:.3f} s -> overhead "
      f"{result['overhead_pct_of_run']:+.2f}% (checkpoint work {result['checkpoint_work_s_median']:.3f} s"
      f" = {result['checkpoint_work_pct_of_run']:.2f}%)")
print(f"  bytes: output {size['true']} vs {size['false']}; checkpoint files "
      f"{result['bytes']['checkpoint_files_written']} "
      f"({result['bytes']['checkpoint_files_pct_of_output']:.3f}% of the output)")
if res:
    print(f"  resume: {result['resume']['gb_verified']:.3f} GB verified in "
          f"{result['resume']['restore_and_verify_s']:.3f} s")
print(f"  -> {out}")
EOF
