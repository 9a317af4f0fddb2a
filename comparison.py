"""The comparison page (``docs/COMPARISON.md``): for each Table-1 width and each Table-2 model, every
family of paths between the same two end-points (the paper's procedures, permutation alignment
with and without REPAIR, the trained Bezier curve) with its barrier and its cost, what the numbers
show, and one figure per model of the barrier against the cost on a log axis.

Like the results page it is written by the results driver (``reproduction``) from the result files
only. A row's family follows from its ``curve.npz``: the procedure table's entry of its
``point_finder`` (the paper's tables, or Ainsworth et al. 2022), whether it was repaired, or a
trained curve.
"""
import os

import numpy as np
from tabulate import tabulate

import cli
import utils

#: the page's first line, up to its data set's name (how the results driver knows its own page)
TITLE = "# Which path connects two networks best for its cost ("
#: the families, in the order of the figures' legends, with their markers
MARKERS = {"paper": "o", "alignment": "s", "alignment + REPAIR": "D", "trained curve": "^"}
HEADERS = ["#", "family", "path", "train loss barrier", "train err barrier %", "test err barrier %",
           "points", "build (s)", "total (s)"]


def family(curve):
    """The family of the path of a ``curve.npz``."""
    finder = str(curve["point_finder"])
    if finder in cli.TRAINED_CURVES:
        return "trained curve"
    if cli.PROCEDURES[finder].table.startswith("Table"):
        return "paper"
    return "alignment + REPAIR" if bool(curve.get("repair", False)) else "alignment"


def figure_name(model):
    """The file name of a model's figure."""
    return f"comparison_{model}.png"


class Row:
    """One path of one model: its name, family and the cells the page shows (``path_row``)."""

    def __init__(self, name, curve, cells):
        self.name, self.family, self.cells = name, family(curve), cells
        self.barrier = cells["tr_loss"]["barrier"]
        self.time = cells["time"]
        self.build = float(curve.get("build_time", np.nan))

    def markdown(self, number):
        c = self.cells
        return [number, self.family, self.name, f"{self.barrier:+.3f}", f"{c['tr_err']['barrier']:+.2f}",
                f"{c['te_err']['barrier']:+.2f}", c["points"], f"{self.build:.1f}",
                f"{self.time:.0f}"]

    def short(self):
        return f"{self.name} ({self.barrier:+.3f}, {self.time:.0f} s)"


#: a row beats another when its train-loss barrier is lower by at least BARRIER_MARGIN and by
#: RELATIVE_MARGIN of the other's, at a cost at most TIME_SLACK times the other's: smaller
#: differences are read as ties (the last digits shown; timing noise)
BARRIER_MARGIN, RELATIVE_MARGIN, TIME_SLACK = 0.002, 0.1, 1.05
#: where a barrier is not positive, the figure's barrier axis is logarithmic beyond this distance
#: from 0 and linear within it
SYMLOG_LINEAR = 1e-3


def beaten_by(row, rows):
    """The rows that are clearly flatter than ``row`` at no higher cost (within the slack)."""
    margin = max(BARRIER_MARGIN, RELATIVE_MARGIN * abs(row.barrier))
    return [r for r in rows if r is not row and r.barrier <= row.barrier - margin
            and r.time <= TIME_SLACK * row.time]


