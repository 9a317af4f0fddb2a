"""Trained curves between two end-points (Garipov et al. 2018, "Loss surfaces, mode connectivity,
and fast ensembling of DNNs"; docs/METHODS.md, "Trained curves").

A curve has ``n`` bends ``θ_0, ..., θ_{n-1}``, each a full set of the model's parameters; its point
at ``t`` in [0, 1] is ``w(t) = Σ_j c_j(t) θ_j`` with the coefficients of its type:

* Bezier: ``c_j(t) = C(n-1, j) t^j (1-t)^(n-1-j)`` (Bernstein polynomials);
* PolyChain: ``c_j(t) = max(0, 1 - |t (n-1) - j|)``, the broken line through the bends, bend ``j``
  at ``t = j / (n-1)``.

Both sum to 1 at every ``t``; ``θ_0`` is the curve at ``t = 0``, ``θ_{n-1}`` at ``t = 1``; with two
bends both are the straight line. The network at ``t`` is the ordinary model carrying ``w(t)`` in
its own parameters, so every model of the registry has curves without a curve twin of its layers;
the gradient of ``w(t)`` that a backward pass leaves there reaches each bend weighted by its
coefficient (``Curve.bend_gradients``).
"""
import copy
import math

import torch
from torch import nn

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

    The curve runs its own copy of ``model`` (``model`` itself is left as it is), whose parameters
    hold the curve's point, not weights of their own: ``forward(x)`` draws ``t ~ U[0, 1)`` from
    ``generator`` (one per call, i.e. per mini-batch), writes ``w(t)`` into them in place (so that
    a graph still waiting for its backward pass fails on finding other weights, through autograd's
    check of the weights it saved: those of every layer after the first) and runs the model
    (through ``DistributedDataParallel`` under ``torchrun``: ``run_with``). The backward pass
    leaves the gradient ``g`` of ``w(t)`` in the model's parameters (averaged over the ranks by
    ``DistributedDataParallel``), and ``bend_gradients()`` gives each free bend ``c_j (g + wd ·
    w(t))``: its share of the gradient of the loss plus that of ``0.5 wd ||w(t)||²``, the weight
    decay of curve training (``weight_decay``; the norm is never computed). ``attach(optimizer)``
    makes every step of an optimizer begin with it, and the next forward pass takes a gradient
    still waiting, so that passes before a step add up; ``zero_grad()`` discards it. The bends are
    thus not in the autograd graph, and a step costs the engine what the network's step does
    (docs/PERFORMANCE.md, "Curve training"). The model's buffers (BatchNorm statistics) are used
    as they are; ``train()`` and ``eval()`` set the model's mode too.
    """

    def __init__(self, model, kind, num_bends, fixed=(), weight_decay=0.0):
        super().__init__()
        check_curve(kind, num_bends)
        self.kind, self.num_bends, self.weight_decay = kind, num_bends, weight_decay
        self.names = [name for name, _ in model.named_parameters()]
        if not all(p.is_contiguous() for p in model.parameters()):
            raise ValueError("a curve writes w(t) into the model's parameters: they must be contiguous")
        self.bends = nn.ParameterList(nn.Parameter(p.detach().clone(), requires_grad=j not in fixed)
                                      for j in range(num_bends) for p in model.parameters())
        model = copy.deepcopy(model)
        self._model = (model, model)  # the model, and what runs it (not submodules: not saved)
        self.generator = torch.Generator()
        for p in model.parameters():  # a gradient of w(t) only where a bend trains
            p.requires_grad_(len(fixed) < num_bends)
        self._gather()
        self.register_load_state_dict_post_hook(lambda curve, _: curve._gather())
        self._pending = None  # the coefficients of the last forward with gradients, and its w's version

    def _gather(self):
        """The tensor lists a step uses, gathered once: the model's parameters and each bend's
        (``_apply`` keeps the tensor objects; ``load_state_dict(assign=True)`` gathers them again)."""
        size, bends = len(self.names), list(self.bends)
        self._params = list(self.model.parameters())
        self._bends = [bends[j * size:(j + 1) * size] for j in range(self.num_bends)]

    @property
    def model(self):
        return self._model[0]

    def run_with(self, runner):
        """Run the model through ``runner`` (the model wrapped, e.g. in
        ``DistributedDataParallel``: then every rank runs each forward pass, as for the wrapped
        model itself)."""
        self._model = (self.model, runner)

    def _apply(self, fn, *args, **kwargs):
        """``.to()``, ``.double()``, ...: the model's parameters and buffers follow the bends."""
        self.model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode=True):
        self._model[1].train(mode)
        return super().train(mode)

    def bend(self, j):
        """The parameters of bend ``j``, in ``model.parameters()`` order."""
        return list(self._bends[j])

    def _free(self):
        """The bends that train (those whose parameters require gradients), in order."""
        return [j for j in range(self.num_bends) if self._bends[j][0].requires_grad]

    def coefficients(self, t):
        return COEFFICIENTS[self.kind](float(t), self.num_bends)

    def write(self, t, out):
        """``w(t) = Σ_j c_j(t) θ_j`` written into ``out`` (tensors shaped as the model's
        parameters, in ``model.parameters()`` order); its coefficients.

        The fixed bends are summed first, then the free ones, each group in bend order (the order
        the curves of docs/RESULTS.md were trained with); a bend of coefficient 0 is skipped, so
        that an end of coefficient 1 is written exactly (``t = 0`` and ``t = 1``)."""
        c, free = self.coefficients(t), self._free()
        order = [j for j in range(self.num_bends) if j not in free] + free
        # the coefficients sum to 1: at least one term is left
        thetas, cs = zip(*[(self._bends[j], c[j]) for j in order if c[j] != 0])
        with torch.no_grad():
            combine(thetas, cs, out)
        return c

    def weights(self, t):
        """``w(t)``: the model's parameters at ``t`` (``write``), new tensors."""
        out = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in self._params]
        self.write(t, out)
        return out

    def forward(self, x, t=None):
        if t is None:
            t = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        if self._pending is not None:  # a backward pass's gradient still waiting: the bends take it
            self._check_synchronised()  # before w(t) changes, so that gradients accumulate as usual
            self.bend_gradients()
        c = self.write(t, self._params)
        if torch.is_grad_enabled():
            self._pending = (c, self._params[0]._version)
        return self._model[1](x)

    def _check_synchronised(self):
        """Refuse to take a gradient that ``DistributedDataParallel.no_sync`` left unaveraged: the
        ranks' bends would part."""
        if not getattr(self._model[1], "require_backward_grad_sync", True):
            raise RuntimeError("a curve takes its gradients averaged over the ranks: call backward "
                               "outside DistributedDataParallel.no_sync, once per step")

    def bend_gradients(self):
        """After the backward pass of the last forward with gradients: ``c_j (g + wd · w(t))``
        added to each free bend's gradient (its gradient where it has none), ``g`` the gradient of
        ``w(t)`` that the pass left in the model's parameters, which are then cleared. Nothing to
        do where no such forward or backward pass is waiting. ``forward`` calls it first, so that
        several backward passes before a step add up as for any module."""
        params = self._params
        if self._pending is None or all(p.grad is None for p in params):
            return
        c, version = self._pending
        self._pending = None
        if params[0]._version != version:
            raise RuntimeError("the curve's weights changed between its forward pass and its bends' "
                               "gradients; run forward, backward, bend_gradients (or the attached "
                               "optimizer's step) in turn")
        gs = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        for p in params:
            p.grad = None
        free = self._free()
        if not free:
            return
        with torch.no_grad():
            grads = gradients(gs, params if self.weight_decay else None, self.weight_decay,
                              [c[j] for j in free])
        for j, part in zip(free, grads):
            for bend, grad in zip(self._bends[j], part):
                if bend.grad is None:
                    bend.grad = grad
                else:
                    bend.grad.add_(grad)

    def zero_grad(self, set_to_none=True):
        """The bends' gradients and a backward pass's gradient of ``w(t)`` still waiting (an
        optimizer's ``zero_grad`` clears only the bends')."""
        super().zero_grad(set_to_none)
        self.model.zero_grad(set_to_none=True)
        self._pending = None

    def attach(self, optimizer):
        """Begin every step of ``optimizer`` (which holds the free bends) with ``bend_gradients``.
        Code that reads the bends' gradients between the backward pass and the step (gradient
        clipping, for instance) calls ``bend_gradients()`` first."""
        optimizer.register_step_pre_hook(lambda *_: self.bend_gradients())

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


