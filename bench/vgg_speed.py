"""Where the time of a VGG16 path goes: building each VGG16 finder and producing + evaluating one
point, against evaluating one fixed VGG16 on the same data (the floor), with peak memory.

Runs on synthetic CIFAR-shaped data (random images, since real CIFAR cannot be downloaded here) of
``--train`` training and ``--test`` test images; the costs per image scale linearly to the full
data set (the path finders use the even-indexed half of the training images), the per-layer
solves do not depend on the data size. Each finder runs in a subprocess of its own.

The floor is measured before and after the finder's work (mean of both). With fewer than about
1200 even-indexed images the 4608-wide patch Gram matrices of the last conv layers are singular
and take the slower eigendecomposition route, which real data never does: keep --train above 3000.

Usage: python bench/vgg_speed.py [--train 6000 --test 1000] [--cuda]
"""
import argparse
import json
import platform
import time

import torch
from tabulate import tabulate

from bench.common import run_in_subprocess

FINDERS = [("PointFinderStepWiseButterflyConvWBias", "arc_connect"),
           ("PointFinderStepWiseButterflyConvWBiasOT", "lin_connect"),
           ("PointFinderStepWiseButterflyConvWBiasWA", "lin_connect"),
           ("PointFinderStepWiseButterflyConvWBiasOTWA", "lin_connect")]


def run_case(args):
    import evaluation
    import models
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
    module = finder.network(finder.params1)
    times = {}
    for t in (6.5, 12.5):  # a middle conv segment and the last conv one
        timer = utils.Timer()
        point = finder.point(t, args.method)
        produce = timer()
        evaluation.evaluate_point(finder, module, point, train, test, 500)
        times[t] = (produce, timer())
    print(json.dumps({"floor": (before + floor()) / 2, "build": build, "point": times, "peak_gb": peak_rss_gb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--finder", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finder:
        return run_case(args)
    rows = []
    for finder, method in FINDERS:
        r = run_in_subprocess(__file__, [f"--finder={finder}", f"--method={method}",
                                         f"--train={args.train}", f"--test={args.test}"]
                              + (["--cuda"] if args.cuda else []))
        (p1, e1), (p2, e2) = r["point"]["6.5"], r["point"]["12.5"]
        rows.append([finder, method, f"{r['floor']:.1f}", f"{r['build']:.1f}",
                     f"{r['build'] / r['floor']:.2f}", f"{p1:.1f} + {e1 - p1:.1f}",
                     f"{e1 / r['floor']:.2f}", f"{p2:.1f} + {e2 - p2:.1f}", f"{e2 / r['floor']:.2f}",
                     f"{r['peak_gb']:.2f}"])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print(f"\nVGG16, {args.train} train / {args.test} test synthetic images, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, {'cuda' if args.cuda else 'cpu'}, {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, ["finder", "method", "floor s", "build s", "build/floor",
                          "t=6.5: point + eval s", "/floor", "t=12.5: point + eval s", "/floor",
                          "peak GB"], tablefmt="github"))


if __name__ == "__main__":
    main()