def findings(rows):
    """What one model's numbers show: the flattest path and the cheapest one close to it, the
    paper's procedures that an alignment beats on both barrier and cost, what REPAIR changes, and
    what training a curve buys."""
    if not rows:
        return []
    best = min(rows, key=lambda r: r.barrier)
    close = [r for r in rows if r.barrier <= best.barrier + max(0.01, 0.1 * abs(best.barrier))]
    cheapest = min(close, key=lambda r: r.time)
    lines = [f"* Flattest: {best.short()}; cheapest within 0.01 (or 10%) of its train-loss barrier: "
             f"{cheapest.short()}."]
    paper = [r for r in rows if r.family == "paper"]
    aligned = [r for r in rows if r.family.startswith("alignment")]
    losing = [(r, min(by, key=lambda b: b.barrier)) for r in paper
              if (by := [b for b in beaten_by(r, rows) if b in aligned])]
    if losing:
        lines.append("* The paper's procedures that an alignment beats (a clearly lower barrier "
                     f"at no higher cost, up to {TIME_SLACK - 1:.0%} for timing noise): "
                     + "; ".join(f"{r.short()} by {b.short()}" for r, b in losing) + ".")
    if paper and aligned:
        p, a = min(paper, key=lambda r: r.barrier), min(aligned, key=lambda r: r.barrier)
        verb = "lower" if p.barrier < a.barrier else "higher"
        lines.append(f"* The paper's flattest, {p.short()}, has a {verb} barrier than the flattest "
                     f"alignment, {a.short()}.")
    by_name = {r.name: r for r in rows}
    for r in rows:
        plain = by_name.get(r.name.removesuffix(" + REPAIR")) if r.family == "alignment + REPAIR" \
            else None
        if plain is not None:
            lines.append(f"* REPAIR takes {plain.name}'s train-loss barrier from {plain.barrier:+.3f} "
                         f"to {r.barrier:+.3f} ({r.time / max(plain.time, 1e-9):.1f}x the time).")
    curves = [r for r in rows if r.family == "trained curve"]
    free = [r for r in rows if r.family != "trained curve"]
    for c in curves:
        f = min(free, key=lambda r: r.barrier) if free else None
        if f is not None:
            lines.append(f"* The trained curve, {c.short()}, against the flattest training-free path, "
                         f"{f.short()}: {c.time / max(f.time, 1e-9):.1f}x the cost.")
    return lines


def barrier_axis(ax, barriers):
    """A log scale for the barriers, linear within SYMLOG_LINEAR of 0 unless all are positive."""
    if min(barriers) > 0:
        ax.set_yscale("log")
        ax.set_ylabel("train loss barrier (log)")
    else:
        ax.set_yscale("symlog", linthresh=SYMLOG_LINEAR)
        ax.set_ylabel(f"train loss barrier (log; linear within ±{SYMLOG_LINEAR:g})")
        ax.axhline(0, color="gray", linewidth=0.8)


def plot(path, rows, title):
    """The train-loss barrier of every path against its total time, both on log axes (the barrier's
    linear near 0 when a path dips to or below its ends), a marker per family, each point numbered
    by its row of the table (``rows``' order): names of paths of near cost and barrier would
    overlap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for fam, marker in MARKERS.items():
        points = [(number, r) for number, r in enumerate(rows, 1) if r.family == fam]
        if points:
            ax.scatter([max(r.time, 1e-3) for _, r in points], [r.barrier for _, r in points],
                       marker=marker, s=40, label=fam)
            for number, r in points:
                ax.annotate(str(number), (max(r.time, 1e-3), r.barrier), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    barrier_axis(ax, [r.barrier for r in rows])
    ax.set_xlabel("wall time to build and evaluate the path, s (log; a trained curve's training "
                  "included)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    utils.save_figure(fig, path)


def model_section(label, model, rows, figures, dataset):
    """One model's table (flattest first), its findings and its figure."""
    rows = sorted(rows, key=lambda r: r.barrier)
    out = [f"## {label}", "", tabulate([r.markdown(i) for i, r in enumerate(rows, 1)], HEADERS,
                                       tablefmt="github", disable_numparse=True), ""]
    if rows:
        plot(os.path.join(figures, figure_name(model)), rows,
             f"{model} on {dataset}: barrier against cost")
        out += findings(rows) + ["", f"![{model}: barrier against cost]"
                                     f"({os.path.basename(figures)}/{figure_name(model)})", ""]
    return out


def page(header, groups, figures, dataset, missing, discussion=None):
    """The page's lines. ``groups`` is ``[(label, model, [Row])]``, one per model; ``missing``
    lists the paths without usable numbers (not run, unreadable or not finite), named on the page."""
    out = [f"{TITLE}{dataset})", ""] + header
    for label, model, rows in groups:
        out += model_section(label, model, rows, figures, dataset)
    if missing:
        out += ["## Paths without numbers", "", "Not on the page (not run, unreadable, not finite, "
                "or computed on other end-points; the results page says which):", ""]
        out += [f"* {m}" for m in missing] + [""]
    if discussion is not None:
        out += ["## Discussion", "", discussion.strip(), ""]
    return out
