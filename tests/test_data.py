"""Data sets: torchvision formats on small synthetic files, Digits, real Fashion-MNIST, clear errors."""
import os
import pickle
import subprocess
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

import data
from conftest import FASHION_MNIST, write_cifar, write_idx, write_mnist
from utils import UserError


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data._torchvision_split.cache_clear()
    yield
    data._torchvision_split.cache_clear()


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_raw_files_folder(tmp_path, compress):
    arrays = write_mnist(tmp_path / "raw", compress=compress)
    x, y = data.load_split("FashionMNIST", str(tmp_path / "raw"), train=True)
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), arrays["train"][1])
    np.testing.assert_allclose(x[:, 0].numpy(), arrays["train"][0] / 255.0, rtol=1e-6)


def test_mnist_torchvision_layout_matches_per_sample_transform(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    x, y = data.load_split("MNIST", str(tmp_path), train=True)
    loader, num_classes = data.train_loader("MNIST", str(tmp_path), 7, 0, shuffle=False)
    assert num_classes == 10
    xb, yb = next(iter(loader))
    assert torch.equal(xb, x[:7]) and torch.equal(yb, y[:7])
    import torchvision
    ds = torchvision.datasets.MNIST(str(tmp_path), train=True,
                                    transform=torchvision.transforms.ToTensor())
    assert torch.equal(ds[3][0], x[3])  # the vectorised transform is torchvision's, bit for bit


@pytest.mark.parametrize("name,classes", [("CIFAR10", 10), ("CIFAR100", 100)])
@pytest.mark.parametrize("transform", ["VGG", "ResNet"])
def test_cifar_pickle_batches(tmp_path, no_cifar_md5, name, classes, transform):
    write_cifar(str(tmp_path), name)
    x, y = data.load_split(name, str(tmp_path), train=False, transform_name=transform)
    assert x.shape == (10, 3, 32, 32)
    ds = data._torchvision_split(name, str(tmp_path), False)
    reference = data.image_transforms(transform, train_random=False)(ds[4][0])
    torch.testing.assert_close(x[4], reference, rtol=0, atol=1e-6)
    loader, num_classes = data.train_loader(name, str(tmp_path), 8, 0, transform)
    assert num_classes == classes
    xb, yb = next(iter(loader))  # augmented path through torchvision transforms
    assert xb.shape == (8, 3, 32, 32) and yb.max() < classes
    assert len(loader.dataset) == (50 if name == "CIFAR10" else 10)


def test_cifar_folder_given_directly(tmp_path, no_cifar_md5):
    write_cifar(str(tmp_path), "CIFAR10")
    x1, _ = data.load_split("CIFAR10", str(tmp_path), train=True)
    data._torchvision_split.cache_clear()
    x2, _ = data.load_split("CIFAR10", str(tmp_path / "cifar-10-batches-py"), train=True)
    assert torch.equal(x1, x2) and len(x1) == 50


def test_cifar_production_path_checks_md5(tmp_path):
    write_cifar(str(tmp_path), "CIFAR10")
    with pytest.raises(UserError, match="CIFAR10 not found"):
        data.load_split("CIFAR10", str(tmp_path), train=True)


def test_digits_split():
    x_tr, y_tr = data.load_split("Digits", None, train=True)
    x_te, y_te = data.load_split("Digits", None, train=False)
    assert x_tr.shape[1:] == (1, 8, 8) and len(x_tr) + len(x_te) == 1797
    assert abs(len(x_te) / 1797 - 0.2) < 0.01
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0 and x_tr.max() == 1.0
    counts_tr, counts_te = np.bincount(y_tr.numpy()), np.bincount(y_te.numpy())
    np.testing.assert_allclose(counts_te / counts_tr, 0.25, atol=0.03)  # stratified
    data._digits.cache_clear()
    again, _ = data.load_split("Digits", None, train=True)
    assert torch.equal(again, x_tr)  # deterministic


def test_shuffling_follows_generator():
    loader, _ = data.train_loader("Digits", None, 50, 0, generator=torch.Generator().manual_seed(3))
    first = next(iter(loader))[1]
    loader.sampler.sampler.generator.manual_seed(3)
    assert torch.equal(next(iter(loader))[1], first)
    x, y = data.load_split("Digits", None, True)
    ordered, _ = data.train_loader("Digits", None, 50, 0, shuffle=False)
    assert torch.equal(next(iter(ordered))[1], y[:50])


def test_missing_dataset_is_one_clear_error(tmp_path):
    target = tmp_path / "nothing"
    with pytest.raises(UserError) as err:
        data.load_split("FashionMNIST", str(target), train=True)
    message = str(err.value)
    assert "FashionMNIST not found" in message and "train-images-idx3-ubyte" in message
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert not target.exists()  # the failed download attempt leaves nothing behind


def test_unknown_names():
    with pytest.raises(UserError, match="choose one of: MNIST"):
        data.train_loader("SVHN", "data", 8, 0)
    with pytest.raises(UserError, match="unknown transform"):
        data.load_split("CIFAR10", "data", True, "Fancy")


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Debian dataset-fashion-mnist absent")
def test_real_fashion_mnist_from_debian_files():
    x, y = data.load_split("FashionMNIST", FASHION_MNIST, train=False)
    assert x.shape == (10000, 1, 28, 28) and set(y.unique().tolist()) == set(range(10))
    assert np.bincount(y.numpy()).tolist() == [1000] * 10


# --- a failed download removes what it created, and only that ---------------------------------

def tree(root):
    """Every folder and file under ``root`` (relative paths), to compare before and after."""
    out = set()
    for folder, dirs, files in os.walk(root):
        out.update(os.path.relpath(os.path.join(folder, e), root) + ("/" if e in dirs else "")
                   for e in dirs + files)
    return out


@pytest.fixture
def partial_download(monkeypatch):
    """torchvision downloads that leave part of an archive (and of its unpacking), then fail."""
    def fake(url, download_root, extract_root=None, filename=None, md5=None, **kw):
        os.makedirs(download_root, exist_ok=True)
        with open(os.path.join(download_root, filename or os.path.basename(url)), "wb") as f:
            f.write(b"part of an archive")
        if "cifar-10" in url:
            os.makedirs(os.path.join(download_root, "cifar-10-batches-py"), exist_ok=True)
            with open(os.path.join(download_root, "cifar-10-batches-py", "data_batch_1"), "wb") as f:
                f.write(b"part of a batch")
        raise URLError("no network (test)")
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fake)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake)


