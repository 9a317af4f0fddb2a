"""VGG16 step-wise finders, PreResNet110 with BatchNorm along a path, on small synthetic CIFAR data."""
import os

import numpy as np
import pytest
import torch

import eval_curve
import evaluation
import models
import point_finders
import train
from conftest import assert_user_error, chain, run_script, unchain, write_cifar
from point_finders.adjustment import adjust, feature_matrix
from point_finders.step_wise import permute_hidden
from utils import UserError

VGG_FINDERS = {"PointFinderStepWiseButterflyConvWBias": 15,
               "PointFinderStepWiseButterflyConvWBiasOT": 15,
               "PointFinderStepWiseButterflyConvWBiasWA": 16,
               "PointFinderStepWiseButterflyConvWBiasOTWA": 16}


def vgg_pair(classes=10):
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(models.build_model("VGG16", classes, (3, 32, 32)).eval())
    return nets


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pair():
    return vgg_pair()


def run_net(model, params, x):
    net = run_net.__dict__.setdefault("net", models.build_model("VGG16", 10, (3, 32, 32)).eval())
    for p, value in zip(net.parameters(), params):
        p.data = value
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name", list(VGG_FINDERS))
@pytest.mark.parametrize("method", ["lin_connect", "arc_connect"])
def test_end_points_and_boundaries(pair, images, name, method):
    m1, m2 = pair
    finder = point_finders.make_point_finder(name, m1, m2, images, "VGG16")
    assert finder.end_time == VGG_FINDERS[name]
    start, end = finder.point(0, method), finder.point(finder.end_time, method)
    with torch.no_grad():
        torch.testing.assert_close(run_net(m2, end.params, images), m2(images), rtol=1e-3, atol=1e-4)
        if "WA" in name:  # t = 0 re-fits layer 1 on the patches of the even images: same outputs there
            patches = feature_matrix(m1(images[::2], N=1))
            refit, original = start.params[2], m1.layer_blocks[0][1].weight
            torch.testing.assert_close(patches @ refit.reshape(len(refit), -1).T,
                                       patches @ original.reshape(len(original), -1).T,
                                       rtol=1e-3, atol=1e-4)
        else:
            torch.testing.assert_close(run_net(m1, start.params, images), m1(images))
    tol = 0 if method == "lin_connect" else 1e-6
    if "WA" not in name:  # B-fly variants start exactly at model 1
        for a, b in zip(start.params, m1.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol)
    if not name.endswith("OT"):  # and all but OT + B-fly end exactly at model 2 (quirks fixed)
        for a, b in zip(end.params, m2.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol)
    if "WA" in name:
        assert finder.discontinuities == tuple(range(1, 15))
        return
    # segments meet: exactly for B-fly, as functions under OT
    for k in ((1, 7, 13, 14) if method == "lin_connect" else (12,)):
        left, right = finder.point(k, method, left=True), finder.point(k, method)
        if name.endswith("OT"):
            torch.testing.assert_close(run_net(m1, left.params, images),
                                       run_net(m1, right.params, images), rtol=1e-3, atol=1e-4)
        else:
            for a, b in zip(left.params, right.params):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channel_permutation_keeps_the_function(pair, images):
    m1, _ = pair
    layers = chain(m1, [p.detach() for p in m1.parameters()])
    out = run_net(m1, unchain(m1, layers), images)
    for l in (0, 6, 12, 13):  # conv->conv, conv->conv across a pool, conv->dense, dense->dense
        perm = torch.randperm(len(layers[l][0]), generator=torch.Generator().manual_seed(l))
        torch.testing.assert_close(run_net(m1, unchain(m1, permute_hidden(layers, l, perm)), images),
                                   out, rtol=1e-4, atol=1e-5)


