#!/usr/bin/env python3
"""Performance model of sparsering's sequence-sharded attention (docs/PERFMODEL.md).

Reads the measured inputs under bench/results/, predicts the ring-step time, overlap and
parallel efficiency of prefill (dense_ring vs selected exchange, per method and sparsity) and
the per-step time of decode for P = 1..1024 ranks over NVLink, InfiniBand NDR, 100 GbE and
25 GbE/sockets, checks the model against every measured multi-rank and 1-GPU configuration,
prints '#'-headed tables and writes bench/results/perfmodel.json.

    python3 bench/model/perfmodel.py            # tables + JSON
    python3 bench/model/perfmodel.py --plots    # also bench/results/perfmodel_*.png (matplotlib)

Python 3 standard library only; matplotlib (Debian: python3-matplotlib) only for --plots.
"""
import argparse
import json
import math
import os
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RES = os.path.join(ROOT, "bench", "results")

# ---------------------------------------------------------------------------------------------
# Model shape (the shape of every GPU measurement: 32 q-heads / 8 kv-heads, d 128, bf16)
HQ, G, D, EB = 32, 8, 128, 2
K128, M1 = 131072, 1048576
PS = [1 << i for i in range(11)]  # 1 .. 1024
NS = [K128, M1]
METHODS = ["dense", "block_sparse", "vertical_slash", "flexprefill"]
SPARSITIES = [0.0, 0.9, 0.95]
EXCHANGES = ["dense_ring", "selected"]
BLOCK = {"dense": 128, "block_sparse": 128, "vertical_slash": 64, "flexprefill": 64}
CAUSAL_CAP = 0.75  # selected/dense_ring bytes when every causally visible remote key is fetched (zigzag)

# Links: bandwidth per direction per GPU (bytes/s) and per-message latency (s).
# 'src' says where each number comes from; 'assumed' marks a number that was not measured here.
LINKS = {
    "nvlink": {"label": "NVLink (H200 NV18)", "bw": 359e9, "lat": 10e-6,
               "src": "bw: docs/PERFORMANCE.md ceilings (NCCL send/recv 1 GiB, 2x H200); lat: assumed 10 us"},
    "ib_ndr": {"label": "IB NDR 400G", "bw": 45e9, "lat": 15e-6, "assumed": True,
               "src": "assumed: 400 Gb/s = 50 GB/s line rate, 90% achieved, one NIC per GPU; lat 15 us"},
    "eth100": {"label": "100 GbE", "bw": 11e9, "lat": 25e-6, "assumed": True,
               "src": "assumed: 12.5 GB/s line rate, 88% achieved (RoCE), one NIC per GPU; lat 25 us"},
    "eth25": {"label": "25 GbE / sockets", "bw": None, "lat": 50e-6,
              "src": "bw: fitted from the 2-GPU NCCL socket runs (gpu_2gpu.json); lat: assumed 50 us"},
}
LINK_ORDER = ["nvlink", "ib_ndr", "eth100", "eth25"]

# Documented defaults, used when an input file (or a field) is missing.
DEFAULTS = {
    "gpu_rate_128": 440e12,     # dense kernel, 128-blocks, H100 (gpu_kernels.json 32K-128K)
    "gpu_rate_64": 383e12,      # dense kernel, 64-blocks
    "gpu_L0_128": 3.0,          # per-row start-up/epilogue cost in block-pair units
    "gpu_L0_64": 3.0,
    "sms": 132,
    "t_host": 20e-9,            # host work-list build + staging per listed block (runtime, 1 GPU)
    "t_fix": 0.035,             # per-layer fixed cost of the multi-rank path (docs/PERFORMANCE.md)
    "bw_sock": 2.75e9,          # NCCL sockets over loopback
    "hbm_read": 4.24e12,        # H200 read bandwidth (decode_gpu.json bandwidth.read_gbps)
    "bytes_ratio": {            # selected/dense_ring bytes (P=2, P>=4)
        ("block_sparse", 0.9): (0.750, 0.742), ("block_sparse", 0.95): (0.693, 0.645),
        ("vertical_slash", 0.9): (0.559, 0.454), ("vertical_slash", 0.95): (0.559, 0.454),
        ("flexprefill", 0.9): (0.559, 0.454), ("flexprefill", 0.95): (0.559, 0.454),
        ("dense", 0.0): (0.75, 0.75)},
    "decode": {                 # one H200, step ms (decode_gpu.json)
        ("dense", K128, 1): 0.1490, ("dense", M1, 1): 0.9764, ("dense", K128, 8): 0.9638,
        ("dense", K128, 32): 3.8117, ("quest", K128, 1): 0.1035, ("quest", M1, 1): 0.5552,
        ("quest", K128, 8): 0.4166, ("quest", K128, 32): 1.4633, ("snapkv", K128, 1): 0.0283,
        ("snapkv", K128, 8): 0.0748, ("snapkv", K128, 32): 0.2447},
}
ASSUMED = {
    "t_launch": (5e-6, "kernel launch + event per ring step (assumed)"),
    "t_msg": (1e-6, "injection overhead per message of an MPI_Alltoallv (assumed)"),
    "t_sync": (10e-6, "one device<->host copy and sync of a decode step with P > 1 (assumed)"),
    "t_cand": (2e-9, "host top-k merge per Quest candidate (assumed)"),
    "shm_bw": (5e9, "MPI shared memory between CPU ranks (assumed)"),
    "shm_lat": (2e-6, "MPI shared-memory message latency (assumed)"),
    "cpu_cores": (2, "cores of the CPU VM the CPU-rank runs used (bench/results headers)"),
}

