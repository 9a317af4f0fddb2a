"""Evaluation primitives, each written once and shared by training, paths and ensembles.

* ``forward_batches``: the batched forward loop, consecutive batches of ``batch_size`` rows
  pushed through a model (or any callable), optionally moved to a device and shown by a progress
  bar; ``block_batches`` the same over features held in blocks of rows; ``runner`` makes the
  callable that starts from the features entering a layer (``model.forward_from``). Under
  ``torchrun`` every function here works on the rank's shard of the data (``distributed.shard``)
  and combines the ranks' sums, so that its answer is the one of a single process
  (docs/DISTRIBUTED.md).
* ``evaluate``: NLL and accuracy on in-memory tensors, optionally from the features entering a
  layer.
* ``has_batchnorm`` and ``recompute_batchnorm``: BatchNorm statistics re-estimated on the training
  data, as every point of a path needs (docs/METHODS.md, "BatchNorm").
* ``evaluate_point``: train and test statistics of one point of a path (``curve.npz``'s per-point
  quantities, docs/METHODS.md, "Curve statistics"); ``segment_evaluation`` evaluates the points
  of one segment together.
* ``summarize`` and ``barrier``: a quantity's statistics along a path, among them the barrier,
  its maximum minus the mean of its two end values (docs/METHODS.md, "Curve statistics").
* ``layer_outputs``, ``predictions`` and ``accuracy``: the features entering a layer and the softmax
  outputs of an ensemble's members, in batches (docs/METHODS.md, "WA(n) ensembles").
"""
import contextlib
import functools

import numpy as np
import torch
import torch.nn.functional as F

import distributed


def forward_batches(run, x, batch_size, device=None, desc=None):
    """Yield ``(rows, run(x[rows]))`` for consecutive slices ``rows`` of ``batch_size`` rows of
    ``x``; each batch moved to ``device`` first when one is given, a progress bar with ``desc``.
    Under ``torchrun`` ``x`` is the rank's shard and batch ``k`` of all ranks together is batch
    ``k`` of one process (``distributed.batch_slices``)."""
    slices = distributed.batch_slices(len(x), batch_size)
    if desc is not None:
        slices = distributed.progress(slices, desc=desc, leave=False)
    for rows in slices:
        batch = x[rows] if device is None else x[rows].to(device, non_blocking=True)
        yield rows, run(batch)


def block_batches(run, blocks, batch_size, device):
    """``forward_batches`` over features held as ``blocks``, tensors of consecutive rows of one
    matrix (a point's ``Point.hidden``), without joining them: each block in batches of at most
    ``batch_size`` rows, ``rows`` indexing the whole. Under ``torchrun`` the ranks' batches are not
    lined up, so only sums over all rows may use them (``evaluate``)."""
    offset = 0
    for block in blocks:
        for k in range(0, len(block), batch_size):
            batch = block[k:k + batch_size]
            yield slice(offset + k, offset + k + len(batch)), run(batch.to(device, non_blocking=True))
        offset += len(block)


def runner(model, start=None):
    """``model`` itself, or with ``start`` the callable whose input is the features entering layer
    ``start`` (``model.forward_from``)."""
    return model if start is None else (lambda h: model.forward_from(h, start))


@torch.no_grad()
def evaluate(model, x, y, batch_size=4096, hidden=None):
    """NLL and accuracy (%) of ``model`` on in-memory tensors, in large batches (eval mode).

    ``hidden = (l, blocks)``: the features entering layer ``l`` are already known for ``x`` (in
    blocks of consecutive rows, ``Point.hidden``), so the forward pass continues from them
    (``model.forward_from``) instead of starting from ``x``.
    """
    model.eval()
    device = next(model.parameters()).device
    batches = forward_batches(model, x, batch_size, device) if hidden is None else \
        block_batches(runner(model, hidden[0]), hidden[1], batch_size, device)
    nll, correct = 0.0, 0
    for rows, output in batches:
        yb = y[rows].to(device, non_blocking=True)
        nll += F.cross_entropy(output, yb, reduction="sum").item()
        correct += (output.argmax(1) == yb).sum().item()
    nll, correct, count = distributed.sums(nll, correct, len(y))
    return {"nll": nll / count, "accuracy": 100.0 * correct / count}


