"""Connectors between two sample sets (paper, Eq. 5 and Eq. 6).

Both take arrays ``S1``, ``S2`` of equal shape whose first axis indexes samples (neurons) and a
time ``t`` in [0, 1]; they work on tensors of any rank and keep the working dtype of ``S1``.
"""
import math

import torch


def lin_connect(S1, S2, t):
    """Eq. 5: ``(1 - t) S1 + t S2``; exactly ``S1`` at ``t = 0`` and ``S2`` at ``t = 1``."""
    t = float(t)  # a NumPy scalar would promote float32 tensors to float64
    return (1 - t) * S1 + t * S2


def arc_connect(S1, S2, t):
    """Eq. 6: ``m + cos(pi t/2) (S1 - m) + sin(pi t/2) (S2 - m)`` around the mean sample ``m``.

    ``m`` is the mean over the first axis of both sets stacked (the mean neuron of both nets); a
    1-D array counts as one row, so for bias vectors ``m = (S1 + S2) / 2`` elementwise.
    """
    if S1.dim() <= 1:
        m = (S1 + S2) / 2
    else:
        m = torch.cat([S1, S2]).mean(dim=0, keepdim=True)
    angle = math.pi * float(t) / 2
    return m + math.cos(angle) * (S1 - m) + math.sin(angle) * (S2 - m)


CONNECTORS = {"lin_connect": lin_connect, "arc_connect": arc_connect}
