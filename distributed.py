"""Data-parallel runs under ``torchrun`` (``torch.distributed``; docs/DISTRIBUTED.md).

A script launched by ``torchrun --nproc_per_node=N -- script.py ...`` runs as N processes
(*ranks*). ``job`` joins them into one process group (``nccl`` with ``--cuda``, each rank on its
local GPU; ``gloo`` on the CPU); without ``torchrun`` nothing changes and every function here is the
identity of one process.

* Data are split by ``shard``: rank ``r`` of ``N`` holds the rows ``r, r + N, r + 2N, ...`` of a
  split. ``batch_slices`` cuts a shard so that batch ``k`` of every rank together is exactly batch
  ``k`` of one process (rows ``[kB, (k+1)B)``), whatever N and the data size: what depends on the
  batches (BatchNorm statistics) comes out the same.
* Sums are combined by ``sums`` / ``all_reduce`` (loss sums, correct and sample counts, Gram
  matrices and right-hand sides of weight adjustment), BatchNorm moments by ``gather``.
* Only rank 0 prints (``job`` silences the others' stdout), shows progress bars (``progress``)
  and writes result files and checkpoints (``is_main``).
* ``agree`` runs the checks of the input on every rank and makes them fail together: a mistake
  seen by one rank only (a file missing on one node) ends every rank with the same ``error:``
  line, printed once.
"""
import contextlib
import math
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

from cli import UserError


def launched():
    """Whether this process is one of several started by ``torchrun`` (its ``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active():
    """Whether this process belongs to a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Whether this process prints and writes (rank 0, or the only process)."""
    return rank() == 0


def launcher():
    """How this process was started, as a command prefix: ``torchrun ... --`` or ``python3``."""
    if not launched():
        return "python3"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    nodes = int(os.environ["WORLD_SIZE"]) // per_node
    return f"torchrun{f' --nnodes={nodes}' if nodes > 1 else ''} --nproc_per_node={per_node} --"


def local_device(cuda):
    """The device of this rank under ``torchrun``: its local GPU (``LOCAL_RANK``) with ``--cuda``,
    else the CPU."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")


@contextlib.contextmanager
def job(cuda=False):
    """The body of a script: under ``torchrun`` inside one process group (``nccl`` with ``--cuda``,
    else ``gloo``), stdout of ranks other than 0 silenced; otherwise unchanged."""
    if not launched() or active():
        yield
        return
    if cuda:
        if not torch.cuda.is_available():
            raise SharedError("--cuda was given but no CUDA GPU is available; drop --cuda to run "
                              "on the CPU")
        torch.cuda.set_device(local_device(True))
    dist.init_process_group("nccl" if cuda else "gloo")
    stdout = sys.stdout
    try:
        if not is_main():
            sys.stdout = open(os.devnull, "w")
        yield
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        dist.destroy_process_group()


def _collective_device():
    """Where collective buffers live: the GPU for ``nccl``, the CPU for ``gloo``."""
    return local_device(True) if dist.get_backend() == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def _collective():
    """A collective operation; if another rank has died, one clear error instead of gloo's or
    NCCL's traceback (torchrun then ends the job)."""
    try:
        yield
    except RuntimeError as err:  # DistBackendError and friends: the peer closed the connection
        raise UserError(f"another process of this torchrun job stopped during a collective "
                        f"operation ({str(err).splitlines()[0][:120]}); its own error, or "
                        f"torchrun's summary, says why; no result file was written") from None


def all_reduce(tensor):
    """Sum ``tensor`` over the ranks, in place, and return it (itself in one process)."""
    if active():
        buffer = tensor.to(_collective_device())
        with _collective():
            dist.all_reduce(buffer)
        if buffer is not tensor:
            tensor.copy_(buffer)
    return tensor


def sums(*values):
    """The sums over the ranks of a few numbers, as Python floats (float64 on the wire)."""
    if not active():
        return [float(v) for v in values]
    return all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()


