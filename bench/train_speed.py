"""Epoch time of train.py's loop on Fashion-MNIST against the FLOP floor measured in the same run,
and the epoch of a curve's training (train.py --curve=Bezier, 3 bends, fixed ends) against the
ordinary epoch of the same model. The two are interleaved: one epoch over the batches, each batch a
timed step of the network and then of the curve (the machine's speed drifts by tens of percent
within minutes; interleaved steps see the same machine). Epoch times are the sums of the steps;
the batches are read once, as train.py's epoch reads them (through its progress bar), and their
reading time, the same for both, is added to both for "curve / epoch", the ratio of the two
train.py epochs; "curve / network steps" leaves it out. The last column is the median over the
batches of the curve's step time over the network's on the same batch: bursts of slowness on this
shared machine, which land on one side of a pair, move it far less than the ratio of the sums.

floor = forward+backward FLOPs of one epoch / the machine's float32 matmul throughput. Forward is
2*in*out per sample and layer; backward is 2*in*out for the weight gradient plus 2*in*out for the
input gradient of every layer but the first. Usage: python bench/train_speed.py [--data_path P].
"""
import argparse
import platform
import statistics
import time

import torch
from tabulate import tabulate

import curves
import data
import distributed
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
    parser.add_argument("--glibc_defaults", action="store_true",
                        help="leave glibc's allocator as it is (train.py reuses freed memory)")
    args = parser.parse_args()
    reused = False if args.glibc_defaults else utils.reuse_freed_memory()
    loader, num_classes = data.train_loader("FashionMNIST", args.data_path, 128, 0)
    samples = len(loader.dataset)
    throughput = matmul_flops_per_second()
    rows = []
    for name in args.models:
        torch.manual_seed(1)
        network = ordinary(name, num_classes)
        reads, (steps, curve_steps) = interleaved_epoch(loader, [network, curve_of(name, num_classes)])
        seconds, curve_seconds, reading = sum(steps), sum(curve_steps), sum(reads)
        floor = epoch_flops(network[0], samples) / throughput
        paired = statistics.median(c / n for c, n in zip(curve_steps, steps))
        rows.append([name, f"{seconds:.2f}", f"{floor:.2f}", f"{seconds / floor:.2f}",
                     f"{curve_seconds:.2f}", f"{reading:.2f}",
                     f"{(curve_seconds + reading) / (seconds + reading):.2f}",
                     f"{curve_seconds / seconds:.2f}", f"{paired:.2f}"])
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"float32 matmul {throughput / 1e9:.0f} GFLOP/s, {samples} samples, batch 128, "
          f"freed memory {'reused' if reused else 'returned (glibc defaults)'}, network and curve "
          f"steps interleaved")
    print(tabulate(rows, ["model", "epoch s", "floor s", "ratio", "curve epoch s", "batches s",
                          "curve / epoch", "curve / network steps", "median step ratio"],
                   tablefmt="github"))


def ordinary(name, num_classes):
    """A fresh network and its SGD (train.py's: momentum, weight decay in the optimizer)."""
    model = models.build_model(name, num_classes, (1, 28, 28))
    return model, optimizer_of(model.parameters(), weight_decay=1e-4)


def curve_of(name, num_classes):
    """A Bezier curve of 3 bends between two fresh networks, fixed ends, and the SGD of its free
    bend (the weight decay on the weights at t, as train.py --curve does)."""
    ends = [models.build_model(name, num_classes, (1, 28, 28)) for _ in range(2)]
    curve = curves.Curve(ends[0], "Bezier", 3, fixed=(0, 2), weight_decay=1e-4)
    curve.set_bend(2, ends[1].parameters())
    curve.init_linear()
    optimizer = optimizer_of([p for p in curve.parameters() if p.requires_grad], weight_decay=0.0)
    curve.attach(optimizer)
    return curve, optimizer


def optimizer_of(parameters, weight_decay):
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=weight_decay, fused=True)


def interleaved_epoch(loader, trainers):
    """One epoch of ``utils.train_step`` for each ``(model, optimizer)``, a batch at a time for all
    of them in turn, the batches read as ``utils.train_epoch`` reads them: the reading time of each
    batch, and each trainer's list of step times (seconds)."""
    reads, seconds = [], [[] for _ in trainers]
    sums = [[torch.zeros((), dtype=torch.float64) for _ in range(3)] for _ in trainers]
    for model, _ in trainers:
        model.train()
    batches = iter(distributed.progress(loader, desc="train", leave=False))
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        reads.append(time.perf_counter() - start)
        if batch is None:
            return reads, seconds
        x, y = batch
        for k, (model, optimizer) in enumerate(trainers):
            start = time.perf_counter()
            utils.train_step(model, optimizer, x, y, torch.device("cpu"), sums[k])
            seconds[k].append(time.perf_counter() - start)


if __name__ == "__main__":
    main()
