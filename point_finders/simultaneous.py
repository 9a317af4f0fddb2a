"""The simultaneous schedule: connect every parameter tensor independently (paper, Table 2
Linear/Arc); any network, ends at model 2 at ``t = 1``."""
from .base import Point, PointFinder, Shared, connector, layer_terms


class Simultaneous(PointFinder):
    """Every tensor at once; BatchNorm running statistics are recomputed by the evaluation. For a
    chain, every point shares the terms of the first layer (``Shared``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._terms = {}

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
