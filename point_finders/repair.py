"""REPAIR (Jordan et al. 2022, "REPAIR: REnormalizing Permuted Activations for Interpolation
Repair", Sec. 4; docs/METHODS.md, "REPAIR"): an option of every finder whose path is one segment
from model 1 to model 2, for chain networks without BatchNorm.

Between two networks whose units are matched, the interpolated network's hidden units lose
variance. REPAIR resets, at each point ``s = t / end_time`` of the path, every hidden unit's
pre-activation mean and standard deviation on the training data to ``(1 - s)`` times its value
in the path's first network plus ``s`` times its value in the last. Layers are repaired in order
from the input, each measured with the earlier ones already repaired, and the correction is folded
into the layer's weights: with ``a = σ* / σ`` the rows of ``W`` are scaled by ``a`` and the bias
becomes ``a (b - μ) + μ*``. A layer without a bias can only be scaled: its standard deviations
reach their targets and its means are scaled with them. A unit constant on the data (``σ = 0``)
keeps its scale.

A point's first layer is measured from its segment's shared terms where the finder gives them
(``Shared``, docs/METHODS.md "Evaluating a path segment by segment"): its pre-activations are
``Σ_k c_k z_k`` for the outputs ``z_k`` of the terms' affine maps on the training data, computed
once per segment and held when they fit ``TERMS_BYTES``.
"""
import torch

import distributed
from models.architecture import after, linear_part, unit_rows
from segment_evaluation import combined, nbytes, term_outputs
from .base import Point, join_layers

#: training samples per forward pass
BATCH = 4096
#: a hidden layer's pre-activations on the (rank's) training set are held for the next layer when
#: they take at most this much; otherwise the next layer's input is recomputed from the data
HOLD_BYTES = 2 * 2 ** 30
#: the outputs of a segment's first-layer terms on the (rank's) training set are held, for all its
#: points, when they take at most this much
TERMS_BYTES = 4 * 2 ** 30


def moments(batches):
    """Per-unit mean and standard deviation (population) over the rows of every batch of
    ``unit_rows``, over every rank's rows under ``torchrun``. Each batch is centred on its own mean
    (rounded to the rows' dtype, ``c``; squares in that dtype, sums in float64, and
    ``Σ (z - mean)² = Σ (z - c)² - n (mean - c)²``) before the batches and the ranks are pooled
    (``distributed.pool``): a unit whose mean dwarfs its spread keeps its precision."""
    parts = []
    for z in batches:
        mean = z.mean(0, dtype=torch.float64)
        centre = mean.to(z.dtype)
        d = z - centre
        m2 = (d * d).sum(0, dtype=torch.float64) - len(z) * (mean - centre.double()) ** 2
        parts.append(torch.stack([torch.full_like(mean, len(z)), mean, m2]))
    parts = torch.stack(parts)
    n, mean, m2 = distributed.pooled_moments(*distributed.pool(parts[:, 0], parts[:, 1], parts[:, 2]))
    return mean, (m2 / n).clamp_min(0).sqrt()


def drain(items):
    """The items of a list, first to last, each dropped from it as it is taken (memory freed)."""
    items.reverse()
    while items:
        yield items.pop()


def per_unit(v, z):
    """A per-unit vector shaped to broadcast against ``z`` (units on axis 1), in ``z``'s dtype."""
    return v.to(z.dtype).view(1, -1, *([1] * (z.dim() - 2)))


