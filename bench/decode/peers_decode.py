#!/usr/bin/env python3
"""peers_decode.py — the PyTorch peers of the decode benchmark, on the same GPU, in the same run.

Usage: python3 peers_decode.py --pairs 131072:1,1048576:1,131072:8,131072:32 --json OUT.json
                               [--reps 20] [--bw-gib 4]

(a) Device memory bandwidth: a bf16 tensor of --bw-gib GiB copied into another with .copy_
    (GB/s = 2 * bytes / time: read + write), and read alone by torch.sum (GB/s = bytes / time).
(b) SDPA decode: q [B, 32, 1, 128], k and v [B, 8, N, 128], bf16, random, is_causal False,
    enable_gqa=True where this torch has it (else k and v are expanded to 32 heads with
    repeat_interleave outside the timing, and the output says so); every SDPA backend that
    accepts the shape (default dispatch, flash, efficient, cudnn) is timed and the fastest is
    the peer. KV GB/s = 2 * B * 8 * N * 128 * 2 bytes / time.
Timing: CUDA events, 3 warm-ups, median of --reps (min and max recorded). GB = 1e9 bytes.
Without torch or a GPU: prints a '#' line and writes {"available": false, "reason": ...}.
"""
import argparse
import json
import sys
import warnings

QH, KVH, D = 32, 8, 128


