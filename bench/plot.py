"""bench/results.png: one run's findings as a picture (matplotlib, Agg backend: no display).

Top panel: req/s of every row of the main table, one horizontal bar each, in the table's
order, labelled with its req/s and its ratio to nginx under the same load (the only
comparison the bench makes: nginx's own figure moves between runs on a shared machine).
Bottom panel: req/s against wrk's connections (100, 1000, 10000 on a log axis, distinct
users) for our admission and sold-out paths, the OpenResty-style gateway's and nginx, from
the connection sweep.

`draw()` takes a `Findings` and nothing else, so `run.py --plot-only` redraws the picture
from the saved findings (results.json) without a new run. matplotlib is imported inside
`draw()`: without it the bench still runs and says why there is no picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from report import SWEEP_CONTENDERS, Findings, Row

# Shorter names than report.CONTENDERS: they label bars, not table cells.
NAMES = {
    "a": "(a) seckill, admission",
    "b": "(b) seckill, sold out",
    "c": "(c) seed: Flask, gunicorn",
    "d": "(d) nginx return 200",
    "e": "(e) admission, --no-metrics",
    "f": "(f) bounded stock, until sold out",
    "g": "(g) bounded stock, sold out",
    "h": "(h) OpenResty gateway, admission",
    "i": "(i) OpenResty gateway, sold out",
}
LOADS = {"wrk": "distinct users", "wrk1": "one URL", "ab": "ab, no keep-alive"}
COLOURS = {"a": "#1f77b4", "b": "#6baed6", "c": "#d62728", "d": "#7f7f7f", "e": "#2ca02c",
           "f": "#9467bd", "g": "#c5b0d5", "h": "#ff7f0e", "i": "#ffbb78"}
DPI = 110


def _kilo(value: float, _pos: object = None) -> str:
    return f"{value / 1000:,.0f}k" if value >= 1000 else f"{value:,.0f}"


def _rows_panel(ax: Any, findings: Findings) -> None:
    rows = findings.rows
    labels = [f"{NAMES.get(r.contender, r.contender)} — {LOADS.get(r.tool, r.tool)}" for r in rows]
    values = [r.rps or 0.0 for r in rows]
    ax.barh(range(len(rows)), values, color=[COLOURS.get(r.contender, "#999999") for r in rows])
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()  # the table's order, top to bottom
    top = max(values, default=0.0) or 1.0
    ax.set_xlim(0, top * 1.32)  # room for the labels right of the longest bar
    for index, row in enumerate(rows):
        ax.text((row.rps or 0.0) + top * 0.01, index, _bar_label(findings, row),
                va="center", fontsize=8)
    ax.xaxis.set_major_formatter(_kilo)
    ax.set_xlabel("requests per second (the median run of each row; wrk -t1 keeps connections "
                  "alive, ab opens one per request)")
    ax.set_title(f"req/s per row of the results table ({findings.settings.get('connections', '?')} "
                 "connections), and × nginx under the same load", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _bar_label(findings: Findings, row: Row) -> str:
    if row.result is None:
        reason = row.skipped if len(row.skipped) <= 60 else row.skipped[:57] + "..."
        return f"skipped: {reason}"
    ratio = findings.ratio(row.contender, row.tool, "d")
    return f"{row.result.rps:,.0f}" + (f"  ({ratio:.2f}× nginx)" if ratio and row.contender != "d" else "")


LABELLED = ("a", "b")  # the sweep's points that carry their req/s and × nginx: ours


def _sweep_panel(ax: Any, findings: Findings) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("concurrent connections (wrk -t1 -c N, keep-alive, distinct users; log scale)")
    ax.set_ylabel("requests per second")
    ax.set_title("req/s against connections", fontsize=10, loc="left")
    counts = sorted({r.connections for r in findings.sweep if r.connections})
    if not counts:
        ax.text(0.5, 0.5, "connection sweep not run", transform=ax.transAxes, ha="center")
        return
    top = 0.0
    for contender in SWEEP_CONTENDERS:
        points = [(n, row.rps) for n in counts
                  if (row := findings.sweep_row(contender, n)) is not None and row.rps]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        top = max(top, *ys)
        ax.plot(xs, ys, marker="o", color=COLOURS[contender], label=NAMES[contender])
        if contender not in LABELLED:
            continue  # (the table has their figures: five labels a point overlapped)
        # The sold-out line runs along nginx's and the gateway's: its labels go to the right;
        # the admission line's go below, clear of them (the gateway's admission is far below).
        beside = contender == "b"
        for n, rps in points:
            ratio = findings.sweep_ratio(contender, n)
            text = _kilo(rps) + (f"\n{ratio:.2f}× nginx" if ratio else "")
            ax.annotate(text, (n, rps), textcoords="offset points", xytext=(8, -4) if beside else (0, -8),
                        ha="left" if beside else "center", va="top", fontsize=8)
    ax.set_xticks(counts, [f"{n:,}" for n in counts])
    ax.minorticks_off()
    ax.set_xlim(counts[0] / 2, counts[-1] * 2)
    ax.set_ylim(0, top * 1.3)
    ax.yaxis.set_major_formatter(_kilo)
    ax.grid(alpha=0.3)
    # Above the axes, beside the title: inside, it would cover the points' labels.
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize=9)


def draw(findings: Findings, path: Path) -> None:
    """Write the two panels to `path` (PNG). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 3.0 + 0.32 * len(findings.rows)
    fig, (bars, sweep) = plt.subplots(
        2, 1, figsize=(11, height + 4.0), height_ratios=[height, 4.0], layout="constrained")
    code = findings.machine.get("server code", "git ?")
    fig.suptitle(f"seckill benchmark, {findings.date}, {code}\n"
                 f"nproc {findings.machine.get('nproc', '?')}, pinning {findings.pinning}",
                 fontsize=11)
    _rows_panel(bars, findings)
    _sweep_panel(sweep, findings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
