"""Evaluating a path between two end-points, as ``eval_curve.py`` runs it: the checks of the
flags, the walk along the path (train and test loss and error at evenly spaced times ``t``), the
probes of every jump, the results record ``curve.npz`` with the provenance of the run, the tables
and ``curve.png``. The statistics themselves (a point's loss and error, the summary along the path
with ``int`` the mean weighted by the path length between points, the barrier) are the primitives
of ``evaluation.py``."""
import dataclasses
import hashlib
import os

import numpy as np
import torch
from tabulate import tabulate

import cli
import curves
import data
import distributed
import models
import point_finders
import utils
from evaluation import barrier, end_mean, has_batchnorm, summarize
from point_finders.repair import Repaired
from segment_evaluation import evaluate_points
from utils import UserError

#: the result files, the plot first: ``curve.npz`` exists only once the run is complete
OUTPUTS = ("curve.png", "curve.npz")
QUANTITIES = [("tr_loss", "Train loss"), ("tr_nll", "Train nll"), ("tr_err", "Train error (%)"),
              ("te_loss", "Test loss"), ("te_nll", "Test nll"), ("te_err", "Test error (%)")]
SUMMARY = ("start", "end", "min", "max", "avg", "int")


def check_names(args):
    """Every name and file the run needs, checked before anything is read or written."""
    if args.point_finder not in cli.FINDERS:
        raise UserError(f"unknown point finder '{args.point_finder}'; choose one of: "
                        f"{', '.join(cli.FINDERS)}")
    if args.method not in cli.CONNECTORS:
        raise UserError(f"unknown method '{args.method}'; choose one of: {', '.join(cli.CONNECTORS)}")
    data.check_dataset(args.dataset)
    data.resolve_transform(args.dataset, args.transform)
    models.check_model(args.model)
    if args.end_time is not None and args.beg_time >= args.end_time:
        raise UserError(f"--beg_time={args.beg_time} must be below --end_time={args.end_time}")
    check_sources(args)
    for flag in ("start", "end", "curve_checkpoint"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise UserError(f"--{flag} checkpoint '{path}' {utils.missing_file(path)}; "
                            f"give a .pt file written by train.py")
    utils.check_output_dir(args.dir, OUTPUTS)


def trained(args):
    """Whether the run evaluates a trained curve (``--point_finder=Bezier`` or ``PolyChain``)."""
    return args.point_finder in cli.TRAINED_CURVES


def check_sources(args):
    """A procedure takes --start and --end; a trained curve takes --curve_checkpoint (and no
    connector), its ends optional. ``--repair`` goes with a procedure whose path is one segment."""
    if args.repair and args.point_finder not in cli.repairable():
        raise UserError(f"--repair applies to the paths of one segment from model 1 to model 2 "
                        f"({', '.join(cli.repairable())}); {args.point_finder} "
                        f"{'is a trained curve' if trained(args) else 'moves the network in segments'}"
                        f": drop --repair")
    if trained(args):
        if args.curve_checkpoint is None:
            raise UserError(f"--point_finder={args.point_finder} evaluates a trained curve; give "
                            f"--curve_checkpoint=<checkpoint of train.py --curve={args.point_finder}>")
        if args.method != "lin_connect":
            raise UserError(f"a trained curve has no connector; drop --method={args.method}")
        return
    if args.curve_checkpoint is not None:
        raise UserError(f"--curve_checkpoint goes with --point_finder={' or '.join(cli.TRAINED_CURVES)}, "
                        f"not with {args.point_finder}; drop it")
    for flag, what in (("start", "model 1"), ("end", "model 2")):
        if getattr(args, flag) is None:
            raise UserError(f"--point_finder={args.point_finder} needs --{flag}=<checkpoint of "
                            f"{what}>")


def check_times(args, full):
    """``full``, where the path reaches model 2, after checking that ``--beg_time``/``--end_time``
    lie on the path (before any of it is built)."""
    end = full if args.end_time is None else args.end_time
    if end > full + 1e-9:
        raise UserError(f"--end_time={args.end_time} is beyond the path: {args.point_finder} reaches "
                        f"model 2 at t={full} for {args.model}; use --end_time={full}")
    if args.beg_time >= end:
        raise UserError(f"--beg_time={args.beg_time} must be below the end time {end}")
    return full


def sha256_of(path):
    """The SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def walk(finder, ts, method, train, test, batch_size):
    """Every point of the path and both sides of every jump in ``(ts[0], ts[-1]]``, evaluated
    segment by segment (``segment_evaluation``): ``(stats, dl, jumps)``, the statistics at each
    ``t``, the distance in weight space from the previous point, and the ``Jump``s."""
    probes = [k for k in finder.discontinuities if ts[0] < k <= ts[-1]]
    requests = [(float(t), False) for t in ts] + [(float(k), left) for k in probes
                                                  for left in (True, False)]
    dl, previous = np.zeros(len(ts)), []

    def seen(i, point):
        if i < len(ts):  # a point of the walk (made in order), not a jump's probe
            flat = torch.cat([p.reshape(-1) for p in point.params])
            if previous:
                dl[i] = torch.linalg.vector_norm(flat - previous.pop()).item()
            previous.append(flat)

    rows = evaluate_points(finder, method, requests, train, test, batch_size, seen)
    stats = {key: np.array([row[key] for row in rows[:len(ts)]]) for key in rows[0]}
    sides = iter(rows[len(ts):])
    jumps = []
    for k in probes:
        left, right = next(sides), next(sides)
        jumps.append(Jump(t=k, tr_loss_left=left["tr_loss"], tr_loss_right=right["tr_loss"],
                          te_err_left=left["te_err"], te_err_right=right["te_err"]))
    return stats, dl, jumps


@dataclasses.dataclass(frozen=True)
class Jump:
    """A discontinuity of the path at ``t`` (docs/METHODS.md, "Jumps of the WA paths"): the train
    loss and test error just before it (``left``, the earlier segment) and at ``t`` (``right``)."""
    t: float
    tr_loss_left: float
    tr_loss_right: float
    te_err_left: float
    te_err_right: float

    #: the column heads of the printed table, one per field
    HEADERS = ("t", "train loss (left)", "train loss (right)", "test err (left)", "test err (right)")

    @staticmethod
    def key(name):
        """The ``curve.npz`` key of a field: ``jump_ts`` for ``t``, else ``jump_<field>``."""
        return "jump_ts" if name == "t" else f"jump_{name}"


def jump_arrays(jumps):
    """``jump_ts, jump_tr_loss_left, ...``: one array per field of ``Jump``, a value per jump."""
    return {Jump.key(f.name): np.array([getattr(j, f.name) for j in jumps], dtype=float)
            for f in dataclasses.fields(Jump)}


def path_results(ts, dl, stats, jumps):
    """The reference's ``curve.npz`` keys (``ts, dl``, every quantity with its summary) plus each
    quantity's barrier, the jumps and whether every number is finite."""
    results = {"ts": ts, "dl": dl, "tr_acc": stats["tr_acc"], "te_acc": stats["te_acc"],
               "path_length": dl.sum()}
    for key, _ in QUANTITIES:
        s = summarize(stats[key], dl)
        results[key] = stats[key]
        results.update({f"{key}_{c}": s[c] for c in SUMMARY[2:]})
        results[f"{key}_barrier"] = barrier(stats[key])
    results.update(jump_arrays(jumps))
    nonfinite = ts[~np.all([np.isfinite(stats[key]) for key, _ in QUANTITIES], axis=0)]
    results.update({"finite": nonfinite.size == 0, "nonfinite_ts": nonfinite})
    return results


def print_tables(results, jumps):
    """The per-point table, the jumps and the summary table, from ``path_results``."""
    shown = [(key, label) for key, label in QUANTITIES if not label.endswith("loss")]
    print(tabulate([[t] + [results[key][i] for key, _ in shown] for i, t in enumerate(results["ts"])],
                   ["t"] + [label for _, label in shown], tablefmt="simple", floatfmt="10.4f"))
    if jumps:
        print(f"\nThe path jumps at t = {', '.join(str(j.t) for j in jumps)} (the re-fitted layer "
              f"changes between segments, as in the reference; the later segment is used at t):")
        print(tabulate([dataclasses.astuple(j) for j in jumps], Jump.HEADERS, tablefmt="simple",
                       floatfmt="10.4f"))
    rows = [[label, results[key][0], results[key][-1]] + [results[f"{key}_{c}"] for c in SUMMARY[2:]]
            for key, label in QUANTITIES]
    print()
    print(tabulate(rows, [""] + list(SUMMARY), tablefmt="simple", floatfmt="10.4f"))
    print(f"path length (dl summed): {results['path_length']:.4f}")


def plot(path, ts, stats, boundaries, title):
    """Train loss, train error and test error against t, each with a dashed line at the mean of
    its end-points (what the barrier is measured from) and its barrier written in the corner;
    dotted lines at segment boundaries. Both axes start at zero, so a flat path looks flat."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, key, style, label, row in ((ax_loss, "tr_loss", "o-", "train loss", 0),
                                       (ax_err, "tr_err", "o-", "train error", 1),
                                       (ax_err, "te_err", "s-", "test error", 0)):
        line, = ax.plot(ts, stats[key], style, ms=3, label=label)
        ax.axhline(end_mean(stats[key]), color=line.get_color(), linestyle="--",
                   linewidth=0.8, alpha=0.7)
        ax.text(0.02, 0.03 + 0.07 * row, f"{label} barrier {barrier(stats[key]):+.4g}",
                transform=ax.transAxes, fontsize=8, color=line.get_color())
    for ax, keys in ((ax_loss, ("tr_loss",)), (ax_err, ("tr_err", "te_err"))):
        top = np.nanmax(np.concatenate([stats[key] for key in keys]))
        ax.set_ylim(0, 1.15 * top if np.isfinite(top) and top > 0 else 1)
    for ax, label in ((ax_loss, "train loss (nll)"), (ax_err, "error (%)")):
        for b in boundaries:
            ax.axvline(b, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("t")
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title + "\n(dashed: mean of the two end-points; barrier = max along the path "
                         "minus that mean)", fontsize=10)
    utils.save_figure(fig, path)


def path_name(finder, method, repair=False):
    """How a path is named in the output: finder + connector [the paper's name], + REPAIR when
    repaired; a trained curve has no connector."""
    shown = finder if finder in cli.TRAINED_CURVES else f"{finder} + {method}"
    return f"{shown}{' + REPAIR' if repair else ''} [{cli.paper_name(finder, method)}]"


def draw(path, results):
    """``curve.png`` from the contents of a ``curve.npz`` (the run writes it so, and the results
    driver redraws a missing one so)."""
    ts = results["ts"]
    full = float(results.get("end_time_of_path", ts[-1]))
    boundaries = [b for b in range(1, int(np.ceil(full))) if ts[0] < b < ts[-1]]
    finder, method = str(results["point_finder"]), str(results["method"])
    name = path_name(finder, method, bool(results.get("repair", False)))
    plot(path, ts, results, boundaries, f"{results['model']} on {results['dataset']}: {name}")


def load_splits(args, device):
    """The two splits on ``device`` (under ``torchrun`` every rank loads all of it: the finders
    take their own share of the training set)."""
    return tuple(tuple(t.to(device) for t in data.load_split(args.dataset, args.data_path, split,
                                                             args.transform))
                 for split in (True, False))


def end_points(args, shape):
    """The models of --start and --end (None where not given)."""
    num_classes = data.num_classes_of(args.dataset)
    return [None if getattr(args, flag) is None else
            models.load_model(args.model, getattr(args, flag), num_classes, shape,
                              f"--{flag} checkpoint", args.dataset) for flag in ("start", "end")]


def load_trained_curve(args, shape):
    """The curve of --curve_checkpoint and its checkpoint, checked against --point_finder and
    against --start / --end where given (they must be its fixed ends)."""
    curve, checkpoint = curves.load_curve(args.curve_checkpoint, args.model,
                                          data.num_classes_of(args.dataset), shape, args.dataset)
    if curve.kind != args.point_finder:
        raise UserError(f"--curve_checkpoint '{args.curve_checkpoint}' is a {curve.kind} curve; use "
                        f"--point_finder={curve.kind}")
    for flag, j, model in zip(("start", "end"), (0, curve.num_bends - 1), end_points(args, shape)):
        if model is None:
            continue
        if not checkpoint.get(f"fix_{flag}"):
            raise UserError(f"the curve's {flag} was trained, not fixed to an end-point; drop "
                            f"--{flag} (the path runs between the curve's own ends)")
        if not all(torch.equal(a, b) for a, b in zip(model.parameters(), curve.bend(j))):
            raise UserError(f"--{flag} '{getattr(args, flag)}' is not the curve's fixed {flag} "
                            f"(it was trained from '{checkpoint.get(f'init_{flag}')}'); give that "
                            f"checkpoint or drop --{flag}")
    for flag in ("start", "end"):  # recorded in curve.npz: the end-points the curve started from
        init = checkpoint.get(f"init_{flag}")
        if getattr(args, flag) is None and isinstance(init, str) and os.path.isfile(init):
            setattr(args, flag, init)
    return curve, checkpoint


def prepare(args):
    """The checks, the device, the data, how to build the finder, where the path ends and the
    training time of a trained curve (None for a procedure, whose build is timed here)."""
    check_names(args)
    device = utils.select_device(args.cuda, args.device)
    train, test = load_splits(args, device)
    shape = tuple(train[0].shape[1:])
    if trained(args):
        curve, checkpoint = load_trained_curve(args, shape)
        check_times(args, 1.0)
        return (device, train, test, lambda: point_finders.TrainedCurve(curve, train[0]),
                1.0, float(checkpoint.get("training_time", np.nan)))
    model1, model2 = (m.to(device) for m in end_points(args, shape))
    procedure = point_finders.check_fits(args.point_finder, model1, args.model)
    full = check_times(args, point_finders.path_end(procedure, model1))
    repair = args.repair and repairs(model1)

    def build():
        finder = point_finders.make_point_finder(args.point_finder, model1, model2, train[0],
                                                 args.model)
        return Repaired(finder) if repair else finder
    return device, train, test, build, full, None


def repairs(model):
    """Whether REPAIR changes ``model``'s points: a chain without BatchNorm (a network with
    BatchNorm has its statistics recomputed at every point already)."""
    return bool(model.architecture.layers) and not has_batchnorm(model)


def provenance(args, device, train, test, finder):
    """What the result was computed from: names, checkpoints with their content hashes, data."""
    files = {flag.removesuffix("_checkpoint"): getattr(args, flag)
             for flag in ("start", "end", "curve_checkpoint") if getattr(args, flag) is not None}
    return {"point_finder": args.point_finder, "method": args.method,
            "paper_name": cli.paper_name(args.point_finder, args.method), "model": args.model,
            "dataset": args.dataset, "data_path": os.path.abspath(args.data_path),
            "train_size": len(train[1]), "test_size": len(test[1]),
            **{f"{name}_checkpoint": os.path.abspath(path) for name, path in files.items()},
            **{f"{name}_sha256": sha256_of(path) for name, path in files.items()},
            "device": utils.device_label(device), "processes": distributed.world_size(),
            "repair": isinstance(finder, Repaired)}


def print_summary(args, results):
    """The last line: the paper's name, the barrier and the worst errors along the path."""
    print(f"summary: {path_name(args.point_finder, args.method, results['repair'])}: train loss max "
          f"{results['tr_loss_max']:.4f} (barrier {results['tr_loss_barrier']:+.4f}), int "
          f"{results['tr_loss_int']:.4f}; train error max {results['tr_err_max']:.2f}%; test error "
          f"max {results['te_err_max']:.2f}%, int {results['te_err_int']:.2f}%")


def run(args):
    """Build the path ``eval_curve.py`` was asked for, evaluate it, save and print the results.
    Under ``torchrun`` every rank builds the same path from its share of the training set and
    evaluates its share of both splits; rank 0 prints and writes (docs/DISTRIBUTED.md)."""
    timer = utils.Timer()
    device, train, test, build, full, training_time = distributed.agree(lambda: prepare(args))
    end = full if args.end_time is None else args.end_time
    finder = build()
    build_time = timer() if training_time is None else training_time
    name = path_name(args.point_finder, args.method, isinstance(finder, Repaired))
    how = "trained in" if trained(args) else "built in"
    print(f"{name} on {args.model}: path from t=0 (model 1) to t={full} (model 2); {how} "
          f"{build_time:.1f} s")
    if end < full or args.beg_time > 0:
        print(f"note: evaluating part of the path only, t in [{args.beg_time}, {end}] of [0, {full}]")
    if has_batchnorm(finder.template):
        print("note: BatchNorm running statistics are recomputed on the training data at every point"
              + (", which is what --repair would do: it changes nothing here" if args.repair else ""))

    ts = np.linspace(args.beg_time, end, args.num_points)
    shares = [tuple(distributed.shard(t) for t in split) for split in (train, test)]
    stats, dl, jumps = walk(finder, ts, args.method, *shares, args.batch_size)
    results = {**path_results(ts, dl, stats, jumps), **provenance(args, device, train, test, finder),
               **finder.results(), "build_time": build_time, "end_time_of_path": full,
               "computation_time": timer()}
    print_tables(results, jumps)
    npz = os.path.join(args.dir, OUTPUTS[1])
    if distributed.is_main():
        draw(os.path.join(args.dir, OUTPUTS[0]), results)
        utils.atomic_write(npz, lambda tmp: np.savez(tmp, **results))
    print(f"saved {npz} and {OUTPUTS[0]} ({timer():.1f} s)")
    if not results["finite"]:
        raise distributed.SharedError(
            f"the path's loss or error is not finite at t = "
            f"{', '.join(f'{t:g}' for t in results['nonfinite_ts'])}; {npz} holds what was "
            f"computed, marked finite=False; check the end-points' outputs (--start, --end)")
    print_summary(args, results)
