"""The GPU path: every finder and every script gives on the GPU what it gives on the CPU.

Skipped where no CUDA GPU is visible (as in CI). On a GPU machine: ``pytest tests/test_cuda.py``.
Finders are compared in float64 (no TF32 anywhere), the scripts in their float32 as run.
"""
import numpy as np
import pytest
import torch

import curves
import eval_curve
import eval_ensemble
import models
import point_finders
import train
from test_point_finders import TABLE1, TABLE2, cases, digits_x, times, tiny_pair  # noqa: F401
from test_vgg_finders import VGG_FINDERS, vgg_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
CUDA = torch.device("cuda")


def relative_error(a, b):
    return (torch.linalg.vector_norm(a.cpu().double() - b.double())
            / torch.linalg.vector_norm(b.double()).clamp_min(1e-30)).item()


def assert_same_points(name, m1, m2, x, model_name, method, ts, tol):
    cpu = point_finders.make_point_finder(name, m1, m2, x, model_name, torch.float64)
    gpu = point_finders.make_point_finder(name, m1.to(CUDA), m2.to(CUDA), x.to(CUDA), model_name,
                                          torch.float64)
    m1.cpu(), m2.cpu()
    assert gpu.end_time == cpu.end_time
    for t in ts:
        for a, b in zip(gpu.point(t, method).params, cpu.point(t, method).params):
            assert a.device.type == "cuda"
            assert relative_error(a, b) < tol, (name, method, t, relative_error(a, b))


@pytest.mark.parametrize("name,method,cls", list(cases()))
def test_dense_finders_agree_with_the_cpu(digits_x, name, method, cls):
    m1, m2 = tiny_pair(cls, seed=5)
    finder_end = point_finders.path_end(point_finders.FINDERS[name], m1)
    assert_same_points(name, m1, m2, digits_x, cls.__name__, method, times(finder_end), 1e-8)