class Repaired:
    """``finder`` (a one-segment path on a chain without BatchNorm) whose points are repaired;
    everything else is the finder's. The targets, the moments of the path's two ends, are measured
    once; a repaired point carries its training features (``Point.hidden``) when they were held."""

    def __init__(self, finder):
        self.finder = finder
        self.architecture = finder.template.architecture
        x = distributed.shard(finder.x_train)
        self.batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
        self.holds = self._holds(len(x))
        self._terms, self._outputs = None, None  # the segment's shared terms, their outputs
        self.targets = [self.walk(finder.layers(finder.point(float(t), "lin_connect").params))[0]
                        for t in (0, finder.end_time)]

    def __getattr__(self, name):
        return getattr(self.finder, name)

    @torch.no_grad()
    def _holds(self, rows):
        """For each hidden layer, whether its pre-activations on ``rows`` samples fit HOLD_BYTES."""
        f = self.finder
        h = self.batches[0][:1].to(device=f.device, dtype=f.dtype)
        holds = []
        for l, (W, b) in enumerate(f.layers(f.params1)[:-1]):
            z = linear_part(self.architecture.layers[l], h, W, b)
            holds.append(z.numel() * z.element_size() * rows <= HOLD_BYTES)
            h = f.template.step(l, h, W, b)
        return holds

    def inputs(self, layers, l, held):
        """The features entering layer ``l`` on each training batch: ``held``, or computed from
        the data through ``layers[:l]``."""
        if held is not None:
            yield from held
            return
        f = self.finder
        for xb in self.batches:
            h = xb.to(device=f.device, dtype=f.dtype)
            for i in range(l):
                h = f.template.step(i, h, *layers[i])
            yield h

    @torch.no_grad()
    def walk(self, layers, targets=None, first=None):
        """Every hidden layer's pre-activation moments ``[(mean, std)]``, layer by layer from the
        input; with ``targets`` (moments per layer), each layer is repaired to them before the next
        is measured. ``first``, when given, yields layer 0's pre-activations on each training batch
        (``first_layer``). Returns the moments measured, the (repaired) ``[W, b]`` pairs and the
        features entering the last layer on the training batches (None where not held)."""
        layers, found, held = [list(pair) for pair in layers], [], None
        for l, layer in enumerate(self.architecture.layers[:-1]):
            kept = []

            def pre_activations():
                zs = first() if l == 0 and first is not None else (
                    linear_part(layer, h, *layers[l]) for h in self.inputs(layers, l, held))
                for z in zs:
                    if self.holds[l]:
                        kept.append(z)
                    yield unit_rows(z)

            mean, std = moments(pre_activations())
            found.append((mean, std))
            scale, shift = (self.repair(layers[l], (mean, std), targets[l]) if targets else
                            (torch.ones_like(mean), torch.zeros_like(mean)))
            held = [after(layer, z.mul_(per_unit(scale, z)).add_(per_unit(shift, z)))
                    for z in drain(kept)] if self.holds[l] else None
        return found, layers, held

    @staticmethod
    def repair(pair, measured, target):
        """Fold the reset of one layer's moments into its ``[W, b]`` (in place); the per-unit
        ``(scale, shift)`` this applies to its pre-activations ``z``: ``scale * z + shift``."""
        (mean, std), (mean_target, std_target) = measured, target
        scale = torch.where(std > 0, std_target / std.clamp_min(1e-300), torch.ones_like(std))
        W, b = pair
        pair[0] = W * scale.to(W.dtype).view(-1, *([1] * (W.dim() - 1)))
        if b is None:
            return scale, torch.zeros_like(scale)
        pair[1] = (scale * (b.double() - mean) + mean_target).to(b.dtype)
        return scale, mean_target - scale * mean

    def targets_at(self, t):
        """Each hidden layer's target moments at time ``t``: the ends' moments interpolated."""
        s = t / self.finder.end_time
        return [tuple((1 - s) * a + s * b for a, b in zip(one, two))
                for one, two in zip(*self.targets)]

    @torch.no_grad()
    def first_layer(self, shared):
        """For a point whose layer 0 is ``Σ_k c_k`` of its segment's ``shared`` terms: a callable
        yielding its pre-activations on each training batch from the terms' outputs, computed once
        for the segment; None where the point shares nothing or the outputs do not fit."""
        if shared is None or shared.layer != 0:
            return None
        if self._terms is not shared.terms:
            self._terms, self._outputs = shared.terms, None
            f, layer = self.finder, self.architecture.layers[0]
            rows = sum(len(xb) for xb in self.batches)
            sample = term_outputs(layer, self.batches[0][:1].to(device=f.device, dtype=f.dtype),
                                  shared.terms)
            if nbytes(sample) * rows <= TERMS_BYTES:
                self._outputs = [term_outputs(layer, xb.to(device=f.device, dtype=f.dtype),
                                              shared.terms) for xb in self.batches]
        if self._outputs is None:
            return None
        return lambda: (combined(z, shared.coefficients) for z in self._outputs)

    def point(self, t, method, left=False):
        point = self.finder.point(t, method, left)
        _, layers, held = self.walk(self.finder.layers(point.params), self.targets_at(float(t)),
                                    self.first_layer(point.shared))
        hidden = None if held is None else (len(layers) - 1, held)
        return Point(join_layers(self.architecture, self.finder.names, layers), hidden=hidden)