def explicit_patches(x):
    """3x3 patches with zero padding 1 at stride max(W // 2, 1), by loops (independent of unfold)."""
    n, c, h, w = x.shape
    stride = max(w // 2, 1)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = []
    for i in range(n):
        for y in range(0, h + 2 - 3 + 1, stride):
            for z in range(0, w + 2 - 3 + 1, stride):
                rows.append(padded[i, :, y:y + 3, z:z + 3].reshape(-1))
    return np.array(rows)


@pytest.mark.parametrize("layer", [1, 5, 10])
def test_conv_weight_adjustment_is_least_squares_on_patches(pair, images, layer):
    m1, m2 = (m.double() for m in vgg_pair())
    x = torch.randn(40, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f1, f2 = m1(x, N=layer), m2(x, N=layer)
    p1, p2 = explicit_patches(f1.numpy()), explicit_patches(f2.numpy())
    assert len(p1) == 4 * len(x)
    np.testing.assert_allclose(np.sort(feature_matrix(f1).numpy(), 0), np.sort(p1, 0))
    W = m1.get_parameter(m1.architecture.layers[layer].weight).detach()
    adjusted = adjust(W, feature_matrix(f1), feature_matrix(f2))
    assert adjusted.shape == W.shape
    expected = np.linalg.lstsq(p2, p1 @ W.reshape(len(W), -1).numpy().T, rcond=None)[0].T
    np.testing.assert_allclose(adjusted.reshape(len(W), -1).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_batchnorm_statistics_are_recomputed():
    torch.manual_seed(0)
    net = models.build_model("PreResNet110", 10, (3, 32, 32))
    x = torch.randn(64, 3, 32, 32)
    bn = net.layer1[0].bn1
    bn.running_mean.fill_(5.0)
    assert evaluation.recompute_batchnorm(net, x, batch_size=64)
    with torch.no_grad():
        inputs = net.conv1(x)
    torch.testing.assert_close(bn.running_mean, inputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, inputs.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    fresh = models.build_model("PreResNet110", 10, (3, 32, 32))
    fresh.load_state_dict(net.state_dict())
    evaluation.recompute_batchnorm(fresh, x, batch_size=16)
    evaluation.recompute_batchnorm(net, x, batch_size=16)
    for a, b in zip(net.buffers(), fresh.buffers()):
        torch.testing.assert_close(a, b)
    assert not net.training
    assert not evaluation.recompute_batchnorm(models.build_model("VGG16", 10, (3, 32, 32)), x)


def test_wrong_finder_for_the_architecture(pair, images):
    m1, m2 = pair
    with pytest.raises(UserError, match="does not fit model VGG16.*PointFinderStepWiseButterflyConvWBias"):
        point_finders.make_point_finder("PointFinderStepWiseInverse", m1, m2, images, "VGG16")
    dense = models.build_model("Linear3NoBias", 10, (3, 32, 32))
    with pytest.raises(UserError, match="does not fit model Linear3NoBias"):
        point_finders.make_point_finder("PointFinderStepWiseButterflyConvWBiasWA", dense, dense,
                                        images, "Linear3NoBias")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(str(root / "data"), "CIFAR10", n_per_batch=4)
    write_cifar(str(root / "data"), "CIFAR100", n_per_batch=12)
    return root


def test_vgg16_curve_on_cifar100(cifar, no_cifar_md5, tmp_path, capsys):
    paths = []
    for seed, model in enumerate(vgg_pair(classes=100)):
        paths.append(str(tmp_path / f"vgg{seed}.pt"))
        torch.save({"epoch": 1, "model_state": model.state_dict()}, paths[-1])
    eval_curve.main([f"--dir={tmp_path / 'out'}", "--point_finder=PointFinderStepWiseButterflyConvWBiasOTWA",
                     "--model=VGG16", "--dataset=CIFAR100", f"--data_path={cifar / 'data'}",
                     "--num_points=5", f"--start={paths[0]}", f"--end={paths[1]}"])
    result = np.load(tmp_path / "out" / "curve.npz")
    np.testing.assert_allclose(result["ts"], np.linspace(0, 16, 5))
    assert len(result["jump_ts"]) == 14 and "The path jumps" in capsys.readouterr().out
    with pytest.raises(UserError, match="reaches model 2 at t=15 for VGG16; use --end_time=15"):
        eval_curve.main([f"--dir={tmp_path / 'late'}", "--point_finder=PointFinderStepWiseButterflyConvWBias",
                         "--model=VGG16", "--dataset=CIFAR100", f"--data_path={cifar / 'data'}",
                         "--end_time=16", f"--start={paths[0]}", f"--end={paths[1]}"])


def test_preresnet110_trains_and_connects_with_batchnorm(cifar, no_cifar_md5, tmp_path, capsys):
    for seed in (1, 2):
        train.main([f"--dir={tmp_path / str(seed)}", "--dataset=CIFAR10", f"--data_path={cifar / 'data'}",
                    "--model=PreResNet110", "--epochs=1", f"--seed={seed}", "--num-workers=0",
                    "--batch_size=8"])
    eval_curve.main([f"--dir={tmp_path / 'out'}", "--point_finder=PointFinderSimultaneous",
                     "--method=arc_connect", "--model=PreResNet110", "--dataset=CIFAR10",
                     f"--data_path={cifar / 'data'}", "--num_points=3",
                     f"--start={tmp_path / '1' / 'checkpoint-1.pt'}",
                     f"--end={tmp_path / '2' / 'checkpoint-1.pt'}"])
    assert "BatchNorm running statistics are recomputed" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "out" / "curve.png")


def test_vgg_bad_input(cifar, tmp_path):
    paths = []
    for seed, model in enumerate(vgg_pair()):
        paths.append(str(tmp_path / f"vgg{seed}.pt"))
        torch.save({"epoch": 1, "model_state": model.state_dict()}, paths[-1])
    base = [f"--dir={tmp_path / 'out'}", "--model=VGG16", f"--start={paths[0]}", f"--end={paths[1]}"]
    result = run_script("eval_curve.py", *base, "--dataset=Digits",
                        "--point_finder=PointFinderStepWiseButterflyConvWBias")
    assert_user_error(result, "needs 32x32 images")
    result = run_script("eval_curve.py", *base, "--dataset=CIFAR10", "--data_path=/nonexistent",
                        "--point_finder=PointFinderStepWiseButterflyConvWBias")
    assert_user_error(result, "CIFAR10 not found")


@pytest.mark.parametrize("name", list(VGG_FINDERS))
def test_matches_numpy_transcription(name):
    """One point in a conv segment, the conv-to-dense transition and the last segments, against
    an independent NumPy float64 transcription (tests/numpy_reference_vgg.py)."""
    import numpy_reference_vgg as ref_vgg
    m1, m2 = (m.double() for m in vgg_pair())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    p1, p2 = ([p.detach().numpy() for p in m.parameters()] for m in (m1, m2))
    finder = point_finders.make_point_finder(name, m1, m2, x, "VGG16", torch.float64)
    assert finder.end_time == ref_vgg.END_TIME[name]
    method = "lin_connect" if name.endswith(("OT", "OTWA")) else "arc_connect"
    connect = ref_vgg.arc_connect if method == "arc_connect" else ref_vgg.lin_connect
    for t in (4.3, 12.5, 14.6) + ((15.4,) if "WA" in name else ()):
        expected = ref_vgg.FINDERS[name](p1, p2, x.numpy(), t, connect)
        for a, b in zip(finder.point(t, method).params, expected):
            error = np.linalg.norm(a.numpy() - b) / max(np.linalg.norm(b), 1e-30)
            assert error < 1e-8, (name, t, error)
