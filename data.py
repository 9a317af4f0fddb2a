"""Data sets and loaders: MNIST, FashionMNIST, CIFAR10, CIFAR100 (torchvision) and Digits.

``Digits`` is scikit-learn's bundled set of 1797 8x8 handwritten digits: real data that needs no
download, split 80/20 (stratified, fixed seed) and scaled to [0, 1]. It is the embedded default for
the demo and the tests.

Data sets without augmentation are served from in-memory tensors in whole batches (no per-sample
PIL work); CIFAR training with the VGG/ResNet transforms goes through torchvision's transforms.
"""
import contextlib
import copy
import functools
import gzip
import hashlib
import io
import math
import os
import shutil
import struct
import zlib

import numpy as np
import torch
import torchvision
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torchvision import transforms

from cli import DATASETS, TRANSFORMS
from utils import UserError

MNIST_LIKE = ("MNIST", "FashionMNIST")
CIFAR = ("CIFAR10", "CIFAR100")

# Per-channel normalisation of the reference's CIFAR transforms.
NORMALIZATION = {
    "VGG": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "ResNet": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

# The raw files each torchvision data set reads, and where to get them.
RAW_FILES = {
    "MNIST": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    "CIFAR10": ["cifar-10-batches-py/data_batch_1", "...", "cifar-10-batches-py/test_batch"],
    "CIFAR100": ["cifar-100-python/train", "cifar-100-python/test"],
}
RAW_FILES["FashionMNIST"] = RAW_FILES["MNIST"]
HOW_TO_GET = {
    "MNIST": "download it where there is network access "
             "(torchvision.datasets.MNIST(root, download=True))",
    "FashionMNIST": "on Debian/Ubuntu: apt-get install dataset-fashion-mnist, then "
                    "--data_path=/usr/share/datasets/fashion-mnist",
    "CIFAR10": "download cifar-10-python.tar.gz from the CIFAR page and unpack it there",
    "CIFAR100": "download cifar-100-python.tar.gz from the CIFAR page and unpack it there",
}
REPAIR = {
    "MNIST": "delete the files and download MNIST again",
    "FashionMNIST": "reinstall dataset-fashion-mnist (apt-get install --reinstall "
                    "dataset-fashion-mnist) or download the files again",
    "CIFAR10": "unpack cifar-10-python.tar.gz there again",
    "CIFAR100": "unpack cifar-100-python.tar.gz there again",
}
STAMP = ".source"  # next to each decompressed file in the cache: what it was made from


def check_dataset(name):
    """Raise a one-line error for an unknown data set name."""
    if name not in DATASETS:
        raise UserError(f"unknown data set '{name}'; choose one of: {', '.join(DATASETS)}")


def resolve_transform(dataset, transform_name):
    """The transform family: VGG/ResNet normalisation for CIFAR, ToTensor otherwise."""
    if transform_name is not None and transform_name not in TRANSFORMS:
        raise UserError(f"unknown transform '{transform_name}'; "
                        f"choose one of: {', '.join(TRANSFORMS)}")
    if dataset not in CIFAR:
        return "ToTensor"
    return transform_name or "VGG"


def image_transforms(transform_name, train_random):
    """The reference's torchvision pipeline: crop+flip for CIFAR training, then normalise."""
    steps = [transforms.ToTensor()]
    if transform_name in NORMALIZATION:
        steps.append(transforms.Normalize(*NORMALIZATION[transform_name]))
        if train_random:
            steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] + steps
    return transforms.Compose(steps)


def _one_line(err):
    """An exception as one line: its type and the last non-empty line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


def _damaged(name, where, reason):
    """The error for data files that exist but cannot be read: names them and the remedy."""
    return UserError(f"{name} data in '{where}' is damaged or incomplete ({reason}); "
                     f"{REPAIR[name]}")


def _cache_error(where, err):
    """The error for a cache file or folder that cannot be written."""
    return UserError(f"cannot write the cache '{where}' ({_one_line(err)}); free space there or "
                     f"point XDG_CACHE_HOME at a writable folder")


def _remove_files(*files):
    """Remove the files that exist among ``files``."""
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)


def _cache_folder(path):
    """The cache folder for ``path``: its last name (to read) and a hash of its full path."""
    full = os.path.abspath(path)
    tail = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(full))
    digest = hashlib.sha256(os.fsencode(full)).hexdigest()[:32]
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "distribution_connector", f"{tail or 'root'}-{digest}")


def _sha256(name, file):
    """The sha256 of the bytes of ``file``."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise _damaged(name, file, _one_line(err)) from None
    return digest.hexdigest()


