"""What every point finder shares: its procedure, the two end-points, the training data, time
checks, networks."""
import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch

from connectors import CONNECTORS
from utils import UserError


@dataclass
class Point:
    """The network at one time ``t`` of a path.

    ``params`` are its parameters in ``model.parameters()`` order. ``hidden``, when a finder had
    to compute it anyway, is ``(N, features)``: the output of hidden layer ``N`` of this very
    network on the whole training set, from which evaluation can continue (``forward_from``).
    """
    params: list
    hidden: Optional[tuple] = None


def path_end(procedure, model):
    """The time at which ``procedure``'s path reaches model 2, for ``model``'s architecture."""
    return procedure.path_end(len(model.architecture.layers))


def connector(method):
    """The connector function named ``method`` (Eq. 5 or Eq. 6)."""
    if method not in CONNECTORS:
        raise UserError(f"unknown method '{method}'; choose one of: {', '.join(CONNECTORS)}")
    return CONNECTORS[method]


class PointFinder:
    """Base class: built once from a procedure (a row of ``procedures.PROCEDURES``), model 1,
    model 2 and the training data; answers ``point(t)``.

    The training data ``x_train`` is the whole training split with the test-time transform, in
    loader order (docs/METHODS.md, Notation). Work happens on the models' device in ``dtype``.
    """

    def __init__(self, procedure, model1, model2, x_train, dtype=torch.float32):
        device = next(model1.parameters()).device
        self.procedure, self.dtype, self.device = procedure, dtype, device
        self.template = copy.deepcopy(model1).to(device=device, dtype=dtype).eval()
        self.params1 = [p.detach().to(device=device, dtype=dtype) for p in model1.parameters()]
        self.params2 = [p.detach().to(device=device, dtype=dtype) for p in model2.parameters()]
        self.x_train = x_train

    @property
    def end_time(self):
        """The time at which the path reaches model 2."""
        return path_end(self.procedure, self.template)

    @property
    def discontinuities(self):
        """End times at which the path jumps (evaluated from the later segment, as the reference)."""
        return self.procedure.discontinuities(len(self.template.architecture.layers))

    def check_time(self, t):
        if not 0 <= t <= self.end_time:
            raise UserError(f"t = {t} is outside this path, which runs from 0 to {self.end_time}")

    def locate(self, t, segments, left=False):
        """Segment ``l = floor(t)`` (the last one for ``t`` at the end) and local time ``s = t - l``;
        with ``left`` an interior integer ``t`` belongs to the earlier segment (``s = 1``)."""
        l = min(int(math.floor(t)), segments - 1)
        s = t - l
        if left and l > 0 and s == 0:
            l, s = l - 1, 1.0
        return l, s

    def point(self, t, method, left=False):
        """The ``Point`` at time ``t`` (``left``: the limit from below at a discontinuity)."""
        raise NotImplementedError

    def network(self, params, module=None):
        """``module`` (default: a fresh copy of the template) carrying ``params``, without copies."""
        module = copy.deepcopy(self.template) if module is None else module
        for p, value in zip(module.parameters(), params):
            p.data = value
        return module