def write(path, rec):
    with open(path, "w") as f:
        json.dump(rec, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default="131072:1,1048576:1,131072:8,131072:32",
                    help="N:B pairs, comma-separated")
    ap.add_argument("--json", required=True)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--bw-gib", type=float, default=4.0)
    args = ap.parse_args()
    pairs = []
    for p in args.pairs.split(","):
        if p:
            n, b = p.split(":")
            pairs.append((int(n), int(b)))

    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 — any import failure means no peer
        reason = f"torch not importable ({type(e).__name__}: {e})"
        print(f"# peers_decode.py: {reason}; no peer numbers")
        write(args.json, {"available": False, "reason": reason, "benchmark": "peers_decode.py"})
        return
    if not torch.cuda.is_available():
        reason = f"torch {torch.__version__} sees no CUDA GPU"
        print(f"# peers_decode.py: {reason}; no peer numbers")
        write(args.json, {"available": False, "reason": reason, "benchmark": "peers_decode.py",
                          "torch": torch.__version__})
        return

    def timed(fn, reps, warm=3):
        for _ in range(warm):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        ts.sort()
        return ts[len(ts) // 2], ts[0], ts[-1]

    props = torch.cuda.get_device_properties(0)
    rec = {
        "available": True,
        "benchmark": "peers_decode.py",
        "device": torch.cuda.get_device_name(0),
        "sm_count": props.multi_processor_count,
        "memory_gib": props.total_memory / 2**30,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "reps": args.reps,
        "timing": "CUDA events, 3 warm-ups, median of reps",
        "gb": 1e9,
    }
    print(f"# peers_decode.py: {rec['device']}, torch {rec['torch']}, CUDA {rec['cuda']}, "
          f"cuDNN {rec['cudnn']}; median of {args.reps} after 3 warm-ups")

    # (a) bandwidth
    nbytes = int(args.bw_gib * 2**30) // 2 * 2
    try:
        src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
        dst = torch.empty_like(src)
        c_ms, c_lo, c_hi = timed(lambda: dst.copy_(src), 10)
        del dst
        r_ms, r_lo, r_hi = timed(lambda: torch.sum(src, dtype=torch.float32), 10)
        del src
        torch.cuda.empty_cache()
        bw = {"bytes": nbytes, "dtype": "bf16",
              "copy_ms": c_ms, "copy_ms_min": c_lo, "copy_ms_max": c_hi,
              "copy_gbps": 2 * nbytes / (c_ms * 1e-3) / 1e9,
              "copy_how": "dst.copy_(src), GB/s = 2*bytes/time (read + write)",
              "read_ms": r_ms, "read_ms_min": r_lo, "read_ms_max": r_hi,
              "read_gbps": nbytes / (r_ms * 1e-3) / 1e9,
              "read_how": "torch.sum(src, dtype=float32), GB/s = bytes/time"}
        print(f"# bandwidth over {nbytes / 2**30:.2f} GiB bf16: copy {bw['copy_gbps']:.0f} GB/s "
              f"(2*bytes/time, {c_ms:.3f} ms), read {bw['read_gbps']:.0f} GB/s "
              f"(torch.sum, bytes/time, {r_ms:.3f} ms)")
    except Exception as e:  # noqa: BLE001
        bw = {"error": f"{type(e).__name__}: {e}"}
        print(f"# bandwidth: failed: {bw['error']}")
        torch.cuda.empty_cache()
    rec["bandwidth"] = bw

    # (b) SDPA decode
    gqa, why = True, ""
    try:
        t = torch.zeros(1, 4, 1, 16, device="cuda", dtype=torch.bfloat16)
        kv = torch.zeros(1, 2, 16, 16, device="cuda", dtype=torch.bfloat16)
        F.scaled_dot_product_attention(t, kv, kv, enable_gqa=True)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 — TypeError on a torch without the keyword
        gqa, why = False, f" ({type(e).__name__})"
    rec["gqa"] = ("enable_gqa=True" if gqa else
                  f"no enable_gqa in this torch{why}: k, v expanded to 32 heads with "
                  "repeat_interleave (outside the timing; the peer then reads 4x the KV bytes, "
                  "GB/s counts 8 heads)")
    if not gqa:
        print("# SDPA: this torch has no enable_gqa; k and v are expanded to 32 heads "
              "(repeat_interleave, outside the timing)")
    backends = [("default", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for name, attr in (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                           ("cudnn", "CUDNN_ATTENTION")):
            if hasattr(SDPBackend, attr):
                backends.append((name, getattr(SDPBackend, attr)))
    except Exception:  # noqa: BLE001 — old torch: the default dispatch only
        sdpa_kernel = None
    print(f"{'N':>8} {'B':>3} {'backend':>9} {'ms':>9} {'min_ms':>9} {'max_ms':>9} {'KV_GB/s':>8}  note")
    runs, best = [], []
    torch.manual_seed(0)
    scale = 1.0 / D ** 0.5
    for n, b in pairs:
        kv_bytes = 2 * b * KVH * n * D * 2
        try:
            q = torch.randn(b, QH, 1, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(b, KVH, n, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(b, KVH, n, D, device="cuda", dtype=torch.bfloat16)
            if not gqa:
                k = k.repeat_interleave(QH // KVH, dim=1)
                v = v.repeat_interleave(QH // KVH, dim=1)
        except Exception as e:  # noqa: BLE001
            print(f"# N={n} B={b}: inputs failed: {type(e).__name__}: {e}")
            runs.append({"seq_len": n, "batch": b, "error": f"{type(e).__name__}: {e}"})
            torch.cuda.empty_cache()
            continue
        kw = {"enable_gqa": True} if gqa else {}

        def call():
            return F.scaled_dot_product_attention(q, k, v, is_causal=False, scale=scale, **kw)

        mine = []
        for name, be in backends:
            caught = []
            try:
                # SDPA explains a refused backend in UserWarnings: kept for the note, not printed
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if be is None:
                        ms, lo, hi = timed(call, args.reps)
                    else:
                        with sdpa_kernel(be):
                            ms, lo, hi = timed(call, args.reps)
            except Exception as e:  # noqa: BLE001 — this backend refuses the shape
                msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
                why = [str(w.message).strip().splitlines()[0][:160] for w in caught
                       if str(w.message).strip()]
                if why:
                    msg += " | " + " | ".join(dict.fromkeys(why))
                print(f"{n:8d} {b:3d} {name:>9} {'-':>9} {'-':>9} {'-':>9} {'-':>8}  "
                      f"not available: {type(e).__name__} {msg}")
                runs.append({"seq_len": n, "batch": b, "backend": name,
                             "error": f"{type(e).__name__}: {msg}"})
                torch.cuda.empty_cache()
                continue
            r = {"seq_len": n, "batch": b, "backend": name, "ms": ms, "ms_min": lo,
                 "ms_max": hi, "kv_bytes": kv_bytes, "kv_gbps": kv_bytes / (ms * 1e-3) / 1e9,
                 "gqa": "enable_gqa" if gqa else "repeat_interleave"}
            runs.append(r)
            mine.append(r)
            print(f"{n:8d} {b:3d} {name:>9} {ms:9.4f} {lo:9.4f} {hi:9.4f} {r['kv_gbps']:8.0f}")
            sys.stdout.flush()
        if mine:
            f = min(mine, key=lambda r: r["ms"])
            best.append(dict(f))
            print(f"# N={n} B={b}: fastest SDPA backend {f['backend']}, {f['ms']:.4f} ms, "
                  f"{f['kv_gbps']:.0f} GB/s of KV")
        del q, k, v
        torch.cuda.empty_cache()
    rec["sdpa"] = runs
    rec["sdpa_best"] = best
    rec["sdpa_shape"] = ("q [B, 32, 1, 128], k/v [B, 8, N, 128], bf16, is_causal False, "
                         "scale 1/sqrt(128); KV GB/s = 2*B*8*N*128*2 / time")
    write(args.json, rec)


if __name__ == "__main__":
    main()