#: the slice of a parameter tensor that ``combine`` and ``gradients`` carry through all their terms
#: at once: small enough to stay in the processor's cache between them, large enough to keep the
#: calls few
CHUNK_BYTES = 4 * 2 ** 20
#: the devices where ``combine`` writes its first term by a product per tensor (one pass over the
#: memory; no ``torch._foreach_*`` call writes into given tensors in one pass) rather than by a
#: copy and an in-place product, each one call for all the tensors: one more pass, but far fewer
#: kernel launches where each costs microseconds (a GPU, PreResNet110's 330 tensors)
ONE_PASS_DEVICES = {"cpu"}


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


def combine(thetas, coefficients, out):
    """``out_i = Σ_k c_k θ_{k,i}`` for every tensor ``i`` (``thetas[k]``: term ``k``'s tensors, as
    many as ``out``, which are contiguous), the terms in the order given.

    The tensors that fit in one slice (``fits``) are handled together, one ``torch._foreach_*``
    call per operation for all of them, so that a step pays Python's and the dispatcher's costs
    once, not per tensor (the costs that dominate on small nets; docs/PERFORMANCE.md); larger ones
    slice by slice (``chunks``), every term of a slice while it is in the cache, so that each bend
    and ``out`` cross the memory bus once. The arithmetic of each element, and so every bit, is
    that of whole-tensor operations in the same order (tests/test_curves.py)."""
    whole = [i for i, o in enumerate(out) if fits(o)]
    if whole:
        _combine_whole([[theta[i] for i in whole] for theta in thetas], coefficients,
                       [out[i] for i in whole])
    for i, o in enumerate(out):
        if not fits(o):
            _combine([theta[i] for theta in thetas], coefficients, o)


