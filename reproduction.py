"""The results driver behind ``scripts/reproduce.py``: the paper's experiments on one data set as
ordinary ``train.py`` / ``eval_curve.py`` / ``eval_ensemble.py`` steps, each skipped when its
complete result exists, and the results page written from the saved files only (the script's
docstring and the README say what it runs)."""
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

import cli
import comparison
import data
import evaluation
import models
import path_evaluation
import point_finders
import utils
import wa_ensemble
from utils import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))

#: (finder, connector, the paper's name of the procedure), in the order of the paper's tables
TABLE1 = cli.procedures("Table 1")
TABLE2 = cli.procedures("Table 2")
#: permutation alignment beside them (Ainsworth et al. 2022), with the linear connector as Git
#: Re-Basin, without and with REPAIR: (finder, connector, name, repair)
ALIGNED = [(finder, method, name + suffix, repair)
           for repair, suffix in ((False, ""), (True, " + REPAIR"))
           for finder, method, name in cli.procedures("Ainsworth et al. 2022")
           if method == "lin_connect"]
#: the results page's first line, up to its data set's name (how the driver knows its own page)
RESULTS_TITLE = "# Results on "
#: the quantities reported along a path: (curve.npz key, column label)
PATH_QUANTITIES = [("tr_loss", "train loss"), ("tr_err", "train err %"), ("te_err", "test err %")]
#: how closely the end-points' train loss must agree between two results of one table for them to
#: be taken as computed on the same end-points (relative): one pair of networks evaluated through
#: different procedures differs by rounding (up to 6e-6 seen), end-points retrained on a CPU whose
#: kernels round differently by 5e-4 and more
END_POINT_RTOL = 1e-4
#: the figures of the results page, in its figures folder
FIGURES = ("table1_train_error.png", "table2_train_error.png", "ensemble.png")


def check_args(args):
    """Everything the flags name, checked before any file is created or changed."""
    if cli.rank() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run scripts/reproduce.py itself as one process, without torchrun; give "
                        "--launcher='torchrun --standalone --nproc_per_node=N' to run its steps "
                        "through torchrun")
    data.check_dataset(args.dataset)
    check_models(args)
    if args.cuda and not args.report_only and not torch.cuda.is_available():
        raise UserError("--cuda was given but no CUDA GPU is available; drop --cuda to run on the CPU")
    if args.comparison is None:
        args.comparison = comparison_page(args.results)
    args.discussion_text = read_discussion(args.discussion, "--discussion")
    args.comparison_discussion_text = read_discussion(args.comparison_discussion,
                                                      "--comparison_discussion")
    check_outputs(args)


def check_models(args):
    """Every model the flags name exists and fits its table."""
    for name in table1_models(args):
        models.check_model(name)
    for name in args.table2_models + [args.ensemble_model]:
        models.check_model(name)
        if not issubclass(models.MODELS[name], models.LinearNoBias):
            raise UserError(f"{name} is not a deep bias-free dense net; Table 2 and the ensembles "
                            f"take Linear3NoBias, Linear5NoBias or Linear7NoBias")


