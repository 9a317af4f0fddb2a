"""Epoch time of train.py's loop on Fashion-MNIST against the FLOP floor measured in the same run,
and the epoch of a curve's training (train.py --curve=Bezier, 3 bends, fixed ends) against the
ordinary epoch of the same model.

floor = forward+backward FLOPs of one epoch / the machine's float32 matmul throughput. Forward is
2*in*out per sample and layer; backward is 2*in*out for the weight gradient plus 2*in*out for the
input gradient of every layer but the first. Usage: python bench/train_speed.py [--data_path P].
"""
import argparse
import platform

import torch
from tabulate import tabulate

import curves
import data
import models
import utils
from bench.common import matmul_flops_per_second


def epoch_flops(model, samples):
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    macs = [layer.in_features * layer.out_features for layer in layers]
    return samples * (2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--models", nargs="+", default=["LinearOneLayer", "Linear3NoBias"])
    args = parser.parse_args()
    loader, num_classes = data.train_loader("FashionMNIST", args.data_path, 128, 0)
    samples = len(loader.dataset)
    throughput = matmul_flops_per_second()
    rows = []
    for name in args.models:
        torch.manual_seed(1)
        model = models.build_model(name, num_classes, (1, 28, 28))
        seconds = epoch_seconds(loader, model, model.parameters())
        floor = epoch_flops(model, samples) / throughput
        curve = curves.Curve(model, "Bezier", 3, fixed=(0, 2), weight_decay=1e-4)
        curve.set_bend(2, models.build_model(name, num_classes, (1, 28, 28)).parameters())
        curve.init_linear()
        curve_seconds = epoch_seconds(loader, curve, [p for p in curve.parameters() if p.requires_grad],
                                      curve=True)
        rows.append([name, f"{seconds:.2f}", f"{floor:.2f}", f"{seconds / floor:.2f}",
                     f"{curve_seconds:.2f}", f"{curve_seconds / seconds:.2f}"])
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"float32 matmul {throughput / 1e9:.0f} GFLOP/s, {samples} samples, batch 128")
    print(tabulate(rows, ["model", "epoch s", "floor s", "ratio", "curve epoch s", "curve / epoch"],
                   tablefmt="github"))


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