def user_folders(root, name):
    """Empty folders (nested too), a file, and folders where torchvision would download to."""
    for folder in ("empty", "nested/a/b", "nested/c", f"{name}/other"):
        os.makedirs(root / folder)
    (root / "nested" / "notes.txt").write_text("mine")


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
@pytest.mark.parametrize("raw_existed", [False, True])
def test_failed_download_keeps_existing_folders(tmp_path, partial_download, name, raw_existed):
    root = tmp_path / "data"
    user_folders(root, name)
    if raw_existed:
        os.makedirs(root / name / "raw")
        (root / name / "raw" / "README").write_text("mine")
    before = tree(root)
    with pytest.raises(UserError, match=f"{name} not found.*download failed: .*no network"):
        data.load_split(name, str(root), train=True)
    assert tree(root) == before  # all the user's folders and files, the partial download gone


def test_failed_download_in_a_git_checkout(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "data").mkdir()
    before = tree(tmp_path)
    assert ".git/refs/tags/" in before and "data/" in before  # empty folders git needs
    with pytest.raises(UserError, match="FashionMNIST not found"):
        data.load_split("FashionMNIST", str(tmp_path), train=True)  # the real attempt, no network
    assert tree(tmp_path) == before
    subprocess.run(["git", "-C", str(tmp_path), "status"], check=True, capture_output=True)