def read_discussion(path, flag):
    """The text of the discussion file of ``flag`` (None without one), read now: a bad file is an
    error before anything runs, not after."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UserError(f"{flag} file '{path}' does not exist or is not a file; give the "
                        f"path of a Markdown file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "it is not UTF-8 text"
        raise UserError(f"cannot read {flag} file '{path}': {reason}; give a readable "
                        f"Markdown file") from None


def figures_dir(results):
    """The folder of the results page's figures: beside the page, named after the page's file name
    in lower case (docs/RESULTS.md: docs/results); the folders above keep their case."""
    folder, name = os.path.split(results)
    return os.path.join(folder, os.path.splitext(name)[0].lower())


def check_page(page, flag, figures):
    """Check, creating nothing, that the Markdown page of ``flag`` and its ``figures`` (file names,
    in the page's figures folder) can be written."""
    if os.path.isdir(page):
        raise UserError(f"{flag} '{page}' is a folder; give the path of the Markdown page to write "
                        f"(e.g. {os.path.join(page, 'PAGE.md')})")
    if not os.path.splitext(os.path.basename(page))[1]:
        raise UserError(f"{flag} '{page}' has no file extension, so its figures folder would have "
                        f"its name; give a page name ending in .md")
    utils.check_output_dir(os.path.dirname(page) or ".", flag=flag)
    utils.check_output_dir(figures_dir(page), figures, flag=flag)


def comparison_page(results):
    """The default comparison page of a results page: RESULTS in its file name replaced by
    COMPARISON (docs/RESULTS-cuda.md: docs/COMPARISON-cuda.md), else ``<name>-comparison.md``."""
    folder, name = os.path.split(results)
    stem, extension = os.path.splitext(name)
    page = name.replace("RESULTS", "COMPARISON") if "RESULTS" in name else \
        f"{stem}-comparison{extension or '.md'}"
    return os.path.join(folder, page)


def table1_models(args):
    """The model of each Table-1 width, in the order of ``--widths``."""
    return [f"LinearOneLayer{w}" for w in args.widths]


def compared_models(args):
    """The models of the comparison page: each Table-1 width's, then the Table-2 models."""
    return table1_models(args) + list(args.table2_models)


def check_outputs(args):
    """Check, creating nothing, that the page, its figures and (unless --report_only) the
    experiment's folders can be written."""
    check_page(args.results, "--results", FIGURES)
    if args.comparison:
        check_page(args.comparison, "--comparison", [comparison.figure_name(model) for model
                                                     in compared_models(args)])
        if os.path.abspath(args.comparison) == os.path.abspath(args.results):
            raise UserError(f"--comparison and --results are the same file '{args.results}'; give "
                            f"each page its own file")
    for flag, text in (("--discussion", args.discussion),
                       ("--comparison_discussion", args.comparison_discussion)):
        for page_flag, page in (("--results", args.results), ("--comparison", args.comparison)):
            if text and page and same_file(text, page):
                raise UserError(f"{flag} '{text}' is the page {page_flag} writes; the page would "
                                f"replace the discussion: give the discussion its own file")
    check_written_here(args.results, "--results", RESULTS_TITLE)
    if args.comparison:
        check_written_here(args.comparison, "--comparison", comparison.TITLE)
    if not args.report_only:
        utils.check_output_dir(args.checkpoints, flag="--checkpoints")
        utils.check_output_dir(args.experiments, flag="--experiments")


def check_written_here(page, flag, title):
    """Refuse to replace a file at ``page`` that is not a page of this driver (its first line
    starts with the page's ``title``): a file of the user's own at a page's path is never lost."""
    if not os.path.isfile(page):
        return
    try:
        with open(page, encoding="utf-8", errors="replace") as f:
            first = f.readline(len(title))
    except OSError as err:
        raise UserError(f"{flag} '{page}' cannot be read ({err.strerror}), so it may be another "
                        f"file than a page of this driver; give another {flag}, or move it away") from None
    if first != title:
        raise UserError(f"{flag} '{page}' exists and is not a page this driver wrote (its first "
                        f"line does not start with '{title}'); give another {flag}, or move the "
                        f"file away")


def same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file (``b`` perhaps not written yet)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def training_identity(flags, dataset, curve):
    """What a training step's checkpoint records of the run that wrote it."""
    return {"model": flags["model"], "dataset": dataset, "seed": flags["seed"],
            "epoch": flags["epochs"], "curve": curve}


def path_points(points_per_unit, end):
    """The number of points of a path that reaches model 2 at ``t = end``, as in the reference's
    commands: ``points_per_unit`` per unit of ``t``, and a path that ends at 1 gets as many as one
    that ends at 2 (21 and 31 points for 10 per unit)."""
    return points_per_unit * max(end, 2) + 1


def meta_model(name, dataset):
    """Model ``name`` for ``dataset`` built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return models.build_model(name, data.num_classes_of(dataset), data.input_shape_of(dataset))


class ResultError(Exception):
    """A result file that is there but cannot be used (its message says why)."""


class Unreadable(ResultError):
    """A result file that cannot be read, or lacks what the results page reads: its step runs again."""


class Mismatch(ResultError):
    """A result file written by another step (another model, data set, ...): never trusted, never
    overwritten."""


#: what the results page reads from each kind of result: (1-D arrays of one length, scalars)
CURVE_ARRAYS = (["ts"] + [key for key, _ in PATH_QUANTITIES],
                ["computation_time"] + [f"{key}_{c}" for key, _ in PATH_QUANTITIES for c in ("max", "int")])
ENSEMBLE_ARRAYS = (["one_model_accuracy", "ensemble_accuracy", "ensemble_parameters",
                    "ensemble_accuracy_adjusted", "ensemble_parameters_adjusted"], ["computation_time"])


def load_npz(path):
    """The arrays of a result file, or None where there is none; ``Unreadable`` where the file
    cannot be read (not an .npz archive, truncated, a folder, no permission)."""
    if not os.path.lexists(path):
        return None
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise Unreadable("it is not an .npz archive")
        with f:
            return {k: f[k] for k in f.files}
    except ResultError:
        raise
    except IsADirectoryError:
        raise Unreadable("it is a folder, not a file") from None
    except Exception as err:  # zipfile, zlib, numpy and OS errors alike: the file is damaged
        reason = (getattr(err, "strerror", None) or str(err) or "").splitlines()
        raise Unreadable(f"{type(err).__name__}" + (f": {reason[0][:120]}" if reason else "")) from None


def check_arrays(arrays, vectors, scalars):
    """Raise ``Unreadable`` unless ``vectors`` are numeric 1-D arrays of one non-zero length and
    ``scalars`` numeric scalars (what the results page formats)."""
    for key in vectors + scalars:
        if key not in arrays:
            raise Unreadable(f"it has no '{key}'")
        if arrays[key].dtype.kind not in "iuf":
            raise Unreadable(f"its '{key}' is not numeric")
    shapes = {arrays[key].shape for key in vectors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] == 0:
        raise Unreadable(f"its arrays {', '.join(vectors)} are not of one non-zero length")
    wrong = [key for key in scalars if arrays[key].ndim != 0]
    if wrong:
        raise Unreadable(f"its '{wrong[0]}' is not a single number")


def check_curve(arrays):
    """A ``curve.npz`` as eval_curve.py writes it (``finite``/``nonfinite_ts`` are optional:
    older files lack them)."""
    check_arrays(arrays, *CURVE_ARRAYS)
    if "finite" in arrays and (arrays["finite"].dtype != bool or arrays["finite"].ndim != 0):
        raise Unreadable("its 'finite' is not a single true/false value")
    if "nonfinite_ts" in arrays and (arrays["nonfinite_ts"].dtype.kind not in "iuf"
                                     or arrays["nonfinite_ts"].ndim != 1):
        raise Unreadable("its 'nonfinite_ts' is not a list of numbers")


def read_checkpoint(path):
    """The entries of a training's checkpoint (its tensors memory-mapped, not read), or None where
    there is none; ``Unreadable`` where ``utils.load_checkpoint`` refuses it."""
    if not os.path.lexists(path):
        return None
    try:
        return utils.load_checkpoint(path, mmap=True)
    except UserError:
        raise Unreadable("it is not a readable PyTorch checkpoint of train.py") from None


def identity_text(identity):
    return ", ".join(f"{k}={'(none)' if v is None else v}" for k, v in identity.items())


def recorded(arrays, key):
    """An identity entry of a result file as text (None where the file has none); ``points`` is
    the number of points of its path (the size of ``ts``), so that a path computed with another
    point count is not taken for this step's."""
    array = arrays.get("ts" if key == "points" else key)
    if array is None:
        return None
    if key == "points":
        return str(array.size)
    return str(array.item() if array.ndim == 0 else array.tolist())


class Step:
    """One command of the experiment and the files that show it finished.

    A step is done when its result file is readable and records ``identity`` (the model, data
    set, ... it was computed for; a training's checkpoint, its model, data set, seed, epoch and
    curve) and, for an evaluation, its plot, written before it, exists."""

    def __init__(self, script, flags, output, log, plot=None, identity=None, check=None, draw=None,
                 launcher=()):
        self.argv = [script] + [f"--{k}={v}" if v is not True else f"--{k}" for k, v in flags.items()]
        self.launcher = tuple(launcher)  # torchrun's flags, or () for one plain process
        self.output, self.log, self.plot = output, log, plot
        self.identity = {k: None if v is None else str(v) for k, v in (identity or {}).items()}
        self.check, self.draw = check, draw

    @property
    def command(self):
        """The command as a reader would type it in the project folder."""
        launch = ["torchrun", *self.launcher, "--"] if self.launcher else ["python3"]
        return " ".join(shlex.quote(a) for a in launch + self.argv)

    def process(self):
        """The command line run: this Python, through ``torch.distributed.run`` (torchrun) when
        the step has a launcher, on the project's script by its absolute path (the step runs in
        the driver's working directory, so that relative paths mean the same to both)."""
        argv = [os.path.join(ROOT, self.argv[0]), *self.argv[1:]]
        if self.launcher:
            return [sys.executable, "-m", "torch.distributed.run", *self.launcher, "--", *argv]
        return [sys.executable, *argv]

    @property
    def trains(self):
        """Whether the step is a training (its result a checkpoint, not an .npz with a plot)."""
        return self.plot is None

    def load(self):
        """The step's result (arrays, or a training's checkpoint entries), or None where it has
        not run; ``Mismatch`` for a file that records another identity, ``Unreadable`` for one
        that cannot be read."""
        if self.trains:
            checkpoint = read_checkpoint(self.output)
            held = None if checkpoint is None else \
                {k: None if checkpoint.get(k) is None else str(checkpoint[k]) for k in self.identity}
            if held is not None and held != self.identity:
                raise Mismatch(f"'{self.output}' is a checkpoint of {identity_text(held)}, not of "
                               f"this step ({identity_text(self.identity)}); move it away or "
                               f"choose another --checkpoints")
            return checkpoint
        arrays = load_npz(self.output)
        if arrays is not None:
            held = {k: recorded(arrays, k) for k in self.identity}
            if held != self.identity:
                raise Mismatch(f"'{self.output}' holds the result of {identity_text(held)}, not of "
                               f"this step ({identity_text(self.identity)}); move it away or "
                               f"choose another --experiments")
            self.check(arrays)
        return arrays

    def state(self):
        """None when the step is done, else why not (a few words)."""
        try:
            if self.load() is None:
                return "not run"
        except ResultError as err:
            return f"'{self.output}' cannot be used: {err}"
        if not self.trains and not os.path.isfile(self.plot):
            return f"its plot '{self.plot}' is missing (a run that stopped half-way)"
        return None

    def redraw(self):
        """Draw a missing plot from a usable result (older runs wrote the result first, so an
        interruption could leave it without its plot); return whether it did."""
        if self.trains or os.path.isfile(self.plot):
            return False
        try:
            arrays = self.load()
        except ResultError:
            return False
        if arrays is None:
            return False
        self.draw(self.plot, arrays)
        return True

    @property
    def done(self):
        return self.state() is None

    def run(self):
        """Run the command, its output going to the step's log; return the exit status.

        The output streams into ``<log>.partial`` while the command runs, which is renamed onto
        the log when it ends (also on Ctrl-C): a log is always one whole run's output."""
        partial = self.log + ".partial"
        if os.path.isdir(self.log) or os.path.isdir(partial):
            raise UserError(f"'{self.log}' (or its .partial) is a folder, where the log of a step "
                            f"goes; move it away and run the same command again")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            os.makedirs(os.path.dirname(self.log), exist_ok=True)
            log = open(partial, "w")
        except OSError as err:
            raise UserError(f"cannot write the log '{partial}': {err.strerror}; free some space or "
                            f"choose writable --checkpoints / --experiments") from None
        try:
            with log:
                log.write(self.command + "\n")
                log.flush()
                return subprocess.run(self.process(), stdout=log,
                                      stderr=subprocess.STDOUT, env=env).returncode
        finally:
            try:
                os.replace(partial, self.log)
            except OSError as err:
                raise UserError(f"cannot rename the log '{partial}' to '{self.log}': "
                                f"{err.strerror}") from None

    def last_line(self):
        """The last non-empty line of the step's log ('' where there is none)."""
        try:
            with open(self.log, errors="replace") as log:
                return ([line.strip() for line in log if line.strip()] or [""])[-1]
        except OSError:
            return ""


class Experiment:
    """Where every file of the experiment lives, and the steps that make them."""

    def __init__(self, args):
        self.args = args
        self.launcher = args.launcher
        self.curve_trainings = {}  # a Bezier evaluation's output -> the curve training it needs
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
                    os.path.join(folder, "train.log"), launcher=self.launcher,
                    identity=training_identity(flags, self.args.dataset, curve=None))

    def curve_step(self, model, finder, method, epochs, points_per_unit, repair=False):
        """eval_curve.py between the end-points (seeds 1 and 2, ``epochs`` each), with
        ``--repair`` when ``repair``."""
        end = point_finders.path_end(point_finders.FINDERS[finder], meta_model(model, self.args.dataset))
        folder = self.curve_dir(model, finder, method) + ("-repair" if repair else "")
        flags = {"dir": folder, "point_finder": finder, "method": method, "model": model,
                 **self.common, "num_points": path_points(points_per_unit, end),
                 "start": self.checkpoint(model, 1, epochs), "end": self.checkpoint(model, 2, epochs)}
        identity = {"model": model, "point_finder": finder, "method": method,
                    "dataset": self.args.dataset, "points": flags["num_points"]}
        if repair:
            flags["repair"] = identity["repair"] = True
        return Step("eval_curve.py", flags, os.path.join(folder, "curve.npz"), folder + ".log",
                    plot=os.path.join(folder, "curve.png"), check=check_curve,
                    draw=path_evaluation.draw, identity=identity, launcher=self.launcher)

    def procedure_steps(self, model, table, epochs, points_per_unit):
        """``[(name, curve step)]``: the paper's procedures of ``table``, then the alignments
        without and with REPAIR (``ALIGNED``)."""
        return ([(name, self.curve_step(model, f, m, epochs, points_per_unit)) for f, m, name in table]
                + [(name, self.curve_step(model, f, m, epochs, points_per_unit, repair))
                   for f, m, name, repair in ALIGNED])

    def ensemble_step(self, model, epochs, n):
        """WA(n): the last ``n`` weight layers are each member's own (``--layer_ind`` is the
        adjusted one, ``--layer`` the base's layer whose outputs it is fitted on)."""
        layers = len(meta_model(model, self.args.dataset).architecture.layers)
        folder = self.ensemble_dir(model, n)
        flags = {"dir": folder, **self.common, "model": model, "name": f"checkpoint-{epochs}.pt",
                 "layer": layers - n - 1, "layer_ind": layers - n,
                 "model_paths": os.path.join(self.args.checkpoints, model),
                 "max_models": self.args.members}
        return Step("eval_ensemble.py", flags, os.path.join(folder, "ens_stat.npz"), folder + ".log",
                    plot=os.path.join(folder, "ensemble.png"), draw=wa_ensemble.draw,
                    check=lambda arrays: check_arrays(arrays, *ENSEMBLE_ARRAYS),
                    identity={"model": model, "dataset": self.args.dataset,
                              "layer": flags["layer"]}, launcher=self.launcher)

    def bezier_training_step(self, model, epochs, curve_epochs):
        """A Bezier curve of 3 bends trained for ``curve_epochs`` between the end-points (seeds 1
        and 2, ``epochs`` each), its ends fixed (train.py --curve)."""
        folder = os.path.join(self.args.checkpoints, model, f"bezier-{curve_epochs}")
        flags = {"dir": folder, **self.common, "model": model, "curve": "Bezier", "num_bends": 3,
                 "init_start": self.checkpoint(model, 1, epochs), "fix_start": True,
                 "init_end": self.checkpoint(model, 2, epochs), "fix_end": True,
                 "epochs": curve_epochs, "save_freq": curve_epochs, "seed": 1}
        return Step("train.py", flags, os.path.join(folder, f"checkpoint-{curve_epochs}.pt"),
                    os.path.join(folder, "train.log"), launcher=self.launcher,
                    identity=training_identity(flags, self.args.dataset, curve="Bezier"))

    def bezier_step(self, model, epochs, curve_epochs, points_per_unit):
        """The evaluation of ``bezier_training_step``'s curve (eval_curve.py --point_finder=Bezier);
        the training it needs is kept in ``curve_trainings``."""
        training = self.bezier_training_step(model, epochs, curve_epochs)
        folder = os.path.join(self.args.experiments, "eval", model, f"Bezier-{curve_epochs}")
        flags = {"dir": folder, "point_finder": "Bezier", "model": model, **self.common,
                 "num_points": path_points(points_per_unit, 1), "curve_checkpoint": training.output}
        step = Step("eval_curve.py", flags, os.path.join(folder, "curve.npz"), folder + ".log",
                    plot=os.path.join(folder, "curve.png"), check=check_curve,
                    draw=path_evaluation.draw, launcher=self.launcher,
                    identity={"model": model, "point_finder": "Bezier", "method": "lin_connect",
                              "dataset": self.args.dataset, "points": flags["num_points"]})
        self.curve_trainings[step.output] = training
        return step

    def table1(self):
        """(width, model name, [(procedure name, curve step)]): the Table-1 procedures and the
        trained Bezier curve."""
        a = self.args
        return [(w, model, self.procedure_steps(model, TABLE1, a.table1_epochs, a.table1_points)
                 + [(bezier_name(a.curve_epochs), self.bezier_step(
                     model, a.table1_epochs, a.curve_epochs, a.table1_points))])
                for w, model in zip(a.widths, table1_models(a))]

    def table2(self):
        a = self.args
        return [(model, self.procedure_steps(model, TABLE2, a.table2_epochs, a.table2_points)
                 + [(bezier_name(a.table2_curve_epochs), self.bezier_step(
                     model, a.table2_epochs, a.table2_curve_epochs, a.table2_points))])
                for model in a.table2_models]

    def sweep(self):
        """(model, [(curve-training epochs, evaluation step)]): Bezier curves of the first Table-1
        width trained for each of ``--curve_sweep`` epochs (empty without a width)."""
        a = self.args
        if not a.widths or not a.curve_sweep:
            return None, []
        model = table1_models(a)[0]
        return model, [(e, self.bezier_step(model, a.table1_epochs, e, a.table1_points))
                       for e in a.curve_sweep]

    def ensembles(self):
        return [(n, self.ensemble_step(self.args.ensemble_model, self.args.table2_epochs, n))
                for n in (1, 2)]

    def steps(self):
        """Every step in order, each with the training steps it needs."""
        a = self.args
        trainings = {}

        def train(model, seed, epochs):
            return trainings.setdefault((model, seed), self.train_step(model, seed, epochs))

        def paths(model, epochs, curves):
            needs = [train(model, s, epochs) for s in (1, 2)]
            plan = [(step, []) for step in needs]
            for step in curves:
                training = self.curve_trainings.get(step.output)
                plan += [(step, needs)] if training is None else [(training, needs), (step, [training])]
            return plan

        plan = []
        for width, model, curves in self.table1():
            plan += paths(model, a.table1_epochs, [step for _, step in curves])
        model, sweep = self.sweep()
        plan += paths(model, a.table1_epochs, [step for _, step in sweep]) if sweep else []
        for model, curves in self.table2():
            plan += paths(model, a.table2_epochs, [step for _, step in curves])
        members = [train(a.ensemble_model, s, a.table2_epochs) for s in range(1, a.members + 1)]
        plan += [(step, []) for step in members]
        plan += [(step, members) for _, step in self.ensembles()]
        unique, seen = [], set()
        for step, needs in plan:
            if step.output not in seen:
                seen.add(step.output)
                unique.append((step, needs))
        return unique


