"""Evaluating a path segment by segment gives what evaluating each point's network from scratch
gives (issue 12): every finder, both connectors, trained curves, jumps, float32."""
import numpy as np
import pytest
import torch

import curves
import data
import evaluation
import models
import path_evaluation
import point_finders
import segment_evaluation
from connectors import CONNECTORS, combine
from models.architecture import after, apply_layer, linear_part
from models.dense import LinearNoBias, LinearOneLayer100
from procedures import PROCEDURES


class TinyOneLayer(LinearOneLayer100):
    hidden = 16


class TinyNoBias(LinearNoBias):
    hidden = (24, 16)


def pair(cls, **kwargs):
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(cls(**kwargs).eval())
    return nets


@pytest.fixture(scope="module")
def digits():
    return tuple(data.load_split("Digits", None, train=split) for split in (True, False))


@pytest.fixture(scope="module")
def cifar_like():
    g = torch.Generator().manual_seed(0)
    return ((torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)),
            (torch.randn(5, 3, 32, 32, generator=g), torch.randint(0, 10, (5,), generator=g)))


def from_scratch(finder, point, train, test):
    """A point's statistics from its parameters alone (no shared work, no carried features)."""
    net = finder.network(point.params)
    return evaluation.point_statistics(evaluation.evaluate(net, *train), evaluation.evaluate(net, *test))


def assert_same_statistics(got, expected, sizes):
    for key in ("tr_loss", "te_loss"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5)
    for key, size in zip(("tr_err", "te_err"), sizes):  # a near-tie may flip: at most one prediction
        assert abs(got[key] - expected[key]) <= 100.0 / size + 1e-9, (key, got[key], expected[key])


def check_walk(finder, method, ts, train, test, batch_size):
    stats, dl, jumps = path_evaluation.walk(finder, ts, method, train, test, batch_size)
    sizes = (len(train[1]), len(test[1]))
    for i, t in enumerate(ts):
        expected = from_scratch(finder, finder.point(float(t), method), train, test)
        assert_same_statistics({key: stats[key][i] for key in stats}, expected, sizes)
    assert [j.t for j in jumps] == [k for k in finder.discontinuities if ts[0] < k <= ts[-1]]
    for jump in jumps:
        left, right = (from_scratch(finder, finder.point(float(jump.t), method, left=side), train, test)
                       for side in (True, False))
        np.testing.assert_allclose([jump.tr_loss_left, jump.tr_loss_right],
                                   [left["tr_loss"], right["tr_loss"]], rtol=1e-5)
        assert abs(jump.te_err_left - left["te_err"]) <= 100.0 / sizes[1] + 1e-9
    previous = None
    for i, t in enumerate(ts):
        flat = torch.cat([p.reshape(-1) for p in finder.point(float(t), method).params])
        if previous is not None:
            assert dl[i] == pytest.approx(torch.linalg.vector_norm(flat - previous).item(), rel=1e-6)
        previous = flat
    return stats


def dense_cases():
    for name, procedure in PROCEDURES.items():
        if procedure.needs in ("one hidden dense layer with biases", "dense layers without biases",
                               "any network"):
            for method in CONNECTORS:
                yield name, method


@pytest.mark.parametrize("name,method", list(dense_cases()))
def test_dense_paths_evaluated_by_segment_match_each_point(digits, name, method):
    train, test = digits
    cls = TinyOneLayer if PROCEDURES[name].needs.startswith("one hidden") else TinyNoBias
    m1, m2 = pair(cls, num_classes=10, input_dim=64)
    finder = point_finders.make_point_finder(name, m1, m2, train[0], cls.__name__)
    ts = np.linspace(0, finder.end_time, 4 * int(finder.end_time) + 3)
    check_walk(finder, method, ts, train, test, batch_size=300)


@pytest.mark.parametrize("name,method", [("PointFinderStepWiseButterflyConvWBias", "arc_connect"),
                                         ("PointFinderStepWiseButterflyConvWBiasOTWA", "lin_connect")])
def test_vgg16_paths_evaluated_by_segment_match_each_point(cifar_like, name, method):
    train, test = cifar_like
    m1, m2 = pair(models.MODELS["VGG16"])
    finder = point_finders.make_point_finder(name, m1, m2, train[0], "VGG16")
    check_walk(finder, method, np.linspace(12.25, 14, 4), train, test, batch_size=4)


def test_trained_curve_evaluated_by_segment_matches_each_point(digits):
    train, test = digits
    model = TinyNoBias(num_classes=10, input_dim=64)
    curve = curves.Curve(model, "Bezier", 4)
    finder = point_finders.TrainedCurve(curve, train[0])
    stats = check_walk(finder, None, np.linspace(0, 1, 6), train, test, batch_size=500)
    assert np.isfinite(stats["tr_loss"]).all()


def test_long_segments_are_cut_into_groups(digits, monkeypatch):
    """Holding fewer points at once changes nothing."""
    train, test = digits
    m1, m2 = pair(TinyNoBias, num_classes=10, input_dim=64)
    finder = point_finders.make_point_finder("PointFinderSimultaneous", m1, m2, train[0], "TinyNoBias")
    ts = np.linspace(0, 1, 7)
    whole, _, _ = path_evaluation.walk(finder, ts, "arc_connect", train, test, 400)
    size = sum(p.numel() * p.element_size() for p in m1.parameters())
    monkeypatch.setattr(segment_evaluation, "GROUP_BYTES", 2 * size)
    cut, _, _ = path_evaluation.walk(finder, ts, "arc_connect", train, test, 400)
    for key in whole:
        np.testing.assert_allclose(cut[key], whole[key], rtol=1e-6)


