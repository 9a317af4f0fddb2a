"""The exact linear-assignment solvers on the project's own assignment problems (issue 14).

Costs, from two trained end-points (default: ``Linear3NoBias``, Fashion-MNIST, 3 epochs):

* ``OT butterflies l``: squared distances between the butterflies of hidden layer ``l``, the
  problem OT + B-fly solves in segment ``l`` (6144 units for layer 0);
* ``weight matching l``: the similarity weight matching maximises for group ``layer l`` in its
  first step (every permutation the identity);
* ``uniform n``: independent uniform costs, a generic dense problem.

Solvers: scipy's ``linear_sum_assignment`` (shortest augmenting paths, LAPJV-like) and the
Jonker-Volgenant packages ``lap`` and ``lapjv`` where installed (``lapsolver`` has no wheel for
this Python and does not build here). Each answer is checked against scipy's: the same objective to
1e-12 relative and the same permutation. Prints a table and a JSON line for docs/PERFORMANCE.md.
"""
import argparse
import json
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tabulate import tabulate

import models
from point_finders.alignment import WeightMatching
from point_finders.matching import butterfly


def scipy_solver(cost):
    rows, cols = linear_sum_assignment(cost)
    return cols[rows.argsort()]


def lap_solver(cost):
    import lap
    _, x, _ = lap.lapjv(cost, extend_cost=False)
    return x


def lapjv_solver(cost):
    import lapjv
    rows, _, _ = lapjv.lapjv(cost)
    return rows


SOLVERS = {"scipy": scipy_solver, "lap": lap_solver, "lapjv": lapjv_solver}


def installed(name):
    try:
        __import__({"scipy": "scipy.optimize"}.get(name, name))
        return True
    except ImportError:
        return False


def problems(model, start, end, uniform):
    """``{name: cost}`` (float64, minimised) for the end-points' layers and a uniform problem."""
    one, two = (models.load_model(model, path, 10, (1, 28, 28)) for path in (start, end))
    layers = [[p.detach().double() for p in pair] for pair in zip(one.parameters(), two.parameters())]
    costs = {}
    for l in range(len(layers) - 1):
        a = butterfly(layers[l][0], None, layers[l + 1][0])
        b = butterfly(layers[l][1], None, layers[l + 1][1])
        costs[f"OT butterflies {l} ({len(a)})"] = torch.cdist(a, b).pow(2).numpy()
    state1, state2 = one.state_dict(), two.state_dict()
    keys = [n for n, _ in one.named_parameters()]
    matching = WeightMatching(state1, state2, one.architecture.groups, keys)
    for group in one.architecture.groups:
        costs[f"weight matching {group.name} ({group.size})"] = -matching.similarity(group).numpy()
    costs[f"uniform ({uniform})"] = np.random.default_rng(0).random((uniform, uniform))
    return costs


def measure(costs, solvers):
    rows, record = [], {}
    for name, cost in costs.items():
        cost = np.ascontiguousarray(cost)
        answers = {}
        for solver in solvers:
            begin = time.perf_counter()
            perm = np.asarray(SOLVERS[solver](cost))
            seconds = time.perf_counter() - begin
            answers[solver] = (perm, seconds, cost[np.arange(len(cost)), perm].sum())
        best, _, optimum = answers["scipy"]
        for solver, (perm, seconds, objective) in answers.items():
            exact = abs(objective - optimum) <= 1e-12 * abs(optimum) and sorted(perm) == list(range(len(perm)))
            rows.append([name, solver, f"{seconds:.2f}", f"{objective:.10g}",
                         "yes" if exact else "NO", int((perm != best).sum())])
            record[f"{name} / {solver}"] = {"seconds": seconds, "exact": bool(exact)}
    return rows, record


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    C = "checkpoints/FashionMNIST/Linear3NoBias"
    parser.add_argument("--model", default="Linear3NoBias", help="a dense chain (Fashion-MNIST shapes)")
    parser.add_argument("--start", default=f"{C}/chp1/checkpoint-3.pt")
    parser.add_argument("--end", default=f"{C}/chp2/checkpoint-3.pt")
    parser.add_argument("--uniform", type=int, default=4000)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    solvers = [s for s in SOLVERS if installed(s)]
    rows, record = measure(problems(args.model, args.start, args.end, args.uniform), solvers)
    print(f"solvers installed: {', '.join(solvers)}; torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["problem", "solver", "seconds", "objective", "exact",
                                  "units placed differently than scipy"], tablefmt="github"))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