def _source_chunks(name, src):
    """The bytes of ``src`` in chunks, decompressed if it ends in .gz; reading errors: UserError."""
    try:
        with (gzip.open if src.endswith(".gz") else open)(src, "rb") as f:
            yield from iter(lambda: f.read(1 << 20), b"")
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise _damaged(name, src, _one_line(err)) from None


def _unpack(name, src, dst, digest):
    """Write ``src``, decompressed, to ``dst`` through a .part file, then the stamp next to it.

    Whatever fails, neither ``dst`` nor the .part file is left behind.
    """
    tmp = dst + ".part"
    _remove_files(dst + STAMP)
    try:
        with open(tmp, "wb") as out:
            for chunk in _source_chunks(name, src):
                out.write(chunk)
        os.replace(tmp, dst)
        with open(tmp, "w") as out:
            out.write(f"{digest} {os.path.getsize(dst)}\n")
        os.replace(tmp, dst + STAMP)
    except BaseException as err:
        _remove_files(tmp, dst, dst + STAMP)
        if isinstance(err, OSError):  # reading errors are UserErrors already: this is the cache
            raise _cache_error(dst, err) from None
        raise


def _fresh_copy(name, src, dst):
    """Make ``dst`` the decompressed ``src``, unless its stamp says it is already.

    The stamp records the sha256 of the source and the size of the copy: a source with other
    content is unpacked again, whatever its modification time.
    """
    digest = _sha256(name, src)
    with contextlib.suppress(OSError):
        with open(dst + STAMP) as f:
            if f.read() == f"{digest} {os.path.getsize(dst)}\n":
                return
    _unpack(name, src, dst, digest)


def _idx_count(name, file, ndim, shown):
    """The number of items in the idx file ``file`` of ``ndim``-dimensional unsigned bytes.

    Checks the header and that the size matches it; errors name ``shown`` (the user's file).
    """
    try:
        with open(file, "rb") as f:
            header = f.read(4 + 4 * ndim)
        size = os.path.getsize(file)
    except OSError as err:
        raise _damaged(name, shown, _one_line(err)) from None
    if size == 0:
        raise _damaged(name, shown, "the file is empty")
    if len(header) < 4 + 4 * ndim or header[:4] != bytes((0, 0, 8, ndim)):
        raise _damaged(name, shown, f"not an idx file of {ndim}-dimensional unsigned bytes")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if size != len(header) + math.prod(dims):
        raise _damaged(name, shown, f"{size} bytes where its header announces "
                                    f"{len(header) + math.prod(dims)}")
    if dims[0] == 0 or dims[1:] not in ((), (28, 28)):
        raise _damaged(name, shown, f"it holds items of shape {dims}, not (N > 0, 28, 28)")
    return dims[0]


def _check_idx_files(name, files):
    """Check the four idx files; ``files`` maps each raw name to (file to read, file to name)."""
    for split in ("train", "t10k"):
        images, labels = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
        n_images = _idx_count(name, images[0], 3, images[1])
        n_labels = _idx_count(name, labels[0], 1, labels[1])
        if n_images != n_labels:
            raise UserError(f"{name} data disagree: '{images[1]}' holds {n_images} images but "
                            f"'{labels[1]}' {n_labels} labels; {REPAIR[name]}")


def _mnist_root(name, path):
    """A root torchvision's MNIST classes can read: ``path``, or a cache built from raw files.

    ``path`` may be laid out as torchvision stores the data (``path/<name>/raw/...``) or may hold
    the four idx files directly, compressed or not (as Debian's dataset-fashion-mnist has them).
    The files are checked (idx headers, sizes, as many labels as images) before use.
    """
    files = RAW_FILES[name]
    raw = os.path.join(path, name, "raw")
    if all(os.path.exists(os.path.join(raw, f)) for f in files):
        _check_idx_files(name, {f: (os.path.join(raw, f),) * 2 for f in files})
        return path
    found = {f: next((os.path.join(path, f + ext) for ext in ("", ".gz")
                      if os.path.exists(os.path.join(path, f + ext))), None) for f in files}
    if not all(found.values()):
        return None
    cache = _cache_folder(path)
    raw = os.path.join(cache, name, "raw")
    made = _new_folders(raw)
    try:
        os.makedirs(raw, exist_ok=True)
        for f, src in found.items():
            _fresh_copy(name, src, os.path.join(raw, f))
        _check_idx_files(name, {f: (os.path.join(raw, f), src) for f, src in found.items()})
    except (OSError, UserError) as err:  # keep no copy of bad data, nor the folders made for it
        _remove_files(*(os.path.join(raw, f + suffix) for f in files for suffix in ("", STAMP)))
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if isinstance(err, OSError):
            raise _cache_error(raw, err) from None
        raise
    return cache


