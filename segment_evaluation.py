"""Evaluating a path segment by segment: the points of one segment share most of their work
(docs/METHODS.md, "Evaluating a path segment by segment").

A finder marks what a point of a chain network shares with the other points of its segment
(``point_finders.Shared``): the layers before a layer ``p`` are the same at every point, and the
weights of layer ``p`` are a combination ``Σ_k c_k (W_k, b_k)`` of a few fixed terms (the
connector's terms, or a trained curve's bends). Layer ``p``'s affine map is linear in its weights,
so on a batch the features entering ``p`` are computed once, each term's affine map once, and every
point's pre-activation of layer ``p`` is the combination of those with its own coefficients; only
the layers after ``p`` run per point. Each batch is read once for all points of the segment.

``evaluate_points`` walks a list of times in path order and groups consecutive points of one
segment; a point that shares nothing (a network that is not a chain, or one with BatchNorm, whose
statistics are recomputed per point) is evaluated alone, as before. The statistics are those of
evaluating each point's network from scratch, up to float32 rounding.
"""
import torch
import torch.nn.functional as F

import distributed
from connectors import combine
from evaluation import evaluate, evaluate_point, forward_batches, has_batchnorm, point_statistics
from models.architecture import after, linear_part

#: the parameters of the points held at once for one segment (a longer segment is cut in parts)
GROUP_BYTES = 2 * 2 ** 30
#: the rows of the layer's terms combined at once for every point (about a cache's worth); the
#: later layers of a point re-read their weights for every chunk, so a point whose later layers
#: hold more than SUFFIX_BYTES takes the whole batch at once
CHUNK_BYTES, CHUNK_ROWS, SUFFIX_BYTES = 2 ** 21, 128, 2 ** 22


def shares(template, point):
    """Whether ``point`` can be evaluated together with the other points of its segment."""
    return point.shared is not None and not has_batchnorm(template)


@torch.no_grad()
def evaluate_together(finder, points, x, y, batch_size, terms=None):
    """``evaluation.evaluate`` of every point's network on ``(x, y)`` (all points of one segment,
    ``shares`` true), in one pass over the data; ``terms``, when given, are the outputs of the
    shared layer's terms on ``x`` (``Shared.train_terms``), which then is not read."""
    template, shared = finder.template, points[0].shared
    template.eval()
    layers, p = template.architecture.layers, shared.layer
    prefix = finder.layers(points[0].params)[:p]
    suffixes = [finder.layers(point.params)[p + 1:] for point in points]
    whole = sum(t.numel() * t.element_size() for layer in suffixes[0] for t in layer
                if t is not None) > SUFFIX_BYTES
    device = shared.terms[0][0].device

    def terms_of(xb):
        """Layer ``p``'s affine map of each term on the batch, after the shared prefix."""
        for i, (W, b) in enumerate(prefix):
            xb = template.step(i, xb, W, b)
        return term_outputs(layers[p], xb, shared.terms)

    nll = torch.zeros(len(points), dtype=torch.float64, device=device)
    correct = torch.zeros(len(points), dtype=torch.float64, device=device)
    batches = (forward_batches(terms_of, x, batch_size, device) if terms is None else
               ((rows, rows_of(terms, rows)) for rows in distributed.batch_slices(len(y), batch_size)))
    for rows, z in batches:
        yb = y[rows].to(device, non_blocking=True)
        for part in [slice(None)] if whole else chunks(first(z)):  # in cache for every point
            zc, yc = rows_of(z, part), yb[part]
            for j, point in enumerate(points):
                h = after(layers[p], combined(zc, point.shared.coefficients))
                for i, (W, b) in enumerate(suffixes[j], start=p + 1):
                    h = template.step(i, h, W, b)
                nll[j] += F.cross_entropy(h, yc, reduction="sum")
                correct[j] += (h.argmax(1) == yc).sum()
    totals = distributed.sums(*nll.tolist(), *correct.tolist(), len(y))
    count = totals[-1]
    return [{"nll": totals[j] / count, "accuracy": 100.0 * totals[len(points) + j] / count}
            for j in range(len(points))]


def blocks(n, rows):
    """Slices of ``rows`` consecutive rows covering ``range(n)``."""
    return [slice(i, i + rows) for i in range(0, n, rows)]