def batchnorm_layers(model):
    """The BatchNorm layers of ``model``, in order."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model):
    """Whether ``model`` has BatchNorm layers (whose statistics an interpolated point
    invalidates)."""
    return bool(batchnorm_layers(model))


@torch.no_grad()
def recompute_batchnorm(model, x, batch_size=4096):
    """Reset BatchNorm running statistics and re-estimate them on ``x`` (one pass in train mode,
    cumulative average over the batches, no gradient); returns whether the model has BatchNorm at
    all. Under ``torchrun`` each batch is normalised with the moments of all its rows, gathered
    from the ranks (``synchronized_batchnorm``), so the statistics are those of one process."""
    layers = batchnorm_layers(model)
    if not layers:
        return False
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with synchronized_batchnorm(layers):
        for _ in forward_batches(model, x, batch_size, next(model.parameters()).device):
            pass
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return True


@contextlib.contextmanager
def synchronized_batchnorm(layers):
    """Under ``torchrun``, BatchNorm ``layers`` in train mode normalise each batch with the mean and
    variance of its rows on all ranks and update their running statistics as one process would
    (cumulative average, unbiased variance); unchanged in one process. (``torch.nn.SyncBatchNorm``
    does this on GPUs only.)"""
    if not distributed.active():
        yield
        return
    for m in layers:
        m.forward = functools.partial(_synchronized_forward, m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def _synchronized_forward(m, x):
    """One BatchNorm layer ``m`` (train mode, ``momentum=None``) on this rank's rows ``x`` of a
    batch: the moments of the whole batch pooled from the ranks' counts, means and centred sums of
    squares (``distributed.pooled_moments``)."""
    dims = [0] + list(range(2, x.dim()))
    n = x.numel() // x.shape[1]
    mean = x.mean(dims, dtype=torch.float64) if n else x.new_zeros(x.shape[1], dtype=torch.float64)
    centred = ((x.double() - _channels(mean, x)) ** 2).sum(dims) if n else torch.zeros_like(mean)
    total, batch_mean, m2 = distributed.pooled_moments(torch.full_like(mean, n), mean, centred)
    m.num_batches_tracked += 1
    step = 1.0 / m.num_batches_tracked.item()
    m.running_mean += step * (batch_mean.to(m.running_mean) - m.running_mean)
    m.running_var += step * ((m2 / (total - 1).clamp(min=1)).to(m.running_var) - m.running_var)
    scale = m.weight.double() / torch.sqrt(m2 / total + m.eps)
    return ((x.double() - _channels(batch_mean, x)) * _channels(scale, x)
            + _channels(m.bias.double(), x)).to(x.dtype)


def _channels(v, x):
    """A per-channel vector shaped to broadcast against ``x`` (channels on axis 1)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def evaluate_point(finder, module, point, train, test, batch_size):
    """Train and test statistics of one point of a path (BatchNorm statistics recomputed first if
    any): the per-point quantities of ``curve.npz``."""
    net = finder.network(point.params, module)
    recompute_batchnorm(net, train[0], batch_size)
    return point_statistics(evaluate(net, *train, batch_size, hidden=point.hidden),
                            evaluate(net, *test, batch_size))


def point_statistics(tr, te):
    """The per-point quantities of ``curve.npz`` from ``evaluate``'s answers on the two splits."""
    return {"tr_loss": tr["nll"], "tr_nll": tr["nll"], "tr_acc": tr["accuracy"],
            "tr_err": 100 - tr["accuracy"], "te_loss": te["nll"], "te_nll": te["nll"],
            "te_acc": te["accuracy"], "te_err": 100 - te["accuracy"]}


def end_mean(values):
    """The mean of a quantity's values at the two ends of a path (what the barrier is measured
    from)."""
    return 0.5 * (values[0] + values[-1])


def barrier(values):
    """How far a quantity rises above its end-points: its maximum along the path minus the mean
    of its values at the two ends (NaN where they are not finite, without a warning)."""
    with np.errstate(invalid="ignore"):
        return values.max() - end_mean(values)


def summarize(values, dl):
    """start, end, min, max, avg and ``int`` (length-weighted mean over the path) of a quantity."""
    length = dl.sum()
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite path is reported, not warned
        integral = ((0.5 * (values[:-1] + values[1:]) * dl[1:]).sum() / length if length > 0
                    else values.mean())
        return {"start": values[0], "end": values[-1], "min": values.min(), "max": values.max(),
                "avg": values.mean(), "int": integral}


@torch.no_grad()
def layer_outputs(model, x, l, batch_size):
    """The features entering layer ``l`` for all of ``x``, in batches (eval mode)."""
    model.eval()
    batches = forward_batches(functools.partial(model.features, l=l), x, batch_size)
    return torch.cat([out for _, out in batches])


@torch.no_grad()
def predictions(model, x, batch_size, start=None):
    """Softmax outputs of ``model`` on ``x``, in batches (eval mode); with ``start`` the input of
    that layer is ``x`` (``runner``)."""
    model.eval()
    batches = forward_batches(runner(model, start), x, batch_size)
    return torch.cat([torch.softmax(out, 1) for _, out in batches])


def accuracy(probabilities, y):
    """Accuracy (%) of the most probable class, given the (ensemble's) probabilities (on all
    ranks' rows under ``torchrun``)."""
    correct, count = distributed.sums((probabilities.argmax(1) == y).sum().item(), len(y))
    return 100.0 * correct / count