@pytest.mark.parametrize("name", ["MNIST", "CIFAR10"])
def test_failed_download_removes_created_folders(tmp_path, partial_download, name):
    target = tmp_path / "new" / "deeper" / "data"
    with pytest.raises(UserError, match=f"{name} not found.*download failed"):
        data.load_split(name, str(target), train=True)
    assert os.listdir(tmp_path) == []  # nothing of new/deeper/data is left


def test_failed_cifar_download_keeps_existing_folders(tmp_path, partial_download):
    user_folders(tmp_path, "CIFAR10")
    before = tree(tmp_path)
    with pytest.raises(UserError, match="CIFAR10 not found.*download failed"):
        data.load_split("CIFAR10", str(tmp_path), train=False)
    assert tree(tmp_path) == before  # archive and half-unpacked folder gone, the rest kept


# --- the decompressed cache: one per folder, rebuilt when the content changes -----------------

def test_cache_of_similar_paths_kept_apart(tmp_path):
    one = write_mnist(tmp_path / "a_b", compress=True, seed=1)
    other = write_mnist(tmp_path / "a" / "b", compress=True, seed=2)
    for folder, arrays in ((tmp_path / "a_b", one), (tmp_path / "a" / "b", other)):
        _, y = data.load_split("FashionMNIST", str(folder), train=True)
        np.testing.assert_array_equal(y.numpy(), arrays["train"][1])
    assert len(os.listdir(tmp_path / "cache" / "distribution_connector")) == 2


@pytest.mark.parametrize("compress", [False, True])
def test_cache_rebuilt_on_new_content_with_older_mtime(tmp_path, compress):
    folder = tmp_path / "raw"
    write_mnist(folder, compress=compress, seed=1)
    data.load_split("FashionMNIST", str(folder), train=True)
    data._torchvision_split.cache_clear()
    arrays = write_mnist(folder, compress=compress, seed=2)  # same sizes, other content
    for f in os.listdir(folder):
        os.utime(folder / f, ns=(10**9, 10**9))  # 1970: older than the cached copies
    x, y = data.load_split("FashionMNIST", str(folder), train=True)
    np.testing.assert_array_equal(y.numpy(), arrays["train"][1])
    np.testing.assert_allclose(x[:, 0].numpy(), arrays["train"][0] / 255.0, rtol=1e-6)


# --- damaged files: one line naming the file and the remedy, nothing half-written kept ---------

def cache_files(tmp_path):
    """Names of the files in the decompressed cache."""
    return {f for _, _, files in os.walk(tmp_path / "cache") for f in files}


def assert_one_line(err, *fragments):
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_damaged_gz_file(tmp_path, damage):
    folder = tmp_path / "raw"
    write_mnist(folder, compress=True)
    data.load_split("FashionMNIST", str(folder), train=True)  # a good cache first
    data._torchvision_split.cache_clear()
    bad = folder / "train-images-idx3-ubyte.gz"
    content = bad.read_bytes()
    bad.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"not gzip" * 100)
    with pytest.raises(UserError) as err:
        data.load_split("FashionMNIST", str(folder), train=True)
    assert_one_line(err, str(bad), "damaged or incomplete", "reinstall dataset-fashion-mnist")
    files = cache_files(tmp_path)
    assert not any(f.endswith(".part") for f in files)
    assert "train-images-idx3-ubyte" not in files  # no half-written copy, no stale one
    bad.write_bytes(content)
    data.load_split("FashionMNIST", str(folder), train=True)  # repaired: loads again


