#!/usr/bin/python3
"""Plot a bench result JSON: throughput per candidate, and the failover timelines
(requests per 250 ms by path, failures in red) for each proxy and cut variant."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def med(v):
    """Median, of an even count the mean of the middle two (as the bench's report); None when
    the metric was not measured."""
    s = sorted(v)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def main(src, dst):
    data = json.load(open(src))
    figs, fo = data["figures"], data["failover"]
    cands = [c for c in ["ingress", "haproxy", "nginx", "direct"] if c in figs]
    variants = sorted({k.split("/")[1] for k in fo})
    proxies = [c for c in cands if any(k.startswith(c + "/") for k in fo)]
    rows = 1 + len(variants)
    fig, axes = plt.subplots(rows, max(1, len(proxies)), figsize=(5 * max(1, len(proxies)), 3.2 * rows), squeeze=False)
    # Row 0: throughput bars across the first row's axes.
    for ax in axes[0]:
        ax.axis("off")
    ax = fig.add_subplot(rows, 1, 1)
    metrics = [("tcp1_gbps", "TCP 1 stream Gbit/s"), ("tcp4_gbps", "TCP 4 streams Gbit/s"),
               ("http_new_rps", "HTTP new-conn kreq/s"), ("http_ka_rps", "HTTP keep-alive kreq/s"),
               ("udp_mbps", "UDP delivered Gbit/s")]
    width = 0.8 / max(1, len(cands))
    for i, c in enumerate(cands):
        xs, vals = [], []
        for j, (key, _) in enumerate(metrics):
            v = med(figs[c].get(key, []))
            if v is None:
                # Not measured (HAProxy has no UDP; a partial --only run): no bar, not a 0.
                continue
            if key.endswith("rps"):
                v /= 1000.0
            if key == "udp_mbps":
                v /= 1000.0
            xs.append(j + i * width)
            vals.append(v)
        ax.bar(xs, vals, width, label=c)
    ax.set_xticks([j + width * (len(cands) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([m[1] for m in metrics], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("throughput (median of runs)")
    for r, variant in enumerate(variants, start=1):
        for col, c in enumerate(proxies):
            ax = axes[r][col]
            runs = fo.get(f"{c}/{variant}", [])
            if not runs:
                ax.axis("off")
                continue
            tl = runs[len(runs) // 2]["timeline"]
            t = [i * 0.25 for i in range(len(tl))]
            ax.stackplot(t, [x[0] for x in tl], [x[1] for x in tl], [x[2] for x in tl],
                         labels=["wan1", "wan2", "mesh"], colors=["#4c72b0", "#55a868", "#c44e52"], alpha=0.8)
            ax.bar(t, [x[3] for x in tl], width=0.25, color="black", label="failed")
            for x, lbl in [(3, "cut wan1"), (9, "cut wan2"), (15, "restore")]:
                ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
            ax.set_title(f"{c}: failover ({variant})", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylabel("req / 250 ms")
            ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
