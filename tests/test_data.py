"""Data sets: torchvision formats on small synthetic files, Digits, real Fashion-MNIST, clear errors."""
import os

import numpy as np
import pytest
import torch

import data
from conftest import FASHION_MNIST, write_cifar, write_mnist
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
    x, y = data.load_split("MNIST", str(tmp_path), train=False)
    loaders, num_classes = data.loaders("MNIST", str(tmp_path), 7, 0)
    assert num_classes == 10
    xb, yb = next(iter(loaders["test"]))
    assert torch.equal(xb, x[:7]) and torch.equal(yb, y[:7])
    import torchvision
    ds = torchvision.datasets.MNIST(str(tmp_path), train=False,
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
    loaders, num_classes = data.loaders(name, str(tmp_path), 8, 0, transform)
    assert num_classes == classes
    xb, yb = next(iter(loaders["train"]))  # augmented path through torchvision transforms
    assert xb.shape == (8, 3, 32, 32) and yb.max() < classes
    assert len(loaders["train"].dataset) == (50 if name == "CIFAR10" else 10)


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
    loaders, _ = data.loaders("Digits", None, 50, 0, generator=torch.Generator().manual_seed(3))
    first = next(iter(loaders["train"]))[1]
    loaders["train"].sampler.sampler.generator.manual_seed(3)
    assert torch.equal(next(iter(loaders["train"]))[1], first)
    x, y = data.load_split("Digits", None, True)
    ordered, _ = data.loaders("Digits", None, 50, 0, shuffle_train=False)
    assert torch.equal(next(iter(ordered["train"]))[1], y[:50])


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
        data.loaders("SVHN", "data", 8, 0)
    with pytest.raises(UserError, match="unknown transform"):
        data.load_split("CIFAR10", "data", True, "Fancy")


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Debian dataset-fashion-mnist absent")
def test_real_fashion_mnist_from_debian_files():
    x, y = data.load_split("FashionMNIST", FASHION_MNIST, train=False)
    assert x.shape == (10000, 1, 28, 28) and set(y.unique().tolist()) == set(range(10))
    assert np.bincount(y.numpy()).tolist() == [1000] * 10
