"""Reproduce the paper's experiments on one data set and write a results page from the saved files.

Runs, as ordinary ``train.py`` / ``eval_curve.py`` / ``eval_ensemble.py`` commands:

* Table 1 analogue (paper, Sec. 5, Table 1): two end-points of each one-hidden-layer width, joined
  by the six Table-1 procedures;
* Table 2 analogue (Table 2): two end-points of each deep bias-free net, all eight Table-2
  procedures;
* WA(n) ensembles (Sec. 4.3): ``--members`` end-points of ``--ensemble_model`` combined as WA(1)
  and WA(2) hybrids next to the plain ensemble.

Every step writes its own output (``checkpoint-<epochs>.pt``, ``curve.npz``, ``ens_stat.npz``)
atomically; a step whose output exists is skipped, so an interrupted run continues where it
stopped. The results page (``--results``, figures in a folder of the same name in lower case) is
built only from those files: no number in it is typed by hand.

Example (the setting of docs/RESULTS.md; Debian's dataset-fashion-mnist package):
    python3 scripts/reproduce.py --dataset=FashionMNIST --data_path=/usr/share/datasets/fashion-mnist
"""
import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import models  # noqa: E402
import point_finders  # noqa: E402
import utils  # noqa: E402
from utils import UserError  # noqa: E402

#: (finder, connector, the paper's name of the procedure)
TABLE1 = [("PointFinderWithBias", "lin_connect", "Linear"),
          ("PointFinderWithBias", "arc_connect", "Arc"),
          ("PointFinderInverseWithBias", "lin_connect", "Linear + Weight Adjustment"),
          ("PointFinderInverseWithBias", "arc_connect", "Arc + Weight Adjustment"),
          ("PointFinderTransportation", "lin_connect", "OT"),
          ("PointFinderInverseWithBiasOT", "lin_connect", "OT + Weight Adjustment")]
TABLE2 = [("PointFinderSimultaneous", "lin_connect", "Linear"),
          ("PointFinderSimultaneous", "arc_connect", "Arc"),
          ("PointFinderStepWiseButterfly", "lin_connect", "Linear + B-fly"),
          ("PointFinderStepWiseButterfly", "arc_connect", "Arc + B-fly"),
          ("PointFinderStepWiseInverse", "lin_connect", "Linear + WA"),
          ("PointFinderStepWiseInverse", "arc_connect", "Arc + WA"),
          ("PointFinderStepWiseTransportation", "lin_connect", "OT + B-fly"),
          ("PointFinderStepWiseInverseOT", "lin_connect", "OT + WA")]
#: the quantities reported along a path: (curve.npz key, column label)
PATH_QUANTITIES = [("tr_loss", "train loss"), ("tr_err", "train err %"), ("te_err", "test err %")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="FashionMNIST", help=", ".join(data.DATASETS))
    parser.add_argument("--data_path", default=None,
                        help="default: /usr/share/datasets/fashion-mnist for FashionMNIST, else data")
    parser.add_argument("--checkpoints", default=None, help="default: checkpoints/<dataset>")
    parser.add_argument("--experiments", default=None, help="default: experiments/<dataset>")
    parser.add_argument("--results", default="docs/RESULTS.md", help="the results page to write")
    parser.add_argument("--widths", default="100,500,1000,2000",
                        help="Table 1: hidden widths (LinearOneLayer<width>)")
    parser.add_argument("--table1_epochs", type=int, default=20)
    parser.add_argument("--table1_points", type=int, default=10, help="Table 1: points per unit of t")
    parser.add_argument("--table2_models", default="Linear3NoBias", help="Table 2: comma-separated")
    parser.add_argument("--table2_epochs", type=int, default=3)
    parser.add_argument("--table2_points", type=int, default=4, help="Table 2: points per unit of t")
    parser.add_argument("--ensemble_model", default="Linear3NoBias")
    parser.add_argument("--members", type=int, default=5, help="end-points in the ensembles")
    parser.add_argument("--discussion", default=None, help="a Markdown file appended as discussion")
    parser.add_argument("--cuda", action="store_true", help="pass --cuda to every command")
    parser.add_argument("--keep_going", action="store_true",
                        help="after a failed step, go on with the steps that do not need it")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing; write the results page from the files already there")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = "python3 " + " ".join(  # the run that made the files, not a --report_only re-run
        shlex.quote(a) for a in ["scripts/reproduce.py"] + given if a != "--report_only")
    data.check_dataset(args.dataset)
    if args.data_path is None:
        args.data_path = "/usr/share/datasets/fashion-mnist" if args.dataset == "FashionMNIST" else "data"
    args.checkpoints = args.checkpoints or os.path.join("checkpoints", args.dataset)
    args.experiments = args.experiments or os.path.join("experiments", args.dataset)
    args.widths = [int(w) for w in args.widths.split(",") if w]
    args.table2_models = [m for m in args.table2_models.split(",") if m]
    for width in args.widths:
        models.check_model(f"LinearOneLayer{width}")
    for name in args.table2_models + [args.ensemble_model]:
        models.check_model(name)
        if not issubclass(models.MODELS[name], models.LinearNoBias):
            raise UserError(f"{name} is not a deep bias-free dense net; Table 2 and the ensembles "
                            f"take Linear3NoBias, Linear5NoBias or Linear7NoBias")
    for flag in ("table1_epochs", "table2_epochs", "table1_points", "table2_points"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if args.members < 2:
        raise UserError(f"--members must be at least 2 (got {args.members})")
    if args.discussion is not None and not os.path.isfile(args.discussion):
        raise UserError(f"--discussion file '{args.discussion}' does not exist")
    return args


def architecture(name, dataset):
    """Model ``name`` for ``dataset`` built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return models.build_model(name, data.num_classes_of(dataset), data.input_shape_of(dataset))


class Step:
    """One command of the experiment and the file that shows it finished."""

    def __init__(self, script, flags, output, log):
        self.argv = [script] + [f"--{k}={v}" if v is not True else f"--{k}" for k, v in flags.items()]
        self.output, self.log = output, log

    @property
    def command(self):
        """The command as a reader would type it in the project folder."""
        return "python3 " + " ".join(shlex.quote(a) for a in self.argv)

    @property
    def done(self):
        return os.path.isfile(self.output)

    def run(self):
        """Run the command, its output going to the step's log; return the exit status."""
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log, "w") as log:
            log.write(self.command + "\n")
            log.flush()
            return subprocess.run([sys.executable] + self.argv, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, env=env).returncode


