"""Shared fixtures: small data files in torchvision's on-disk formats, written by the tests."""
import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, compress=False):
    """Write ``array`` (uint8) in the idx format MNIST uses (magic 0x08 = unsigned byte)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, n_train=60, n_test=20, compress=False, seed=0):
    """Four idx files (images 28x28 and labels) directly in ``folder``; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
              "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if compress else ""
    for split, (images, labels) in arrays.items():
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte{ext}"), images, compress)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte{ext}"), labels, compress)
    return arrays


def write_cifar(root, name="CIFAR10", n_per_batch=10, seed=0):
    """CIFAR python-pickle batches under ``root`` as torchvision lays them out; returns the arrays."""
    rng = np.random.default_rng(seed)
    cls = getattr(torchvision.datasets, name)
    folder = os.path.join(root, cls.base_folder)
    os.makedirs(folder, exist_ok=True)
    label_key = "labels" if name == "CIFAR10" else "fine_labels"
    classes = 10 if name == "CIFAR10" else 100
    out = {}
    for filename, _ in cls.train_list + cls.test_list:
        images = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, classes, n_per_batch).tolist()
        with open(os.path.join(folder, filename), "wb") as f:
            pickle.dump({"data": images, label_key: labels}, f)
        out[filename] = (images, labels)
    key = cls.meta["key"]
    with open(os.path.join(folder, cls.meta["filename"]), "wb") as f:
        pickle.dump({key: [f"class{i}" for i in range(classes)]}, f)
    return out


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Synthetic CIFAR files cannot match the real md5 sums: skip that check for them only."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kw: True)


def run_script(*args, timeout=600):
    """Run one of the project's scripts in a subprocess; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(result, *fragments):
    """A user mistake: non-zero exit, exactly one line on stderr naming it, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def chain(model, params):
    """``params`` (in ``parameters()`` order) as ``model``'s chain of ``[W, b]`` layers."""
    from point_finders.base import split_layers
    return split_layers(model.architecture, [n for n, _ in model.named_parameters()], params)


def unchain(model, layers):
    """Inverse of ``chain``."""
    from point_finders.base import join_layers
    return join_layers(model.architecture, [n for n, _ in model.named_parameters()], layers)
