"""What every point finder shares: its procedure, the two end-points, the training data, time
checks, networks."""
import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch

from connectors import CONNECTORS
from utils import UserError


@dataclass(frozen=True)
class Shared:
    """What a point of a chain network has in common with the other points of its segment
    (docs/METHODS.md, "Evaluating a path segment by segment").

    ``segment`` is equal for the points of one segment. The layers before ``layer`` are the same
    at every point of the segment; the weight and bias of ``layer`` are ``Σ_k c_k (W_k, b_k)``
    over ``terms`` (the same tensors at every point of the segment; ``b_k`` None without a bias)
    with this point's ``coefficients`` ``c_k``. ``train_terms``, when a finder has them anyway,
    are the outputs of the terms' affine maps on the whole training set (the rows the evaluation
    uses), from which the evaluation on it continues.
    """
    segment: object
    layer: int
    terms: tuple
    coefficients: tuple
    train_terms: Optional[list] = None


@dataclass
class Point:
    """The network at one time ``t`` of a path.

    ``params`` are its parameters in ``model.parameters()`` order. ``hidden``, when a finder had
    to compute it anyway, is ``(N, blocks)``: the features entering layer ``N`` of this very
    network on the (rank's) training set, as a list of blocks of consecutive rows, from which
    evaluation continues block by block (``forward_from``) without joining them.
    ``shared``, for chain networks, says what the point shares with its segment's other points
    (``Shared``), so that they can be evaluated together.
    """
    params: list
    hidden: Optional[tuple] = None
    shared: Optional[Shared] = None


def split_layers(architecture, names, params):
    """Parameters in ``named_parameters()`` order (``names``) as the chain's ``[W, b]`` pairs."""
    index = {name: i for i, name in enumerate(names)}
    return [[params[index[layer.weight]], params[index[layer.bias]] if layer.bias else None]
            for layer in architecture.layers]


def join_layers(architecture, names, layers):
    """Inverse of ``split_layers``."""
    by_name = {}
    for layer, (W, b) in zip(architecture.layers, layers):
        by_name[layer.weight] = W
        if layer.bias:
            by_name[layer.bias] = b
    return [by_name[name] for name in names]


def layer_terms(connect, one, two):
    """The terms ``(W_k, b_k)`` of a layer whose weight and bias are connected as two arrays each,
    from model 1's ``one = (W, b)`` to model 2's ``two`` (``b`` None without a bias)."""
    weights = connect.terms(one[0], two[0])
    biases = (None,) * len(weights) if one[1] is None else connect.terms(one[1], two[1])
    return tuple(zip(weights, biases))


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
        self.names = [name for name, _ in self.template.named_parameters()]

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

    def results(self):
        """Arrays ``curve.npz`` records about how the path was built (none by default)."""
        return {}

    def layers(self, params):
        """``params`` (``model.parameters()`` order) as the chain's ``[W, b]`` pairs."""
        return split_layers(self.template.architecture, self.names, params)

    def network(self, params, module=None):
        """``module`` (default: a fresh copy of the template) carrying ``params``, without copies."""
        module = copy.deepcopy(self.template) if module is None else module
        for p, value in zip(module.parameters(), params):
            p.data = value
        return module
