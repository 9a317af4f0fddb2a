"""REPAIR (docs/METHODS.md, "REPAIR"): at every point of a repaired path each hidden unit's
pre-activation standard deviation (and mean, where the layer has a bias) on the training data
equals the interpolation of its values at the path's two ends, for every finder REPAIR applies to
and every chain of the registry; the ends are unchanged; the features a repaired point carries are
its network's; eval_curve.py --repair runs end to end, and a mistake is one line."""
import numpy as np
import pytest
import torch

import eval_curve
import evaluation
import models
import point_finders
import procedures
from conftest import ROOT, assert_user_error, run_script
from models.architecture import linear_part, unit_rows
from path_evaluation import repairs
from point_finders.repair import Repaired, moments
from test_alignment import endpoints, planted  # noqa: F401  (the module's fixture)

#: (finder, model, connector): every schedule REPAIR applies to, with and without a matching
CASES = [("WeightMatching", "LinearOneLayer", "lin_connect"),
         ("ActivationMatching", "Linear3NoBias", "arc_connect"),
         ("PointFinderSimultaneous", "VGG16", "lin_connect"),
         ("PointFinderSimultaneous", "Linear3NoBias", "lin_connect"),
         ("PointFinderWithBias", "LinearOneLayer", "arc_connect"),
         ("PointFinderTransportation", "LinearOneLayer", "lin_connect")]


def pre_activation_moments(net, x):
    """``[(mean, std, has bias)]`` of every hidden layer's pre-activations on ``x``, from a plain
    forward pass of ``net``."""
    out, h = [], x
    for l, layer in enumerate(net.architecture.layers[:-1]):
        W, b = net.tensor(layer.weight), net.tensor(layer.bias) if layer.bias else None
        std, mean = torch.std_mean(unit_rows(linear_part(layer, h, W, b)), 0, correction=0)
        out.append((mean, std, b is not None))
        h = net.step(l, h, W, b)
    return out