class Experiment:
    """Where every file of the experiment lives, and the steps that make them."""

    def __init__(self, args):
        self.args = args
        self.common = {"dataset": args.dataset, "data_path": args.data_path}
        if args.cuda:
            self.common["cuda"] = True

    def checkpoint(self, model, seed, epochs):
        return os.path.join(self.args.checkpoints, model, f"chp{seed}", f"checkpoint-{epochs}.pt")

    def curve_dir(self, model, finder, method):
        return os.path.join(self.args.experiments, "eval", model, f"{finder}-{method}")

    def ensemble_dir(self, model, n):
        return os.path.join(self.args.experiments, "eval_ensemble", model, f"WA{n}")

    def train_step(self, model, seed, epochs):
        folder = os.path.join(self.args.checkpoints, model, f"chp{seed}")
        flags = {"dir": folder, **self.common, "model": model, "epochs": epochs,
                 "save_freq": epochs, "seed": seed}
        return Step("train.py", flags, self.checkpoint(model, seed, epochs),
                    os.path.join(folder, "train.log"))

    def curve_step(self, model, finder, method, epochs, points_per_unit):
        end = point_finders.FINDERS[finder].path_end(architecture(model, self.args.dataset))
        folder = self.curve_dir(model, finder, method)
        flags = {"dir": folder, "point_finder": finder, "method": method, "model": model,
                 **self.common, "num_points": points_per_unit * end + 1,
                 "start": self.checkpoint(model, 1, epochs), "end": self.checkpoint(model, 2, epochs)}
        return Step("eval_curve.py", flags, os.path.join(folder, "curve.npz"), folder + ".log")

    def ensemble_step(self, model, epochs, n):
        """WA(n): the last ``n`` weight layers are each member's own (``--layer_ind`` is the
        adjusted one, ``--layer`` the base's layer whose outputs it is fitted on)."""
        layers = sum(1 for p in architecture(model, self.args.dataset).parameters() if p.dim() > 1)
        folder = self.ensemble_dir(model, n)
        flags = {"dir": folder, **self.common, "model": model, "name": f"checkpoint-{epochs}.pt",
                 "layer": layers - n - 1, "layer_ind": layers - n,
                 "model_paths": os.path.join(self.args.checkpoints, model),
                 "max_models": self.args.members}
        return Step("eval_ensemble.py", flags, os.path.join(folder, "ens_stat.npz"), folder + ".log")

    def table1(self):
        """(width, model name, [(procedure name, curve step)])"""
        a = self.args
        return [(w, f"LinearOneLayer{w}", [(name, self.curve_step(f"LinearOneLayer{w}", f, m,
                                                                   a.table1_epochs, a.table1_points))
                                           for f, m, name in TABLE1]) for w in a.widths]

    def table2(self):
        a = self.args
        return [(model, [(name, self.curve_step(model, f, m, a.table2_epochs, a.table2_points))
                         for f, m, name in TABLE2]) for model in a.table2_models]

    def ensembles(self):
        return [(n, self.ensemble_step(self.args.ensemble_model, self.args.table2_epochs, n))
                for n in (1, 2)]

    def steps(self):
        """Every step in order, each with the training steps it needs."""
        a = self.args
        trainings = {}

        def train(model, seed, epochs):
            return trainings.setdefault((model, seed), self.train_step(model, seed, epochs))

        plan = []
        for width, model, curves in self.table1():
            needs = [train(model, s, a.table1_epochs) for s in (1, 2)]
            plan += [(step, []) for step in needs] + [(step, needs) for _, step in curves]
        for model, curves in self.table2():
            needs = [train(model, s, a.table2_epochs) for s in (1, 2)]
            plan += [(step, []) for step in needs] + [(step, needs) for _, step in curves]
        members = [train(a.ensemble_model, s, a.table2_epochs) for s in range(1, a.members + 1)]
        plan += [(step, []) for step in members]
        plan += [(step, members) for _, step in self.ensembles()]
        unique, seen = [], set()
        for step, needs in plan:
            if step.output not in seen:
                seen.add(step.output)
                unique.append((step, needs))
        return unique


