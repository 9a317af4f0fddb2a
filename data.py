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
import io
import os
import shutil

import numpy as np
import torch
import torchvision
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torchvision import transforms

from utils import UserError

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "Digits")
MNIST_LIKE = ("MNIST", "FashionMNIST")
CIFAR = ("CIFAR10", "CIFAR100")
TRANSFORMS = ("VGG", "ResNet", "ToTensor")

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


def _mnist_root(name, path):
    """A root torchvision's MNIST classes can read: ``path``, or a cache built from raw files.

    ``path`` may be laid out as torchvision stores the data (``path/<name>/raw/...``) or may hold
    the four idx files directly, compressed or not (as Debian's dataset-fashion-mnist has them).
    """
    files = RAW_FILES[name]
    if all(os.path.exists(os.path.join(path, name, "raw", f)) for f in files):
        return path
    found = {f: next((os.path.join(path, f + ext) for ext in ("", ".gz")
                      if os.path.exists(os.path.join(path, f + ext))), None) for f in files}
    if not all(found.values()):
        return None
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "distribution_connector",
                         os.path.abspath(path).strip(os.sep).replace(os.sep, "_"))
    raw = os.path.join(cache, name, "raw")
    os.makedirs(raw, exist_ok=True)
    for f, src in found.items():
        dst = os.path.join(raw, f)
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            tmp = dst + ".part"
            with (gzip.open if src.endswith(".gz") else open)(src, "rb") as s, open(tmp, "wb") as d:
                shutil.copyfileobj(s, d)
            os.replace(tmp, dst)
    return cache


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


def _remove_empty_dirs(path, keep_top):
    """Undo the empty folders a failed download attempt left under ``path``."""
    for folder, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        if folder != path or not keep_top:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


@functools.lru_cache(maxsize=8)
def _torchvision_split(name, path, train):
    """The torchvision data set object for one split, downloading only if nothing is on disk."""
    cls = getattr(torchvision.datasets, name)
    root = _mnist_root(name, path) if name in MNIST_LIKE else _cifar_root(name, path)
    if root is not None:
        try:
            return cls(root, train=train, download=False)
        except RuntimeError as err:
            raise _missing(name, path, str(err).split("\n")[0]) from None
    existed = os.path.exists(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return cls(path, train=train, download=True)
    except Exception as err:  # no network, refused, corrupt download: all end the same way
        _remove_empty_dirs(path, keep_top=existed)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise _missing(name, path, f"download failed: {reason}") from None


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


def tensor_loader(x, y, batch_size, shuffle, generator=None):
    """A DataLoader yielding ``(x, y)`` batches gathered from in-memory tensors."""
    sampler = RandomSampler(x, generator=generator) if shuffle else SequentialSampler(x)
    return DataLoader(TensorBatches(x, y), batch_size=None,
                      sampler=BatchSampler(sampler, batch_size, drop_last=False))


def loaders(dataset, path, batch_size, num_workers, transform_name=None, train_random=True,
            shuffle_train=True, generator=None):
    """``({'train': DataLoader, 'test': DataLoader}, num_classes)`` as the scripts need.

    ``train_random`` applies the training augmentation (CIFAR only, with at most one worker per
    CPU core); without augmentation both splits come from in-memory tensors. ``generator``
    drives the shuffling (and worker seeds), so re-seeding it reproduces an epoch exactly.
    """
    check_dataset(dataset)
    transform_name = resolve_transform(dataset, transform_name)
    test = tensor_loader(*load_split(dataset, path, False, transform_name), batch_size, False)
    if dataset in CIFAR and train_random:
        ds = _torchvision_split(dataset, path, True)
        train_set = copy.copy(ds)
        train_set.transform = image_transforms(transform_name, True)
        train = DataLoader(train_set, batch_size=batch_size, shuffle=shuffle_train,
                           num_workers=min(num_workers, os.cpu_count() or 1), pin_memory=torch.cuda.is_available(),
                           generator=generator, persistent_workers=False)
    else:
        train = tensor_loader(*load_split(dataset, path, True, transform_name), batch_size,
                              shuffle_train, generator)
    return {"train": train, "test": test}, num_classes_of(dataset)
