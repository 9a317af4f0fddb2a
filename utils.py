"""Shared plumbing: devices, atomic files, checkpoints, the training loop (evaluation is in
``evaluation.py``)."""
import ctypes
import os
import tempfile
import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F

import distributed
from cli import UserError


def select_device(cuda, device=0):
    """``cuda:<device>`` when ``--cuda`` is given (an error without a GPU), else the CPU; under
    ``torchrun`` with ``--cuda`` the rank's local GPU (``distributed.job`` selected it)."""
    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--cuda was given but no CUDA GPU is available; drop --cuda to run on the CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", torch.cuda.current_device())
    if not 0 <= device < torch.cuda.device_count():
        raise UserError(f"--device={device} but only {torch.cuda.device_count()} GPU(s) are visible")
    torch.cuda.set_device(device)
    return torch.device("cuda", device)


def device_label(device):
    """What a computation ran on, for result files: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def check_output_dir(path, outputs=(), flag="--dir"):
    """Check, creating nothing, that ``path`` can be made or written and that none of the
    ``outputs`` (file names in it) is in the way as a folder. The folder itself is created by the
    first result written into it, so a run that stops early leaves no empty folder behind."""
    if not path:
        raise UserError(f"{flag} is empty; give the folder to write to (e.g. {flag}=results)")
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot write to {flag} '{path}': '{existing}' is a file, not a folder; "
                        f"choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {flag} '{path}': '{existing}' is not writable; "
                        f"choose a writable folder")
    for name in outputs:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            raise UserError(f"'{target}' is a folder, where a result file is to be written; "
                            f"move it away or choose another {flag}")


def _umask():
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The folder is created if needed; the file gets the permissions ``open()`` would give it under
    the user's umask (a temporary file is private, and its mode would survive the rename). A write
    that fails (disk full, no permission) leaves ``path`` as it was and is one ``UserError``."""
    directory, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1]  # keep the extension: np.savez and savefig look at it
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=directory)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "writ" in str(err)):
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise UserError(f"cannot write '{path}': {reason}; free some space or choose a "
                            f"writable folder, then run the same command again") from None
        raise


def write_text(path, text):
    """Write a text file atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def save_figure(fig, path):
    """Lay out and write a matplotlib figure atomically, then release it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def save_checkpoint(directory, epoch, **state):
    """Write ``checkpoint-{epoch}.pt`` = ``{'epoch', **state}`` atomically; return its path."""
    path = os.path.join(directory, f"checkpoint-{epoch}.pt")
    atomic_write(path, lambda tmp: torch.save({"epoch": epoch, **state}, tmp))
    return path


def missing_file(path):
    """Why ``path`` is not a file one can read: "does not exist" or "is a folder, not a file"."""
    return "is a folder, not a file" if os.path.isdir(path) else "does not exist"


def load_checkpoint(path, what="checkpoint", mmap=False):
    """Load a checkpoint file (a dict with ``model_state``, or a bare state dict) on the CPU;
    ``mmap``: its tensors memory-mapped, not read (for a look at its settings only).

    Only tensors and plain containers are unpickled (``weights_only``), so an untrusted file
    cannot run code; a ``model_state`` that is not a mapping of names to tensors is refused."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' {missing_file(path)}; give the path of a .pt file "
                        f"written by train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise UserError(f"{what} '{path}' is not a readable PyTorch checkpoint ({type(err).__name__})")
    if not isinstance(checkpoint, dict):
        raise UserError(f"{what} '{path}' holds no state dict")
    if "model_state" not in checkpoint:
        checkpoint = {"model_state": checkpoint}
    state = checkpoint["model_state"]
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise UserError(f"{what} '{path}': its model_state is not a mapping of parameter names to "
                        f"tensors; give a checkpoint written by train.py")
    return checkpoint


def load_model_state(model, checkpoint, path, model_name):
    """Copy a checkpoint's weights into ``model``, naming expected and found shapes on a mismatch."""
    found = checkpoint["model_state"]
    expected = model.state_dict()
    saved_name = checkpoint.get("model")
    hint = f" (it was saved for model {saved_name})" if saved_name and saved_name != model_name else ""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"checkpoint '{path}' does not fit --model={model_name}{hint}: "
            f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected keys {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for key, value in expected.items():
        if tuple(found[key].shape) != tuple(value.shape):
            raise UserError(
                f"checkpoint '{path}' does not fit --model={model_name}{hint}: {key} has shape "
                f"{tuple(found[key].shape)}, expected {tuple(value.shape)} "
                f"(check --model and --dataset)")
    for key, value in found.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"checkpoint '{path}' has non-finite values (NaN or inf) in {key}; the "
                            f"training that wrote it diverged: give a checkpoint with finite weights")
    model.load_state_dict(found)
    return model


def learning_rate_schedule(base_lr, epoch, total_epochs):
    """Flat for the first half, linear decay to 1% at 90% of the epochs, then 1% (reference)."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        factor = 1.0
    elif alpha <= 0.9:
        factor = 1.0 - (alpha - 0.5) / 0.4 * 0.99
    else:
        factor = 0.01
    return factor * base_lr


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory():
    """Keep freed memory in the process for the next allocation; True where it applies (glibc).

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it when freed,
    so a training step that makes such tensors (the gradient of a large layer; for a curve also
    the free bend's gradient) has the kernel fault in and zero their pages again at
    every step: on the machines of docs/PERFORMANCE.md about as long as the arithmetic of a
    memory-bound pass over them. Serving all blocks from the heap and never trimming it reuses the
    same pages instead; the arithmetic, and so every result, is unchanged (PyTorch aligns its
    blocks to 64 bytes either way). The process keeps its peak memory until it exits."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # another C library: its own defaults
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def train_epoch(loader, model, optimizer, device, desc="train"):
    """One epoch of SGD on cross-entropy; returns mean loss and accuracy (%) over the epoch.

    Under ``torchrun`` (``model`` in ``DistributedDataParallel``, or for a curve its model; the
    loader yielding this rank's
    part of each batch) the local loss is the sum over the rank's rows times ``N`` over the
    batch's total size, so that the gradient DDP averages over the ``N`` ranks is the mean over
    the whole batch, however unevenly it was split; the statistics are summed over the ranks."""
    model.train()
    # sums stay on the device: no host synchronisation per step (it would serialise a GPU)
    sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)]
    for x, y in distributed.progress(loader, desc=desc, leave=False):
        train_step(model, optimizer, x, y, device, sums)
    for total in sums:
        distributed.all_reduce(total)
    loss_sum, correct, count = sums
    return {"loss": loss_sum.item() / count.item(), "accuracy": 100.0 * correct.item() / count.item()}


def train_step(model, optimizer, x, y, device, sums):
    """One step of ``train_epoch`` on this rank's batch ``(x, y)``; adds the batch's loss sum,
    correct predictions and size to ``sums`` (this rank's; ``train_epoch`` sums them over ranks)."""
    ranks = distributed.world_size()
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    output = model(x)
    if ranks == 1:
        loss = F.cross_entropy(output, y)
    else:
        batch = distributed.all_reduce(torch.tensor(float(len(y)), device=device))
        loss = F.cross_entropy(output, y, reduction="sum") * (ranks / batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sums[0] += loss.detach().double() * (len(y) if ranks == 1 else batch / ranks)
    sums[1] += (output.argmax(1) == y).sum()
    sums[2] += len(y)


class Timer:
    """Wall-clock seconds since construction (synchronising the GPU when there is one)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter() - self.start