def check_identities(experiment):
    """Stop, before anything runs or is written, at a result file that records another step's
    identity (e.g. another model's path where this one's belongs): it is neither trusted nor
    overwritten. A damaged result is replaced by its step, run again; a damaged checkpoint also
    stops the driver (train.py replaces no file that is not its own run's checkpoint)."""
    for step, _ in experiment.steps():
        try:
            step.load()
        except Mismatch as err:
            raise UserError(str(err)) from None
        except Unreadable as err:
            if step.trains:
                raise UserError(f"'{step.output}' cannot be used: {err}; move it away and run the "
                                f"same command again (its training runs again)") from None


def steps_to_run(plan):
    """The steps of ``plan`` that are not done and are needed, after saying how many there are."""
    state = {step.output: step.state() for step, _ in plan}
    users = {}
    for step, needs in plan:
        for need in needs:
            users.setdefault(need.output, []).append(step)
    # a missing result runs if nothing uses it or something that uses it runs; so a training whose
    # every result exists is not needed (e.g. re-running on another machine). The plan lists
    # every step after the steps it needs, so one pass from the end decides.
    runs = {}
    for step, _ in reversed(plan):
        runs[step.output] = bool(state[step.output]) and (
            step.output not in users or any(runs[user.output] for user in users[step.output]))
    todo = [(step, needs) for step, needs in plan if runs[step.output]]
    done = sum(1 for step, _ in plan if not state[step.output])
    unneeded = len(plan) - done - len(todo)
    print(f"{len(plan)} steps, {done} already done, "
          + (f"{unneeded} not needed (every result that uses them exists), " if unneeded else "")
          + f"{len(todo)} to run")
    for step, _ in todo:
        if state[step.output] != "not run":
            print(f"  runs again: {state[step.output]}")
    return todo


