"""Step-wise paths: one neuron set, butterfly or layer moves at a time (docs/METHODS.md, Tables
1-2, VGG16).

One engine runs every step-wise procedure of the table (``procedures.PROCEDURES``); a procedure
chooses its parts:

* the schedule: "neurons" and "butterflies" move hidden layer ``l``'s butterfly in segment ``l``
  ("neurons" with the bias inside the sample, which matters for the arc's mean only); "layers"
  moves layer ``l`` in segment ``l``;
* the adjustment: "butterfly" (model 2's side of a segment uses the adjusted ``A_{l+1}``, B-fly),
  "refit" (layer ``l + 1`` re-fitted by weight adjustment against model 1's outputs at every point,
  WA), or none;
* the matching (``matching.MATCHINGS``): none, per segment, or once before the path.

The data follow from the architecture description: dense chains use every training sample at
once; chains with convolutions use the 3x3 patches of the even-indexed training images, in
batches, with Gram matrices accumulated over the batches. Under ``torchrun`` each rank takes its
shard of those samples (``distributed.shard``) and the Gram matrices are summed over the ranks
(``StreamingLeastSquares.fit``); the features a point carries (``Point.hidden``) are then those of
the rank's shard of the training set, the rows its evaluation uses. ``model.step`` applies one layer with
given weights, so the engine never needs to know whether a layer is dense or a convolution.
"""
import torch

import distributed
from connectors import combine
from segment_evaluation import activation, blocks, nbytes, rows_of, term_outputs
from .adjustment import WeightAdjustment, adjustment_targets
from .base import Point, PointFinder, Shared, connector, join_layers, layer_terms
from .matching import MATCHINGS, butterfly, split_butterfly

CACHE_BYTES = 3 * 2 ** 30  # the data of the current WA segment are kept below this size
CONV_BATCH = 500           # images per batch for chains with convolutions
TERMS_BYTES = 2 ** 31      # the terms' outputs of the current WA segment are kept below this size
FIT_ROWS = 16384          # rows of features a WA point forms at once from its segment's data


def permute_hidden(layers, l, perm):
    """Permute hidden layer ``l``'s neurons: rows of ``W_l``, ``b_l`` and input channels (columns)
    of ``W_{l+1}``. The network computes the same function."""
    layers = [list(pair) for pair in layers]
    W, b = layers[l]
    layers[l] = [W[perm], None if b is None else b[perm]]
    layers[l + 1][0] = layers[l + 1][0][:, perm]
    return layers


def terms_bytes(inputs, terms):
    """The memory the outputs of a dense layer's ``terms`` on ``inputs`` would take."""
    return len(inputs) * sum(len(W) + (len(b) if b is not None and len(b) != len(W) else 0)
                             for W, b in terms) * inputs.element_size()


