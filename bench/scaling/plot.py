#!/usr/bin/env python3
"""bench/scaling/plot.py DIR [OUTDIR] — PNG plots of a jobs/scaling.sh sweep (DIR/sweep.json).

Writes into OUTDIR (default DIR):
  strong_scaling.png  attention time (median; bars: min..max over repetitions) vs ranks, one panel
                      per N, one line per method/sparsity/exchange, dotted: ideal (T_ref p_ref / p)
  weak_scaling.png    the same for weak scaling (fixed tokens per rank); ideal: the reference's
                      per-rank throughput on the larger work (causal attention's work grows as N^2,
                      so the ideal time grows in proportion to the ranks)
  efficiency.png      per-rank throughput relative to the smallest rank count, strong and weak
  bytes_moved.png     bytes moved per layer vs ranks: selected vs dense_ring, per method
  phases.png          per-rank mean time of each phase, stacked, for every point of the largest N
                      (strong scaling), with min..max over ranks as whiskers on each segment
matplotlib (Debian: apt-get install python3-matplotlib), Agg backend; docs/SCALING.md.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STACK = ["generate", "summarise", "select", "exchange", "compute", "download", "verify"]
COLORS = {"generate": "#bbbbbb", "summarise": "#8dd3c7", "select": "#80b1d3", "exchange": "#fb8072",
          "compute": "#fdb462", "download": "#b3de69", "verify": "#d9d9d9"}


MSERIES = []  # (method, sparsity) in a fixed order: one colour each, the same in every plot


def color(pt):
    k = (pt["method"], pt["sparsity"])
    if k not in MSERIES:
        MSERIES.append(k)
    return "C%d" % (MSERIES.index(k) % 10)


def label(pt, with_exchange=True):
    m = pt["method"] if pt["method"] == "dense" else "%s %.2g" % (pt["method"], pt["sparsity"])
    return "%s, %s" % (m, pt["exchange"]) if with_exchange else m


def series(points, key):
    out = {}
    for pt in points:
        out.setdefault(key(pt), []).append(pt)
    for v in out.values():
        v.sort(key=lambda p: p["ranks"])
    return out


def style(pt):
    return "-" if pt["exchange"] == "selected" else "--"


def time_panel(ax, pts_by_series, title):
    for i, (k, pts) in enumerate(sorted(pts_by_series.items())):
        x = [p["ranks"] for p in pts]
        y = [p["attention_s"]["median"] for p in pts]
        err = [[p["attention_s"]["median"] - p["attention_s"]["min"] for p in pts],
               [p["attention_s"]["max"] - p["attention_s"]["median"] for p in pts]]
        c = color(pts[0])
        ax.errorbar(x, y, yerr=err, fmt="o" + style(pts[0]), color=c, capsize=3, ms=4,
                    label=label(pts[0]))
        ideal = [p["ideal_attention_s"] for p in pts]
        if all(v is not None for v in ideal):
            ax.plot(x, ideal, ":", color=c, lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({p["ranks"] for v in pts_by_series.values() for p in v}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("ranks")
    ax.set_ylabel("attention time per layer (s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def footer(fig, meta):
    s = "%s, %s; %s; threads/rank %s, binding %s; %s reps + %s warm-up; %s" % (
        meta.get("version", "?"), (meta.get("git_commit") or "?")[:10],
        ",".join(meta.get("hosts", [])) or "?", meta.get("threads_per_rank", "?"),
        meta.get("binding", "?"), meta.get("reps", "?"), meta.get("warmup", "?"),
        meta.get("started_utc", "")[:10])
    fig.text(0.01, 0.005, s, fontsize=7, color="#555555")


def save(fig, meta, path):
    """The run footer, layout, PNG, and the figure closed."""
    footer(fig, meta)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_plot(points, meta, kind, path):
    pts = [p for p in points if p["scaling"] == kind]
    if not pts:
        return False
    by = series(pts, lambda p: p["seq_len"] if kind == "strong" else p["tokens_per_rank"])
    fig, axes = plt.subplots(1, len(by), figsize=(5.2 * len(by), 4.4), squeeze=False)
    for ax, (x, grp) in zip(axes[0], sorted(by.items())):
        s = series(grp, lambda p: (p["method"], p["sparsity"], p["exchange"]))
        time_panel(ax, s, ("%s scaling, N = %d" % (kind, x)) if kind == "strong"
                   else "weak scaling, %d tokens per rank" % x)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("attention time (median, min..max of repetitions; dotted: ideal)", fontsize=10)
    save(fig, meta, path)
    return True


def efficiency_plot(points, meta, path):
    kinds = [k for k in ("strong", "weak") if any(p["scaling"] == k for p in points)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        pts = [p for p in points if p["scaling"] == kind]
        s = series(pts, lambda p: (p["method"], p["sparsity"], p["exchange"],
                                   p["seq_len"] if kind == "strong" else p["tokens_per_rank"]))
        keys = sorted(s)
        sizes = sorted({k[3] for k in keys})
        for i, k in enumerate(keys):
            v = s[k]
            c = color(v[0])
            mk = "osD^v"[sizes.index(k[3]) % 5]
            ax.plot([p["ranks"] for p in v], [p["efficiency"] or 0 for p in v], mk + style(v[0]),
                    color=c, ms=4, label="%s, %s" % (label(v[0]), ("N=%d" if kind == "strong"
                                                                  else "%d/rank") % k[3]))
        ax.axhline(1, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["ranks"] for p in pts}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_ylim(0, max(1.2, max((p["efficiency"] or 0) for p in pts) * 1.1))
        ax.set_xlabel("ranks")
        ax.set_ylabel("efficiency vs %s" % pts[0]["efficiency_ref"])
        ax.set_title("%s scaling: per-rank throughput vs the smallest rank count" % kind, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=1, loc="best")
    save(fig, meta, path)


def bytes_plot(points, meta, path):
    pts = [p for p in points if p["ranks"] > 1]
    if not pts:
        return False
    kind = "strong" if any(p["scaling"] == "strong" for p in pts) else "weak"
    pts = [p for p in pts if p["scaling"] == kind]
    nmax = max(p["seq_len"] if kind == "strong" else p["tokens_per_rank"] for p in pts)
    pts = [p for p in pts if (p["seq_len"] if kind == "strong" else p["tokens_per_rank"]) == nmax]
    s = series(pts, lambda p: (p["method"], p["sparsity"], p["exchange"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    keys = sorted(s)
    for k in keys:
        v = s[k]
        c = color(v[0])
        ax.plot([p["ranks"] for p in v], [p["bytes_moved"] / 2**20 for p in v], "o" + style(v[0]),
                color=c, ms=4, label=label(v[0]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p["ranks"] for p in pts}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel("ranks")
    ax.set_ylabel("bytes moved per layer, all ranks (MiB)")
    ax.set_title("K/V bytes exchanged, %s scaling, %s = %d\n(solid: selected, dashed: dense_ring)"
                 % (kind, "N" if kind == "strong" else "tokens/rank", nmax), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, meta, path)
    return True


def phases_plot(points, meta, path):
    pts = [p for p in points if p["scaling"] == "strong"] or points
    nmax = max(p["seq_len"] for p in pts)
    pts = [p for p in pts if p["seq_len"] == nmax]
    groups = series(pts, lambda p: (p["method"], p["sparsity"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 1, 4.6), squeeze=False)
    for ax, (_, grp) in zip(axes[0], sorted(groups.items())):
        grp.sort(key=lambda p: (p["exchange"] != "selected", p["ranks"]))
        xs = range(len(grp))
        bottom = [0.0] * len(grp)
        for ph in STACK:
            avg = [p["phases"][ph]["avg"] for p in grp]
            if not any(avg):
                continue
            ax.bar(xs, avg, 0.75, bottom=bottom, color=COLORS[ph], label=ph, edgecolor="white",
                   lw=0.3)
            top = [b + a for b, a in zip(bottom, avg)]
            lo = [max(0.0, a - p["phases"][ph]["min"]) for a, p in zip(avg, grp)]
            hi = [max(0.0, p["phases"][ph]["max"] - a) for a, p in zip(avg, grp)]
            if any(h > 0 for h in hi):
                ax.errorbar(xs, top, yerr=[lo, hi], fmt="none", ecolor="k", elinewidth=0.7,
                            capsize=2)
            bottom = top
        ax.set_xticks(list(xs))
        ax.set_xticklabels(["%s\nnp%d" % ("sel" if p["exchange"] == "selected" else "ring",
                                          p["ranks"]) for p in grp], fontsize=7)
        ax.set_title(label(grp[0], False), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("seconds per layer (mean over ranks;\nwhiskers: min..max over ranks)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("phases, strong scaling, N = %d (exchange and compute overlap: their sum can "
                 "exceed the attention time)" % nmax, fontsize=9)
    save(fig, meta, path)


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    d = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else d
    os.makedirs(out, exist_ok=True)
    s = json.load(open(os.path.join(d, "sweep.json")))
    pts, meta = s["points"], s["meta"]
    for pt in sorted(pts, key=lambda p: (p["method"], p["sparsity"])):
        color(pt)
    made = []
    for kind in ("strong", "weak"):
        if scaling_plot(pts, meta, kind, os.path.join(out, kind + "_scaling.png")):
            made.append(kind + "_scaling.png")
    efficiency_plot(pts, meta, os.path.join(out, "efficiency.png"))
    made.append("efficiency.png")
    if bytes_plot(pts, meta, os.path.join(out, "bytes_moved.png")):
        made.append("bytes_moved.png")
    phases_plot(pts, meta, os.path.join(out, "phases.png"))
    made.append("phases.png")
    print("wrote %s in %s" % (", ".join(made), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
