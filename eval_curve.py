"""Connect two end-points with a point finder and a connector; evaluate train/test loss and error
along the path (reference CLI). Writes ``curve.npz`` and ``curve.png`` to ``--dir``."""
import os

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

import data
import models
import point_finders
import utils
from connectors import CONNECTORS
from utils import UserError

#: the result files, the plot first: ``curve.npz`` exists only once the run is complete
OUTPUTS = ("curve.png", "curve.npz")
QUANTITIES = [("tr_loss", "Train loss"), ("tr_nll", "Train nll"), ("tr_err", "Train error (%)"),
              ("te_loss", "Test loss"), ("te_nll", "Test nll"), ("te_err", "Test error (%)")]


def parse_args(argv=None):
    parser = utils.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/tmp/eval", help="output folder (curve.npz, curve.png)")
    parser.add_argument("--point_finder", required=True, help=", ".join(point_finders.FINDERS))
    parser.add_argument("--method", default="lin_connect", help=" or ".join(CONNECTORS))
    parser.add_argument("--beg_time", type=utils.number(float, minimum=0), default=0.0)
    parser.add_argument("--end_time", type=utils.number(float, above=0), default=None,
                        help="default: where this finder reaches model 2 for this model")
    parser.add_argument("--dataset", default="CIFAR10", help=", ".join(data.DATASETS))
    parser.add_argument("--data_path", default="data")
    parser.add_argument("--transform", default=None, help="VGG or ResNet (CIFAR only)")
    parser.add_argument("--model", required=True, help=", ".join(models.MODELS))
    parser.add_argument("--start", required=True, help="checkpoint of model 1")
    parser.add_argument("--end", required=True, help="checkpoint of model 2")
    parser.add_argument("--num_points", type=utils.number(int, minimum=2), default=61)
    utils.add_evaluation_arguments(parser)
    return parser.parse_args(argv)


def check_times(args, model):
    """Where the finder's path reaches model 2 for this architecture, after checking that
    ``--beg_time``/``--end_time`` lie on it (before any of the path is built)."""
    full = point_finders.check_fits(args.point_finder, model, args.model).path_end(model)
    end = full if args.end_time is None else args.end_time
    if end > full + 1e-9:
        raise UserError(f"--end_time={args.end_time} is beyond the path: {args.point_finder} reaches "
                        f"model 2 at t={full} for {args.model}; use --end_time={full}")
    if args.beg_time >= end:
        raise UserError(f"--beg_time={args.beg_time} must be below the end time {end}")
    return full


def summarize(values, dl):
    """start, end, min, max, avg and ``int`` (length-weighted mean over the path) of a quantity."""
    length = dl.sum()
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite path is reported, not warned
        integral = (0.5 * (values[:-1] + values[1:]) * dl[1:]).sum() / length if length > 0 else values.mean()
        return {"start": values[0], "end": values[-1], "min": values.min(), "max": values.max(),
                "avg": values.mean(), "int": integral}


def evaluate_point(finder, module, point, train, test, batch_size):
    """Train and test statistics of one point (BatchNorm statistics recomputed first if any)."""
    net = finder.network(point.params, module)
    utils.recompute_batchnorm(net, train[0], batch_size)
    tr = utils.evaluate(net, *train, batch_size, hidden=point.hidden)
    te = utils.evaluate(net, *test, batch_size)
    return {"tr_loss": tr["nll"], "tr_nll": tr["nll"], "tr_acc": tr["accuracy"],
            "tr_err": 100 - tr["accuracy"], "te_loss": te["nll"], "te_nll": te["nll"],
            "te_acc": te["accuracy"], "te_err": 100 - te["accuracy"]}