class StepWise(PointFinder):
    """The step-wise engine (see the module docstring)."""

    def __init__(self, procedure, model1, model2, x_train, dtype=torch.float32):
        super().__init__(procedure, model1, model2, x_train, dtype)
        self.architecture = self.template.architecture
        self.one, self.two = self.layers(self.params1), self.layers(self.params2)
        self.L = len(self.one)
        self.refit = procedure.adjustment == "refit"
        self.bias_in_sample = procedure.schedule == "neurons"
        self.matching = MATCHINGS[procedure.matching] if procedure.matching else None
        conv = "conv" in self.architecture.kinds
        x = distributed.shard(x_train[::2] if conv else x_train)  # this rank's rows under torchrun
        size = CONV_BATCH if conv else len(x)
        self.batches = [x[i:i + size].to(device=self.device, dtype=dtype)
                        for i in range(0, len(x), size)]
        self.hidden_reuse = not conv  # features then cover the whole training set
        if self.matching is not None and self.matching.once:
            self._match_up_front()
        self._perms, self._data, self._data_key = {}, None, None
        self._terms = self._terms_key = None
        self._build_adjusted()

    def _match_up_front(self):
        """Model 2 replaced by its twin with every hidden layer matched, in order, to model 1's."""
        for l in range(self.L - 1):
            one = (*self.one[l], self.one[l + 1][0])
            two = (*self.two[l], self.two[l + 1][0])
            self.two = permute_hidden(self.two, l, self.matching.permutation(one, two))

    def step(self, i, f, layer):
        """Input of layer ``i + 1`` from the input ``f`` of layer ``i`` with ``layer = [W, b]``."""
        return self.template.step(i, f, *layer)

    @torch.no_grad()
    def _build_adjusted(self):
        """``A_0 = W_0^1``, ``A_i = adjust(W_i^1, f^1_i, f^2_i)`` (to ``L-2`` with the butterfly
        adjustment, ``L-1`` with the re-fit), ``A_{L-1} = W_{L-1}^2`` otherwise, in one pass over
        the data for all layers at once; without an adjustment ``A_i = W_i^1``. Re-fitting
        finders also keep segment 0's targets."""
        last = {"butterfly": self.L - 2, "refit": self.L - 1}.get(self.procedure.adjustment, 0)
        fits = {i: WeightAdjustment(self.one[i][0].shape) for i in range(1, last + 1)}
        self._targets0 = []
        for xb in self.batches:
            f1 = f2 = xb
            for i in range(1, last + 1):
                f1, f2 = self.step(i - 1, f1, self.one[i - 1]), self.step(i - 1, f2, self.two[i - 1])
                targets = adjustment_targets(self.one[i][0], f1)
                fits[i].add(f2, targets)
                if i == 1 and self.refit:
                    self._targets0.append(targets)
        self.A = [self.one[0][0]] + [fits[i].fit()[0] for i in range(1, last + 1)]
        if not self.refit:
            self.A += [W for W, _ in self.one[last + 1:-1]] + [self.two[-1][0]]

    def _pair(self, l):
        """Segment ``l``'s moving parts ``(W_l, b_l, W_{l+1})``: model 1's side and model 2's side."""
        next_one = self.one[l + 1][0] if l + 1 < self.L else None
        next_two = self.A[l + 1] if l + 1 < len(self.A) else None
        return (self.A[l], self.one[l][1], next_one), (self.two[l][0], self.two[l][1], next_two)

    def _matched(self, l):
        """``_pair(l)`` with model 2's side matched per segment; each segment's is solved once."""
        one, two = self._pair(l)
        if self.matching is None or self.matching.once:
            return one, two
        if l not in self._perms:
            self._perms[l] = self.matching.permutation(one, two)
        perm = self._perms[l]
        W, b, W_next = two
        return one, (W[perm], None if b is None else b[perm],
                     None if W_next is None else W_next[:, perm])

    @torch.no_grad()
    def _segment_data(self, l, method, terms):
        """WA segment ``l`` under ``method``, per batch ``(z, f2, targets)``: for dense chains
        layer ``l``'s affine map of each of the segment's ``terms`` on model 2's input of layer
        ``l`` (``z``; the point's layer ``l`` is then their combination) where they fit in
        ``TERMS_BYTES``, else (and for conv chains, whose terms' outputs would be several times
        larger) that input itself (``f2``), each None once the kept data pass ``CACHE_BYTES``
        (then recomputed at each point); and the re-fit's targets, model 1's outputs of layer
        ``l + 1``. Only the current segment's are kept."""
        if self._data_key != (l, method):
            self._data, kept = [], 0  # the previous segment's data go first
            for k, xb in enumerate(self.batches):
                targets = (self._targets0[k] if l == 0 else
                           adjustment_targets(self.one[l + 1][0], self._inputs(self.one, l + 1, xb)))
                z = f2 = None
                if kept <= CACHE_BYTES:
                    f2 = self._inputs(self.two, l, xb)
                    if self.hidden_reuse and terms_bytes(f2, terms) <= TERMS_BYTES:
                        z, f2 = term_outputs(self.architecture.layers[l], f2, terms), None
                    kept += nbytes(z) if z is not None else f2.numel() * f2.element_size()
                    if kept > CACHE_BYTES:
                        z = f2 = None
                self._data.append((z, f2, targets))
            self._data_key = (l, method)
        return self._data

    def _inputs(self, layers, l, x):
        for i in range(l):
            x = self.step(i, x, layers[i])
        return x

    def point(self, t, method, left=False):
        self.check_time(t)
        l, s = self.locate(t, self.end_time, left)
        if self.refit:
            return self._refit_point(l, s, method)
        return self._butterfly_point(l, s, method)

    def _segment_terms(self, l, method, make):
        """``make()``, the terms of segment ``l`` under ``method``, made once; only the current
        segment's are kept."""
        if self._terms_key != (l, method):
            self._terms, self._terms_key = make(), (l, method)
        return self._terms

    def _params(self, layers):
        return join_layers(self.architecture, self.names, layers)

    def _butterfly_point(self, l, s, method):
        """B-fly: ``[W^2_{<l}, connect(A_l, W^2_l), connect(W^1_{l+1}ᵀ, A_{l+1}ᵀ)ᵀ, W^1_{>l+1}]``."""
        connect = connector(method)
        one, two = self._matched(l)
        samples, terms = self._segment_terms(l, method, lambda: self._butterfly_terms(l, connect))
        c = connect.coefficients(s)
        W, b, W_next = split_butterfly(combine(samples, c), *one, self.bias_in_sample)
        if not self.bias_in_sample and one[1] is not None:
            b = connect(one[1], two[1], s)
        b_next = self.one[l + 1][1]
        if l + 1 == self.L - 1 and b_next is not None:  # the last segment also moves the output bias
            b_next = connect(b_next, self.two[l + 1][1], s)
        layers = self.two[:l] + [[W, b], [W_next, b_next]] + self.one[l + 2:]
        return Point(self._params(layers), shared=Shared(l, l, terms, c))

    def _butterfly_terms(self, l, connect):
        """Segment ``l``'s butterfly terms (``Connector.terms``) and the terms ``(W_k, b_k)`` of
        its layer ``l`` they hold."""
        one, two = self._matched(l)
        samples = connect.terms(butterfly(*one, self.bias_in_sample),
                                butterfly(*two, self.bias_in_sample))
        if self.bias_in_sample or one[1] is None:
            terms = tuple(split_butterfly(T, *one, self.bias_in_sample)[:2] for T in samples)
        else:
            biases = connect.terms(one[1], two[1])
            terms = tuple((split_butterfly(T, one[0], None, one[2])[0], b)
                          for T, b in zip(samples, biases))
        return samples, terms

    @torch.no_grad()
    def _refit_point(self, l, s, method):
        """WA: move layer ``l`` and re-fit layer ``l+1`` on the features it now receives; the last
        segment connects the adjusted last layer ``A_{L-1}`` with model 2's (its points share model
        2's earlier layers, run once per batch for the whole segment by ``segment_evaluation``, so
        nothing is kept for them)."""
        connect = connector(method)
        c = connect.coefficients(s)
        if l == self.L - 1:
            self._data = self._data_key = None  # the previous segment's data go
            terms = self._segment_terms(l, method, lambda: layer_terms(
                connect, (self.A[l], self.one[l][1]), self.two[l]))
            W, b = self._combined(terms, c)
            return Point(self._params(self.two[:l] + [[W, b]]), shared=Shared(l, l, terms, c))
        one, two = self._matched(l)
        terms = self._segment_terms(l, method, lambda: layer_terms(connect, one[:2], two[:2]))
        W, b = self._combined(terms, c)
        fit, inputs, kept = WeightAdjustment(self.one[l + 1][0].shape), [], None
        for xb, (z, f2, targets) in zip(self.batches, self._segment_data(l, method, terms)):
            if z is not None:  # the features in blocks of rows, never all at once
                kept = z
                for rows in blocks(len(targets), FIT_ROWS):
                    fit.add(activation(self.architecture.layers[l], rows_of(z, rows), c), targets[rows])
                continue
            g = self.step(l, self._inputs(self.two, l, xb) if f2 is None else f2, [W, b])
            fit.add(g, targets)
            if self.hidden_reuse:
                inputs.append(g)
        layers = self.two[:l] + [[W, b], [fit.fit()[0], self.one[l + 1][1]]] + self.one[l + 2:]
        return Point(self._params(layers), hidden=(l + 1, inputs) if inputs else None,
                     shared=Shared(l, l, terms, c, train_terms=kept))

    @staticmethod
    def _combined(terms, c):
        """The weight and bias ``Σ_k c_k (W_k, b_k)`` of a layer given by its terms."""
        W = combine([W for W, _ in terms], c)
        return W, None if terms[0][1] is None else combine([b for _, b in terms], c)
