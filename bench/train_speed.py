"""Epoch time of train.py's loop on Fashion-MNIST against the FLOP floor measured in the same run,
and the epoch of a curve's training (train.py --curve=Bezier, 3 bends, fixed ends) against the
ordinary epoch of the same model, alternated and repeated (medians; the machine drifts).

floor = forward+backward FLOPs of one epoch / the machine's float32 matmul throughput. Forward is
2*in*out per sample and layer; backward is 2*in*out for the weight gradient plus 2*in*out for the
input gradient of every layer but the first. Usage: python bench/train_speed.py [--data_path P].
"""
import argparse
import platform
import statistics

import torch
from tabulate import tabulate

import curves
import data
import models
import utils
from bench.common import matmul_flops_per_second


#: every dense net of the registry (issue 13's curve target is for all of them)
DENSE = ["LinearOneLayer100", "LinearOneLayer500", "LinearOneLayer1000", "LinearOneLayer",
         "Linear3NoBias", "Linear5NoBias", "Linear7NoBias"]


def epoch_flops(model, samples):
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    macs = [layer.in_features * layer.out_features for layer in layers]
    return samples * (2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--models", nargs="+", default=DENSE)
    parser.add_argument("--repeats", type=int, default=3,
                        help="ordinary and curve epochs alternated this many times; medians")
    parser.add_argument("--glibc_defaults", action="store_true",
                        help="leave glibc's allocator as it is (train.py reuses freed memory)")
    args = parser.parse_args()
    reused = False if args.glibc_defaults else utils.reuse_freed_memory()
    loader, num_classes = data.train_loader("FashionMNIST", args.data_path, 128, 0)
    samples = len(loader.dataset)
    throughput = matmul_flops_per_second()
    rows = []
    for name in args.models:
        times = [(epoch_seconds(loader, *ordinary(name, num_classes)),
                  epoch_seconds(loader, *curve_of(name, num_classes), curve=True))
                 for _ in range(args.repeats)]
        seconds, curve_seconds = (statistics.median(column) for column in zip(*times))
        floor = epoch_flops(models.build_model(name, num_classes, (1, 28, 28)), samples) / throughput
        rows.append([name, f"{seconds:.2f}", f"{floor:.2f}", f"{seconds / floor:.2f}",
                     f"{curve_seconds:.2f}", f"{curve_seconds / seconds:.2f}",
                     " ".join(f"{b / a:.2f}" for a, b in times)])
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"float32 matmul {throughput / 1e9:.0f} GFLOP/s, {samples} samples, batch 128, "
          f"freed memory {'reused' if reused else 'returned (glibc defaults)'}, medians of "
          f"{args.repeats} alternated epochs")
    print(tabulate(rows, ["model", "epoch s", "floor s", "ratio", "curve epoch s", "curve / epoch",
                          "each repeat"], tablefmt="github"))


def ordinary(name, num_classes):
    """A fresh network and its parameters."""
    torch.manual_seed(1)
    model = models.build_model(name, num_classes, (1, 28, 28))
    return model, model.parameters()


def curve_of(name, num_classes):
    """A Bezier curve of 3 bends between two fresh networks, fixed ends, and its free bend."""
    torch.manual_seed(1)
    ends = [models.build_model(name, num_classes, (1, 28, 28)) for _ in range(2)]
    curve = curves.Curve(ends[0], "Bezier", 3, fixed=(0, 2), weight_decay=1e-4)
    curve.set_bend(2, ends[1].parameters())
    curve.init_linear()
    return curve, [p for p in curve.parameters() if p.requires_grad]


def epoch_seconds(loader, model, trainable, curve=False):
    """One epoch of train.py's loop: SGD with momentum, weight decay in the optimizer (for a curve,
    on the weights at t, as train.py --curve does)."""
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9,
                                weight_decay=0.0 if curve else 1e-4, fused=True)
    timer = utils.Timer()
    utils.train_epoch(loader, model, optimizer, torch.device("cpu"))
    return timer()


if __name__ == "__main__":
    main()