def run_steps(experiment):
    """Run the steps whose output is missing; return the failed ones."""
    plan = experiment.steps()
    users = {}
    for step, needs in plan:
        for need in needs:
            users.setdefault(need.output, []).append(step)
    # a training whose every result exists is not needed (e.g. re-running on another machine)
    needed = [(step, needs) for step, needs in plan
              if step.output not in users or not all(user.done for user in users[step.output])]
    todo = [(step, needs) for step, needs in needed if not step.done]
    done = sum(1 for step, _ in plan if step.done)
    unneeded = len(plan) - done - len(todo)
    print(f"{len(plan)} steps, {done} already done, "
          + (f"{unneeded} not needed (every result that uses them exists), " if unneeded else "")
          + f"{len(todo)} to run")
    failed = []
    bar = tqdm(todo, desc="steps", dynamic_ncols=True, disable=None)
    for step, needs in bar:
        missing = [n for n in needs if not n.done]
        if missing:
            tqdm.write(f"skipped (needs {missing[0].output}): {step.command}")
            failed.append(step)
            continue
        tqdm.write(f"$ {step.command}")
        start = time.perf_counter()
        status = step.run()
        if status != 0 or not step.done:
            with open(step.log) as log:
                last = ([line.strip() for line in log if line.strip()] or [""])[-1]
            tqdm.write(f"step failed (exit {status}) after {time.perf_counter() - start:.0f} s: "
                       f"{last}\n  its whole output is in {step.log}")
            failed.append(step)
            if not experiment.args.keep_going:
                break
        else:
            tqdm.write(f"  done in {time.perf_counter() - start:.0f} s")
    return failed


# ----------------------------------------------------------------------------- the results page

def load_npz(path):
    """The arrays of a result file, or None where the step has not run."""
    if not os.path.isfile(path):
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def path_row(curve):
    """End-points and path statistics of one ``curve.npz``: the cells of one table row.

    The barrier of a quantity is its maximum along the path minus the mean of its values at the
    two end-points; ``int`` is the length-weighted mean along the path (path_evaluation.summarize)."""
    cells = {}
    for key, _ in PATH_QUANTITIES:
        values = curve[key]
        cells[key] = {"ends": (values[0], values[-1]), "max": float(curve[f"{key}_max"]),
                      "int": float(curve[f"{key}_int"]),
                      "barrier": float(values.max() - 0.5 * (values[0] + values[-1]))}
    cells["time"] = float(curve["computation_time"])
    cells["points"] = len(curve["ts"])
    return cells


def row_cells(cells):
    out = []
    for key, _ in PATH_QUANTITIES:
        c, fmt = cells[key], (".3f" if key == "tr_loss" else ".2f")
        out += [f"{c['ends'][0]:{fmt}} / {c['ends'][1]:{fmt}}", f"{c['max']:{fmt}}",
                f"{c['int']:{fmt}}", f"{c['barrier']:+{fmt}}"]
    return out + [cells["points"], f"{cells['time']:.0f}"]


def row_headers(first):
    headers = list(first)
    for _, label in PATH_QUANTITIES:
        headers += [f"{label}: ends", "max", "int", "barrier"]
    return headers + ["points", "time (s)"]


