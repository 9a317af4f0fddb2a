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
        if len(list(model.named_parameters(remove_duplicate=False))) != len(self.names):
            raise ValueError("a curve needs a model without shared (tied) parameters")
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
        c, size, bends = self.coefficients(t), len(self.names), list(self.parameters())
        terms = sorted(([bends[j * size:(j + 1) * size], c[j]] for j in range(self.num_bends)),
                       key=lambda term: term[0][0].requires_grad)
        trained = [term for term in terms if term[0][0].requires_grad and torch.is_grad_enabled()]
        constant = terms[:len(terms) - len(trained)]
        return list(Combination.apply(constant, [c for _, c in trained], self.weight_decay,
                                      *[p for theta, _ in trained for p in theta]))

    def forward(self, x, t=None):
        if t is None:
            t = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        return functional_call(self.model, dict(zip(self.names, self.weights(t))), (x,),
                               tie_weights=False)  # none to tie (checked in __init__); faster

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


def chunks(*tensors):
    """Tensors of as many elements cut into corresponding slices of ``CHUNK_BYTES`` (flattened; the
    last shorter): a list of tuples of views, or the tensors themselves when they fit in one."""
    if fits(tensors[0]):
        return [tensors]
    step = _slice_length(tensors[0])
    flat = [t.reshape(-1) for t in tensors]
    return [tuple(f[start:start + step] for f in flat) for start in range(0, tensors[0].numel(), step)]


def _slice_length(tensor):
    """Elements of ``tensor`` per slice."""
    return max(1, CHUNK_BYTES // tensor.element_size())


def fits(tensor):
    """Whether ``tensor`` fits in one slice of ``chunks``."""
    return tensor.numel() <= _slice_length(tensor)


class Combination(torch.autograd.Function):
    """``w_i = Σ_k c_k θ_{k,i}`` for every parameter tensor ``i`` of the model: first the
    ``constant`` terms (``[θ_k, c_k]``, no gradient), then the ``trained`` bends (the inputs, as
    many tensors each as ``w``, with coefficients ``coefficients``), each group in the order given;
    terms of coefficient 0 are skipped. One autograd node for all the tensors, whose inputs are only
    the bends that train, so that a step pays Python's and the autograd engine's costs once, not
    per tensor or per fixed bend (the costs that dominate on small nets; docs/PERFORMANCE.md).
    Backward: with ``g_i`` the gradient reaching ``w_i``, each trained bend gets ``c_k (g_i + wd ·
    w_i)``, its share of the loss's gradient plus that of ``0.5 wd ||w||²``, the weight decay of
    curve training acting on ``w(t)`` (its norm never computed).

    The tensors that fit in one slice (``fits``) are handled together, one ``torch._foreach_*`` call
    per operation for all of them; larger ones slice by slice (``chunks``), every term of a slice
    while it is in the cache, so that each bend, ``g`` and ``w`` cross the memory bus once per
    step. The arithmetic of each element, and so every bit, is that of whole-tensor operations in
    the same order (tests/test_curves.py): on large nets these passes are what a curve step adds
    to an ordinary one."""

    @staticmethod
    def forward(ctx, constant, coefficients, weight_decay, *trained):
        size = len(constant[0][0]) if constant else len(trained) // len(coefficients)
        terms = constant + [[trained[k * size:(k + 1) * size], c] for k, c in enumerate(coefficients)]
        # the coefficients sum to 1: at least one term is left
        thetas, cs = zip(*[(theta, c) for theta, c in terms if c != 0])
        whole = [i for i in range(size) if fits(thetas[0][i])]
        outs = dict(zip(whole, _combine_whole([[theta[i] for i in whole] for theta in thetas], cs)))
        outs = [outs[i] if i in outs else _combine([theta[i] for theta in thetas], cs)
                for i in range(size)]
        ctx.coefficients, ctx.weight_decay = coefficients, weight_decay
        ctx.save_for_backward(*(outs if weight_decay and trained else ()))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *gs):
        ws, coefficients = ctx.saved_tensors or [None] * len(gs), ctx.coefficients
        grads = [[None] * len(gs) for _ in coefficients]
        whole = [i for i, g in enumerate(gs) if fits(g)]
        for k, part in enumerate(_gradients_whole([gs[i] for i in whole], [ws[i] for i in whole],
                                                  ctx.weight_decay, coefficients)):
            for i, grad in zip(whole, part):
                grads[k][i] = grad
        for i, (g, w) in enumerate(zip(gs, ws)):
            if grads[0][i] is None:
                for k, grad in enumerate(_gradients(g, w, ctx.weight_decay, coefficients)):
                    grads[k][i] = grad
        return (None, None, None, *[grad for part in grads for grad in part])


def _combine_whole(thetas, coefficients):
    """``Σ_k c_k θ_k`` for several tensors at once (``thetas[k]``: term ``k``'s tensors), one call
    per term."""
    if not thetas[0]:
        return []
    out = torch._foreach_mul(thetas[0], coefficients[0])  # the first term makes them, the others add
    for theta, c in zip(thetas[1:], coefficients[1:]):
        torch._foreach_add_(out, theta, alpha=c)
    return out


def _combine(thetas, coefficients):
    """``Σ_k c_k θ_k`` in a new contiguous tensor, slice by slice."""
    out = torch.empty_like(thetas[0], memory_format=torch.contiguous_format)
    for o, first, *rest in chunks(out, *thetas):
        torch.mul(first, coefficients[0], out=o)  # the first term makes the slice, the others add
        for theta, c in zip(rest, coefficients[1:]):
            o.add_(theta, alpha=c)
    return out


def _gradients_whole(gs, ws, weight_decay, coefficients):
    """``[c_k (g_i + wd w_i) for each i]`` for each ``c_k`` of ``coefficients``, one call per
    operation for all the tensors (``ws`` None: no decay); ``g + wd w`` is made in the last
    gradients, which are scaled last."""
    if not gs:
        return [[] for _ in coefficients]
    if ws[0] is None:
        return [torch._foreach_mul(gs, c) for c in coefficients]
    totals = torch._foreach_add(gs, ws, alpha=weight_decay)
    grads = [torch._foreach_mul(totals, c) for c in coefficients[:-1]]
    torch._foreach_mul_(totals, coefficients[-1])
    return grads + [totals]


def _gradients(g, w, weight_decay, coefficients):
    """``c (g + wd w)`` for each ``c`` of ``coefficients``, slice by slice; ``g + wd w`` is made in
    the last gradient, which is scaled last (``w`` None: no decay)."""
    grads = [torch.empty_like(g, memory_format=torch.contiguous_format) for _ in coefficients]
    for g_part, *parts in chunks(g, *grads, *([] if w is None else [w])):
        total = g_part
        if w is not None:
            *parts, w_part = parts
            total = torch.add(g_part, w_part, alpha=weight_decay, out=parts[-1])
        for part, c in zip(parts, coefficients):
            torch.mul(total, c, out=part)
    return grads


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
