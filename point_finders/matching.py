"""OT matching of neurons and butterflies (METHODS.md "Shared building blocks"; paper, Section 4).

A hidden layer's neurons are samples of a distribution; two nets' samples are matched by the exact
earth-mover plan between the two empirical measures (uniform weights, squared Euclidean cost). With
equal sample counts that plan is a permutation, the solution of the linear assignment problem on
the same cost, which the Jonker-Volgenant solver of the ``lapjv`` package finds exactly (the
fastest exact solver measured here: up to 25 times faster than scipy's, 6 times on a 6144-unit layer;
bench/assignment_speed.py, docs/PERFORMANCE.md). (POT's network simplex, ``ot.emd``, stops at its default
iteration limit before optimality on layers of a few thousand neurons and then returns a plan that
is not a permutation; the assignment solver has no such limit.)

``MATCHINGS`` names the matchings a procedure can use; docs/METHODS.md ("Adding a procedure")
shows how to add one.
"""
from dataclasses import dataclass
from typing import Callable

import lapjv
import numpy as np
import torch


def assignment(scores, maximize=False):
    """The exact linear assignment of a square matrix: ``perm`` with ``scores[i, perm[i]]`` summed
    over ``i`` minimal (or maximal), as a tensor on ``scores``' device."""
    cost = np.ascontiguousarray(scores.detach().cpu().double().numpy())
    perm, _, _ = lapjv.lapjv(-cost if maximize else cost)
    return torch.from_numpy(perm.astype(np.int64)).to(scores.device)


def ot_permutation(A, B):
    """``perm`` such that ``B[perm]`` is aligned to ``A`` (rows are samples)."""
    A64, B64 = (M.detach().reshape(len(M), -1).double() for M in (A, B))
    return assignment(torch.cdist(A64, B64).pow(2))


def butterfly(W_in, b_in, W_out, with_bias=True):
    """Butterfly samples of a hidden layer: row ``j`` = incoming weights of neuron ``j`` (plus its
    bias), then its outgoing weights (column ``j`` of the next layer; input channel ``j`` for conv)."""
    parts = [W_in.reshape(len(W_in), -1)]
    if with_bias and b_in is not None:
        parts.append(b_in[:, None])
    if W_out is not None:
        parts.append(W_out.transpose(0, 1).reshape(W_out.shape[1], -1))
    return torch.cat(parts, dim=1)


def split_butterfly(samples, W_in, b_in, W_out, with_bias=True):
    """Inverse of ``butterfly``: tensors shaped like ``W_in``, ``b_in`` (or None) and ``W_out``,
    with as many units as ``samples`` has rows (one for a mean butterfly)."""
    n_in = W_in[0].numel()
    W = samples[:, :n_in].reshape(len(samples), *W_in.shape[1:])
    b = None
    if with_bias and b_in is not None:
        b, n_in = samples[:, n_in], n_in + 1
    out = None
    if W_out is not None:
        swapped = W_out.transpose(0, 1)
        out = samples[:, n_in:].reshape(len(samples), *swapped.shape[1:]).transpose(0, 1).contiguous()
    return W, b, out


def ot_butterflies(one, two):
    """OT of whole butterflies ``[W_l, b_l, W_{l+1}ᵀ]`` (OT + B-fly, Table 1's OT)."""
    return ot_permutation(butterfly(*one), butterfly(*two))


def ot_rows(one, two):
    """OT of incoming rows with the bias, ``[W_l, b_l]`` (OT + WA)."""
    return ot_permutation(butterfly(one[0], one[1], None), butterfly(two[0], two[1], None))


def ot_weights(one, two):
    """OT of incoming weights without the bias, ``W_l`` (Table 1's OT + Weight Adjustment)."""
    return ot_permutation(butterfly(one[0], None, None), butterfly(two[0], None, None))


@dataclass(frozen=True)
class Matching:
    """A way to line model 2's hidden units up with model 1's before connecting.

    ``permutation(one, two)`` gets the two sides ``(W_l, b_l, W_{l+1})`` of a hidden layer (``b_l``
    None without biases, ``W_{l+1}`` None where the segment has none) and returns ``perm`` such
    that model 2's units ``perm`` line up with model 1's. ``once``: solved for every hidden layer,
    in order, before the path is built (model 2 is replaced by the permuted twin, which computes
    the same function; the path ends there); otherwise solved per segment on its moving parts.
    """
    permutation: Callable
    once: bool = False


#: the matchings the procedure table (``procedures.PROCEDURES``) names
MATCHINGS = {
    "ot_butterflies": Matching(ot_butterflies),
    "ot_rows": Matching(ot_rows),
    "ot_weights_once": Matching(ot_weights, once=True),
}