def chunks(z):
    """Slices of the rows of ``z`` of about ``CHUNK_BYTES`` each (at least ``CHUNK_ROWS`` rows)."""
    row = z[0].numel() * z.element_size() if len(z) else 1
    return blocks(len(z), max(CHUNK_ROWS, CHUNK_BYTES // max(row, 1)))


def term_outputs(layer, x, terms):
    """The affine map of each term ``(W_k, b_k)`` of ``layer`` on its input ``x``. A term whose
    weight has one unit but whose bias has the layer's units (under arc, the mean neuron with the
    mean of two bias vectors) is kept as the pair of that unit's output and the bias, broadcast
    only when combined (``combined``), not as an array as wide as the layer."""
    return [(linear_part(layer, x, W), b) if b is not None and len(b) != len(W)
            else linear_part(layer, x, W, b) for W, b in terms]


def rows_of(z, rows):
    """The rows ``rows`` of every term output of ``term_outputs``."""
    return [(T[0][rows], T[1]) if isinstance(T, tuple) else T[rows] for T in z]


def combined(z, coefficients):
    """``Σ_k c_k z_k`` for the term outputs ``z_k`` of ``term_outputs``."""
    arrays, weights = [], []
    for T, c in zip(z, coefficients):
        parts = (T[0], T[1].view(1, -1, *([1] * (T[0].dim() - 2)))) if isinstance(T, tuple) else (T,)
        arrays += parts
        weights += [c] * len(parts)
    return combine(arrays, weights)


def nbytes(z):
    """The memory held by the term outputs ``z`` (``term_outputs``)."""
    return sum(t.numel() * t.element_size() for T in z for t in (T if isinstance(T, tuple) else (T,)))


def activation(layer, z, coefficients):
    """``after(layer, Σ_k c_k z_k)`` for the term outputs ``z_k`` of ``term_outputs``, a chunk of
    rows at a time (each chunk combined and activated while it is in cache)."""
    out = None
    for part in chunks(first(z)):
        value = after(layer, combined(rows_of(z, part), coefficients))
        if out is None:
            out = value.new_empty((len(first(z)), *value.shape[1:]))
        out[part] = value
    return out


def first(z):
    """The first term's output (always a whole array: a connector's ``S1``, a curve's first bend)."""
    return z[0][0] if isinstance(z[0], tuple) else z[0]


def evaluate_points(finder, method, requests, train, test, batch_size, seen=None):
    """Train and test statistics (``evaluation.point_statistics``) of the point at every request
    ``(t, left)`` (``left``: the limit from below at a discontinuity), in the order given.

    Points are made in path order (a left limit before the points at its time) and each segment's
    points are evaluated together; ``seen(i, point)`` is called as the point of request ``i`` is
    made. A point that carries its training features (``Point.hidden``) is evaluated on the
    training set from them at once, and the features dropped."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i][0], not requests[i][1]))
    module = finder.network(finder.params1)
    stats, group = [None] * len(requests), Group(finder, train, test, batch_size)
    for i in distributed.progress(order, desc="points"):
        t, left = requests[i]
        point = finder.point(float(t), method, left=left)
        if seen is not None:
            seen(i, point)
        if not shares(finder.template, point):
            stats[i] = evaluate_point(finder, module, point, train, test, batch_size)
            continue
        if not group.takes(point):
            group.flush(stats)
        trained = None
        if point.hidden is not None:
            net = finder.network(point.params, module)
            trained, point.hidden = evaluate(net, *train, batch_size, hidden=point.hidden), None
        group.add(i, point, trained)
    group.flush(stats)
    return stats


def params_bytes(point):
    return sum(p.numel() * p.element_size() for p in point.params)


class Group:
    """Consecutive points of one segment waiting to be evaluated together."""

    def __init__(self, finder, train, test, batch_size):
        self.finder, self.train, self.test, self.batch_size = finder, train, test, batch_size
        self.items, self.bytes = [], 0

    def takes(self, point):
        """Whether ``point`` joins the group: same segment and the parameters held stay below
        ``GROUP_BYTES``."""
        return not self.items or (point.shared.segment == self.items[0][1].shared.segment
                                  and self.bytes + params_bytes(point) <= GROUP_BYTES)

    def add(self, i, point, trained):
        self.items.append((i, point, trained))
        self.bytes += params_bytes(point)

    def flush(self, stats):
        """Evaluate the held points into ``stats`` (by request index) and empty the group."""
        if not self.items:
            return
        points = [point for _, point, _ in self.items]
        untrained = [k for k, (_, _, trained) in enumerate(self.items) if trained is None]
        trained = [trained for _, _, trained in self.items]
        if untrained:
            fresh = evaluate_together(self.finder, [points[k] for k in untrained], *self.train,
                                      self.batch_size, terms=points[0].shared.train_terms)
            for k, value in zip(untrained, fresh):
                trained[k] = value
        tested = evaluate_together(self.finder, points, *self.test, self.batch_size)
        for (i, _, _), tr, te in zip(self.items, trained, tested):
            stats[i] = point_statistics(tr, te)
        self.items, self.bytes = [], 0