def damage_idx(folder, damage):
    """Damage the training idx files in ``folder``; returns the file(s) the error must name."""
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if damage == "magic":
        images.write_bytes(b"\x00\x00\x0d\x03" + images.read_bytes()[4:])
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "empty":
        labels.write_bytes(b"")
        return [labels]
    elif damage == "no items":
        write_idx(images, np.zeros((0, 28, 28)))
        write_idx(labels, np.zeros(0))
    elif damage == "count":
        write_idx(labels, np.zeros(59))
        return [images, labels]
    return [images]


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty", "no items", "count"])
@pytest.mark.parametrize("layout", ["raw files", "torchvision"])
def test_damaged_idx_file(tmp_path, damage, layout):
    root = tmp_path / "data"
    folder = root / "MNIST" / "raw" if layout == "torchvision" else root
    write_mnist(folder)
    named = damage_idx(folder, damage)
    with pytest.raises(UserError) as err:
        data.load_split("MNIST", str(root), train=False)
    assert_one_line(err, *map(str, named), "download MNIST again")
    assert not any(f.endswith(".part") or f.startswith("train-") for f in cache_files(tmp_path))
    if layout == "raw files":  # nor the cache's folders made for the bad copies
        assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_torchvision_reading_error_is_one_line(tmp_path, monkeypatch):
    write_mnist(tmp_path / "MNIST" / "raw")
    def fail(path):
        raise AssertionError
    monkeypatch.setattr(torchvision.datasets.mnist, "read_image_file", fail)
    with pytest.raises(UserError) as err:
        data.load_split("MNIST", str(tmp_path), train=True)
    assert_one_line(err, f"MNIST data in '{tmp_path}'", "(AssertionError)")


@pytest.mark.parametrize("damage", ["truncated", "not a pickle", "no data"])
def test_damaged_cifar_batch(tmp_path, no_cifar_md5, damage):
    write_cifar(str(tmp_path), "CIFAR10")
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    content = {"truncated": batch.read_bytes()[:1000], "not a pickle": b"garbage" * 100,
               "no data": pickle.dumps({"labels": [1, 2]})}[damage]
    batch.write_bytes(content)
    with pytest.raises(UserError) as err:
        data.load_split("CIFAR10", str(tmp_path), train=False)
    assert_one_line(err, str(tmp_path / "cifar-10-batches-py"), "unpack cifar-10-python.tar.gz")


@pytest.mark.parametrize("labels", [9, None])
def test_empty_or_inconsistent_cifar_split(tmp_path, no_cifar_md5, labels):
    write_cifar(str(tmp_path), "CIFAR10", n_per_batch=10 if labels else 0)
    if labels:
        batch = tmp_path / "cifar-10-batches-py" / "test_batch"
        entry = pickle.loads(batch.read_bytes())
        batch.write_bytes(pickle.dumps({"data": entry["data"], "labels": entry["labels"][:labels]}))
    with pytest.raises(UserError) as err:
        data.load_split("CIFAR10", str(tmp_path), train=False)
    expected = "10 images and 9 labels" if labels else "0 images and 0 labels"
    assert_one_line(err, f"test split holds {expected}")


@pytest.mark.parametrize("name", ["MNIST", "CIFAR10"])
def test_labels_outside_the_classes_are_damaged_data(tmp_path, no_cifar_md5, name):
    """A label file with a label no class has (200) is one error at loading, before any training
    (it would fail in the loss mid-epoch)."""
    if name == "MNIST":
        images, labels = write_mnist(str(tmp_path))["train"]
        labels[3] = 200
        write_idx(str(tmp_path / "train-labels-idx1-ubyte"), labels)
    else:
        write_cifar(str(tmp_path), "CIFAR10", n_per_batch=10)
        batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
        entry = pickle.loads(batch.read_bytes())
        batch.write_bytes(pickle.dumps({"data": entry["data"], "labels": [200] + entry["labels"][1:]}))
    with pytest.raises(UserError) as err:
        data.load_split(name, str(tmp_path), train=True)
    assert_one_line(err, "training split has labels outside 0..9 (1 of them, e.g. 200)")
