"""Cost of eval_ensemble.py (WA(n) and plain ensembles) against the floor, with peak memory.

Floor: the plain evaluation of the same members with the same code, i.e. every member's softmax
outputs on the training and the test set (``evaluation.predictions``), measured in the same
subprocess before and after the run (mean of both). Total: the whole ``eval_ensemble.main`` call.

Usage: python bench/ensemble_speed.py --model_paths DIR --name NAME [--model Linear3NoBias]
"""
import argparse
import json
import platform
import sys
import time

import torch
from tabulate import tabulate

from bench.common import add_data_arguments, run_in_subprocess


def run_case(args):
    import data
    import eval_ensemble
    import evaluation
    import models
    import utils
    import wa_ensemble
    from bench.common import peak_rss_gb

    x_train, _ = data.load_split(args.dataset, args.data_path, True)
    x_test, _ = data.load_split(args.dataset, args.data_path, False)
    paths = wa_ensemble.find_checkpoints(args.model_paths, args.name, None, args.max_models)
    shape = tuple(x_train.shape[1:])
    members = [models.load_model(args.model, p, data.num_classes_of(args.dataset), shape)
               for p in paths]

    def floor():
        timer = utils.Timer()
        for m in members:
            evaluation.predictions(m, x_train, 4096)
            evaluation.predictions(m, x_test, 4096)
        return timer()

    before = floor()
    timer = utils.Timer()
    eval_ensemble.main([f"--dir={args.out}", f"--dataset={args.dataset}", f"--data_path={args.data_path}",
                        f"--model={args.model}", f"--name={args.name}", f"--layer={args.layer}",
                        f"--layer_ind={args.layer + 1}", f"--model_paths={args.model_paths}",
                        f"--max_models={args.max_models}"])
    total = timer()
    print(json.dumps({"members": len(paths), "total": total, "floor": (before + floor()) / 2,
                      "peak_gb": peak_rss_gb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(parser, "Linear3NoBias")
    parser.add_argument("--model_paths", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max_models", type=int, default=5)
    parser.add_argument("--out", default="/tmp/ensemble_bench")
    parser.add_argument("--layer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layer is not None:
        return run_case(args)
    rows = []
    for layer in (1, 0):  # WA(1) and WA(2) for Linear3NoBias
        r = run_in_subprocess(__file__, sys.argv[1:] + [f"--layer={layer}"])
        rows.append([f"--layer={layer} --layer_ind={layer + 1}", r["members"], f"{r['total']:.1f}",
                     f"{r['floor']:.1f}", f"{r['total'] / r['floor']:.2f}", f"{r['peak_gb']:.2f}"])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print(f"\n{args.model} on {args.dataset}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"cpu, {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, ["WA layer", "members", "total s", "floor s", "total / floor", "peak GB"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
