"""One table and one figure for many paths: every curve.npz found under the given folders, grouped by
model, one row per path (the paper's name of its procedure, finder + method, train-loss barrier,
maximum train and test error, build and total time), and a figure with every path of a model
overlaid on a shared scale (t as a fraction of the path, so paths of different lengths line up).

Example (what `make demo` ends with):
    python3 scripts/path_summary.py --figure=demo_runs/summary.png demo_runs/eval
"""
import os

import numpy as np
from tabulate import tabulate

import cli

COLUMNS = ["paper's name", "finder + method", "train loss barrier", "max train err %",
           "max test err %", "build s", "total s"]


def build_parser():
    """Every flag, with its default and one line of help."""
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="+", help="folders searched for curve.npz files")
    parser.add_argument("--figure", default=None,
                        help="where to write the figure (.png); no figure without it")
    return parser


def find_results(folders):
    """Every readable ``curve.npz`` under ``folders``, as dicts, in the order of the paper's
    tables (a model's paths together, the models in the order of their first procedure)."""
    order = {(f, m): i for i, (f, m) in enumerate((f, m) for f in cli.PROCEDURES
                                                  for m in cli.CONNECTORS)}
    results = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise cli.UserError(f"'{folder}' is not a folder; give folders holding curve.npz files")
        for root, _, files in sorted(os.walk(folder)):
            if "curve.npz" in files:
                results.append(load(os.path.join(root, "curve.npz")))
    if not results:
        raise cli.UserError(f"no curve.npz under {', '.join(folders)}; run eval_curve.py first")
    rank = [order.get((r["point_finder"], r["method"]), len(order)) for r in results]
    first = {}
    for result, position in zip(results, rank):
        first[result["model"]] = min(first.get(result["model"], position), position)
    return [r for _, _, r in sorted(zip([first[r["model"]] for r in results], rank, results),
                                    key=lambda item: item[:2])]


def load(path):
    """The arrays of one result file (0-d arrays as Python values)."""
    try:
        with np.load(path) as f:
            result = {k: (f[k].item() if f[k].ndim == 0 else f[k]) for k in f.files}
    except (OSError, ValueError) as err:
        raise cli.UserError(f"'{path}' is not a readable curve.npz ({err}); run its "
                            f"eval_curve.py again") from None
    result.setdefault("paper_name", cli.paper_name(result["point_finder"], result["method"]))
    return result


def row(result):
    """One table row of a path."""
    from evaluation import barrier  # imports torch: only once there are results to tabulate
    return [result["paper_name"], f"{result['point_finder']} + {result['method']}",
            f"{barrier(result['tr_loss']):+.4f}", f"{result['tr_err'].max():.2f}", f"{result['te_err'].max():.2f}",
            f"{result['build_time']:.1f}", f"{result['computation_time']:.1f}"]


def plot(path, groups):
    """Per model, train loss and test error of every path against t / (end of the path)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for (model, results), (ax_loss, ax_err) in zip(groups.items(), axes):
        for k, result in enumerate(results):
            x = result["ts"] / result["ts"][-1]
            style = dict(marker="osv^D<>ph*"[k % 10], ms=3, linestyle="-" if k < 10 else "--")
            ax_loss.plot(x, result["tr_loss"], label=result["paper_name"], **style)
            ax_err.plot(x, result["te_err"], label=result["paper_name"], **style)
        ax_err.set_ylim(bottom=0)
        for ax, label in ((ax_loss, "train loss"), (ax_err, "test error (%)")):
            ax.set_title(f"{model} on {results[0]['dataset']}: {label}")
            ax.set_xlabel("t / end of the path (0: model 1, 1: model 2)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.figure is not None and not args.figure.endswith(".png"):
        raise cli.UserError(f"--figure={args.figure} must name a .png file")
    groups = {}
    for result in find_results(args.folders):
        groups.setdefault(result["model"], []).append(result)
    for model, results in groups.items():
        print(f"\n{model} on {results[0]['dataset']} ({len(results)} paths)")
        print(tabulate([row(r) for r in results], COLUMNS, tablefmt="simple",
                       disable_numparse=True))
    if args.figure is not None:
        import utils  # imports torch: only when a figure is to be written
        utils.atomic_write(args.figure, lambda tmp: plot(tmp, groups))
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    cli.run(main)