def markdown(rows, headers):
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def plot_paths(path, panels, title):
    """One panel per model: train error along t for every procedure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = len(panels) if len(panels) <= 3 else 2
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (label, curves) in zip(axes.flat, panels):
        for name, curve in curves:
            if curve is not None:
                ax.plot(curve["ts"], curve["tr_err"], "o-", ms=2.5, label=name)
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.set_ylabel("train error (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    utils.save_figure(fig, path)


def plot_ensembles(path, stats, title):
    """Ensemble accuracy against the number of members and against the parameter count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_n, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    first = next(s for s in stats.values() if s is not None)
    n = np.arange(1, len(first["ensemble_accuracy"]) + 1)
    ax_n.plot(n, first["ensemble_accuracy"], "o-", label="plain ensemble")
    ax_p.plot(first["ensemble_parameters"] / 1e6, first["ensemble_accuracy"], "o-",
              label="plain ensemble")
    for k, s in stats.items():
        if s is not None:
            ax_n.plot(n, s["ensemble_accuracy_adjusted"], "s-", label=f"WA({k}) ensemble")
            ax_p.plot(s["ensemble_parameters_adjusted"] / 1e6, s["ensemble_accuracy_adjusted"],
                      "s-", label=f"WA({k}) ensemble")
    ax_n.set_xlabel("members")
    ax_n.set_xticks(n)
    ax_p.set_xlabel("parameters (millions)")
    for ax in (ax_n, ax_p):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    utils.save_figure(fig, path)


def findings(table_rows):
    """Data-driven remarks on one table: ``table_rows`` maps a panel to {procedure: cells}."""
    lines = []
    for panel, rows in table_rows.items():
        done = {name: c for name, c in rows.items() if c is not None}
        if not done:
            continue
        barrier = {name: c["tr_loss"]["barrier"] for name, c in done.items()}
        best, worst = min(barrier, key=barrier.get), max(barrier, key=barrier.get)
        text = (f"{panel}: the highest train-loss barrier is {worst}'s ({barrier[worst]:+.3f}, "
                f"train error up to {done[worst]['tr_err']['max']:.2f}%), the lowest {best}'s "
                f"({barrier[best]:+.3f}, train error up to {done[best]['tr_err']['max']:.2f}%)")
        if "Linear" in done and "Arc" in done:
            verb = "lowers" if barrier["Arc"] < barrier["Linear"] else "does not lower"
            text += f"; Arc {verb} Linear's barrier ({barrier['Arc']:+.3f} vs {barrier['Linear']:+.3f})"
        lines.append(f"* {text}.")
    return lines


