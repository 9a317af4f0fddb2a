"""Overhead of data-parallel path evaluation: ``eval_curve.py`` as one process against the same
command under ``torchrun --standalone --nproc_per_node=N --`` on the same machine.

On a machine whose cores one process already uses (this project's 2-core CPU) N processes cannot
be faster; the ratio measures what distribution costs: the processes' start-up, every rank
reading the data and end-points, the collectives. Each case runs ``--repeats`` times in
alternating order (one, N, N, one, ...) so that drift of the machine's speed cancels; reported are
the best wall time of each (the whole command, start-up included) and the best
``computation_time`` recorded in ``curve.npz`` (from the data being read to the results being
written).

Usage: python bench/distributed_overhead.py --start A.pt --end B.pt [--dataset FashionMNIST ...]
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from tabulate import tabulate

from bench.common import add_data_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("PointFinderWithBias", "lin_connect"), ("PointFinderInverseWithBiasOT", "lin_connect")]


def run_once(args, finder, method, processes, folder):
    """Wall time of one eval_curve.py run and the computation_time it recorded."""
    launch = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={processes}", "--"]
    out = os.path.join(folder, f"{finder}-{processes}")
    command = launch + ["eval_curve.py", f"--dir={out}", f"--point_finder={finder}",
                        f"--method={method}", f"--model={args.model}", f"--dataset={args.dataset}",
                        f"--data_path={args.data_path}", f"--start={args.start}",
                        f"--end={args.end}", f"--num_points={args.num_points}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    return wall, float(np.load(os.path.join(out, "curve.npz"))["computation_time"])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(parser, "LinearOneLayer")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--num_points", type=int, default=21)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for finder, method in CASES:
            best = {1: [float("inf")] * 2, args.processes: [float("inf")] * 2}
            for k in range(args.repeats):
                order = (1, args.processes) if k % 2 == 0 else (args.processes, 1)
                for processes in order:
                    timings = run_once(args, finder, method, processes, folder)
                    best[processes] = [min(a, b) for a, b in zip(best[processes], timings)]
            one, many = best[1], best[args.processes]
            rows.append([finder, method, args.num_points, f"{one[0]:.1f}", f"{many[0]:.1f}",
                         f"{many[0] / one[0]:.2f}", f"{one[1]:.1f}", f"{many[1]:.1f}",
                         f"{many[1] / one[1]:.2f}"])
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print(f"\n{args.model} on {args.dataset}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.processes} processes (gloo) against 1, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, ["finder", "method", "points", "1 process: wall s",
                          f"{args.processes} processes: wall s", "ratio", "1 process: computation s",
                          f"{args.processes} processes: computation s", "ratio"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
