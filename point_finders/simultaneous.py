"""The simultaneous schedule: connect every parameter tensor independently (paper, Table 2
Linear/Arc); any network, ends at model 2 at ``t = 1``."""
from .base import Point, PointFinder, connector


class Simultaneous(PointFinder):
    """Every tensor at once; BatchNorm running statistics are recomputed by the evaluation."""

    def point(self, t, method, left=False):
        self.check_time(t)
        connect = connector(method)
        return Point([connect(a, b, t) for a, b in zip(self.params1, self.params2)])
