"""Step-wise paths: one butterfly or one layer moves at a time (METHODS.md, Tables 1-2, VGG16).

One engine covers Table 1 (one hidden layer with biases), Table 2 (bias-free deep nets) and the
VGG16 schemes; the finders differ only in a few choices:

* how the layer after the moving one follows: the adjusted butterfly ``A_{l+1}`` (B-fly) or a
  re-fit by weight adjustment against model 1's outputs at every point (WA);
* whether model 2's neurons are OT-matched first: per segment (butterflies, or incoming rows), or
  once for the whole path (PointFinderInverseWithBiasOT);
* whether the hidden bias is a column of the neuron samples (PointFinderWithBias), which matters
  for the arc mean only;
* the data: dense nets use every training sample at once; the conv finders use the 3x3 patches of
  the even-indexed training images, in batches, with Gram matrices accumulated over the batches.

The network's own ``layer_step`` applies one layer with given weights, so the engine never needs
to know whether a layer is dense or a convolution followed by pooling.
"""
import torch

from models import VGG16, LinearNoBias, LinearOneLayer
from .adjustment import StreamingLeastSquares, feature_matrix, outputs_of
from .base import Point, PointFinder
from .matching import butterfly, ot_permutation, split_butterfly

CACHE_BYTES = 3 * 2 ** 30  # model 2's features of the current WA segment are kept below this size


def dense_layers(params, has_bias):
    """Parameters in ``parameters()`` order as a list of ``[W, b]`` (``b`` None without biases)."""
    if has_bias:
        return [[params[i], params[i + 1]] for i in range(0, len(params), 2)]
    return [[W, None] for W in params]


def flat_params(layers):
    """Inverse of ``dense_layers``."""
    return [p for W, b in layers for p in (W, b) if p is not None]


