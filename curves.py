"""Trained curves between two end-points (Garipov et al. 2018, "Loss surfaces, mode connectivity,
and fast ensembling of DNNs"; docs/METHODS.md, "Trained curves").

A curve has ``n`` bends ``θ_0, ..., θ_{n-1}``, each a full set of the model's parameters; its point
at ``t`` in [0, 1] is ``w(t) = Σ_j c_j(t) θ_j`` with the coefficients of its type:

* Bezier: ``c_j(t) = C(n-1, j) t^j (1-t)^(n-1-j)`` (Bernstein polynomials);
* PolyChain: ``c_j(t) = max(0, 1 - |t (n-1) - j|)``, the broken line through the bends, bend ``j``
  at ``t = j / (n-1)``.

Both sum to 1 at every ``t``; ``θ_0`` is the curve at ``t = 0``, ``θ_{n-1}`` at ``t = 1``; with two
bends both are the straight line. The network at ``t`` is the ordinary model called with ``w(t)``
through ``torch.func.functional_call``, so every model of the registry has curves without a
curve twin of its layers, and gradients reach each bend weighted by its coefficient.
"""
import copy
import math

import torch
from torch import nn
from torch.func import functional_call

import models
import utils
from procedures import TRAINED_CURVES as CURVES
from utils import UserError


def bezier(t, n):
    """The ``n`` Bernstein coefficients at ``t``."""
    return [math.comb(n - 1, j) * t ** j * (1 - t) ** (n - 1 - j) for j in range(n)]


def polychain(t, n):
    """The ``n`` coefficients of the broken line through the bends at ``t``."""
    return [max(0.0, 1.0 - abs(t * (n - 1) - j)) for j in range(n)]


COEFFICIENTS = {"Bezier": bezier, "PolyChain": polychain}


def check_curve(kind, num_bends):
    """One line for an unknown curve type or too few bends."""
    if kind not in COEFFICIENTS:
        raise UserError(f"unknown curve '{kind}'; choose one of: {', '.join(CURVES)}")
    if num_bends < 2:
        raise UserError(f"--num_bends={num_bends}: a curve needs at least 2 bends (its two ends; 3 "
                        f"gives one free bend)")


class Curve(nn.Module):
    """The bends of a curve of ``model`` as parameters (``bends.<j * P + i>``: parameter ``i`` of
    bend ``j``, ``P`` parameters per bend); fixed bends do not require gradients.

    ``forward(x)`` draws ``t ~ U[0, 1)`` from ``generator`` (one per call, i.e. per mini-batch) and
    runs the model with the weights at ``t``. With ``weight_decay`` (``wd``) the backward pass adds
    ``wd · w(t)`` to the gradient of ``w(t)``: the gradient of ``0.5 wd ||w(t)||²`` added to the
    loss, the weight decay of curve training, without computing the norm. The model itself is not
    a submodule: its own parameters are only a template; its buffers (BatchNorm statistics) are
    used as they are.
    """

    def __init__(self, model, kind, num_bends, fixed=(), weight_decay=0.0):
        super().__init__()
        check_curve(kind, num_bends)
        self.kind, self.num_bends, self.weight_decay = kind, num_bends, weight_decay
        self.names = [name for name, _ in model.named_parameters()]
        self._model = (model,)
        self.bends = nn.ParameterList(nn.Parameter(p.detach().clone(), requires_grad=j not in fixed)
                                      for j in range(num_bends) for p in model.parameters())
        self.generator = torch.Generator()

    @property
    def model(self):
        return self._model[0]

    def _apply(self, fn, *args, **kwargs):
        """``.to()``, ``.double()``, ...: the model's buffers follow the bends."""
        self.model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def bend(self, j):
        """The parameters of bend ``j``, in ``model.parameters()`` order."""
        size = len(self.names)
        return list(self.bends[j * size:(j + 1) * size])

    def coefficients(self, t):
        return COEFFICIENTS[self.kind](float(t), self.num_bends)

    def weights(self, t):
        """``w(t) = Σ_j c_j(t) θ_j``: the model's parameters at ``t``, in ``model.parameters()``
        order, each a new tensor (``Combination``); with gradients enabled, a backward pass gives
        each free bend ``c_j (g + wd · w)``.

        The fixed bends are summed first, then the free ones, each group in bend order (the order
        the curves of docs/RESULTS.md were trained with); a bend of coefficient 0 is skipped, so
        that an end of coefficient 1 is returned exactly (``t = 0`` and ``t = 1``)."""
        c, size = self.coefficients(t), len(self.names)
        order = sorted(range(self.num_bends), key=lambda j: self.bends[j * size].requires_grad)
        decay = self.weight_decay if torch.is_grad_enabled() else 0.0
        return [Combination.apply([c[j] for j in order], decay,
                                  *[self.bends[j * size + i] for j in order]) for i in range(size)]

    def forward(self, x, t=None):
        if t is None:
            t = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        return functional_call(self.model, dict(zip(self.names, self.weights(t))), (x,))

    def set_bend(self, j, params):
        """Copy ``params`` (``model.parameters()`` order) into bend ``j``."""
        with torch.no_grad():
            for bend, value in zip(self.bend(j), params):
                bend.copy_(value)

    def init_linear(self):
        """Every interior bend on the straight line between the ends: ``θ_j = (1 - j/(n-1)) θ_0 +
        j/(n-1) θ_{n-1}`` (the default initialisation of Garipov et al.)."""
        n = self.num_bends
        first, last = self.bend(0), self.bend(n - 1)
        for j in range(1, n - 1):
            s = j / (n - 1)
            self.set_bend(j, [(1 - s) * a + s * b for a, b in zip(first, last)])