def run_step(step, needs):
    """Run one step unless a step it needs has no result; "done", "skipped" or "failed"."""
    missing = [n for n in needs if not n.done]
    if missing:
        tqdm.write(f"skipped (needs {missing[0].output}): {step.command}")
        return "skipped"
    tqdm.write(f"$ {step.command}")
    start = time.perf_counter()
    status = step.run()
    why = step.state()
    if status != 0 or why:
        if status == 0:
            why = f"it wrote no {step.output}" if why == "not run" else why
        tqdm.write(f"step failed (exit {status}) after {time.perf_counter() - start:.0f} s: "
                   f"{step.last_line() if status != 0 else why}\n"
                   f"  its whole output is in {step.log}")
        return "failed"
    tqdm.write(f"  done in {time.perf_counter() - start:.0f} s")
    return "done"


def run_steps(experiment):
    """Run the steps that are not done; return the failed ones."""
    plan = experiment.steps()
    for step, _ in plan:
        if step.redraw():
            print(f"drew the missing plot {step.plot} from {step.output}")
    failed = []
    for step, needs in tqdm(steps_to_run(plan), desc="steps", dynamic_ncols=True, disable=None):
        outcome = run_step(step, needs)
        if outcome != "done":
            failed.append(step)
        if outcome == "failed" and not experiment.args.keep_going:
            break
    return failed


