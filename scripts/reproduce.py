"""Reproduce the paper's experiments on one data set and write a results page from the saved files.

Runs, as ordinary ``train.py`` / ``eval_curve.py`` / ``eval_ensemble.py`` commands:

* Table 1 analogue (paper, Sec. 5, Table 1): two end-points of each one-hidden-layer width, joined
  by the six Table-1 procedures;
* Table 2 analogue (Table 2): two end-points of each deep bias-free net, all eight Table-2
  procedures;
* beside both, a Bezier curve trained between the same end-points (``train.py --curve``, Garipov
  et al. 2018), and the barrier of such curves against their training epochs;
* WA(n) ensembles (Sec. 6): ``--members`` end-points of ``--ensemble_model`` combined as WA(1)
  and WA(2) hybrids next to the plain ensemble.

Every step writes its own output (``checkpoint-<epochs>.pt``, ``curve.npz``, ``ens_stat.npz``)
atomically, after its plot; a step whose output is complete (readable, its plot beside it, made
for this step's model, data set, ...) is skipped, so an interrupted run continues where it
stopped; an unreadable result is made again, one made for another step stops the driver before
it runs anything. Each step's output goes to its log (``<log>.partial`` while it runs). The
results page (``--results``; figures in a folder beside it named after its file name in lower
case) is built only from those files: no number in it is typed by hand.

Example (the setting of docs/RESULTS.md; Debian's dataset-fashion-mnist package):
    python3 scripts/reproduce.py --dataset=FashionMNIST --data_path=/usr/share/datasets/fashion-mnist
On a node with 8 GPUs, every step as one torchrun job of 8 processes:
    python3 scripts/reproduce.py --cuda --launcher='torchrun --standalone --nproc_per_node=8' ...
"""
import argparse
import os
import shlex
import sys

import cli


def positive_ints(text):
    """An argparse ``type``: a comma-separated list of distinct positive integers ('' for none)."""
    try:
        values = [cli.number(int, minimum=1)(item) for item in text.split(",")] if text else []
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of positive "
                                         f"integers (e.g. 100,500)") from None
    return distinct(values, text)


def names(text):
    """An argparse ``type``: a comma-separated list of distinct names ('' for none)."""
    values = [item.strip() for item in text.split(",")] if text else []
    if any(not item for item in values):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty name; separate names by single "
                                         f"commas (e.g. Linear3NoBias,Linear5NoBias)")
    return distinct(values, text)


def distinct(values, text):
    """``values``, refused where one is listed twice (it would make a table row twice)."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"'{text}' lists {', '.join(twice)} more than once")
    return values


def launcher(text):
    """An argparse ``type``: a ``torchrun ...`` command prefix, as torchrun's flags ('' for none)."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"'{text}' cannot be split into words ({err})") from None
    if not words:
        return ()
    if words[0] != "torchrun" or "--" in words:
        raise argparse.ArgumentTypeError(f"'{text}' is not a torchrun command prefix; give e.g. "
                                         f"'torchrun --standalone --nproc_per_node=8' (the driver "
                                         f"adds '--' and the script)")
    check_torchrun_flags(text, words[1:])
    return tuple(words[1:])


def check_torchrun_flags(text, flags):
    """Parse ``flags`` with torchrun's own parser (an unknown flag, a value it refuses) and refuse
    a process count below 1, before any step runs."""
    from torch.distributed.run import get_args_parser

    def refuse(message):
        raise argparse.ArgumentTypeError(f"torchrun refuses '{text}': {message}")
    parser = get_args_parser()
    parser.error = refuse
    processes = parser.parse_args([*flags, "script.py"]).nproc_per_node
    if processes.lstrip("-").isdigit() and int(processes) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' starts {processes} processes per node; give "
                                         f"--nproc_per_node=1 or more")


