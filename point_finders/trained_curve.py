"""A curve trained between the end-points (``train.py --curve``; curves.py) as a point finder, so
that ``eval_curve.py`` evaluates it like the paper's procedures: ``--point_finder=Bezier`` (or
``PolyChain``) with ``--curve_checkpoint``."""
import torch

import curves
from .base import Point, PointFinder, Shared


class TrainedCurve(PointFinder):
    """The curve's point at ``t`` is ``w(t) = Σ_j c_j(t) θ_j``; it needs no data and has no
    connector (``method`` is ignored). It runs from its first bend (``t = 0``) to its last
    (``t = 1``). For a chain every point shares its first layer's terms, the bends' (``Shared``)."""

    def __init__(self, curve, x_train, dtype=torch.float32):
        self.curve = curve.to(device=x_train.device, dtype=dtype)  # where the data are
        super().__init__(None, *(curves.network(self.curve, t) for t in (0.0, 1.0)), x_train, dtype)
        self.terms = None
        if self.template.architecture.layers:
            self.terms = tuple(tuple(self.layers([p.detach() for p in self.curve.bend(j)])[0])
                               for j in range(self.curve.num_bends))

    @property
    def end_time(self):
        return 1.0

    @property
    def discontinuities(self):
        return ()

    @torch.no_grad()
    def point(self, t, method=None, left=False):
        self.check_time(t)
        shared = None if self.terms is None else Shared(0, 0, self.terms, self.curve.coefficients(t))
        return Point(self.curve.weights(t), shared=shared)