def gather(tensor):
    """Every rank's ``tensor`` (same shape on every rank), stacked along a new first axis."""
    if not active():
        return tensor[None]
    buffer = tensor.to(_collective_device())
    parts = [torch.empty_like(buffer) for _ in range(world_size())]
    with _collective():
        dist.all_gather(parts, buffer)
    return torch.stack(parts).to(tensor.device)


def pool(counts, means, m2s):
    """Count, mean and centred sum of squares (per unit, float64) of the union of disjoint sets of
    rows, from each set's, stacked along axis 0: ``M2 = Σ_k (M2_k + n_k (mean_k - mean)²)``, the
    parallel variance formula (Chan, Golub and LeVeque 1979), free of the cancellation of
    ``Σ z² - n mean²`` when a mean dwarfs the spread. Sets without rows add nothing."""
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    return n, mean, (m2s + counts * (means - mean) ** 2).sum(0)


def pooled_moments(count, mean, m2):
    """``pool`` over the ranks: the count, mean and centred sum of squares of every rank's rows
    together, from this rank's (per-unit float64 tensors of one shape)."""
    parts = gather(torch.stack([count, mean, m2]))
    return pool(parts[:, 0], parts[:, 1], parts[:, 2])


def gather_rows(tensor):
    """The rows of ``tensor`` of every rank (counts may differ), concatenated in rank order."""
    if not active():
        return tensor
    counts = [int(c) for c in gather(torch.tensor(len(tensor))).tolist()]
    padded = torch.zeros(max(counts), *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
    padded[:len(tensor)] = tensor
    return torch.cat([part[:c] for part, c in zip(gather(padded), counts)])


def shard(tensor):
    """This rank's rows of ``tensor``: rows ``rank, rank + N, ...`` (all of it in one process).

    Every rank must hold at least one row; fewer rows than ranks is a user error."""
    n, size = len(tensor), world_size()
    if n < size:
        raise UserError(f"{n} samples cannot be split over {size} processes; run fewer processes "
                        f"(torchrun --nproc_per_node) or use more data")
    return tensor[rank()::size] if size > 1 else tensor


def batch_slices(local_rows, batch_size):
    """Slices of this rank's shard (``local_rows`` rows), one per batch of the whole data set
    (rows ``[kB, (k+1)B)``, ``B = batch_size``): together over the ranks, slice ``k`` holds exactly
    that batch's rows. Every rank gets the same number of slices (some may be empty)."""
    if not active():
        return [slice(k, k + batch_size) for k in range(0, local_rows, batch_size)]
    return rank_slices(int(sums(local_rows)[0]), local_rows, batch_size, rank(), world_size())


def rank_slices(total, local_rows, batch_size, r, size):
    """``batch_slices`` of rank ``r`` of ``size`` for ``total`` rows in all: batch ``k``'s rows
    ``r + iN`` are those with ``kB <= r + iN < (k+1)B``, i.e. ``i`` from ``ceil((kB - r) / N)``."""
    first = [-(-(k * batch_size - r) // size) for k in range(math.ceil(total / batch_size) + 1)]
    return [slice(min(a, local_rows), min(b, local_rows)) for a, b in zip(first[:-1], first[1:])]


def progress(iterable, **kwargs):
    """A tqdm progress bar over ``iterable`` on rank 0 (where the output is a terminal), none on
    the other ranks."""
    return tqdm(iterable, dynamic_ncols=True, disable=None if is_main() else True, **kwargs)


def agree(check):
    """``check()`` on every rank; if it raises a ``UserError`` on any rank, every rank raises the
    first such error (naming the rank when not every rank saw it), printed by rank 0 only."""
    if not active():
        return check()
    error, result = None, None
    try:
        result = check()
    except UserError as err:
        error = str(err)
    errors = [None] * world_size()
    with _collective():
        dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, message = failed[0]
        everywhere = len(failed) == len(errors)
        raise SharedError(message if everywhere else f"on rank {r} of {len(errors)}: {message}")
    return result


class SharedError(UserError):
    """A user error every rank raises together (through ``agree``, or from numbers all ranks
    share): rank 0 reports it, the others stop silently."""