def plot(path, ts, stats, boundaries, title):
    """Train loss, train error and test error against t; dotted lines at segment boundaries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(ts, stats["tr_loss"], "o-", ms=3, label="train loss")
    ax_err.plot(ts, stats["tr_err"], "o-", ms=3, label="train error")
    ax_err.plot(ts, stats["te_err"], "s-", ms=3, label="test error")
    for ax, label in ((ax_loss, "loss (nll)"), (ax_err, "error (%)")):
        for b in boundaries:
            ax.axvline(b, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("t")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    utils.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    if args.point_finder not in point_finders.FINDERS:
        raise UserError(f"unknown point finder '{args.point_finder}'; choose one of: "
                        f"{', '.join(point_finders.FINDERS)}")
    point_finders.PointFinder.connector(args.method)
    data.check_dataset(args.dataset)
    data.resolve_transform(args.dataset, args.transform)
    models.check_model(args.model)
    if args.end_time is not None and args.beg_time >= args.end_time:
        raise UserError(f"--beg_time={args.beg_time} must be below --end_time={args.end_time}")
    for flag in ("start", "end"):
        if not os.path.isfile(getattr(args, flag)):
            raise UserError(f"--{flag} checkpoint '{getattr(args, flag)}' does not exist; "
                            f"give a .pt file written by train.py")
    device = utils.select_device(args.cuda, args.device)
    utils.check_output_dir(args.dir, OUTPUTS)
    timer = utils.Timer()

    train = data.load_split(args.dataset, args.data_path, True, args.transform)
    test = data.load_split(args.dataset, args.data_path, False, args.transform)
    num_classes, shape = data.num_classes_of(args.dataset), tuple(train[0].shape[1:])
    train = tuple(t.to(device) for t in train)
    test = tuple(t.to(device) for t in test)
    model1 = models.load_model(args.model, args.start, num_classes, shape, "--start checkpoint")
    model2 = models.load_model(args.model, args.end, num_classes, shape, "--end checkpoint")
    full = check_times(args, model1)
    end = full if args.end_time is None else args.end_time
    finder = point_finders.make_point_finder(args.point_finder, model1.to(device), model2.to(device),
                                             train[0], args.model)
    build_time = timer()
    print(f"{args.point_finder} + {args.method} on {args.model}: path from t=0 (model 1) to "
          f"t={full} (model 2); built in {build_time:.1f} s")
    if end < full or args.beg_time > 0:
        print(f"note: evaluating part of the path only, t in [{args.beg_time}, {end}] of [0, {full}]")
    if utils.has_batchnorm(finder.template):
        print("note: BatchNorm running statistics are recomputed on the training data at every point")

    ts = np.linspace(args.beg_time, end, args.num_points)
    module = finder.network(finder.params1)
    rows, previous = [], None
    dl = np.zeros(len(ts))
    for i, t in enumerate(tqdm(ts, desc="points", dynamic_ncols=True, disable=None)):
        point = finder.point(float(t), args.method)
        flat = torch.cat([p.reshape(-1) for p in point.params])
        if previous is not None:
            dl[i] = torch.linalg.vector_norm(flat - previous).item()
        previous = flat
        rows.append(evaluate_point(finder, module, point, train, test, args.batch_size))
    stats = {key: np.array([row[key] for row in rows]) for key in rows[0]}

    headers = ["t"] + [label for _, label in QUANTITIES if not label.endswith("loss")]
    print(tabulate([[t] + [stats[key][i] for key, label in QUANTITIES if not label.endswith("loss")]
                    for i, t in enumerate(ts)], headers, tablefmt="simple", floatfmt="10.4f"))

    jumps = []
    for k in finder.discontinuities:
        if args.beg_time < k <= end:
            left = evaluate_point(finder, module, finder.point(float(k), args.method, left=True),
                                  train, test, args.batch_size)
            right = evaluate_point(finder, module, finder.point(float(k), args.method), train, test,
                                   args.batch_size)
            jumps.append([k, left["tr_loss"], right["tr_loss"], left["te_err"], right["te_err"]])
    if jumps:
        print(f"\nThe path jumps at t = {', '.join(str(j[0]) for j in jumps)} (the re-fitted layer "
              f"changes between segments, as in the reference; the later segment is used at t):")
        print(tabulate(jumps, ["t", "train loss (left)", "train loss (right)", "test err (left)",
                               "test err (right)"], tablefmt="simple", floatfmt="10.4f"))

    summary, results = [], {"ts": ts, "dl": dl}
    for key, label in QUANTITIES:
        s = summarize(stats[key], dl)
        summary.append([label] + [s[c] for c in ("start", "end", "min", "max", "avg", "int")])
        results[key] = stats[key]
        results.update({f"{key}_{c}": s[c] for c in ("min", "max", "avg", "int")})
    results["tr_acc"], results["te_acc"] = stats["tr_acc"], stats["te_acc"]
    print()
    print(tabulate(summary, ["", "start", "end", "min", "max", "avg", "int"], tablefmt="simple",
                   floatfmt="10.4f"))
    print(f"path length: {dl.sum():.4f}")
    results.update({
        "computation_time": timer(), "build_time": build_time, "path_length": dl.sum(),
        "point_finder": args.point_finder, "method": args.method, "model": args.model,
        "dataset": args.dataset, "end_time_of_path": full, "device": utils.device_label(device),
        "jump_ts": np.array([j[0] for j in jumps], dtype=float),
        "jump_tr_loss_left": np.array([j[1] for j in jumps]),
        "jump_tr_loss_right": np.array([j[2] for j in jumps]),
        "jump_te_err_left": np.array([j[3] for j in jumps]),
        "jump_te_err_right": np.array([j[4] for j in jumps])})
    nonfinite = ts[~np.all([np.isfinite(stats[key]) for key, _ in QUANTITIES], axis=0)]
    results.update({"finite": nonfinite.size == 0, "nonfinite_ts": nonfinite})
    boundaries = [b for b in range(1, int(np.ceil(full))) if args.beg_time < b < end]
    plot(os.path.join(args.dir, OUTPUTS[0]), ts, stats, boundaries,
         f"{args.model}: {args.point_finder} + {args.method}")
    npz = os.path.join(args.dir, OUTPUTS[1])
    utils.atomic_write(npz, lambda tmp: np.savez(tmp, **results))
    print(f"saved {npz} and {OUTPUTS[0]} ({timer():.1f} s)")
    if nonfinite.size:
        raise UserError(f"the path's loss or error is not finite at t = "
                        f"{', '.join(f'{t:g}' for t in nonfinite)}; {npz} holds what was computed, "
                        f"marked finite=False; check the end-points' outputs (--start, --end)")
    barrier = results["tr_loss_max"] - 0.5 * (stats["tr_loss"][0] + stats["tr_loss"][-1])
    print(f"summary: {args.point_finder} + {args.method}: train loss max "
          f"{results['tr_loss_max']:.4f} (barrier {barrier:+.4f}), int {results['tr_loss_int']:.4f}; "
          f"train error max {results['tr_err_max']:.2f}%; test error max "
          f"{results['te_err_max']:.2f}%, int {results['te_err_int']:.2f}%")


if __name__ == "__main__":
    utils.run_cli(main)
