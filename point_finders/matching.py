"""OT matching of neurons and butterflies (METHODS.md "Shared building blocks"; paper, Section 4).

A hidden layer's neurons are samples of a distribution; two nets' samples are matched by the exact
earth-mover plan between the two empirical measures (uniform weights, squared Euclidean cost). With
equal sample counts that plan is a permutation, the solution of the linear assignment problem on
the same cost, which scipy solves exactly. (POT's network simplex, ``ot.emd``, stops at its default
iteration limit before optimality on layers of a few thousand neurons and then returns a plan that
is not a permutation; the assignment solver has no such limit.)
"""
import torch
from scipy.optimize import linear_sum_assignment


def ot_permutation(A, B):
    """``perm`` such that ``B[perm]`` is aligned to ``A`` (rows are samples)."""
    A64, B64 = (M.detach().reshape(len(M), -1).double() for M in (A, B))
    cost = torch.cdist(A64, B64).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.from_numpy(cols[rows.argsort()]).to(A.device)


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
    """Inverse of ``butterfly``: tensors shaped like ``W_in``, ``b_in`` (or None) and ``W_out``."""
    n_in = W_in[0].numel()
    W = samples[:, :n_in].reshape(W_in.shape)
    b = None
    if with_bias and b_in is not None:
        b, n_in = samples[:, n_in], n_in + 1
    out = None
    if W_out is not None:
        swapped = W_out.transpose(0, 1)
        out = samples[:, n_in:].reshape(swapped.shape).transpose(0, 1).contiguous()
    return W, b, out
