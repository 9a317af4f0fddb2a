"""Step-wise paths for dense ReLU nets: one butterfly or one layer moves at a time.

One engine covers Table 1 (one hidden layer with biases, two layers) and Table 2 (bias-free deep
nets); the finders differ only in three choices (METHODS.md, Table 1 and Table 2):

* how the layer after the moving one follows: the adjusted butterfly ``A_{l+1}`` (B-fly) or a
  re-fit by weight adjustment against model 1's outputs at every point (WA);
* whether model 2's neurons are OT-matched first: per segment (butterflies, or incoming rows), or
  once for the whole path (PointFinderInverseWithBiasOT);
* whether the hidden bias is a column of the neuron samples (PointFinderWithBias), which matters
  for the arc mean only.
"""
import torch

from models import LinearNoBias, LinearOneLayer
from .adjustment import adjust, fit_outgoing
from .base import Point, PointFinder
from .matching import butterfly, ot_permutation, split_butterfly


def dense_layers(params, has_bias):
    """Parameters in ``parameters()`` order as a list of ``[W, b]`` (``b`` None without biases)."""
    if has_bias:
        return [[params[i], params[i + 1]] for i in range(0, len(params), 2)]
    return [[W, None] for W in params]


def flat_params(layers):
    """Inverse of ``dense_layers``."""
    return [p for W, b in layers for p in (W, b) if p is not None]


def next_features(f, W, b):
    """Input of the next layer: ``relu(f Wᵀ + b)``."""
    out = f @ W.T if b is None else torch.addmm(b, f, W.T)
    return out.clamp_(min=0)


def permute_hidden(layers, l, perm):
    """Permute hidden layer ``l``'s neurons: rows of ``W_l``, ``b_l`` and columns of ``W_{l+1}``.
    The network computes the same function."""
    layers = [list(pair) for pair in layers]
    W, b = layers[l]
    layers[l] = [W[perm], None if b is None else b[perm]]
    layers[l + 1][0] = layers[l + 1][0][:, perm]
    return layers


