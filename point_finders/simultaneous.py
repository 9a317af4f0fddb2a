"""The simultaneous schedule: connect every parameter tensor independently (paper, Table 2
Linear/Arc); any network, ends at model 2 at ``t = 1``. With a whole-network alignment
(``alignment.ALIGNMENTS``: weight or activation matching), model 2 is first replaced by its twin
with every hidden-unit group permuted to line up with model 1's."""
import copy

import torch

from models.architecture import permute
from .alignment import ALIGNMENTS
from .base import Point, PointFinder, Shared, connector, layer_terms


class Simultaneous(PointFinder):
    """Every tensor at once; BatchNorm running statistics are recomputed by the evaluation. For a
    chain, every point shares the terms of the first layer (``Shared``)."""

    def __init__(self, procedure, model1, model2, x_train, dtype=torch.float32):
        super().__init__(procedure, model1, model2, x_train, dtype)
        self._terms = {}
        self.perms, self.record = None, {}
        if procedure.matching:
            self._align(ALIGNMENTS[procedure.matching], model1, model2)

    @torch.no_grad()
    def _align(self, align, model1, model2):
        """``params2`` permuted by the alignment's permutations (kept in ``perms``, what it
        records in ``record``)."""
        one, two = (copy.deepcopy(m).to(device=self.device, dtype=self.dtype).eval()
                    for m in (model1, model2))
        self.perms, self.record = align(one, two, self.x_train.to(self.dtype))
        state = permute(two.state_dict(), two.architecture.groups, self.perms)
        self.params2 = [state[name].detach() for name in self.names]

    def results(self):
        """What ``curve.npz`` records of the alignment: the group names, each group's
        permutation (``perm_<i>``: model 2's unit ``perm[j]`` takes the place of unit ``j``) and
        the alignment's own record."""
        if self.perms is None:
            return {}
        names = list(self.perms)
        return {"aligned_groups": names, **{f"perm_{i}": self.perms[n].numpy() for i, n in
                                            enumerate(names)}, **self.record}

    def point(self, t, method, left=False):
        self.check_time(t)
        connect = connector(method)
        return Point([connect(a, b, t) for a, b in zip(self.params1, self.params2)],
                     shared=self._shared(method, connect, float(t)))

    def _shared(self, method, connect, t):
        if not self.template.architecture.layers:
            return None
        if method not in self._terms:
            self._terms[method] = layer_terms(connect, self.layers(self.params1)[0],
                                              self.layers(self.params2)[0])
        return Shared(0, 0, self._terms[method], connect.coefficients(t))