def _new_folders(folder):
    """The folders ``os.makedirs(folder)`` would create, top-down."""
    new = []
    while not os.path.lexists(folder):
        new.insert(0, folder)
        folder = os.path.dirname(folder)
    return new


def _cifar_root(name, path):
    """``path`` or its parent, whichever holds torchvision's CIFAR folder."""
    folder = getattr(torchvision.datasets, name).base_folder
    if os.path.isdir(os.path.join(path, folder)):
        return path
    if os.path.basename(os.path.normpath(path)) == folder:
        return os.path.dirname(os.path.normpath(path))
    return None


def _missing(name, path, reason):
    looked = ", ".join(RAW_FILES[name])
    return UserError(f"data set {name} not found under '{path}' (looked for {looked}; {reason}); "
                     f"{HOW_TO_GET[name]}")


def _download_targets(name, path):
    """The folders a download of ``name`` into ``path`` may write, each with the names it may
    create there (None: any, in torchvision's own raw folder); top-down, missing parents first."""
    cls = getattr(torchvision.datasets, name)
    path = os.path.abspath(path)
    chain = _new_folders(os.path.dirname(path)) + [path]  # os.makedirs creates the parents too
    if name in MNIST_LIKE:
        chain += [os.path.join(chain[-1], name), os.path.join(chain[-1], name, "raw")]
        last = None
    else:
        last = {cls.filename, cls.base_folder}
    return list(zip(chain, [{os.path.basename(child)} for child in chain[1:]] + [last]))


def _snapshot(folder):
    """``(existed, entries)`` of ``folder``; entries None where unknown: then nothing is touched."""
    if not os.path.lexists(folder):
        return False, set()
    try:
        return True, set(os.listdir(folder)) if os.path.isdir(folder) else None
    except OSError:
        return True, None


def _remove_entry(entry):
    """Remove a file, link or folder tree, as far as possible."""
    if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(entry)


def _undo_download(targets, before):
    """Remove what a failed download created in ``targets``, deepest first; nothing else.

    In each folder only entries that are new and that a download may create go; of the folders
    only those that did not exist before. The rest of the tree is never looked at.
    """
    for (folder, names), (existed, entries) in reversed(list(zip(targets, before))):
        if entries is None or not os.path.isdir(folder):
            continue
        with contextlib.suppress(OSError):
            for entry in set(os.listdir(folder)) - entries:
                if names is None or entry in names:
                    _remove_entry(os.path.join(folder, entry))
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _download(cls, name, path, train):
    """torchvision's data set downloaded into ``path``; a failure leaves ``path`` as it was."""
    targets = _download_targets(name, path)
    before = [_snapshot(folder) for folder, _ in targets]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return cls(path, train=train, download=True)
    except Exception as err:  # no network, refused, corrupt download: all end the same way
        _undo_download(targets, before)
        raise _missing(name, path, f"download failed: {_one_line(err)}") from None


def _read(cls, name, path, root, train):
    """torchvision's data set read from ``root``; whatever goes wrong reading it is a UserError."""
    try:
        return cls(root, train=train, download=False)
    except Exception as err:  # on bad files torchvision asserts, unpickles, reshapes: any error
        if name in CIFAR and isinstance(err, RuntimeError):  # its md5 check
            raise _missing(name, path, _one_line(err)) from None
        where = os.path.join(root, cls.base_folder) if name in CIFAR else path
        raise _damaged(name, where, _one_line(err)) from None


def _check_split(ds, name, path, train):
    """``ds`` if it holds images, as many as labels, each label a class of the data set; an
    empty or inconsistent set is a UserError."""
    n_images, n_labels = len(ds.data), len(ds.targets)
    split = "training" if train else "test"
    if n_images == 0 or n_images != n_labels:
        raise _damaged(name, path, f"its {split} split holds {n_images} images and "
                                   f"{n_labels} labels")
    labels, classes = np.asarray(ds.targets), num_classes_of(name)
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:
        raise _damaged(name, path, f"its {split} split has labels outside 0..{classes - 1} "
                                   f"({outside.size} of them, e.g. {outside[0]})")
    return ds


@functools.lru_cache(maxsize=8)
def _torchvision_split(name, path, train):
    """The torchvision data set object for one split, downloading only if nothing is on disk."""
    cls = getattr(torchvision.datasets, name)
    root = _mnist_root(name, path) if name in MNIST_LIKE else _cifar_root(name, path)
    ds = _download(cls, name, path, train) if root is None else _read(cls, name, path, root, train)
    return _check_split(ds, name, path, train)


