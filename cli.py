"""The command line's vocabulary, importable without torch so that ``--help`` and flag mistakes
answer at once: the parser, bounded number flags, the names of data sets, models, point finders and
connectors, and (from ``procedures``) the paper's name of every procedure (point finder + connector).

The registries that hold the code (``data``, ``models``, ``point_finders``, ``connectors``) are
checked against these names by the tests.
"""
import argparse
import importlib
import math
import os
import sys

from procedures import PROCEDURES, TRAINED_CURVES, paper_name, procedures, repairable  # noqa: F401  (the names scripts use)

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "Digits")
TRANSFORMS = ("VGG", "ResNet", "ToTensor")
MODELS = ("LinearOneLayer", "LinearOneLayer100", "LinearOneLayer500", "LinearOneLayer1000",
          "LinearOneLayer2000", "Linear3NoBias", "Linear5NoBias", "Linear7NoBias", "VGG16",
          "PreResNet110")
CONNECTORS = ("lin_connect", "arc_connect")
#: upper bounds of integer flags: numpy's and torch's seeds, one batch's rows as an index, and
#: sizes far beyond any sensible path or curve (each bend holds a whole network)
MAX_SEED, MAX_BATCH, MAX_POINTS, MAX_BENDS = 2 ** 32 - 1, 2 ** 31 - 1, 10 ** 6, 1000

FINDERS = tuple(PROCEDURES) + TRAINED_CURVES


class UserError(Exception):
    """A mistake of the user (bad flag, missing file, ...): reported as one line, exit status 2."""


#: how to launch a script on several processes (the --help epilog of train.py, eval_curve.py and
#: eval_ensemble.py, formatted with the script's name; README, "Several GPUs or machines")
TORCHRUN_EPILOG = """\
Several processes (GPUs, or CPU processes) with PyTorch's launcher; note the `--` before the
script: without it torchrun reads abbreviations of its own flags in the script's flags
(`--start=a.pt` is taken for torchrun's --start-method):
  torchrun --standalone --nproc_per_node=8 -- {script} [flags as above]
Each rank evaluates (or trains on) its share of the data; only rank 0 prints and writes files.
Several machines: the same command on each, with --nnodes=M --node_rank=<k> --rdzv_backend=c10d
--rdzv_endpoint=<host:port> --rdzv_id=<job> in place of --standalone (README)."""


def delegate(module, args):
    """``module.run(args)``, the library module imported only now, so that ``--help`` and flag
    mistakes answer without importing torch; under ``torchrun`` inside the job's process group
    (``distributed.job``)."""
    distributed = importlib.import_module("distributed")
    with distributed.job(getattr(args, "cuda", False)):
        importlib.import_module(module).run(args)


def rank():
    """This process's rank under ``torchrun`` (0 without it), read without importing torch."""
    return int(os.environ.get("RANK", "0"))


def run(main):
    """Run ``main()``; a UserError becomes one line on stderr and exit status 2, Ctrl-C exit 130."""
    try:
        main()
    except UserError as err:
        if rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        elif type(err).__name__ != "SharedError":  # rank 0 reports the errors all ranks share
            print(f"error: on rank {rank()}: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; files already written are complete (written atomically)",
              file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader (e.g. `| head`) stopped reading: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the description's line breaks and states every flag's default."""

    def _get_help_string(self, action):
        text = action.help or ""
        silent = action.default is None or action.default is False \
            or action.default is argparse.SUPPRESS
        if not silent and not action.required and "default" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are reported like every other user error: one ``error:`` line
    naming the flag, exit status 2 (argparse's default also prints the usage block)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n" if rank() == 0 else None)


def number(kind=int, minimum=None, above=None, maximum=None):
    """An argparse ``type`` for a finite ``int`` or ``float`` flag that is at least ``minimum``
    (or greater than ``above``) and at most ``maximum``; NaN and infinities are refused."""
    def parse(text):
        value = kind(text)  # a ValueError becomes argparse's "invalid <kind> value"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {text})")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be greater than {above} (got {text})")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum} (got {text})")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_device_arguments(parser):
    """``--cuda`` and ``--device``, shared by every script."""
    parser.add_argument("--cuda", action="store_true", help="run on the GPU")
    parser.add_argument("--device", type=number(int, minimum=0), default=0,
                        help="GPU index with --cuda (under torchrun each rank uses its local GPU, "
                             "LOCAL_RANK)")


def add_data_arguments(parser, default_dataset="CIFAR10"):
    """``--dataset``, ``--data_path`` and ``--transform``, shared by every script."""
    parser.add_argument("--dataset", default=default_dataset, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--data_path", default="data",
                        help="folder holding the data set (torchvision's layout, or the raw files "
                             "themselves; ignored for Digits)")
    parser.add_argument("--transform", default=None,
                        help="VGG or ResNet normalisation for CIFAR (default: VGG); MNIST-like data "
                             "and Digits always use ToTensor")


def add_evaluation_arguments(parser):
    """The flags eval_curve.py and eval_ensemble.py share: batch size, workers, device."""
    parser.add_argument("--batch_size", type=number(int, minimum=1, maximum=MAX_BATCH), default=4096,
                        help="evaluation batch size")
    parser.add_argument("--num-workers", dest="num_workers", type=number(int, minimum=0), default=4,
                        help="accepted for compatibility with the reference; used only by the "
                             "augmented CIFAR training loader (train.py); in-memory data ignores "
                             "it, and evaluation reads in-memory data only: no effect here")
    add_device_arguments(parser)