def write_results(experiment):
    """The results page and its figures, from the saved files only."""
    a = experiment.args
    figures = os.path.splitext(a.results)[0].lower()
    os.makedirs(figures, exist_ok=True)
    rel = os.path.relpath(os.path.abspath(figures), os.path.dirname(os.path.abspath(a.results)))
    devices, missing = set(), []

    def result_of(step):
        """A step's result file (None if missing), noting what is missing and where it ran."""
        result = load_npz(step.output)
        if result is None:
            missing.append(step.command)
        else:
            devices.add(str(result.get("device", "not recorded")))
        return result

    out = [f"# Results on {a.dataset}", "",
           f"Written by `{a.command}` on {datetime.date.today().isoformat()} from the "
           f"`curve.npz` and `ens_stat.npz` files under `{a.experiments}`; every number below is "
           f"read from them. End-points: "
           + (f"Table 1, {a.table1_epochs} epochs of `train.py` (seeds 1 and 2); " if a.widths else "")
           + f"Table 2 and ensembles, {a.table2_epochs} epochs (seeds 1 and 2; 1 to {a.members} "
           f"for the ensembles). The paper trains for 400 epochs; end-points trained longer may "
           f"behave differently.", "",
           "Columns: each quantity at the two end-points (model 1 / model 2), its maximum and "
           "length-weighted mean (`int`) along the path, and its barrier (the maximum minus the "
           "mean of the two end-points); `time` is the wall time of the whole `eval_curve.py` run "
           "(construction, every point, train and test evaluation).", ""]

    tables = [("Table 1 analogue: one hidden layer (`LinearOneLayer<width>`)", "table1", "width",
               [(f"width {w}", w, curves) for w, _, curves in experiment.table1()]),
              ("Table 2 analogue: deep nets without biases", "table2", "model",
               [(model, model, curves) for model, curves in experiment.table2()])]
    for title, stem, first_column, groups in tables:
        if not groups:
            continue
        out += [f"## {title}", ""]
        headers = row_headers([first_column, "procedure"])
        rows, panels, summary = [], [], {}
        for panel, label, curves in groups:
            loaded = [(name, result_of(step)) for name, step in curves]
            panels.append((panel, loaded))
            summary[panel] = {name: path_row(c) if c is not None else None for name, c in loaded}
            for name, curve in loaded:
                rows.append([label, name] + (row_cells(path_row(curve)) if curve is not None
                                             else ["not run"] * (len(headers) - 2)))
        out += [markdown(rows, headers), ""]
        plot_paths(os.path.join(figures, f"{stem}_train_error.png"), panels,
                   f"{title.split(':')[0]} on {a.dataset}: train error along the path")
        out += [f"![{title.split(':')[0]} paths]({rel}/{stem}_train_error.png)", ""]
        out += findings(summary) + [""]

    out += [f"## WA(n) ensembles of {a.members} `{a.ensemble_model}` end-points", ""]
    stats = {n: result_of(step) for n, step in experiment.ensembles()}
    rows = []
    first = next((s for s in stats.values() if s is not None), None)
    if first is not None:
        for k in range(len(first["ensemble_accuracy"])):
            row = [k + 1, f"{first['one_model_accuracy'][k]:.2f}",
                   f"{first['ensemble_accuracy'][k]:.2f}", f"{first['ensemble_parameters'][k]:,}"]
            for n, s in stats.items():
                row += ([f"{s['ensemble_accuracy_adjusted'][k]:.2f}",
                         f"{s['ensemble_parameters_adjusted'][k]:,}"] if s is not None
                        else ["not run", "not run"])
            rows.append(row)
        headers = ["members", "member acc %", "plain ensemble acc %", "plain params"]
        for n in stats:
            headers += [f"WA({n}) ensemble acc %", f"WA({n}) params"]
        out += ["Test accuracy of the first n members' ensembles (averaged softmax outputs); a "
                "WA(n) ensemble shares the base's (member 1's) trunk and keeps each member's last "
                "n layers, the first of them weight-adjusted to the base's features.", "",
                markdown(rows, headers), ""]
        times = ", ".join(f"WA({n}) {s['computation_time']:.0f} s" for n, s in stats.items()
                          if s is not None)
        out += [f"Wall time of the `eval_ensemble.py` runs: {times}.", ""]
        plot_ensembles(os.path.join(figures, "ensemble.png"), stats,
                       f"{a.ensemble_model} ensembles on {a.dataset}")
        out += [f"![Ensembles]({rel}/ensemble.png)", ""]
        last = len(first["ensemble_accuracy"]) - 1
        for n, s in stats.items():
            if s is not None:
                out.append(
                    f"* WA({n}) of {last + 1}: {s['ensemble_accuracy_adjusted'][last]:.2f}% with "
                    f"{s['ensemble_parameters_adjusted'][last] / first['ensemble_parameters'][last]:.0%}"
                    f" of the plain ensemble's parameters, which reaches "
                    f"{first['ensemble_accuracy'][last]:.2f}% (the best single member: "
                    f"{max(first['one_model_accuracy']):.2f}%).")
        out.append("")
    else:
        out += ["not run", ""]

    if a.discussion:
        out += ["## Discussion", "", open(a.discussion).read().strip(), ""]
    out += ["## How these numbers were made", "",
            f"Computed on: {', '.join(sorted(devices)) or 'nothing yet'}. The driver ran these "
            f"commands (from the project folder; each is skipped when its output exists):", "",
            "```"] + [step.command for step, _ in experiment.steps()] + ["```", ""]
    if missing:
        out += [f"**Incomplete:** {len(missing)} result file(s) missing; rows marked `not run` "
                f"come from these commands, which have not finished:", "", "```"] + missing + ["```", ""]
    utils.atomic_write(a.results, lambda tmp: open(tmp, "w").write("\n".join(out)))
    return missing


def main(argv=None):
    args = parse_args(argv)
    experiment = Experiment(args)
    if not args.report_only:  # a missing data set: one clear line now, not a failed first step
        data.load_split(args.dataset, args.data_path, False)
    failed = [] if args.report_only else run_steps(experiment)
    missing = write_results(experiment)
    print(f"wrote {args.results}" + (f" ({len(missing)} result file(s) missing)" if missing else ""))
    if failed:
        raise UserError(f"{len(failed)} step(s) failed or could not run; see the logs named above, "
                        f"fix the cause and run the same command again to continue")


if __name__ == "__main__":
    utils.run_cli(main)