@functools.lru_cache(maxsize=1)
def _digits():
    """scikit-learn's digits, split 80/20 stratified with seed 0; images (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=0.2,
                                              random_state=0, stratify=bunch.target)
    return {True: (torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()),
            False: (torch.from_numpy(x_te), torch.from_numpy(y_te).long())}


def num_classes_of(dataset):
    """Number of classes of a data set."""
    return 100 if dataset == "CIFAR100" else 10


def input_shape_of(dataset):
    """Shape ``(C, H, W)`` of one image of a data set."""
    if dataset in CIFAR:
        return (3, 32, 32)
    return (1, 8, 8) if dataset == "Digits" else (1, 28, 28)


def load_split(dataset, path, train, transform_name=None):
    """A whole split as in-memory tensors ``(X, y)`` with the *test-time* transform, in loader order.

    X has shape (N, C, H, W), float32. The ops are the vectorised equivalent of torchvision's
    ToTensor (+ Normalize), so the values equal those of the per-sample transforms.
    """
    check_dataset(dataset)
    transform_name = resolve_transform(dataset, transform_name)
    if dataset == "Digits":
        return _digits()[train]
    ds = _torchvision_split(dataset, path, train)
    data = torch.as_tensor(np.asarray(ds.data))
    x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    x = x.float().div(255)
    if transform_name in NORMALIZATION:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION[transform_name])
        x = x.sub(mean).div(std)
    return x.contiguous(), torch.as_tensor(np.asarray(ds.targets)).long()


class TensorBatches(torch.utils.data.Dataset):
    """In-memory data indexed by a whole list of indices at once (one tensor gather per batch)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, indices):
        return self.x[indices], self.y[indices]


class BatchPart(torch.utils.data.Sampler):
    """Part ``part`` of ``parts`` of every batch of ``batches`` (a batch sampler): its indices
    ``part, part + parts, ...``, so the parts of one batch differ in size by at most one and
    together are the whole batch (the data-parallel training of docs/DISTRIBUTED.md)."""

    def __init__(self, batches, part, parts):
        super().__init__()
        self.batches, self.part, self.parts = batches, part, parts

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.part::self.parts]

    def __len__(self):
        return len(self.batches)


def batch_sampler(data_source, batch_size, shuffle, generator, part=0, parts=1):
    """Batches of indices of ``data_source`` (shuffled by ``generator``), or this process's part
    of each (``BatchPart``) when ``parts > 1``."""
    sampler = RandomSampler(data_source, generator=generator) if shuffle else SequentialSampler(data_source)
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    return batches if parts == 1 else BatchPart(batches, part, parts)


def tensor_loader(x, y, batch_size, shuffle, generator=None, part=0, parts=1):
    """A DataLoader yielding ``(x, y)`` batches gathered from in-memory tensors."""
    return DataLoader(TensorBatches(x, y), batch_size=None,
                      sampler=batch_sampler(x, batch_size, shuffle, generator, part, parts))


def train_loader(dataset, path, batch_size, num_workers, transform_name=None, train_random=True,
                 shuffle=True, generator=None, part=0, parts=1):
    """``(DataLoader of the training split, num_classes)``, as train.py needs them (the test split
    is evaluated from in-memory tensors, ``load_split``).

    ``train_random`` applies the training augmentation, CIFAR only: the one loader that uses
    ``num_workers`` (at most one worker per CPU core), since it runs torchvision's transforms per
    sample. Every other loader serves in-memory tensors and ignores ``num_workers``. ``generator``
    drives the shuffling (and worker seeds), so re-seeding it reproduces an epoch exactly. With
    ``parts > 1`` the loader yields part ``part`` of each batch (``BatchPart``).
    """
    check_dataset(dataset)
    transform_name = resolve_transform(dataset, transform_name)
    if dataset in CIFAR and train_random:
        train_set = copy.copy(_torchvision_split(dataset, path, True))
        train_set.transform = image_transforms(transform_name, True)
        loader = DataLoader(train_set, batch_sampler=batch_sampler(train_set, batch_size, shuffle,
                                                                   generator, part, parts),
                            num_workers=min(num_workers, os.cpu_count() or 1),
                            pin_memory=torch.cuda.is_available(), generator=generator,
                            persistent_workers=False)
    else:
        loader = tensor_loader(*load_split(dataset, path, True, transform_name), batch_size,
                               shuffle, generator, part, parts)
    return loader, num_classes_of(dataset)
