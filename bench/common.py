"""Helpers for the benchmarks: the machine's float32 matmul throughput, peak memory, subprocesses."""
import json
import os
import resource
import subprocess
import sys
import time

import torch


def matmul_flops_per_second(size=2048, repeats=5, device="cpu"):
    """Best float32 GEMM throughput (FLOP/s) of ``size``-square products on ``device``."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def peak_rss_gb():
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def add_data_arguments(parser, model):
    """``--model`` (default ``model``), ``--dataset`` and ``--data_path`` (Fashion-MNIST from
    Debian's package), as the benchmarks take them."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--dataset", default="FashionMNIST")
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist")


def run_in_subprocess(script, arguments):
    """Run ``script`` with ``arguments`` in a fresh Python process (so that its peak memory is its
    own) and return the JSON object of its last output line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=root), check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])