# ----------------------------------------------------------------------------- the results page

def usable(result):
    """Whether a result read for the page holds numbers (not a 'not run' / 'unreadable' mark)."""
    return isinstance(result, dict)


def nonfinite_ts(curve):
    """The t values where a path's loss or error is NaN or infinite, or None where it is finite:
    as eval_curve.py marked them (``finite``, ``nonfinite_ts``), or found here in older files."""
    if "finite" in curve:
        return None if curve["finite"] else [float(t) for t in curve.get("nonfinite_ts", [])]
    bad = ~np.all([np.isfinite(curve[key]) for key, _ in PATH_QUANTITIES], axis=0)
    return [float(t) for t in curve["ts"][bad]] if bad.any() else None


def path_row(curve):
    """End-points and path statistics of one ``curve.npz``: the cells of one table row.

    The barrier of a quantity is its maximum along the path minus the mean of its values at the
    two end-points; ``int`` is the length-weighted mean along the path (evaluation.summarize)."""
    cells = {}
    for key, _ in PATH_QUANTITIES:
        values = curve[key]
        cells[key] = {"ends": (values[0], values[-1]), "max": float(curve[f"{key}_max"]),
                      "int": float(curve[f"{key}_int"]),
                      "barrier": float(evaluation.barrier(values))}
    cells["time"] = float(curve["computation_time"]) + training_time(curve)
    cells["points"] = len(curve["ts"])
    return cells


