"""The cost of a VGG16 path: building each VGG16 finder, and producing + evaluating the points of
a whole path as eval_curve.py does (``path_evaluation.walk``: segment by segment, 61 points as in
the reference's commands), against evaluating one fixed VGG16 on the same data (the floor), with
peak memory.

Runs on synthetic CIFAR-shaped data (random images, since real CIFAR cannot be downloaded here) of
``--train`` training and ``--test`` test images; the costs per image scale linearly to the full
data set (the path finders use the even-indexed half of the training images), the per-layer
solves do not depend on the data size. Each finder runs in a subprocess of its own.

The floor is measured before and after the finder's work (mean of both). With fewer than about
1200 even-indexed images the 4608-wide patch Gram matrices of the last conv layers are singular
and take the slower eigendecomposition route, which real data never does: keep --train above 3000.

Usage: python bench/vgg_speed.py [--train 3000 --test 500 --num_points 61] [--all] [--cuda]
"""
import argparse
import json
import platform
import time

import torch
from tabulate import tabulate

from bench.common import run_in_subprocess

BUTTERFLY = [("PointFinderStepWiseButterflyConvWBias", "arc_connect"),
             ("PointFinderStepWiseButterflyConvWBiasOT", "lin_connect")]
WA = [("PointFinderStepWiseButterflyConvWBiasWA", "lin_connect"),
      ("PointFinderStepWiseButterflyConvWBiasOTWA", "lin_connect")]


def run_case(args):
    import numpy as np

    import evaluation
    import models
    import path_evaluation
    import point_finders
    import utils
    from bench.common import peak_rss_gb

    device = utils.select_device(args.cuda)
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(args.train, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.train,), generator=g).to(device))
    test = (torch.randn(args.test, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (args.test,), generator=g).to(device))
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(models.build_model("VGG16", 10, (3, 32, 32)).to(device).eval())
    def floor():
        timer = utils.Timer()
        evaluation.evaluate(nets[0], *train, 500)
        evaluation.evaluate(nets[0], *test, 500)
        return timer()

    evaluation.evaluate(nets[0], test[0][:8], test[1][:8])  # warm-up: the first conv call sets up kernels
    before = floor()
    timer = utils.Timer()
    finder = point_finders.make_point_finder(args.finder, *nets, train[0], "VGG16")
    build = timer()
    timer = utils.Timer()
    ts = np.linspace(0, finder.end_time, args.num_points)
    path_evaluation.walk(finder, ts, args.method, train, test, 500)
    walk = timer()
    print(json.dumps({"floor": (before + floor()) / 2, "build": build, "walk": walk,
                      "peak_gb": peak_rss_gb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--num_points", type=int, default=61)
    parser.add_argument("--all", action="store_true", help="the WA finders too (B-fly only by default)")
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--finder", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finder:
        return run_case(args)
    rows = []
    for finder, method in BUTTERFLY + (WA if args.all else []):
        r = run_in_subprocess(__file__, [f"--finder={finder}", f"--method={method}",
                                         f"--train={args.train}", f"--test={args.test}",
                                         f"--num_points={args.num_points}"]
                              + (["--cuda"] if args.cuda else []))
        per_point = r["walk"] / args.num_points
        rows.append([finder, method, f"{r['floor']:.1f}", f"{r['build']:.1f}",
                     f"{r['build'] / r['floor']:.2f}", f"{r['walk']:.1f}", f"{per_point:.1f}",
                     f"{per_point / r['floor']:.2f}", f"{r['peak_gb']:.2f}"])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print(f"\nVGG16, {args.train} train / {args.test} test synthetic images, {args.num_points} points, "
          f"{platform.machine()}, {torch.get_num_threads()} threads, {'cuda' if args.cuda else 'cpu'}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, ["finder", "method", "floor s", "build s", "build/floor", "path s",
                          "per point s", "per point/floor", "peak GB"], tablefmt="github"))


if __name__ == "__main__":
    main()
