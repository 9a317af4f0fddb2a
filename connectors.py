"""Connectors between two sample sets (paper, Eq. 5 and Eq. 6).

Both take arrays ``S1``, ``S2`` of equal shape whose first axis indexes samples (neurons) and a
time ``t`` in [0, 1]; they work on tensors of any rank and keep the working dtype of ``S1``.

Each is a fixed combination of a few arrays (its ``terms``) with coefficients that depend on ``t``
alone: ``connect(S1, S2, t) = Σ_k c_k(t) T_k``. The evaluation of a path uses this to compute what
a layer makes of its input once per term rather than once per point (docs/METHODS.md, "Evaluating
a path segment by segment").
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Connector:
    """``terms(S1, S2)``: the arrays ``T_k`` (the first has the full shape of ``S1``; the others
    broadcast against it); ``coefficients(t)``: the floats ``c_k(t)``."""
    terms: Callable
    coefficients: Callable

    def __call__(self, S1, S2, t):
        return combine(self.terms(S1, S2), self.coefficients(float(t)))  # float: a NumPy scalar
        # would promote float32 tensors to float64


def combine(terms, coefficients):
    """``Σ_k c_k T_k`` in one new tensor (the first term has the full shape); a term of coefficient
    exactly 0 is skipped, so that an end is returned exactly where its coefficient is 1."""
    out = None
    for c, T in zip(coefficients, terms):
        if c == 0:
            continue
        if out is None:
            out = torch.mul(T, c)
        else:
            out.add_(T, alpha=c)
    return out if out is not None else torch.zeros_like(terms[0])


def mean_sample(S1, S2):
    """The mean sample of both sets stacked, shaped ``(1, ...)``; a 1-D array counts as one row,
    so for bias vectors it is ``(S1 + S2) / 2`` elementwise."""
    if S1.dim() <= 1:
        return (S1 + S2) / 2
    return torch.cat([S1, S2]).mean(dim=0, keepdim=True)


def arc_coefficients(t):
    """Eq. 6 rewritten as ``cos S1 + sin S2 + (1 - cos - sin) m`` at angle ``pi t / 2``; the cosine
    of ``pi / 2`` is taken as 0, so ``t = 1`` gives ``S2`` exactly."""
    angle = math.pi * t / 2
    cos = 0.0 if t == 1 else math.cos(angle)
    sin = math.sin(angle)
    return cos, sin, 1.0 - cos - sin


#: Eq. 5: ``(1 - t) S1 + t S2``; exactly ``S1`` at ``t = 0`` and ``S2`` at ``t = 1``
lin_connect = Connector(terms=lambda S1, S2: (S1, S2), coefficients=lambda t: (1.0 - t, t))

#: Eq. 6: ``m + cos(pi t/2) (S1 - m) + sin(pi t/2) (S2 - m)`` around the mean sample ``m``
#: (``mean_sample``: the mean neuron of both nets)
arc_connect = Connector(terms=lambda S1, S2: (S1, S2, mean_sample(S1, S2)),
                        coefficients=arc_coefficients)

CONNECTORS = {"lin_connect": lin_connect, "arc_connect": arc_connect}