@pytest.mark.parametrize("name", [n for n, p in PROCEDURES.items() if p.needs != "any network"]
                         + ["PointFinderSimultaneous"])
def test_shared_parts_are_those_of_the_points(digits, cifar_like, name):
    """Within a segment, the layers before the shared layer are the same tensors' values at every
    point, and the shared layer's weights are the combination of its terms."""
    needs = PROCEDURES[name].needs
    if needs.startswith("a chain of convolutions"):
        (x, _), _ = cifar_like
        m1, m2 = pair(models.MODELS["VGG16"])
    else:
        x = digits[0][0]
        m1, m2 = pair(TinyOneLayer if needs.startswith("one hidden") else TinyNoBias,
                      num_classes=10, input_dim=64)
    finder = point_finders.make_point_finder(name, m1, m2, x, "tiny")
    for method in CONNECTORS:
        by_segment = {}
        for t in np.linspace(0, finder.end_time, 3 * int(finder.end_time) + 2):
            point = finder.point(float(t), method)
            by_segment.setdefault(point.shared.segment, []).append(point)
        for points in by_segment.values():
            p = points[0].shared.layer
            for point in points:
                assert point.shared.terms is points[0].shared.terms and point.shared.layer == p
                layers = finder.layers(point.params)
                for (W, b), (W0, b0) in zip(layers[:p], finder.layers(points[0].params)[:p]):
                    assert torch.equal(W, W0) and (b is None or torch.equal(b, b0))
                W, b = layers[p]
                terms = point.shared.terms
                torch.testing.assert_close(combine([T for T, _ in terms], point.shared.coefficients), W,
                                           rtol=0, atol=0)
                if b is not None:
                    torch.testing.assert_close(combine([T for _, T in terms], point.shared.coefficients),
                                               b, rtol=0, atol=0)


def test_connector_terms_reproduce_the_connectors():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    for t in (0.0, 0.3, 1.0):
        c, s = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
        m = torch.cat([a, b]).mean(0)
        torch.testing.assert_close(CONNECTORS["arc_connect"](a, b, t), m + c * (a - m) + s * (b - m))
        torch.testing.assert_close(CONNECTORS["lin_connect"](a, b, t), (1 - t) * a + t * b)
    for name in CONNECTORS:  # the ends exactly
        assert torch.equal(CONNECTORS[name](a, b, 0), a) and torch.equal(CONNECTORS[name](a, b, 1), b)


def test_layer_split_into_affine_map_and_what_follows():
    model = models.MODELS["VGG16"]()
    x = torch.randn(2, 3, 32, 32)
    for l in (0, 1, 12, 13):
        layer = model.architecture.layers[l]
        W, b = model.tensor(layer.weight), model.tensor(layer.bias)
        h = model.features(x, l)
        assert torch.equal(after(layer, linear_part(layer, h, W, b)), apply_layer(layer, h, W, b))
        mean = W.mean(0, keepdim=True)  # one mean unit broadcasts against the layer's outputs
        z = linear_part(layer, h, mean, b)
        torch.testing.assert_close(z, linear_part(layer, h, mean.expand_as(W), b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("terms_bytes, cache_bytes", [(0, 3 * 2 ** 30), (0, 0)])
def test_wa_points_without_kept_terms_or_inputs(digits, monkeypatch, terms_bytes, cache_bytes):
    """Where the terms' outputs (or model 2's features too) would not fit, a WA point computes its
    features again: the same statistics."""
    from point_finders import step_wise
    monkeypatch.setattr(step_wise, "TERMS_BYTES", terms_bytes)
    monkeypatch.setattr(step_wise, "CACHE_BYTES", cache_bytes)
    train, test = digits
    m1, m2 = pair(TinyNoBias, num_classes=10, input_dim=64)
    finder = point_finders.make_point_finder("PointFinderStepWiseInverseOT", m1, m2, train[0], "TinyNoBias")
    point = finder.point(0.5, "arc_connect")
    assert point.shared.train_terms is None and point.hidden is not None
    check_walk(finder, "arc_connect", np.linspace(0, 3, 8), train, test, batch_size=300)


@pytest.mark.parametrize("batch_size", [7, 64, 5000])
def test_evaluating_from_blocks_of_features_is_evaluating_from_the_data(digits, batch_size):
    """``evaluate(hidden=(l, blocks))``: features held in uneven blocks of rows (a point's
    ``Point.hidden``, never joined) give the numbers of a pass from the data, whatever the batch
    size against the blocks' sizes."""
    net = pair(TinyNoBias, num_classes=10, input_dim=64)[0].double()
    x, y = digits[0][0].double(), digits[0][1]
    features = net.features(x, 2)
    sizes = [1, 100, 333, len(x) - 434]
    blocks = list(torch.split(features, sizes))
    got = evaluation.evaluate(net, x, y, batch_size, hidden=(2, blocks))
    expected = evaluation.evaluate(net, x, y, batch_size)
    assert got["accuracy"] == expected["accuracy"]
    np.testing.assert_allclose(got["nll"], expected["nll"], rtol=1e-12)