@pytest.mark.parametrize("name", list(VGG_FINDERS))
def test_vgg_finders_agree_with_the_cpu(name):
    m1, m2 = [m.double() for m in vgg_pair()]
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    end = VGG_FINDERS[name]
    assert_same_points(name, m1, m2, images, "VGG16", "arc_connect", [0.0, 0.5, 6.5, end - 0.5, end],
                       1e-7)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Digits end-points trained on the CPU: two LinearOneLayer, three Linear3NoBias."""
    root = tmp_path_factory.mktemp("cuda_endpoints")
    for model, seeds in (("LinearOneLayer", (1, 2)), ("Linear3NoBias", (1, 2, 3))):
        for seed in seeds:
            train.main([f"--dir={root / model / f'chp{seed}'}", "--dataset=Digits", f"--model={model}",
                        "--epochs=3", "--save_freq=3", f"--seed={seed}"])
    return root


def curve(tmp_path, root, model, finder, method, *extra):
    folder = tmp_path / ("gpu" if extra else "cpu")
    eval_curve.main([f"--dir={folder}", f"--point_finder={finder}", f"--method={method}",
                     f"--model={model}", "--dataset=Digits", "--num_points=7",
                     f"--start={root / model / 'chp1' / 'checkpoint-3.pt'}",
                     f"--end={root / model / 'chp2' / 'checkpoint-3.pt'}", *extra])
    return np.load(folder / "curve.npz")


@pytest.mark.parametrize("model,finder,method", [
    ("LinearOneLayer", f, m) for f in TABLE1 for m in ("lin_connect", "arc_connect")] + [
    ("Linear3NoBias", f, m) for f in TABLE2 for m in ("lin_connect", "arc_connect")])
def test_eval_curve_cuda_matches_the_cpu(tmp_path, endpoints, model, finder, method):
    cpu = curve(tmp_path, endpoints, model, finder, method)
    gpu = curve(tmp_path, endpoints, model, finder, method, "--cuda")
    assert str(gpu["device"]).startswith("cuda")
    # Float32 on two devices. A sample on the decision boundary may flip (1 test image = 0.28%, 1
    # training image = 0.07%). OT + B-fly matches butterflies that contain float32 least-squares
    # weights, and near-ties of that assignment can resolve differently: on an H100 its segment-1
    # points differed by up to 0.14% in train loss and 3 training images, with identical ends. (On
    # the CPU alone, scaling these end-points' weights by 1 + 1e-6 noise moves its points by 5%.)
    near_ties = finder == "PointFinderStepWiseTransportation"
    np.testing.assert_allclose(gpu["tr_loss"], cpu["tr_loss"], rtol=5e-3 if near_ties else 1e-3,
                               atol=1e-4)
    np.testing.assert_allclose(gpu["te_err"], cpu["te_err"], atol=0.6)
    np.testing.assert_allclose(gpu["tr_err"], cpu["tr_err"], atol=0.5 if near_ties else 0.15)


@pytest.mark.parametrize("layer,layer_ind", [(1, 2), (0, 1)])
def test_eval_ensemble_cuda_matches_the_cpu(tmp_path, endpoints, layer, layer_ind):
    results = {}
    for label, extra in (("cpu", []), ("gpu", ["--cuda"])):
        eval_ensemble.main([f"--dir={tmp_path / label}", "--dataset=Digits", "--model=Linear3NoBias",
                            "--name=checkpoint-3.pt", f"--layer={layer}", f"--layer_ind={layer_ind}",
                            f"--model_paths={endpoints / 'Linear3NoBias'}", *extra])
        results[label] = np.load(tmp_path / label / "ens_stat.npz")
    for key in ("one_model_accuracy", "ensemble_accuracy", "one_model_accuracy_adjusted",
                "ensemble_accuracy_adjusted"):
        np.testing.assert_allclose(results["gpu"][key], results["cpu"][key], atol=0.6)


def test_train_cuda_and_resume(tmp_path):
    common = ["--dataset=Digits", "--model=Linear3NoBias", "--seed=4", "--cuda", "--save_freq=1"]
    train.main([f"--dir={tmp_path / 'whole'}", "--epochs=3", *common])
    whole = torch.load(tmp_path / "whole" / "checkpoint-3.pt", weights_only=True)["model_state"]
    train.main([f"--dir={tmp_path / 'resumed'}", "--epochs=3", *common,
                f"--resume={tmp_path / 'whole' / 'checkpoint-2.pt'}"])
    resumed = torch.load(tmp_path / "resumed" / "checkpoint-3.pt", weights_only=True)["model_state"]
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6)


def test_curve_training_cuda_matches_the_cpu(tmp_path, endpoints):
    """train.py --curve --cuda: the bends of the CPU's run (float32, 2 epochs, fixed ends)."""
    ends = [endpoints / "LinearOneLayer" / f"chp{seed}" / "checkpoint-3.pt" for seed in (1, 2)]
    flags = ["--dataset=Digits", "--model=LinearOneLayer", "--curve=Bezier", f"--init_start={ends[0]}",
             "--fix_start", f"--init_end={ends[1]}", "--fix_end", "--epochs=2", "--lr=0.05"]
    for label, extra in (("cpu", []), ("gpu", ["--cuda"])):
        train.main([f"--dir={tmp_path / label}", *flags, *extra])
    cpu, gpu = (torch.load(tmp_path / label / "checkpoint-2.pt", weights_only=True)["model_state"]
                for label in ("cpu", "gpu"))
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["VGG16", "PreResNet110"])
def test_conv_curves_on_the_gpu(name):
    """A conv net's curve moved to the GPU: its end is the end-point's network there, and a step's
    bend gradients are the CPU's (float64; in eval mode, so that no dropout draw and no update of
    the BatchNorm statistics differ between the two)."""
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(models.build_model(name, 10, (3, 32, 32)).double().eval())
    curve = curves.Curve(nets[0], "Bezier", 3, fixed=(0, 2))
    curve.set_bend(2, nets[1].parameters())
    curve.init_linear()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.arange(4)
    grads = {}
    for device in ("cpu", "cuda"):
        curve.to(device).eval()
        assert torch.equal(curve(x.to(device), 1.0).cpu(), nets[1].to(device)(x.to(device)).cpu())
        for p in curve.parameters():
            p.grad = None
        torch.nn.functional.cross_entropy(curve(x.to(device), 0.3), y.to(device)).backward()
        curve.bend_gradients()
        grads[device] = [p.grad.cpu() for p in curve.bend(1)]
    for a, b in zip(grads["cuda"], grads["cpu"]):
        assert relative_error(a, b) < 1e-8
