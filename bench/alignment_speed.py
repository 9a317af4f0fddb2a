"""Weight and activation matching to convergence, against the floor: one evaluation of the
network on the training set (issue 14; docs/PERFORMANCE.md, "Permutation alignment").

``Linear3NoBias``: two Fashion-MNIST end-points (default: the benchmarks' 3-epoch checkpoints),
the whole training set. ``VGG16``: two randomly initialised networks (seeds 1, 2) on synthetic
CIFAR-shaped images, as bench/vgg_speed.py. Prints a table and a JSON line.
"""
import argparse
import json
import time

import torch
from tabulate import tabulate

import data
import evaluation
import models
from point_finders.alignment import activation_matching, weight_matching


def timed(function, *args):
    begin = time.perf_counter()
    answer = function(*args)
    return answer, time.perf_counter() - begin


def pair(args):
    """The two networks (eval mode) and the training inputs."""
    if args.model == "VGG16":
        nets = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            nets.append(models.build_model("VGG16", 10, (3, 32, 32)).eval())
        x = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        return nets, x
    x, _ = data.load_split(args.dataset, args.data_path, True)
    shape = tuple(x.shape[1:])
    return [models.load_model(args.model, path, 10, shape).eval() for path in (args.start, args.end)], x


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    C = "checkpoints/FashionMNIST/Linear3NoBias"
    parser.add_argument("--model", default="Linear3NoBias", help="Linear3NoBias or VGG16")
    parser.add_argument("--dataset", default="FashionMNIST")
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--start", default=f"{C}/chp1/checkpoint-3.pt")
    parser.add_argument("--end", default=f"{C}/chp2/checkpoint-3.pt")
    parser.add_argument("--images", type=int, default=2000, help="VGG16: synthetic images")
    parser.add_argument("--weight_only", action="store_true", help="weight matching only")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    (one, two), x = pair(args)
    _, floor = timed(lambda: evaluation.predictions(one, x, 4096))
    (_, wm), wm_seconds = timed(weight_matching, one, two, x)
    sweeps = len(wm["weight_matching_objective"]) - 1
    rows = [["one evaluation on the training set (floor)", f"{floor:.2f}", "1.00x", ""],
            ["weight matching to convergence", f"{wm_seconds:.1f}", f"{wm_seconds / floor:.1f}x",
             f"{sweeps} sweeps"]]
    am_seconds = None
    if not args.weight_only:
        (_, am), am_seconds = timed(activation_matching, one, two, x)
        correlations = am["activation_matching_correlation"]
        rows.append(["activation matching", f"{am_seconds:.1f}", f"{am_seconds / floor:.1f}x",
                     f"mean matched correlation {sum(correlations) / len(correlations):.3f}"])
    print(f"{args.model}, {len(x)} training inputs, torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["step", "seconds", "ratio", ""], tablefmt="github"))
    print(json.dumps({"model": args.model, "floor": floor, "weight_matching": wm_seconds,
                      "sweeps": sweeps, "activation_matching": am_seconds}))


if __name__ == "__main__":
    main()
