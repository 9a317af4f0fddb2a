"""Cost of building and walking each dense path against the evaluation floor, and peak memory.

For every (model, finder, method, points) case, in a subprocess of its own so that peak memory is
the case's: construction time of the finder, time to produce and evaluate all points (as
eval_curve.py does: ``path_evaluation.walk``, segment by segment, with the probes of every jump),
and the floor = the time to evaluate the same number of fixed networks of that
model on the same data with the same code (evaluation.evaluate on train and test). The floor per network
is measured on ``--floor_networks`` networks in the same subprocess, before the path, after it,
and ``--floor_samples`` times while its points are made (evenly spread; their time is taken out of
the walk's), so that the machine's drift during a long walk reaches the floor too; the mean of
those samples is scaled to the point count, and their spread is reported. Each table also has
weight matching and a few paths with REPAIR (``eval_curve.py --repair``: ``finder + REPAIR``
rows).

Usage: python bench/path_speed.py --table 1 --start A.pt --end B.pt [--dataset FashionMNIST ...]
"""
import argparse
import itertools
import json
import platform
import time

import numpy as np
import torch
from tabulate import tabulate

from bench.common import run_in_subprocess

TABLE1 = [("PointFinderWithBias", "lin_connect"), ("PointFinderWithBias", "arc_connect"),
          ("PointFinderTransportation", "lin_connect"), ("PointFinderInverseWithBias", "lin_connect"),
          ("PointFinderInverseWithBias", "arc_connect"), ("PointFinderInverseWithBiasOT", "lin_connect"),
          ("WeightMatching", "lin_connect"), ("PointFinderWithBias", "lin_connect", "repair"),
          ("WeightMatching", "lin_connect", "repair")]
TABLE2 = [("PointFinderSimultaneous", "lin_connect"), ("PointFinderStepWiseButterfly", "arc_connect"),
          ("PointFinderStepWiseTransportation", "lin_connect"),
          ("PointFinderStepWiseInverse", "lin_connect"), ("PointFinderStepWiseInverseOT", "lin_connect"),
          ("PointFinderStepWiseButterfly", "lin_connect"), ("WeightMatching", "lin_connect"),
          ("PointFinderSimultaneous", "lin_connect", "repair"), ("WeightMatching", "lin_connect", "repair")]


def run_case(args):
    """One case in this process; prints a JSON line."""
    import data
    import evaluation
    import models
    import path_evaluation
    import point_finders
    import utils
    from bench.common import peak_rss_gb
    from point_finders.repair import Repaired

    device = utils.select_device(args.cuda)
    train = tuple(t.to(device) for t in data.load_split(args.dataset, args.data_path, True))
    test = tuple(t.to(device) for t in data.load_split(args.dataset, args.data_path, False))
    shape, classes = tuple(train[0].shape[1:]), data.num_classes_of(args.dataset)
    m1 = models.load_model(args.model, args.start, classes, shape).to(device)
    m2 = models.load_model(args.model, args.end, classes, shape).to(device)

    def floor_per_network():
        timer = utils.Timer()
        for _ in range(args.floor_networks):
            evaluation.evaluate(m1, *train)
            evaluation.evaluate(m1, *test)
        return timer() / args.floor_networks

    samples = [floor_per_network()]

    timer = utils.Timer()
    finder = point_finders.make_point_finder(args.finder, m1, m2, train[0], args.model)
    finder = Repaired(finder) if args.repair else finder
    build = timer()
    during = sample_during_walk(finder, args.num_points, args.floor_samples, floor_per_network)
    timer = utils.Timer()
    ts = np.linspace(0, finder.end_time, args.num_points)
    path_evaluation.walk(finder, ts, args.method, train, test, 4096)
    walk = timer() - sum(seconds for _, seconds in during)  # the samples are not the walk's time
    samples += [sample for sample, _ in during] + [floor_per_network()]
    print(json.dumps({"finder": args.finder, "method": args.method, "points": args.num_points,
                      "build": build, "walk": walk, "floor": np.mean(samples) * args.num_points,
                      "drift": (max(samples) - min(samples)) / np.mean(samples),
                      "peak_gb": peak_rss_gb()}))


def sample_during_walk(finder, points, count, measure):
    """Make ``finder.point`` measure a floor per network (``measure()``) before ``count`` of the
    walk's ``points``, evenly spread: the machine's speed drifts by tens of percent within a walk
    of minutes, which a floor measured only before and after misses. Returns the list that
    receives ``(floor per network, seconds taken)`` for each sample."""
    at = {round(points * (k + 1) / (count + 1)) for k in range(count)}
    point, made, during = finder.point, itertools.count(), []

    def sampled(*args, **kwargs):
        if next(made) in at:
            start = time.perf_counter()
            during.append((measure(), time.perf_counter() - start))
        return point(*args, **kwargs)

    finder.point = sampled
    return during


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", type=int, choices=(1, 2))
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default="FashionMNIST")
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--num_points", type=int, default=None,
                        help="default 21 (Table 1, B-fly), 31 (WA finders of Table 2)")
    parser.add_argument("--short", action="store_true",
                        help="about half the points (11, or 16 for the WA finders of Table 2)")
    parser.add_argument("--floor_networks", type=int, default=3,
                        help="networks per floor sample")
    parser.add_argument("--floor_samples", type=int, default=3,
                        help="floor samples taken while the points are made (besides one before "
                             "the path and one after)")
    parser.add_argument("--only", default=None,
                        help="comma-separated finder:method (or finder:method:repair) cases of the table to run "
                             "(default all)")
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--finder", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--repair", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finder:
        return run_case(args)
    model = args.model or ("LinearOneLayer" if args.table == 1 else "Linear3NoBias")
    rows = []
    cases = TABLE1 if args.table == 1 else TABLE2
    if args.only:
        cases = [case for case in cases if ":".join(case) in args.only.split(",")]
    for finder, method, *repair in cases:
        points = args.num_points or {(False, False): 21, (False, True): 31, (True, False): 11,
                                     (True, True): 16}[args.short, "StepWiseInverse" in finder]
        r = run_in_subprocess(__file__, [
            f"--finder={finder}", f"--method={method}", f"--model={model}",
            f"--dataset={args.dataset}", f"--data_path={args.data_path}", f"--start={args.start}",
            f"--end={args.end}", f"--num_points={points}",
            f"--floor_networks={args.floor_networks}", f"--floor_samples={args.floor_samples}"]
            + (["--cuda"] if args.cuda else [])
            + (["--repair"] if repair else []))
        total = r["build"] + r["walk"]
        rows.append([finder + (" + REPAIR" if repair else ""), method, points, f"{r['build']:.1f}", f"{r['walk']:.1f}",
                     f"{r['floor']:.1f}", f"{100 * r['drift']:.0f}", f"{total / r['floor']:.2f}",
                     f"{r['peak_gb']:.2f}"])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print(f"\n{model} on {args.dataset}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{'cuda' if args.cuda else 'cpu'}, {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, ["finder", "method", "points", "build s", "points s", "floor s",
                          "floor spread %", "total / floor", "peak GB"], tablefmt="github"))


if __name__ == "__main__":
    main()