class StepWise(PointFinder):
    """The step-wise engine (see the module docstring); subclasses set the class attributes."""

    refit = False            # WA: re-fit layer l+1 at every point; else B-fly with A_{l+1}
    matching = None          # per-segment OT: None, "butterfly" or "rows" (incoming weights)
    match_bias = True        # the bias is part of the OT samples
    prealign = False         # OT model 2's hidden neurons (rows of W_0) once, before anything
    bias_in_sample = False   # the hidden bias is connected as a column of the neuron samples

    def __init__(self, model1, model2, x_train, dtype=torch.float32):
        super().__init__(model1, model2, x_train, dtype)
        has_bias = self.params1[1].dim() == 1
        self.one = dense_layers(self.params1, has_bias)
        self.two = dense_layers(self.params2, has_bias)
        self.X = x_train.to(device=self.device, dtype=dtype).flatten(1)
        self.L = len(self.one)
        if self.prealign:
            self.two = permute_hidden(self.two, 0, self._rows_permutation(self.one[0], self.two[0]))
        # Adjusted weights A_i = adjust(W_i^1, f^1_i, f^2_i) (METHODS.md, Table 2). WA finders
        # also need model 2's input of the last layer, and segment 0's targets f^1_1 W_1^1ᵀ.
        last_adjusted = self.L - 1 if self.refit else self.L - 2
        self.A = [self.one[0][0]]
        self._perms, self._cache = {}, {}
        f1 = f2 = self.X
        for i in range(1, last_adjusted + 1):
            f1, f2 = next_features(f1, *self.one[i - 1]), next_features(f2, *self.two[i - 1])
            self.A.append(adjust(self.one[i][0], f1, f2))
            if i == 1 and self.refit:
                self._cache[0] = (self.X, f1 @ self.one[1][0].T)
        if not self.refit:
            self.A.append(self.two[-1][0])
        self.last_features = f2 if self.refit else None

    @classmethod
    def fits(cls, model):
        return isinstance(model, LinearNoBias)

    @property
    def segments(self):
        return self.L if self.refit else self.L - 1

    @property
    def end_time(self):
        return self.segments

    @property
    def discontinuities(self):
        return tuple(range(1, self.L - 1)) if self.refit else ()

    def _rows_permutation(self, one, two):
        """OT of model 2's rows (incoming weights, with the bias if ``match_bias``) to model 1's."""
        return ot_permutation(butterfly(*one, None, self.match_bias),
                              butterfly(*two, None, self.match_bias))

    def _pair(self, l):
        """Segment ``l``'s moving parts ``(W_l, b_l, W_{l+1})``: model 1's side and model 2's side."""
        next_one = self.one[l + 1][0] if l + 1 < self.L else None
        next_two = self.A[l + 1] if l + 1 < len(self.A) else None
        return (self.A[l], self.one[l][1], next_one), (self.two[l][0], self.two[l][1], next_two)

    def _matched(self, l):
        """``_pair(l)`` with model 2's side OT-matched; each segment's OT is solved once."""
        one, two = self._pair(l)
        if self.matching is None:
            return one, two
        if l not in self._perms:
            self._perms[l] = (ot_permutation(butterfly(*one), butterfly(*two))
                              if self.matching == "butterfly"
                              else self._rows_permutation(one[:2], two[:2]))
        perm = self._perms[l]
        W, b, W_next = two
        return one, (W[perm], None if b is None else b[perm],
                     None if W_next is None else W_next[:, perm])

    def _segment_features(self, l):
        """WA segment ``l``: model 2's input of layer ``l`` and model 1's outputs of layer ``l+1``
        (the targets of the re-fit), cached for the current segment."""
        if l not in self._cache:
            self._cache.clear()
            f1 = f2 = self.X
            for i in range(l):
                f2 = next_features(f2, *self.two[i])
            for i in range(l + 1):
                f1 = next_features(f1, *self.one[i])
            self._cache[l] = (f2, f1 @ self.one[l + 1][0].T)
        return self._cache[l]

    def point(self, t, method, left=False):
        self.check_time(t)
        connect = self.connector(method)
        l, s = self.locate(t, self.segments, left)
        if self.refit:
            return self._refit_point(l, s, connect)
        return self._butterfly_point(l, s, connect)

    def _butterfly_point(self, l, s, connect):
        """B-fly: ``[W^2_{<l}, connect(A_l, W^2_l), connect(W^1_{l+1}ᵀ, A_{l+1}ᵀ)ᵀ, W^1_{>l+1}]``."""
        one, two = self._matched(l)
        moved = connect(butterfly(*one, self.bias_in_sample), butterfly(*two, self.bias_in_sample), s)
        W, b, W_next = split_butterfly(moved, *one, self.bias_in_sample)
        if not self.bias_in_sample and one[1] is not None:
            b = connect(one[1], two[1], s)
        b_next = self.one[l + 1][1]
        if l + 1 == self.L - 1 and b_next is not None:  # the last segment also moves the output bias
            b_next = connect(b_next, self.two[l + 1][1], s)
        layers = self.two[:l] + [[W, b], [W_next, b_next]] + self.one[l + 2:]
        return Point(flat_params(layers))

    def _refit_point(self, l, s, connect):
        """WA: move layer ``l`` and re-fit layer ``l+1`` on the features it now receives; the last
        segment connects the adjusted last layer ``A_{L-1}`` with model 2's."""
        if l == self.L - 1:
            W = connect(self.A[l], self.two[l][0], s)
            b = self.one[l][1] if self.one[l][1] is None else connect(self.one[l][1], self.two[l][1], s)
            return Point(flat_params(self.two[:l] + [[W, b]]), hidden=(l - 1, self.last_features))
        one, two = self._matched(l)
        W = connect(one[0], two[0], s)
        b = None if one[1] is None else connect(one[1], two[1], s)
        f2, targets = self._segment_features(l)
        g = next_features(f2, W, b)
        W_next = fit_outgoing(targets, g)
        layers = self.two[:l] + [[W, b], [W_next, self.one[l + 1][1]]] + self.one[l + 2:]
        return Point(flat_params(layers), hidden=(l, g))


class PointFinderStepWiseButterfly(StepWise):
    """Linear + B-fly / Arc + B-fly (Table 2); end time ``L - 1``, continuous at integer ``t``."""


class PointFinderStepWiseTransportation(StepWise):
    """OT + B-fly (Table 2): butterflies OT-matched per segment; continuous as a function."""
    matching = "butterfly"


class PointFinderStepWiseInverse(StepWise):
    """Linear + WA / Arc + WA (Table 2); end time ``L``; jumps at ``t = 1 … L-2`` as the reference."""
    refit = True


class PointFinderStepWiseInverseOT(StepWise):
    """OT + WA (Table 2): rows of ``W_l^2`` OT-matched to ``A_l`` in every non-last segment."""
    refit = True
    matching = "rows"


class OneHiddenLayer(StepWise):
    """Table 1 finders: the step-wise engine on the two layers of a LinearOneLayer net."""

    @classmethod
    def fits(cls, model):
        return isinstance(model, LinearOneLayer)


class PointFinderWithBias(OneHiddenLayer):
    """Linear / Arc (Table 1): connect neuron samples ``[W0[j], b0[j], W1[:, j]]``; end time 1."""
    bias_in_sample = True


class PointFinderTransportation(PointFinderWithBias):
    """OT (Table 1): OT-match model 2's neuron samples to model 1's, then connect; end time 1."""
    matching = "butterfly"


class PointFinderInverseWithBias(OneHiddenLayer):
    """Linear + WA / Arc + WA (Table 1): move the hidden layer re-fitting ``W1``, then connect the
    adjusted ``W1`` to model 2's; end time 2."""
    refit = True


class PointFinderInverseWithBiasOT(PointFinderInverseWithBias):
    """OT + WA (Table 1): permute model 2's hidden neurons by OT on the rows of ``W0`` (no bias)
    first, then as PointFinderInverseWithBias; ends at the permuted model 2."""
    prealign = True
    match_bias = False