def training_time(curve):
    """A trained curve's training time (its ``build_time``), 0 for the paper's procedures, whose
    construction ``computation_time`` already includes."""
    trained = str(curve.get("point_finder")) in cli.TRAINED_CURVES
    return float(curve.get("build_time", 0.0)) if trained else 0.0


def bezier_name(epochs):
    """The row name of a trained Bezier curve."""
    return f"Bezier curve, trained {epochs} epoch{'s' if epochs != 1 else ''}"


def row_cells(cells):
    out = []
    for key, _ in PATH_QUANTITIES:
        c, fmt = cells[key], (".3f" if key == "tr_loss" else ".2f")
        out += [f"{c['ends'][0]:{fmt}} / {c['ends'][1]:{fmt}}", f"{c['max']:{fmt}}",
                f"{c['int']:{fmt}}", f"{c['barrier']:+{fmt}}"]
    return out + [cells["points"], f"{cells['time']:.0f}"]


def curve_cells(result, width):
    """The ``width`` cells of a path's row after its labels: its statistics, or why there are none
    (the step has not run, its file is unreadable, or the path is not finite)."""
    if not usable(result):
        return [result] * width
    bad = nonfinite_ts(result)
    if bad is None:
        return row_cells(path_row(result))
    where = f"non-finite at t = {', '.join(f'{t:g}' for t in bad)}" if bad else "non-finite"
    return [where] + ["non-finite"] * (width - 3) + [len(result["ts"]),
                                                     f"{float(result['computation_time']):.0f}"]


def row_headers(first):
    headers = list(first)
    for _, label in PATH_QUANTITIES:
        headers += [f"{label}: ends", "max", "int", "barrier"]
    return headers + ["points", "time (s)"]


def markdown(rows, headers):
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def plot_paths(path, panels, title):
    """One panel per model: train error along t for every procedure (gaps where not finite)."""
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
            if usable(curve):
                error = curve["tr_err"].astype(float)
                ax.plot(curve["ts"], np.where(np.isfinite(error), error, np.nan), "o-", ms=2.5,
                        label=name)
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.set_ylabel("train error (%)")
        ax.grid(alpha=0.3)
    next(ax for ax in axes.flat if ax.get_lines()).legend(fontsize=8)
    fig.suptitle(title)
    utils.save_figure(fig, path)


def plot_ensembles(path, stats, title):
    """Ensemble accuracy against the number of members and against the parameter count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_n, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    stats = {k: s for k, s in stats.items() if usable(s)}
    first = most_members(stats)
    n = np.arange(1, len(first["ensemble_accuracy"]) + 1)
    ax_n.plot(n, first["ensemble_accuracy"], "o-", label="plain ensemble")
    ax_p.plot(first["ensemble_parameters"] / 1e6, first["ensemble_accuracy"], "o-",
              label="plain ensemble")
    for k, s in stats.items():
        ax_n.plot(np.arange(1, len(s["ensemble_accuracy_adjusted"]) + 1),
                  s["ensemble_accuracy_adjusted"], "s-", label=f"WA({k}) ensemble")
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
    """Data-driven remarks on one table: ``table_rows`` maps a panel to {procedure: cells} (only
    the procedures with finite numbers)."""
    lines = []
    for panel, done in table_rows.items():
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


def most_members(stats):
    """The WA(n) result of the most members (its plain-ensemble numbers head the table)."""
    return max(stats.values(), key=lambda s: len(s["ensemble_accuracy"]))


def ensemble_cells(stat, k):
    """A WA(n) result's accuracy and parameter count with ``k + 1`` members (or why there are none)."""
    if not usable(stat):
        return [stat, stat]
    if k >= len(stat["ensemble_accuracy_adjusted"]):
        return ["no such member", "no such member"]
    return [f"{stat['ensemble_accuracy_adjusted'][k]:.2f}", f"{stat['ensemble_parameters_adjusted'][k]:,}"]


def ensemble_section(a, stats, figures):
    """The WA(n) section of the page (writing its figure): ``stats`` maps n to a result."""
    out = [f"## WA(n) ensembles of {a.members} `{a.ensemble_model}` end-points", ""]
    done = {n: s for n, s in stats.items() if usable(s)}
    if not done:
        return out + [", ".join(sorted(set(stats.values()))), ""]
    first = most_members(done)
    rows = []
    for k in range(len(first["ensemble_accuracy"])):
        rows.append([k + 1, f"{first['one_model_accuracy'][k]:.2f}", f"{first['ensemble_accuracy'][k]:.2f}",
                     f"{first['ensemble_parameters'][k]:,}"]
                    + [cell for s in stats.values() for cell in ensemble_cells(s, k)])
    headers = ["members", "member acc %", "plain ensemble acc %", "plain params"]
    for n in stats:
        headers += [f"WA({n}) ensemble acc %", f"WA({n}) params"]
    out += ["Test accuracy of the first n members' ensembles (averaged softmax outputs); a "
            "WA(n) ensemble shares the base's (member 1's) trunk and keeps each member's last "
            "n layers, the first of them weight-adjusted to the base's features.", "",
            markdown(rows, headers), ""]
    times = ", ".join(f"WA({n}) {float(s['computation_time']):.0f} s" for n, s in done.items())
    out += [f"Wall time of the `eval_ensemble.py` runs: {times}.", ""]
    plot_ensembles(os.path.join(figures, "ensemble.png"), stats,
                   f"{a.ensemble_model} ensembles on {a.dataset}")
    out += [f"![Ensembles]({os.path.basename(figures)}/ensemble.png)", ""]
    for n, s in done.items():
        last = len(s["ensemble_accuracy"]) - 1
        out.append(
            f"* WA({n}) of {last + 1}: {s['ensemble_accuracy_adjusted'][last]:.2f}% with "
            f"{s['ensemble_parameters_adjusted'][last] / s['ensemble_parameters'][last]:.0%}"
            f" of the plain ensemble's parameters, which reaches "
            f"{s['ensemble_accuracy'][last]:.2f}% (the best single member: "
            f"{max(s['one_model_accuracy']):.2f}%).")
    return out + [""]