#: the slice of a parameter tensor that ``Combination`` carries through all its terms at once: small
#: enough to stay in the processor's cache between them, large enough to keep the calls few
CHUNK_BYTES = 4 * 2 ** 20


def chunks(tensor):
    """Consecutive slices of ``tensor.numel()`` elements, ``CHUNK_BYTES`` each (the last shorter)."""
    step = max(1, CHUNK_BYTES // tensor.element_size())
    return [slice(start, start + step) for start in range(0, tensor.numel(), step)]


class Combination(torch.autograd.Function):
    """``w = Σ_k c_k θ_k`` over the bends ``θ_k`` of one parameter tensor, summed in the order
    given, terms of coefficient 0 skipped. Backward: with ``g`` the gradient reaching ``w``, each
    bend that needs a gradient gets ``c_k (g + wd · w)``, its share of the loss's gradient plus
    that of ``0.5 wd ||w||²``, the weight decay of curve training acting on ``w(t)`` (its norm
    never computed).

    Both run slice by slice (``chunks``): every term of a slice while it is in the cache, so that
    each bend, ``g`` and ``w`` cross the memory bus once per step. The arithmetic of each element,
    and so every bit, is that of whole-tensor operations in the same order (tests/test_curves.py):
    on large nets these passes are what a curve step adds to an ordinary one
    (docs/PERFORMANCE.md)."""

    @staticmethod
    def forward(ctx, coefficients, weight_decay, *bends):
        out = torch.empty_like(bends[0], memory_format=torch.contiguous_format)
        terms = [(theta.reshape(-1), c) for theta, c in zip(bends, coefficients) if c != 0]
        flat = out.view(-1)
        if not terms:
            flat.zero_()
        for part in chunks(out) if terms else ():  # the first term makes the slice, the others add
            torch.mul(terms[0][0][part], terms[0][1], out=flat[part])
            for theta, c in terms[1:]:
                flat[part].add_(theta[part], alpha=c)
        ctx.coefficients, ctx.weight_decay = coefficients, weight_decay
        ctx.save_for_backward(out if weight_decay else None)
        return out

    @staticmethod
    def backward(ctx, g):
        out, = ctx.saved_tensors
        needed = [(k, c) for k, c in enumerate(ctx.coefficients) if ctx.needs_input_grad[2 + k]]
        grads = [None] * len(ctx.coefficients)
        for k, _ in needed:
            grads[k] = torch.empty_like(g, memory_format=torch.contiguous_format)
        flat_g = g.reshape(-1)
        for part in chunks(g):
            total = flat_g[part]
            if out is not None:  # g + wd w, made in the last bend's gradient, scaled last
                total = torch.add(total, out.view(-1)[part], alpha=ctx.weight_decay,
                                  out=grads[needed[-1][0]].view(-1)[part])
            for k, c in needed:
                torch.mul(total, c, out=grads[k].view(-1)[part])
        return (None, None, *grads)


@torch.no_grad()
def network(curve, t):
    """A copy of the curve's model carrying ``w(t)`` (its BatchNorm statistics still to be
    recomputed for that point)."""
    net = copy.deepcopy(curve.model)
    for p, w in zip(net.parameters(), curve.weights(t)):
        p.copy_(w)
    return net.eval()


def load_curve(path, model_name, num_classes, input_shape, dataset):
    """The curve in ``path`` (a checkpoint of ``train.py --curve``) and the checkpoint, checked to be
    a curve of ``model_name`` trained on ``dataset``."""
    what = f"--curve_checkpoint '{path}'"
    checkpoint = utils.load_checkpoint(path, "--curve_checkpoint")
    kind = checkpoint.get("curve")
    if kind not in COEFFICIENTS or not isinstance(checkpoint.get("num_bends"), int):
        raise UserError(f"{what} is not a curve; give a checkpoint of train.py --curve=Bezier (or "
                        f"PolyChain)")
    for key, ours in (("model", model_name), ("dataset", dataset)):
        if checkpoint.get(key, ours) != ours:
            raise UserError(f"{what} is a curve of {key} {checkpoint[key]}, not of --{key}={ours}; "
                            f"give the curve trained for this {key}")
    n = checkpoint["num_bends"]
    fixed = [j for j, key in ((0, "fix_start"), (n - 1, "fix_end")) if checkpoint.get(key)]
    curve = Curve(models.build_model(model_name, num_classes, input_shape), kind, n, fixed)
    utils.load_model_state(curve, checkpoint, path, model_name)
    return curve, checkpoint