NOTES = []      # which inputs were missing / which defaults were used
SOURCES = {}    # parameter -> where it came from


def note(msg):
    NOTES.append(msg)


def load(name):
    path = os.path.join(RES, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        note("input missing or unreadable: bench/results/%s (%s); documented defaults used"
             % (name, e.__class__.__name__))
        return None


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def causal_pairs(n):
    return n * (n + 1) / 2.0


# ---------------------------------------------------------------------------------------------
# Parameters from the measurements
class Params:
    pass


def gpu_kernel_params(P, kj):
    """Dense rate per block size and the per-row cost L0 (block-pair units) of the kernel."""
    P.sms = DEFAULTS["sms"]
    P.rate = {128: DEFAULTS["gpu_rate_128"], 64: DEFAULTS["gpu_rate_64"]}
    P.L0 = {128: DEFAULTS["gpu_L0_128"], 64: DEFAULTS["gpu_L0_64"]}
    P.t_stage = None
    if not kj:
        SOURCES["gpu kernel"] = "defaults (gpu_kernels.json missing)"
        return
    runs = kj.get("ours", {}).get("runs", [])
    P.sms = kj.get("ours", {}).get("sm_count", P.sms)
    for b in (128, 64):
        dense = [r for r in runs if r["block"] == b and r["sparsity_target"] == 0 and r["n"] >= 32768]
        if dense:
            P.rate[b] = median([r["sparse_tflops"] for r in dense]) * 1e12
        # per run: the L0 that makes (nnz + L0*rows) block pairs at the dense rate, in waves of
        # one row per SM, equal to kernel_ms; the median over the sparse runs (robust to the
        # L2-bound 128K runs, docs/PERFORMANCE.md)
        l0s = []
        for r in runs:
            if r["block"] != b or not 0.85 <= r["sparsity_target"] < 1:
                continue
            n = r["n"]
            rows = HQ * n / b
            t_blk = 4 * D * b * b / P.rate[b]
            waves = math.ceil(rows / P.sms)
            l0s.append(r["kernel_ms"] * 1e-3 / (waves * P.sms * t_blk) - r["nnz_blocks"] / rows)
        if l0s:
            P.L0[b] = max(0.0, median(l0s))
    st = [(r["call_ms"] - r["kernel_ms"]) * 1e-3 / r["nnz_blocks"] for r in runs if r["nnz_blocks"]]
    P.t_stage = median(st) if st else None
    SOURCES["gpu kernel"] = ("gpu_kernels.json ours.runs (%s): dense rate = median sparse_tflops of "
                             "block-b dense runs N>=32K; L0 = least squares over the sparse runs' "
                             "kernel_ms" % kj.get("device", "?"))


def kernel_time(P, pairs, rows, b):
    """Kernel time of one call: rows CTAs (one per (q-head, q-block) row with work), waves on
    the SMs, each row costing (L + L0) block pairs at the dense per-block rate."""
    if pairs <= 0 or rows <= 0:
        return 0.0
    nnz = pairs / (b * b)
    L = nnz / rows
    t_blk = 4 * D * b * b / P.rate[b]
    waves = math.ceil(rows / P.sms)
    return waves * (L + P.L0[b]) * P.sms * t_blk


def host_params(P, mt, g2):
    """t_host per listed block: least squares over the 1-GPU dense runs of methods_time_gpu."""
    P.t_host = DEFAULTS["t_host"]
    src = "default"
    if mt:
        num = den = 0.0
        for r in mt.get("runs", []):
            if r["method"] != "dense" or r.get("ranks", 1) != 1:
                continue
            n = r["seq_len"]
            pairs = HQ * causal_pairs(n)
            tk = kernel_time(P, pairs, HQ * n / 128, 128)
            e = r["selected_blocks"]
            num += (r["attention_s"] - tk) * e
            den += e * e
        if den > 0:
            P.t_host = num / den
            src = "methods_time_gpu.json dense runs (attention_s - predicted kernel) / selected_blocks, least squares"
    SOURCES["t_host"] = src


def socket_params(P, g2):
    """Socket bandwidth: the bytes a rank receives more in dense_ring than in selected, over the
    time they add (same method, sparsity, N; Block-Sparse 0.9 and 0.95); fixed multi-rank cost:
    what the socket Block-Sparse 0.95 selected run (least compute, least bytes) leaves over."""
    P.bw_sock = DEFAULTS["bw_sock"]
    P.t_fix = DEFAULTS["t_fix"]
    if not g2:
        SOURCES["bw_sock"] = SOURCES["t_fix"] = "default (gpu_2gpu.json missing)"
        return
    runs = g2["runs"]

    def rec(name):
        r = runs.get(name)
        if not r or "derived" not in r:
            return None
        L = r["report"]["layers"][0]
        return r["derived"]["attn_s"], L["bytes_recv_max_rank"]
    bws = []
    for s in ("0.9", "0.95"):
        a, b = rec("socket_2gpu_bs%s_dense_ring" % s), rec("socket_2gpu_bs%s_selected" % s)
        if a and b and a[0] > b[0]:
            bws.append((a[1] - b[1]) / (a[0] - b[0]))
    if bws:
        P.bw_sock = sum(bws) / len(bws)
        SOURCES["bw_sock"] = ("gpu_2gpu.json socket_2gpu_bs{0.9,0.95}_{dense_ring,selected}: "
                              "delta bytes_recv_max_rank / delta attn_s, mean (%s GB/s)"
                              % ", ".join("%.2f" % (x / 1e9) for x in bws))
    LINKS["eth25"]["bw"] = P.bw_sock
    r = runs.get("socket_2gpu_bs0.95_selected")
    if r and "derived" in r:
        pred = prefill_run_measured(P, r, "eth25", t_fix=0.0)
        P.t_fix = max(0.0, r["derived"]["attn_s"] - pred["T_attn"])
        SOURCES["t_fix"] = ("gpu_2gpu.json socket_2gpu_bs0.95_selected: attn_s minus the model "
                            "without it (%.4f - %.4f s)" % (r["derived"]["attn_s"], pred["T_attn"]))


def bytes_ratio_params(P, g2, mb):
    """selected/dense_ring bytes per (method, sparsity) at P = 2 and P >= 4."""
    P.ratio = dict(DEFAULTS["bytes_ratio"])
    srcs = []
    cpu = {}
    if mb:
        for r in mb.get("runs", []):
            cpu[(r["method"], round(r["sparsity_target"], 2), r["ranks"])] = r["bytes_moved"] / r["bytes_dense_ring"]
        for m in ("vertical_slash", "flexprefill"):
            for s in (0.9, 0.95):
                if (m, s, 2) in cpu and (m, s, 4) in cpu:
                    P.ratio[(m, s)] = (cpu[(m, s, 2)], cpu[(m, s, 4)])
        srcs.append("VS/FP: methods_bytes_cpu.json bytes_moved/bytes_dense_ring (64K, 2 and 4 ranks)")
    if g2:
        summ = g2.get("summary", {})
        for s in (0.9, 0.95):
            k = "nvlink_bs%s" % ("0.9" if s == 0.9 else "0.95")
            if k in summ:
                r2 = summ[k]["bytes_ratio"]
                f = (cpu[("block_sparse", s, 4)] / cpu[("block_sparse", s, 2)]
                     if ("block_sparse", s, 4) in cpu and ("block_sparse", s, 2) in cpu else 1.0)
                P.ratio[("block_sparse", s)] = (r2, r2 * f)
        srcs.append("Block-Sparse: gpu_2gpu.json summary nvlink_bs*.bytes_ratio (128K, 128-blocks, P=2), "
                    "P>=4 scaled by the CPU 4-rank/2-rank ratio")
    SOURCES["bytes_ratio"] = "; ".join(srcs) or "defaults"


def ratio_at(P, method, s, p):
    key = (method, 0.0 if method == "dense" else s)
    r2, r4 = P.ratio.get(key, (1.0, 1.0))
    return 1.0 if p == 1 else (r2 if p == 2 else r4)


def select_params(P, mt):
    """1-GPU selection time (summarise + select) per method, sparsity, N; power law in N."""
    P.sel = {}
    if not mt:
        return
    pts = {}
    for r in mt.get("runs", []):
        pts.setdefault((r["method"], round(r["sparsity_target"], 2)), []).append((r["seq_len"], r["select_s"]))
    P.sel = {k: sorted(v) for k, v in pts.items()}


def select_time_1gpu(P, method, s, n):
    key = (method, 0.0 if method == "dense" else s)
    pts = P.sel.get(key) or P.sel.get((method, 0.9))
    if not pts:
        return 0.0
    for nn, t in pts:
        if nn == n:
            return t
    (n1, t1), (n2, t2) = pts[-2], pts[-1]
    if n < pts[0][0]:
        (n1, t1), (n2, t2) = pts[0], pts[1]
    k = math.log(t2 / t1) / math.log(n2 / n1)
    return t2 * (n / n2) ** k


# ---------------------------------------------------------------------------------------------
# Prefill
def plan_time(p, lat):
    """Request lists of the selected exchange: MPI_Alltoall of counts (Bruck: log2 P rounds)
    and MPI_Alltoallv of the lists (P-1 messages posted at once)."""
    if p <= 1:
        return 0.0
    return math.log2(p) * lat + lat + (p - 1) * ASSUMED["t_msg"][0]


def prefill_step(P, n, p, density, b, step_bytes, lat, bw, runtime, host_fraction=1.0):
    """One rank's ring: per step compute c, transfer x, host list work h, step tau."""
    chunk = n / (2 * p)
    b = int(min(b, chunk)) if chunk >= 64 else 64
    pairs_step = density * HQ * n * n / (2.0 * p * p)
    rows = HQ * (n / p) / b
    nnz = pairs_step / (b * b)
    rows_ne = rows if density >= 1 else rows * (1 - math.exp(-nnz / rows)) if rows else 0
    t_k = kernel_time(P, pairs_step, rows_ne, b)
    t_merge = (3 * 4 * HQ * (n / p) * D / P.hbm) if p > 1 else 0.0
    c = t_k + t_merge + ASSUMED["t_launch"][0]
    h = P.t_host * nnz * host_fraction if runtime else 0.0
    x = (step_bytes / bw + lat) if p > 1 else 0.0
    tau = max(c, h, x)
    T_ring = h + c + (p - 1) * tau
    return {"c": c, "x": x, "h": h, "tau": tau, "T_ring": T_ring, "block": b,
            "bound": "compute" if tau == c else ("host" if tau == h else "link")}


def prefill_config(P, method, s, exch, link, n, p, runtime):
    density = 1.0 if method == "dense" else 1.0 - s
    b = BLOCK[method]
    L = LINKS[link]
    shard = G * (n / p) * D * 2 * EB
    if exch == "dense_ring":
        sb = shard
        ratio = 1.0
    else:
        ratio = ratio_at(P, method, s, p)
        sb = shard * min(1.0, ratio / CAUSAL_CAP)  # worst rank of a step gets both chunks of a source
    st = prefill_step(P, n, p, density, b, sb, L["lat"], L["bw"], runtime)
    T_plan = plan_time(p, L["lat"]) if exch == "selected" else 0.0
    T_fix = P.t_fix if (runtime and p > 1) else 0.0
    T = st["T_ring"] + T_plan + T_fix
    # selection (not part of attention): local work / P + its collectives over the link
    sel = select_time_1gpu(P, method, s, n) / p
    if p > 1 and method == "block_sparse":
        agb = G * (n / b) * D * 4
        sel += (p - 1) * L["lat"] + (p - 1) / p * agb / L["bw"]
    elif p > 1 and method in ("vertical_slash", "flexprefill"):
        vb = HQ * n * 8  # int64 per (q-head, key) / offset
        sel += 3 * (p - 1) * L["lat"] + (2 * (p - 1) / p * vb + (p - 1) / p * vb) / L["bw"]
    return dict(st, T_plan=T_plan, T_fix=T_fix, T_attn=T, step_bytes=sb, shard_bytes=shard,
                bytes_ratio=ratio, sel=sel)


def prefill_grid(P):
    out = []
    cache1 = {}
    for method in METHODS:
        for s in SPARSITIES:
            if (method == "dense") != (s == 0.0):
                continue
            for exch in EXCHANGES:
                for link in LINK_ORDER:
                    for n in NS:
                        for runtime in (False, True):
                            k1 = (method, s, n, runtime)
                            if k1 not in cache1:
                                cache1[k1] = prefill_config(P, method, s, exch, link, n, 1, runtime)["T_attn"]
                        t1i, t1r = cache1[(method, s, n, False)], cache1[(method, s, n, True)]
                        td = cache1[("dense", 0.0, n, False)]
                        for p in PS:
                            a = prefill_config(P, method, s, exch, link, n, p, False)
                            r = prefill_config(P, method, s, exch, link, n, p, True)
                            out.append({
                                "method": method, "sparsity": s, "exchange": exch, "link": link,
                                "N": n, "P": p, "block": a["block"],
                                "compute_step_s": a["c"], "transfer_step_s": a["x"],
                                "step_s": a["tau"], "bound": a["bound"],
                                "overlap": (min(a["c"], a["x"]) / a["x"]) if a["x"] > 0 else 1.0,
                                "T_attn_s": a["T_attn"], "efficiency": t1i / (p * a["T_attn"]),
                                "speedup_vs_dense_1gpu": td / a["T_attn"],
                                "bytes_ratio": a["bytes_ratio"], "step_bytes": a["step_bytes"],
                                "select_s": a["sel"],
                                "runtime": {"host_step_s": r["h"], "step_s": r["tau"], "bound": r["bound"],
                                            "T_attn_s": r["T_attn"], "efficiency": t1r / (p * r["T_attn"])},
                            })
    return out


# ---------------------------------------------------------------------------------------------
# Checks against the measured configurations
def prefill_run_measured(P, run, link, t_fix=None):
    """Prediction for one run of gpu_2gpu.json, from its own measured sparsity and bytes."""
    rep = run["report"]
    L0 = rep["layers"][0]
    n, p = rep["seq_len"], rep["ranks"]
    density = 1.0 - L0.get("sparsity_measured", 0.0) if rep["method"] != "dense" else 1.0
    b = 128
    if p == 1:
        st = prefill_step(P, n, 1, density, b, 0, 0, 1, True)
        return {"T_attn": st["T_ring"], "st": st}
    Lk = LINKS[link]
    st = prefill_step(P, n, p, density, b, L0["bytes_recv_max_rank"] / (p - 1), Lk["lat"], Lk["bw"], True)
    T_plan = plan_time(p, Lk["lat"]) if rep["exchange"] == "selected" else 0.0
    tf = P.t_fix if t_fix is None else t_fix
    return {"T_attn": st["T_ring"] + T_plan + tf, "st": st}


def checks(P, g2, mt, mb, cj, dg, dc):
    rows = []

    def add(group, name, pred, meas, role="check", what=""):
        rows.append({"group": group, "run": name, "predicted": pred, "measured": meas,
                     "ratio": pred / meas if meas else float("nan"), "role": role, "what": what})

    # 1-GPU runtime runs (H200): methods_time_gpu.json attention_s
    if mt:
        for r in mt["runs"]:
            n = r["seq_len"]
            b = 128 if r["method"] == "dense" else 64
            density = 1.0 - r["sparsity_measured"]
            pairs = density * HQ * causal_pairs(n)
            entries = r["selected_blocks"] + r.get("selected_columns", 0) / b
            rows_ne = min(HQ * n / b, entries)
            t = kernel_time(P, pairs, rows_ne, b) + P.t_host * entries + ASSUMED["t_launch"][0]
            add("1 GPU (methods_time_gpu)", "%s %s %dK" % (r["method"], r["sparsity_target"], n // 1024), t,
                r["attention_s"], "calibration" if r["method"] == "dense" else "check", "attention_s")
    # gpu_kernels: kernel-only, 1 GPU (H100): the kernel term itself
    # 2-GPU runs (H200, NVLink and sockets) and the 1-GPU run of the same session
    if g2:
        for name, r in g2["runs"].items():
            if "derived" not in r:
                continue
            link = "nvlink" if r["link"] == "nvlink" else "eth25"
            pr = prefill_run_measured(P, r, link)
            role = "calibration" if name.startswith("socket_2gpu_bs") else "check"
            add("2 GPU (gpu_2gpu)", name, pr["T_attn"], r["derived"]["attn_s"], role, "attn_s")
    # CPU ranks, prefill: methods_bytes_cpu.json attention_s (64K, 8/2 heads, d 64, 1 thread/rank, 2 cores)
    if mb and cj:
        rate = {}
        for sp in cj.get("sparse", []):
            rate[(sp["d"], sp["bq"], round(sp["sparsity_target"], 2))] = sp["sparse_aware_gflops"] * 1e9
        cores = ASSUMED["cpu_cores"][0]
        for r in mb["runs"]:
            n, p = r["seq_len"], r["ranks"]
            b = 16 if r["method"] == "block_sparse" else 64
            s = round(r["sparsity_target"], 2)
            R2 = rate.get((64, b, s)) or rate.get((64, b, 0.9))
            if not R2:
                continue
            flops = 4 * 64 * (1 - r["sparsity_measured"]) * 8 * causal_pairs(n)
            per_rank_rate = R2 / 2 * min(1.0, cores / p)       # one thread per rank, cores shared
            t = flops / p / per_rank_rate + r["bytes_moved"] / p / ASSUMED["shm_bw"][0]
            add("CPU ranks, prefill (methods_bytes_cpu)", "%s %s np%d" % (r["method"], s, p), t,
                r["attention_s"], "check", "attention_s")
    # decode, one GPU and CPU ranks
    for row in decode_checks(P, dg, dc):
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Decode
def decode_params(P, dg):
    m = dict(DEFAULTS["decode"])
    if dg:
        for r in dg.get("rows", []):
            m[(r["method"], r["seq_len"], r["batch"])] = r["step_ms"]
        P.hbm = dg.get("bandwidth", {}).get("read_gbps", DEFAULTS["hbm_read"] / 1e9) * 1e9
        SOURCES["decode"] = "decode_gpu.json rows[].step_ms; hbm = bandwidth.read_gbps"
    else:
        P.hbm = DEFAULTS["hbm_read"]
        SOURCES["decode"] = "defaults (decode_gpu.json missing)"
    ms = 1e-3
    # dense: t = a + B * n * c, two points at B = 1
    c_d = (m[("dense", M1, 1)] - m[("dense", K128, 1)]) * ms / (M1 - K128)
    a_d = m[("dense", K128, 1)] * ms - K128 * c_d
    # quest: t = a_q + n * c_q(B); B = 1 from two points, other B from the 128K point
    c_q1 = (m[("quest", M1, 1)] - m[("quest", K128, 1)]) * ms / (M1 - K128)
    a_q = m[("quest", K128, 1)] * ms - K128 * c_q1
    c_q = {1: c_q1}
    for B in (8, 32):
        if ("quest", K128, B) in m:
            c_q[B] = (m[("quest", K128, B)] * ms - a_q) / K128
    # snapkv: t = a_s + B * (n/20) * c_d, a_s from the 128K, B = 1 point
    a_s = m[("snapkv", K128, 1)] * ms - (K128 / 20) * c_d
    P.dec = {"a_d": a_d, "c_d": c_d, "a_q": a_q, "c_q": c_q, "a_s": a_s, "meas": m}
    P.kv_bw = 4 * G * D / c_d  # bytes of K+V per token (bf16) / per-token time


def decode_local(P, method, n, B):
    d = P.dec
    if method == "dense":
        return d["a_d"] + B * n * d["c_d"]
    if method == "snapkv":
        return d["a_s"] + B * (n / 20.0) * d["c_d"]
    cq = d["c_q"].get(B) or d["c_q"][1] * B
    return d["a_q"] + n * cq


def decode_step(P, method, N, B, p, link, merge="gather", host=True):
    L = LINKS[link]
    n = N / p
    t_loc = decode_local(P, method, n, B)
    t_merge = t_cand = 0.0
    m = B * HQ * (D + 1) * 4
    if p > 1:
        if merge == "gather":  # binomial gather to rank 0: log2 P latencies, (P-1) messages into rank 0
            t_merge = math.log2(p) * L["lat"] + (p - 1) * m / L["bw"]
        else:
            t_merge = math.log2(p) * (L["lat"] + m / L["bw"])
        t_merge += (2 * ASSUMED["t_sync"][0] if host else 0.0) + p * m / P.hbm
        if method == "quest":
            pb = math.ceil(N / 20 / 16)
            nc = B * G * pb
            # two MPI_Allgather (scores, page ids): recursive doubling, log2 P latencies each
            t_cand = 2 * math.log2(p) * L["lat"] + (p - 1) * nc * 8 / L["bw"]
            if host:
                t_cand += 3 * ASSUMED["t_sync"][0] + p * nc * ASSUMED["t_cand"][0]
    return {"local_s": t_loc, "merge_s": t_merge, "cand_s": t_cand, "step_s": t_loc + t_merge + t_cand}


def decode_grid(P):
    out = []
    for method in ("dense", "quest", "snapkv"):
        for B in (1, 32):
            for N in NS:
                t1 = decode_step(P, method, N, B, 1, "nvlink")["step_s"]
                for link in LINK_ORDER:
                    for p in PS:
                        g = decode_step(P, method, N, B, p, link, "gather")
                        t = decode_step(P, method, N, B, p, link, "tree")
                        out.append({"method": method, "batch": B, "N": N, "link": link, "P": p,
                                    "local_s": g["local_s"], "merge_gather_s": g["merge_s"],
                                    "merge_tree_s": t["merge_s"], "quest_candidates_s": g["cand_s"],
                                    "step_s": g["step_s"], "step_tree_s": t["step_s"],
                                    "speedup": t1 / g["step_s"], "efficiency": t1 / (p * g["step_s"]),
                                    "efficiency_tree": t1 / (p * t["step_s"])})
    return out


def decode_checks(P, dg, dc):
    rows = []
    m = P.dec["meas"]
    for (method, N, B), t in sorted(m.items()):
        if method not in ("dense", "quest", "snapkv"):
            continue
        pred = decode_local(P, method, N, B)
        calib = (method == "dense" and B == 1) or (method == "quest") or (method == "snapkv" and B == 1)
        rows.append({"group": "decode, 1 GPU (decode_gpu)", "run": "%s %dK B%d" % (method, N // 1024, B),
                     "predicted": pred, "measured": t * 1e-3, "ratio": pred / (t * 1e-3),
                     "role": "calibration" if calib else "check", "what": "step_ms"})
    if dc:
        t1 = {r["method"]: r["step_ms"] * 1e-3 for r in dc.get("rows", []) if r["ranks"] == 1}
        cfg = dc.get("config", {})
        N, B = cfg.get("seq_len", 65536), cfg.get("batch", 1)
        cores = ASSUMED["cpu_cores"][0]
        for r in dc.get("rows", []):
            p = r["ranks"]
            if p == 1 or r["method"] not in t1:
                continue
            # 1 rank ran 2 threads; P ranks run 1 thread each on the 2 cores
            loc = t1[r["method"]] / p * 2 * max(1.0, p / cores)
            msg = B * HQ * (D + 1) * 4
            lat, bw = ASSUMED["shm_lat"][0], ASSUMED["shm_bw"][0]
            t = loc + math.log2(p) * lat + (p - 1) * msg / bw
            if r["method"] == "quest":
                nc = B * G * math.ceil(N / 20 / 16)
                t += 2 * math.log2(p) * lat + (p - 1) * nc * 8 / bw + p * nc * ASSUMED["t_cand"][0]
            rows.append({"group": "decode, CPU ranks (decode_cpu_ranks)", "run": "%s np%d" % (r["method"], p),
                         "predicted": t, "measured": r["step_ms"] * 1e-3, "ratio": t / (r["step_ms"] * 1e-3),
                         "role": "check", "what": "step_ms"})
    return rows


# ---------------------------------------------------------------------------------------------
# Printing
def fmt_t(x):
    if x == 0:
        return "0"
    if x >= 1:
        return "%.3f s" % x
    if x >= 1e-3:
        return "%.2f ms" % (x * 1e3)
    return "%.1f us" % (x * 1e6)


def table(title, head, rows):
    print("#")
    print("# " + title)
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    print("# " + "  ".join(str(h).rjust(w[i]) for i, h in enumerate(head)))
    for r in rows:
        print("  " + "  ".join(str(c).rjust(w[i]) for i, c in enumerate(r)))


def nk(n):
    return "1M" if n == M1 else "%dK" % (n // 1024)


def print_prefill(grid, ps_show=(8, 64, 512, 1024)):
    idx = {(g["method"], g["sparsity"], g["exchange"], g["link"], g["N"], g["P"]): g for g in grid}
    cases = [("dense", 0.0), ("block_sparse", 0.9), ("block_sparse", 0.95), ("vertical_slash", 0.9),
             ("vertical_slash", 0.95), ("flexprefill", 0.9), ("flexprefill", 0.95)]
    for n in NS:
        rows = []
        for m, s in cases:
            for link in LINK_ORDER:
                for p in ps_show:
                    a = idx[(m, s, "dense_ring", link, n, p)]
                    b = idx[(m, s, "selected", link, n, p)]
                    rows.append([m, s, link, p, fmt_t(a["compute_step_s"]), fmt_t(a["transfer_step_s"]),
                                 fmt_t(b["transfer_step_s"]), fmt_t(a["T_attn_s"]), fmt_t(b["T_attn_s"]),
                                 "%.2f" % a["efficiency"], "%.2f" % b["efficiency"],
                                 "%.2f" % (a["T_attn_s"] / b["T_attn_s"]), a["bound"] + "/" + b["bound"],
                                 "%.2f" % a["runtime"]["efficiency"], "%.2f" % b["runtime"]["efficiency"]])
        table("prefill N=%s, device lists (kernel + link): per-step compute c, transfer x (dense_ring / "
              "selected), layer time T, efficiency vs 1 GPU of the same method; rt_eff = as built "
              "(host lists + fixed cost)" % nk(n),
              ["method", "sp", "link", "P", "c_step", "x_ring", "x_sel", "T_ring", "T_sel", "eff_ring",
               "eff_sel", "ring/sel", "bound", "rt_eff_ring", "rt_eff_sel"], rows)


def print_decode(grid, ps_show=(1, 8, 64, 512, 1024)):
    idx = {(g["method"], g["batch"], g["N"], g["link"], g["P"]): g for g in grid}
    rows = []
    for N in NS:
        for B in (1, 32):
            for m in ("dense", "quest", "snapkv"):
                for link in ("nvlink", "ib_ndr", "eth25"):
                    for p in ps_show:
                        if p == 1 and link != "nvlink":
                            continue
                        g = idx[(m, B, N, link, p)]
                        rows.append([nk(N), B, m, link if p > 1 else "-", p, fmt_t(g["local_s"]),
                                     fmt_t(g["merge_gather_s"]), fmt_t(g["merge_tree_s"]),
                                     fmt_t(g["quest_candidates_s"]), fmt_t(g["step_s"]),
                                     "%.2f" % g["speedup"], "%.3f" % g["efficiency"]])
    table("decode step (one layer, all 32 q-heads): local attention over N/P keys + merge of partials "
          "(gather as built / tree) + Quest candidate all-gather; speedup and efficiency vs 1 GPU",
          ["N", "B", "method", "link", "P", "local", "merge_gth", "merge_tree", "quest_cand", "step",
           "speedup", "eff"], rows)


def print_checks(rows):
    out = []
    for r in rows:
        out.append([r["group"], r["run"], r["role"], fmt_t(r["predicted"]), fmt_t(r["measured"]),
                    "%.2f" % r["ratio"]])
    table("check: model vs measured (ratio = predicted / measured; 'calibration' rows fed a parameter)",
          ["group", "run", "role", "predicted", "measured", "ratio"], out)


# ---------------------------------------------------------------------------------------------
def plots(grid, dgrid):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# plots skipped: matplotlib is not installed (Debian: apt-get install python3-matplotlib)")
        return []
    files = []
    for n in NS:
        fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), sharey=True)
        for ax, link in zip(axes, LINK_ORDER):
            for m, s, ls in (("dense", 0.0, "-"), ("block_sparse", 0.95, "--"), ("vertical_slash", 0.95, ":")):
                for exch, mk in (("dense_ring", "o"), ("selected", "s")):
                    pts = [g for g in grid if g["method"] == m and g["sparsity"] == s and g["exchange"] == exch
                           and g["link"] == link and g["N"] == n]
                    ax.plot([g["P"] for g in pts], [g["efficiency"] for g in pts], ls, marker=mk, ms=3,
                            label="%s %s %s" % (m, s if s else "", exch))
            ax.set_xscale("log", base=2)
            ax.set_title("%s, N=%s" % (LINKS[link]["label"], nk(n)))
            ax.set_xlabel("P (GPUs)")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("parallel efficiency (device lists)")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        f = os.path.join(RES, "perfmodel_prefill_%s.png" % nk(n))
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, B in zip(axes, (1, 32)):
        for m in ("dense", "quest", "snapkv"):
            for N, ls in ((K128, "-"), (M1, "--")):
                pts = [g for g in dgrid if g["method"] == m and g["batch"] == B and g["N"] == N and g["link"] == "ib_ndr"]
                ax.plot([g["P"] for g in pts], [g["step_s"] * 1e3 for g in pts], ls, marker="o", ms=3,
                        label="%s %s" % (m, nk(N)))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title("decode step over IB NDR, batch %d" % B)
        ax.set_xlabel("P (GPUs)")
        ax.set_ylabel("ms per step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    f = os.path.join(RES, "perfmodel_decode.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(f)
    for f in files:
        print("# wrote %s" % os.path.relpath(f, ROOT))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plots", action="store_true", help="write bench/results/perfmodel_*.png (matplotlib)")
    ap.add_argument("--json", default=os.path.join(RES, "perfmodel.json"))
    args = ap.parse_args()

    kj, g2 = load("gpu_kernels.json"), load("gpu_2gpu.json")
    mt, mb = load("methods_time_gpu.json"), load("methods_bytes_cpu.json")
    dg, dc = load("decode_gpu.json"), load("decode_cpu_ranks.json")
    cj = load("cpu_attention.json")

    P = Params()
    gpu_kernel_params(P, kj)
    decode_params(P, dg)
    host_params(P, mt, g2)
    socket_params(P, g2)
    bytes_ratio_params(P, g2, mb)
    select_params(P, mt)

    print("# sparsering performance model (bench/model/perfmodel.py; formulas: docs/PERFMODEL.md)")
    print("# shape: %d q-heads / %d kv-heads, d %d, bf16 K/V; blocks: dense/Block-Sparse 128, VS/FP 64; zigzag" % (HQ, G, D))
    print("# kernel: dense rate %.0f TFLOP/s (128-blocks), %.0f (64); per-row cost L0 = %.2f / %.2f block pairs; %d SMs"
          % (P.rate[128] / 1e12, P.rate[64] / 1e12, P.L0[128], P.L0[64], P.sms))
    print("# host work lists (as built): %.1f ns per listed block; fixed multi-rank cost %.4f s per layer"
          % (P.t_host * 1e9, P.t_fix))
    for k in LINK_ORDER:
        L = LINKS[k]
        print("# link %-7s %-20s %7.2f GB/s, %4.0f us  (%s)" % (k, L["label"], L["bw"] / 1e9, L["lat"] * 1e6, L["src"]))
    print("# decode: dense a %.1f us + B*n*%.3g s (KV %.0f GB/s); quest a %.1f us + n*c_q(B) %s; snapkv a %.1f us"
          % (P.dec["a_d"] * 1e6, P.dec["c_d"], P.kv_bw / 1e9, P.dec["a_q"] * 1e6,
             {b: "%.3g" % v for b, v in P.dec["c_q"].items()}, P.dec["a_s"] * 1e6))
    print("# selected/dense_ring bytes (P=2, P>=4): " + ", ".join(
        "%s %s %.3f/%.3f" % (m, s, a, b) for (m, s), (a, b) in sorted(P.ratio.items())))
    for k, v in ASSUMED.items():
        print("# assumed %-10s %-8g %s" % (k, v[0], v[1]))
    for n_ in NOTES:
        print("# NOTE: " + n_)

    grid = prefill_grid(P)
    dgrid = decode_grid(P)
    chk = checks(P, g2, mt, mb, cj, dg, dc)

    print_prefill(grid)
    print_decode(dgrid)
    print_checks(chk)

    # where the selected exchange pays off (device lists): smallest P with ring/sel >= 1.1
    pay = []
    for m, s in (("block_sparse", 0.9), ("block_sparse", 0.95), ("vertical_slash", 0.95), ("flexprefill", 0.9)):
        for link in LINK_ORDER:
            for n in NS:
                g = {x["P"]: x for x in grid if x["method"] == m and x["sparsity"] == s and x["link"] == link and x["N"] == n}
                best = max(PS[1:], key=lambda p: g_ring(grid, m, s, link, n, p) / g[p]["T_attn_s"])
                sp = g_ring(grid, m, s, link, n, best) / g[best]["T_attn_s"]
                first = next((p for p in PS[1:] if g_ring(grid, m, s, link, n, p) / g[p]["T_attn_s"] >= 1.1), None)
                pay.append([m, s, link, nk(n), first if first else "-", best, "%.2f" % sp])
    table("selected vs dense_ring (device lists): first P where selected is >= 1.1x faster, and the best P and speedup",
          ["method", "sp", "link", "N", "first_P", "best_P", "max_ring/sel"], pay)

    files = plots(grid, dgrid) if args.plots else []
    if not args.plots:
        print("# plots: not requested (run with --plots; needs matplotlib)")

    out = {
        "model": "bench/model/perfmodel.py", "doc": "docs/PERFMODEL.md",
        "shape": {"q_heads": HQ, "kv_heads": G, "head_dim": D, "elem_bytes": EB, "blocks": BLOCK},
        "parameters": {
            "gpu_rate_tflops": {str(k): v / 1e12 for k, v in P.rate.items()},
            "gpu_L0_blocks": {str(k): v for k, v in P.L0.items()}, "sms": P.sms,
            "t_stage_s_per_block": P.t_stage, "t_host_s_per_block": P.t_host, "t_fix_s": P.t_fix,
            "hbm_read_Bps": P.hbm, "decode": {k: v for k, v in P.dec.items() if k != "meas"},
            "decode_kv_Bps": P.kv_bw,
            "links": {k: {kk: vv for kk, vv in v.items()} for k, v in LINKS.items()},
            "bytes_ratio": {"%s %s" % k: {"P2": v[0], "P>=4": v[1]} for k, v in P.ratio.items()},
            "assumed": {k: {"value": v[0], "what": v[1]} for k, v in ASSUMED.items()},
            "sources": SOURCES,
        },
        "notes": NOTES, "prefill": grid, "decode": dgrid, "check": chk, "payoff": pay,
        "plots": [os.path.relpath(f, ROOT) for f in files],
    }
    with open(args.json, "w") as f:  # one grid row per line
        f.write("{\n")
        for i, (k, v) in enumerate(out.items()):
            sep = "," if i < len(out) - 1 else ""
            if isinstance(v, list) and v and isinstance(v[0], (dict, list)):
                f.write(" %s: [\n" % json.dumps(k))
                f.write(",\n".join("  " + json.dumps(r, default=str) for r in v))
                f.write("\n ]%s\n" % sep)
            else:
                f.write(" %s: %s%s\n" % (json.dumps(k), json.dumps(v, indent=1, default=str).replace("\n", "\n "), sep))
        f.write("}\n")
    print("# wrote %s (%d prefill, %d decode, %d check rows)" % (os.path.relpath(args.json, ROOT), len(grid),
                                                                 len(dgrid), len(chk)))


def g_ring(grid, m, s, link, n, p):
    for x in grid:
        if (x["method"], x["sparsity"], x["exchange"], x["link"], x["N"], x["P"]) == (m, s, "dense_ring", link, n, p):
            return x["T_attn_s"]
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
