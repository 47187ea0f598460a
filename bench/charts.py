#!/usr/bin/env python3
"""Draws bench/run's results.tsv as two PNG charts: proxy CPU time per
request, and p99 latency, per scenario and target (medians over the
repetitions). Run by bench/run with a venv that has matplotlib:

    python charts.py results.tsv OUT_DIR
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "direct": "#9e9e9e",
    "switchyard-l7": "#1f77b4",
    "switchyard-l7-policy": "#6baed6",
    "switchyard-l4": "#08519c",
    "nginx-http": "#2ca02c",
    "nginx-stream": "#74c476",
    "haproxy-http": "#d62728",
    "haproxy-tcp": "#fc9272",
}


def main() -> int:
    tsv, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for column, title, unit, name in (
        ("proxy_cpu_us_per_req", "Proxy CPU time per request (lower is better)", "µs", "cpu-per-request.png"),
        ("p99_ms", "p99 latency (lower is better)", "ms", "p99.png"),
    ):
        fig, axes = plt.subplots(len(scenarios), 1, figsize=(9, 2.4 * len(scenarios)), squeeze=False)
        for ax, s in zip(axes[:, 0], scenarios):
            pts = [(r["target"], float(r[column])) for r in rows if r["scenario"] == s and r[column]]
            if not pts:
                ax.set_visible(False)
                continue
            names = [p[0] for p in pts]
            vals = [p[1] for p in pts]
            bars = ax.barh(names, vals, color=[COLORS.get(n, "#555555") for n in names])
            ax.bar_label(bars, labels=[f"{v:,.1f}" for v in vals], padding=3, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(s, fontsize=10, loc="left")
            ax.set_xlabel(unit, fontsize=8)
            ax.tick_params(labelsize=8)
            ax.margins(x=0.15)
        fig.suptitle(title, fontsize=12)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