def _combine_whole(thetas, coefficients, out):
    """``combine`` for tensors that fit in a slice, one call per operation for all of them but the
    first term's on ``ONE_PASS_DEVICES``; the same bits either way."""
    if out[0].device.type in ONE_PASS_DEVICES:
        for o, theta in zip(out, thetas[0]):
            torch.mul(theta, coefficients[0], out=o)
    else:
        torch._foreach_copy_(out, thetas[0])
        torch._foreach_mul_(out, coefficients[0])
    for theta, c in zip(thetas[1:], coefficients[1:]):
        torch._foreach_add_(out, theta, alpha=c)


def _combine(thetas, coefficients, out):
    """``combine`` for one tensor, slice by slice."""
    if not out.is_contiguous():  # its slices would be copies
        raise ValueError("w(t) is written slice by slice into contiguous tensors only")
    for o, first, *rest in chunks(out, *thetas):
        torch.mul(first, coefficients[0], out=o)  # the first term makes the slice, the others add
        for theta, c in zip(rest, coefficients[1:]):
            o.add_(theta, alpha=c)


def gradients(gs, ws, weight_decay, coefficients):
    """``[c_k (g_i + wd w_i) for each i]`` for each ``c_k`` of ``coefficients``: the gradients of
    the free bends from the gradients ``gs`` of ``w(t)`` and ``ws = w(t)`` (None: no decay), as
    ``combine`` does its work (the tensors that fit in a slice together, the others slice by
    slice); ``g + wd w`` is made in the last bend's gradients, which are scaled last."""
    grads = [[None] * len(gs) for _ in coefficients]
    whole = [i for i, g in enumerate(gs) if fits(g)]
    for k, part in enumerate(_gradients_whole([gs[i] for i in whole],
                                              None if ws is None else [ws[i] for i in whole],
                                              weight_decay, coefficients)):
        for i, grad in zip(whole, part):
            grads[k][i] = grad
    for i, g in enumerate(gs):
        if not fits(g):
            for k, grad in enumerate(_gradients(g, None if ws is None else ws[i], weight_decay,
                                                coefficients)):
                grads[k][i] = grad
    return grads


def _gradients_whole(gs, ws, weight_decay, coefficients):
    """``gradients`` for tensors that fit in a slice, one call per operation for all of them."""
    if not gs:
        return [[] for _ in coefficients]
    if ws is None:
        return [torch._foreach_mul(gs, c) for c in coefficients]
    totals = torch._foreach_add(gs, ws, alpha=weight_decay)
    grads = [torch._foreach_mul(totals, c) for c in coefficients[:-1]]
    torch._foreach_mul_(totals, coefficients[-1])
    return grads + [totals]


def _gradients(g, w, weight_decay, coefficients):
    """``gradients`` for one tensor, slice by slice."""
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
    curve.write(t, list(net.parameters()))
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