def pair(name, finder):
    """A finder between two different random ``name`` networks (float64) and the data: for the
    dense nets ``test_alignment.planted``'s, on which every unit is alive; for VGG16, 16 random
    images."""
    if name == "VGG16":
        model, other = (seeded(name, seed) for seed in (0, 4))
        x = torch.randn(16, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    else:
        (model, _, _, x), (other, _, _, _) = planted(name), planted(name, seed=4)
    return point_finders.make_point_finder(finder, model, other, x, name, torch.float64), x


def seeded(name, seed):
    torch.manual_seed(seed)
    return models.build_model(name, 10, (3, 32, 32)).double().eval()


@pytest.mark.parametrize("finder, name, method", CASES)
@torch.no_grad()
def test_repaired_units_reach_their_targets(finder, name, method):
    f, x = pair(name, finder)
    repaired = Repaired(f)
    ends = [pre_activation_moments(f.network(f.point(s, method).params), x) for s in (0.0, 1.0)]
    for t in (0.35,) if name == "VGG16" else (0.35, 0.5):
        point = repaired.point(t, method)
        net = f.network(point.params)
        found = pre_activation_moments(net, x)
        plain = pre_activation_moments(f.network(f.point(t, method).params), x)
        for (mean, std, bias), (m1, s1, _), (m2, s2, _), (_, unrepaired, _) in zip(found, *ends,
                                                                                  plain):
            torch.testing.assert_close(std, (1 - t) * s1 + t * s2, rtol=1e-9, atol=1e-12)
            if bias:
                torch.testing.assert_close(mean, (1 - t) * m1 + t * m2, rtol=1e-9, atol=1e-12)
            assert (std - unrepaired).abs().max() > 1e-3  # REPAIR changed the point
        layer, blocks = point.hidden  # what the point carries: its network's features
        torch.testing.assert_close(net.forward_from(torch.cat(blocks), layer), net(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_repair_changes_nothing_at_the_ends(t):
    f, _ = pair("LinearOneLayer", "PointFinderTransportation")
    for a, b in zip(Repaired(f).point(t, "lin_connect").params, f.point(t, "lin_connect").params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_unit_constant_on_the_data_keeps_its_scale():
    """A dead unit (zero on every input, at both ends) cannot be rescaled; it stays as it is."""
    f, x = pair("Linear3NoBias", "PointFinderSimultaneous")
    for params in (f.params1, f.params2):
        params[0][3] = 0  # unit 3 of layer 0: constant zero on every input
    repaired = Repaired(f).point(0.5, "lin_connect")
    torch.testing.assert_close(repaired.params[0][3], torch.zeros_like(repaired.params[0][3]))
    assert torch.isfinite(torch.cat([p.reshape(-1) for p in repaired.params])).all()


def test_repair_applies_to_one_segment_paths_of_chains_without_batchnorm():
    assert set(procedures.repairable()) == {
        "PointFinderWithBias", "PointFinderTransportation", "PointFinderSimultaneous",
        "WeightMatching", "ActivationMatching"}
    assert repairs(models.build_model("VGG16", 10, (3, 32, 32)))
    assert not repairs(models.build_model("PreResNet110", 10, (3, 32, 32)))


def test_eval_curve_repairs_the_path(tmp_path, endpoints, capsys):  # noqa: F811
    """The statistics of a repaired path are those of each repaired network evaluated from
    scratch; the ends are the unrepaired path's; the name and curve.npz say REPAIR."""
    flags = ["--point_finder=WeightMatching", "--model=LinearOneLayer100", "--dataset=Digits",
             "--num_points=3", f"--start={endpoints[0]}", f"--end={endpoints[1]}"]
    eval_curve.main([f"--dir={tmp_path / 'plain'}", *flags])
    eval_curve.main([f"--dir={tmp_path / 'repaired'}", *flags, "--repair"])
    out = capsys.readouterr().out
    assert "WeightMatching + lin_connect + REPAIR" in out
    plain, repaired = (np.load(tmp_path / name / "curve.npz") for name in ("plain", "repaired"))
    assert bool(repaired["repair"]) and not bool(plain["repair"])
    for key in ("tr_loss", "te_err"):
        np.testing.assert_allclose(repaired[key][[0, -1]], plain[key][[0, -1]], rtol=1e-5)
    import data
    train, test = (data.load_split("Digits", None, split) for split in (True, False))
    ends = [models.load_model("LinearOneLayer100", p, 10, (1, 8, 8), "end") for p in endpoints]
    finder = Repaired(point_finders.make_point_finder("WeightMatching", *ends, train[0],
                                                      "LinearOneLayer100"))
    net = finder.network(finder.point(0.5, "lin_connect").params)
    scratch = evaluation.evaluate(net, *train)
    np.testing.assert_allclose(repaired["tr_loss"][1], scratch["nll"], rtol=1e-5)
    np.testing.assert_allclose(repaired["te_err"][1], 100 - evaluation.evaluate(net, *test)["accuracy"])


@pytest.mark.parametrize("finder, fragment", [
    ("PointFinderStepWiseButterfly", "moves the network in segments: drop --repair"),
    ("Bezier", "is a trained curve: drop --repair")])
def test_repair_where_it_does_not_apply_is_one_line(tmp_path, finder, fragment):
    result = run_script("eval_curve.py", f"--dir={tmp_path / 'out'}", f"--point_finder={finder}",
                        "--model=Linear3NoBias", "--dataset=Digits", "--repair",
                        f"--start={ROOT}/README.md", f"--end={ROOT}/README.md")
    assert_user_error(result, "--repair applies to the paths of one segment", fragment)
    assert result.returncode == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("finder, method", [("PointFinderSimultaneous", "arc_connect"),
                                            ("PointFinderWithBias", "arc_connect"),
                                            ("WeightMatching", "lin_connect")])
def test_the_segments_terms_give_the_points_of_the_weights(finder, method, monkeypatch):
    """Layer 0 measured from the segment's shared terms (held once) or from each point's weights:
    the same repaired points, at the ends too."""
    import point_finders.repair as repair
    f, _ = pair("LinearOneLayer" if finder != "PointFinderSimultaneous" else "Linear3NoBias", finder)
    held = Repaired(f)
    points = [held.point(t, method) for t in (0.0, 0.3, 1.0)]
    assert held._outputs is not None
    monkeypatch.setattr(repair, "TERMS_BYTES", 0)
    weights = Repaired(f)
    for t, point in zip((0.0, 0.3, 1.0), points):
        for a, b in zip(point.params, weights.point(t, method).params):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert weights._outputs is None


def test_moments_keep_their_precision_when_the_mean_dwarfs_the_spread():
    """float32 pre-activations of mean 1e4 and spread about 1, in batches of different sizes: the
    moments equal float64's on the same values (summing squares and subtracting the squared mean
    would lose about a percent of the variance here)."""
    g = torch.Generator().manual_seed(0)
    z = (1e4 + torch.randn(20000, 5, generator=g, dtype=torch.float64)
         * torch.tensor([0.5, 1.0, 2.0, 3.0, 0.0], dtype=torch.float64)).float()
    mean, std = moments(torch.split(z, [1, 7000, 12999]))
    expected_std, expected_mean = torch.std_mean(z.double(), 0, correction=0)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(std, expected_std, rtol=1e-6, atol=1e-9)