def build_parser():
    """Every flag, with its default and one line of help."""
    count = cli.number(int, minimum=1)
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="FashionMNIST", help=f"one of {', '.join(cli.DATASETS)}")
    parser.add_argument("--data_path", default=None,
                        help="default: /usr/share/datasets/fashion-mnist for FashionMNIST, else data")
    parser.add_argument("--checkpoints", default=None, help="default: checkpoints/<dataset>")
    parser.add_argument("--experiments", default=None, help="default: experiments/<dataset>")
    parser.add_argument("--results", default="docs/RESULTS.md",
                        help="the results page to write; its figures go to a folder beside it named "
                             "after it in lower case (docs/RESULTS.md: docs/results/)")
    parser.add_argument("--widths", type=positive_ints, default="100,500,1000,2000",
                        help="Table 1: hidden widths (LinearOneLayer<width>); empty for no Table 1")
    parser.add_argument("--table1_epochs", type=count, default=20,
                        help="Table 1: training epochs of each end-point")
    parser.add_argument("--table1_points", type=count, default=10,
                        help="Table 1: points per unit of t (a path ending at t=1 gets as many as one "
                             "ending at t=2: 21 for 10)")
    parser.add_argument("--table2_models", type=names, default="Linear3NoBias",
                        help="Table 2: comma-separated; empty for no Table 2")
    parser.add_argument("--table2_epochs", type=count, default=3,
                        help="Table 2 and ensembles: training epochs of each end-point")
    parser.add_argument("--table2_points", type=count, default=10,
                        help="Table 2: points per unit of t (21 points for Simultaneous and a B-fly "
                             "path of Linear3NoBias, 31 for its WA paths, as in the reference)")
    parser.add_argument("--curve_epochs", type=count, default=10,
                        help="Table 1: training epochs of the Bezier curve between the end-points")
    parser.add_argument("--table2_curve_epochs", type=count, default=2,
                        help="Table 2: training epochs of the Bezier curve between the end-points")
    parser.add_argument("--curve_sweep", type=positive_ints, default="1,2,5,10,20",
                        help="Bezier curves of the first Table-1 width trained for each of these "
                             "epochs: barrier against training (empty for none)")
    parser.add_argument("--ensemble_model", default="Linear3NoBias",
                        help="model of the WA(n) ensembles' members")
    parser.add_argument("--members", type=cli.number(int, minimum=2), default=5,
                        help="end-points in the ensembles")
    parser.add_argument("--discussion", default=None, help="a Markdown file appended as discussion")
    parser.add_argument("--comparison", default=None,
                        help="the comparison page to write (every family of paths on each model, "
                             "barrier against cost), figures beside it as for --results; default: "
                             "--results with RESULTS in its file name replaced by COMPARISON "
                             "(docs/COMPARISON.md), or <name>-comparison.md; '' for none")
    parser.add_argument("--comparison_discussion", default=None,
                        help="a Markdown file appended to the comparison page as discussion")
    parser.add_argument("--cuda", action="store_true", help="pass --cuda to every command")
    parser.add_argument("--launcher", type=launcher, default="",
                        help="run every step through torchrun with these flags, e.g. 'torchrun "
                             "--standalone --nproc_per_node=8' (one node) or with --nnodes and "
                             "--rdzv_* flags (several; README, \"Several GPUs or machines\"); "
                             "default: one process per step")
    parser.add_argument("--keep_going", action="store_true",
                        help="after a failed step, go on with the steps that do not need it")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing; write the results page from the files already there")
    return parser


def parse_args(argv=None):
    """The flags, with the defaults that depend on --dataset filled in."""
    args = build_parser().parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command = "python3 " + " ".join(  # the run that made the files, not a --report_only re-run
        shlex.quote(a) for a in ["scripts/reproduce.py"] + given if a != "--report_only")
    if args.data_path is None:
        args.data_path = "/usr/share/datasets/fashion-mnist" if args.dataset == "FashionMNIST" else "data"
    args.checkpoints = args.checkpoints or os.path.join("checkpoints", args.dataset)
    args.experiments = args.experiments or os.path.join("experiments", args.dataset)
    return args


def main(argv=None):
    cli.delegate("reproduction", parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
