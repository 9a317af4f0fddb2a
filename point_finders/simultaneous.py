"""PointFinderSimultaneous: connect every parameter tensor independently (paper, Table 2 Linear/Arc)."""
from .base import Point, PointFinder


class PointFinderSimultaneous(PointFinder):
    """Linear / Arc for any network; ends at model 2 at ``t = 1``."""

    @classmethod
    def fits(cls, model):
        return True

    @classmethod
    def path_end(cls, model):
        return 1

    def point(self, t, method, left=False):
        self.check_time(t)
        connect = self.connector(method)
        return Point([connect(a, b, t) for a, b in zip(self.params1, self.params2)])