class Results:
    """Reads the steps' results for the page, noting what is missing, unreadable, and where the
    results were computed."""

    def __init__(self):
        self.devices, self.missing, self.unreadable = set(), [], []
        self.read, self.stale = {}, set()

    def __call__(self, step):
        """A step's result, or 'not run' / 'unreadable' (each file read once, for both pages)."""
        if step.output not in self.read:
            self.read[step.output] = self._load(step)
        return self.read[step.output]

    def _load(self, step):
        try:
            result = step.load()
        except ResultError as err:
            self.unreadable.append(f"{step.output}: {err}")
            return "unreadable"
        if result is None:
            self.missing.append(step.command)
            return "not run"
        self.devices.add(str(result.get("device", "not recorded")))
        return result

    def section(self, curves):
        """``[(name, result)]`` for the ``[(name, step)]`` of one table section, where a result
        computed on other end-points than most of the section's (``other_end_points``) is the mark
        'other end-points' and is noted for the page's footer."""
        loaded = [(name, self(step)) for name, step in curves]
        others = other_end_points([c for _, c in loaded])
        self.stale.update(step.output for (_, step), other in zip(curves, others) if other)
        return [(name, "other end-points" if other else c) for (name, c), other in zip(loaded, others)]


def other_end_points(results):
    """For each of ``results`` (one table section), whether it was computed on other end-points
    than the section's most common pair: its end-points' train loss differs by more than
    ``END_POINT_RTOL``. Such a row would compare paths between different networks (the end-points
    were retrained in between, e.g. on another machine), so it is not shown."""
    ends = [np.array(c["tr_loss"], dtype=float)[[0, -1]] if usable(c) else None for c in results]
    groups = []  # [(ends, members)], in order of first appearance
    for k, e in enumerate(ends):
        if e is None:
            continue
        group = next((g for g in groups if np.allclose(e, g[0], rtol=END_POINT_RTOL, atol=0)), None)
        if group is None:
            groups.append((e, [k]))
        else:
            group[1].append(k)
    kept = set(max(groups, key=lambda g: len(g[1]))[1]) if groups else set()
    return [e is not None and k not in kept for k, e in enumerate(ends)]


def page_header(a):
    """The title, what the page was written from, and what its columns mean."""
    return [f"{RESULTS_TITLE}{a.dataset}", "",
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
            "(construction, every point, train and test evaluation), plus, for a trained curve, "
            f"the time of its training epochs. Trained curves: Bezier, 3 bends, ends fixed at the "
            f"end-points, the middle bend trained by `train.py --curve=Bezier` (Garipov et al. "
            f"2018) for {a.curve_epochs} epochs (Table 1) or {a.table2_curve_epochs} (Table 2), "
            f"with the end-points' learning rate and weight decay.", ""]


def path_section(a, title, stem, first_column, groups, result_of, figures):
    """One table of paths (Table 1 or Table 2 analogue), its figure and its findings."""
    out = [f"## {title}", ""]
    headers = row_headers([first_column, "procedure"])
    rows, panels, summary = [], [], {}
    for panel, label, curves in groups:
        loaded = result_of.section(curves)
        panels.append((panel, loaded))
        summary[panel] = {name: path_row(c) for name, c in loaded
                          if usable(c) and nonfinite_ts(c) is None}
        rows += [[label, name] + curve_cells(c, len(headers) - 2) for name, c in loaded]
    out += [markdown(rows, headers), ""]
    if any(usable(c) for _, loaded in panels for _, c in loaded):
        plot_paths(os.path.join(figures, f"{stem}_train_error.png"), panels,
                   f"{title.split(':')[0]} on {a.dataset}: train error along the path")
        out += [f"![{title.split(':')[0]} paths]({os.path.basename(figures)}/{stem}_train_error.png)", ""]
    return out + findings(summary) + [""]


def sweep_section(model, sweep, result_of):
    """The table of a trained curve's barrier against its training epochs (``Experiment.sweep``)."""
    if not sweep:
        return []
    rows = []
    for epochs, step in sweep:
        result = result_of(step)
        if not usable(result) or nonfinite_ts(result) is not None:
            rows.append([epochs] + [result if not usable(result) else "non-finite"] * 5)
            continue
        cells = path_row(result)
        rows.append([epochs, f"{cells['tr_loss']['barrier']:+.3f}", f"{cells['tr_err']['max']:.2f}",
                     f"{cells['te_err']['max']:.2f}", f"{training_time(result):.0f}",
                     f"{float(result['computation_time']):.0f}"])
    return [f"## Trained Bezier curves of `{model}`: barrier against training epochs", "",
            "The same end-points as Table 1's; each row is a curve trained from the straight line "
            "for that many epochs (its own learning-rate schedule).", "",
            markdown(rows, ["curve epochs", "train loss barrier", "train err max %",
                            "test err max %", "training (s)", "evaluation (s)"]), ""]