def permute_hidden(layers, l, perm):
    """Permute hidden layer ``l``'s neurons: rows of ``W_l``, ``b_l`` and input channels (columns)
    of ``W_{l+1}``. The network computes the same function."""
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
    sample_stride = 1        # 2: every second training image (the conv finders)
    batch_images = None      # images per batch (None: all at once)

    def __init__(self, model1, model2, x_train, dtype=torch.float32):
        super().__init__(model1, model2, x_train, dtype)
        has_bias = self.params1[1].dim() == 1
        self.one = dense_layers(self.params1, has_bias)
        self.two = dense_layers(self.params2, has_bias)
        self.L = len(self.one)
        x = x_train[::self.sample_stride]
        size = self.batch_images or len(x)
        self.batches = [x[i:i + size].to(device=self.device, dtype=dtype)
                        for i in range(0, len(x), size)]
        self.hidden_reuse = self.sample_stride == 1  # features then cover the whole training set
        if self.prealign:
            self.two = permute_hidden(self.two, 0, self._rows_permutation(self.one[0], self.two[0]))
        self._perms, self._cache = {}, {}
        self._build_adjusted()

    def step(self, i, f, layer):
        """Input of layer ``i + 1`` from the input ``f`` of layer ``i`` with ``layer = [W, b]``."""
        return self.template.layer_step(i, f, *layer)

    @torch.no_grad()
    def _build_adjusted(self):
        """``A_0 = W_0^1``, ``A_i = adjust(W_i^1, f^1_i, f^2_i)`` (to ``L-2`` for B-fly, ``L-1`` for
        WA), ``A_{L-1} = W_{L-1}^2`` for B-fly, in one pass over the data for all layers at once.
        WA finders also keep segment 0's data and model 2's input of the last layer."""
        last = self.L - 1 if self.refit else self.L - 2
        solvers = {i: StreamingLeastSquares() for i in range(1, last + 1)}
        segment0, last_inputs = [], []
        for xb in self.batches:
            f1 = f2 = xb
            for i in range(1, last + 1):
                f1, f2 = self.step(i - 1, f1, self.one[i - 1]), self.step(i - 1, f2, self.two[i - 1])
                targets = outputs_of(self.one[i][0], feature_matrix(f1))
                solvers[i].add(feature_matrix(f2), targets)
                if i == 1 and self.refit:
                    segment0.append((xb, targets))
            if self.refit and self.hidden_reuse:
                last_inputs.append(f2)
        self.A = [self.one[0][0]] + [solvers[i].fit()[0].reshape(self.one[i][0].shape)
                                     for i in range(1, last + 1)]
        if not self.refit:
            self.A.append(self.two[-1][0])
        if self.refit:
            self._cache = {0: segment0}
        self.last_inputs = torch.cat(last_inputs) if last_inputs else None

    @classmethod
    def fits(cls, model):
        return isinstance(model, LinearNoBias)

    @classmethod
    def path_end(cls, model):
        """One segment per butterfly (B-fly: ``L - 1``) or per moved layer (WA: ``L``)."""
        layers = sum(1 for p in model.parameters() if p.dim() > 1)
        return layers if cls.refit else layers - 1

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

    @torch.no_grad()
    def _segment_data(self, l):
        """WA segment ``l``, per batch: model 2's input of layer ``l`` (``None`` when too large to
        keep: recomputed at each point) and the re-fit's targets, model 1's outputs of layer
        ``l + 1``. Only the current segment is kept."""
        if l not in self._cache:
            self._cache.clear()
            data, kept = [], 0
            for xb in self.batches:
                f2 = self._inputs(self.two, l, xb)
                f1 = self._inputs(self.one, l + 1, xb)
                kept += f2.numel() * f2.element_size()
                data.append((f2 if kept <= CACHE_BYTES else None,
                             outputs_of(self.one[l + 1][0], feature_matrix(f1))))
            self._cache[l] = data
        return self._cache[l]

    def _inputs(self, layers, l, x):
        for i in range(l):
            x = self.step(i, x, layers[i])
        return x

    def point(self, t, method, left=False):
        self.check_time(t)
        connect = self.connector(method)
        l, s = self.locate(t, self.end_time, left)
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

    @torch.no_grad()
    def _refit_point(self, l, s, connect):
        """WA: move layer ``l`` and re-fit layer ``l+1`` on the features it now receives; the last
        segment connects the adjusted last layer ``A_{L-1}`` with model 2's."""
        if l == self.L - 1:
            W = connect(self.A[l], self.two[l][0], s)
            b = self.one[l][1] if self.one[l][1] is None else connect(self.one[l][1], self.two[l][1], s)
            hidden = None if self.last_inputs is None else \
                (self.template.input_index(l), self.last_inputs)
            return Point(flat_params(self.two[:l] + [[W, b]]), hidden=hidden)
        one, two = self._matched(l)
        W = connect(one[0], two[0], s)
        b = None if one[1] is None else connect(one[1], two[1], s)
        solver, inputs = StreamingLeastSquares(), []
        for xb, (f2, targets) in zip(self.batches, self._segment_data(l)):
            g = self.step(l, self._inputs(self.two, l, xb) if f2 is None else f2, [W, b])
            solver.add(feature_matrix(g), targets)
            if self.hidden_reuse:
                inputs.append(g)
        W_next = solver.fit()[0].reshape(self.one[l + 1][0].shape)
        layers = self.two[:l] + [[W, b], [W_next, self.one[l + 1][1]]] + self.one[l + 2:]
        hidden = (self.template.input_index(l + 1), torch.cat(inputs)) if inputs else None
        return Point(flat_params(layers), hidden=hidden)


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


class ConvNet(StepWise):
    """VGG16 finders: 16 layers with biases; features are the 3x3 patches of the even-indexed
    training images (METHODS.md, "Feature maps"), processed in batches."""
    sample_stride = 2
    batch_images = 500

    @classmethod
    def fits(cls, model):
        return isinstance(model, VGG16)


class PointFinderStepWiseButterflyConvWBias(ConvNet):
    """Linear + B-fly / Arc + B-fly for VGG16; ends exactly at model 2 at ``t = 15`` (the last
    segment also connects the output bias, which the reference forgot)."""


class PointFinderStepWiseButterflyConvWBiasOT(ConvNet):
    """OT + B-fly for VGG16: butterflies ``[W_l, b_l, W_{l+1}]`` OT-matched per segment."""
    matching = "butterfly"


class PointFinderStepWiseButterflyConvWBiasWA(ConvNet):
    """Linear + WA / Arc + WA for VGG16; a 16th segment connects the re-fitted head to model 2's
    last layer (the reference stopped at model 2's trunk), so ``t = 16`` is model 2."""
    refit = True


class PointFinderStepWiseButterflyConvWBiasOTWA(PointFinderStepWiseButterflyConvWBiasWA):
    """OT + WA for VGG16: rows ``[W_l, b_l]`` of model 2 OT-matched to ``[A_l, b_l^1]`` first."""
    matching = "rows"