def page_footer(experiment, results):
    """How the numbers were made: the devices, the commands, and what is missing or unreadable."""
    out = ["## How these numbers were made", "",
           f"Computed on: {', '.join(sorted(results.devices)) or 'nothing yet'}. The driver ran these "
           f"commands (from the project folder; each is skipped when its result is there and complete):", "",
           "```"] + [step.command for step, _ in experiment.steps()] + ["```", ""]
    if results.missing:
        out += [f"**Incomplete:** {len(results.missing)} result file(s) missing; rows marked `not run` "
                f"come from these commands, which have not finished:", "", "```"] + results.missing + ["```", ""]
    if results.stale:
        out += [f"**Other end-points:** {len(results.stale)} result file(s) were computed on other "
                f"end-points than the rest of their table (the end-points were trained again in "
                f"between, e.g. on a machine whose kernels round differently); rows marked `other "
                f"end-points` come from them. Move each one's folder away and run the driver again "
                f"to recompute them on the current end-points:", "",
                "```"] + sorted(results.stale) + ["```", ""]
    if results.unreadable:
        out += [f"**Unreadable:** {len(results.unreadable)} result file(s) cannot be read; rows marked "
                f"`unreadable` come from them, and the driver runs their commands again:", "",
                "```"] + results.unreadable + ["```", ""]
    return out


def write_results(experiment):
    """The results page and its figures, from the saved files only; returns the commands whose
    result is missing, the result files that cannot be read (each with why) and those computed on
    other end-points than the rest of their table."""
    a = experiment.args
    figures, results = figures_dir(a.results), Results()
    tables = [("Table 1 analogue: one hidden layer (`LinearOneLayer<width>`)", "table1", "width",
               [(f"width {w}", w, curves) for w, _, curves in experiment.table1()]),
              ("Table 2 analogue: deep nets without biases", "table2", "model",
               [(model, model, curves) for model, curves in experiment.table2()])]
    out = page_header(a)
    for title, stem, first_column, groups in tables:
        if groups:
            out += path_section(a, title, stem, first_column, groups, results, figures)
        if stem == "table1":
            out += sweep_section(*experiment.sweep(), results)
    out += ensemble_section(a, {n: results(step) for n, step in experiment.ensembles()}, figures)
    if a.discussion_text is not None:
        out += ["## Discussion", "", a.discussion_text.strip(), ""]
    out += page_footer(experiment, results)
    utils.write_text(a.results, "\n".join(out))
    if a.comparison:
        write_comparison(experiment, results)
    return results.missing, results.unreadable, sorted(results.stale)


def write_comparison(experiment, results):
    """The comparison page (``comparison``) and its figures, from the same result files."""
    a = experiment.args
    groups, missing = [], []
    models = [(f"Table 1, width {w}: `{model}`", model, curves)
              for w, model, curves in experiment.table1()]
    models += [(f"Table 2: `{model}`", model, curves) for model, curves in experiment.table2()]
    for label, model, curves in models:
        rows = []
        for name, curve in results.section(curves):
            if usable(curve) and nonfinite_ts(curve) is None:
                rows.append(comparison.Row(name, curve, path_row(curve)))
            else:
                missing.append(f"{model}: {name} ({curve if not usable(curve) else 'non-finite'})")
        groups.append((label, model, rows))
    header = [
        f"Every row of a section joins the same two end-points (seeds 1 and 2 of `train.py`, as on "
        f"[the results page]({os.path.relpath(a.results, os.path.dirname(a.comparison) or '.')})), "
        f"and every number is read from the same `curve.npz` files. The families: the paper's "
        f"procedures (Tables 1 and 2), permutation alignment (weight matching and activation "
        f"matching, Ainsworth et al. 2022, then the straight line), the same with REPAIR (Jordan "
        f"et al. 2022), and a Bezier curve trained between the end-points (Garipov et al. 2018).",
        "", "Barrier: a quantity's maximum along the path minus the mean of its values at the two "
        "end-points. Cost: `build` is the time to construct the path (matching and REPAIR's "
        "targets included; for a trained curve, its training); `total` is the wall time of the "
        "whole `eval_curve.py` run plus, for a trained curve, its training: the cost a researcher "
        "pays for that row. Step-wise paths are evaluated at more points (a fixed number per "
        "segment), which their `total` includes. Rows are sorted by train-loss barrier; the "
        "figure below each table numbers its paths by their rows.", ""]
    lines = comparison.page(header, groups, figures_dir(a.comparison), a.dataset, missing,
                            a.comparison_discussion_text)
    utils.write_text(a.comparison, "\n".join(lines))


def run(args):
    """Run the steps that are not done (unless --report_only), then write the results page."""
    check_args(args)
    experiment = Experiment(args)
    check_identities(experiment)
    if not args.report_only:  # a missing data set: one clear line now, not a failed first step
        data.load_split(args.dataset, args.data_path, False)
    failed = [] if args.report_only else run_steps(experiment)
    missing, unreadable, stale = write_results(experiment)
    notes = [f"{len(missing)} result file(s) missing"] if missing else []
    notes += [f"{len(unreadable)} unreadable, listed on the page"] if unreadable else []
    notes += [f"{len(stale)} computed on other end-points, listed on the page"] if stale else []
    pages = f"{args.results} and {args.comparison}" if args.comparison else args.results
    print(f"wrote {pages}" + (f" ({'; '.join(notes)})" if notes else ""))
    if failed:
        raise UserError(f"{len(failed)} step(s) failed or could not run; see the logs named above, "
                        f"fix the cause and run the same command again to continue")
