"""Invariants of every point finder, and agreement with an independent NumPy transcription of
METHODS.md (tests/numpy_reference.py) on tiny nets and real Digits data."""
import numpy as np
import pytest
import torch

import data
import numpy_reference as ref
import point_finders
import segment_evaluation
from conftest import chain, unchain
from connectors import arc_connect, lin_connect
from models import LinearNoBias, LinearOneLayer
from models.architecture import linear_part
from point_finders.adjustment import StreamingLeastSquares, adjust
from point_finders.matching import ot_permutation
from point_finders.step_wise import permute_hidden
from utils import UserError

TABLE1 = ["PointFinderWithBias", "PointFinderTransportation", "PointFinderInverseWithBias",
          "PointFinderInverseWithBiasOT"]
TABLE2 = ["PointFinderSimultaneous", "PointFinderStepWiseButterfly", "PointFinderStepWiseInverse",
          "PointFinderStepWiseTransportation", "PointFinderStepWiseInverseOT"]
NUMPY_CONNECT = {"lin_connect": ref.lin_connect, "arc_connect": ref.arc_connect}


class TinyOneLayer(LinearOneLayer):
    hidden = 12


class Tiny3NoBias(LinearNoBias):
    hidden = (16, 12)


class Tiny5NoBias(LinearNoBias):
    hidden = (12, 10, 8, 6)


def tiny_pair(cls, seed, dtype=torch.float64, dead=True):
    """Two tiny nets on Digits input; unit 0 of the first hidden layer of each is dead on the data."""
    nets = []
    for k in range(2):
        torch.manual_seed(seed + k)
        net = cls(num_classes=10, input_dim=64).to(dtype)
        if dead:
            with torch.no_grad():
                first = next(net.parameters())
                first[0] = -first[0].abs() - 0.1
        nets.append(net)
    return nets


@pytest.fixture(scope="module")
def digits_x():
    """Real data: the Digits training images (the invariants hold on any data)."""
    return data.load_split("Digits", None, train=True)[0].double()


@pytest.fixture(scope="module")
def gaussian_x():
    """Well-conditioned synthetic data for the float32-vs-float64 comparison: with nearly collinear
    features any float32 least-squares solve differs from a float64 one (not a property of ours)."""
    return torch.randn(600, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def numpy_params(model):
    return [p.detach().double().numpy() for p in model.parameters()]


def outputs(params, x):
    return ref.forward([p.detach().double().numpy() if torch.is_tensor(p) else p for p in params],
                       x.flatten(1).double().numpy())


def cases():
    for name in TABLE1:
        for method in ("lin_connect", "arc_connect"):
            yield name, method, TinyOneLayer
    for name in TABLE2:
        for method in ("lin_connect", "arc_connect"):
            for cls in (Tiny3NoBias, Tiny5NoBias):
                yield name, method, cls


def times(end):
    return sorted({0.0, 0.3, 0.5 if end == 1 else 1.0, end - 0.35, float(end)})


@pytest.mark.parametrize("name,method,cls", list(cases()))
def test_matches_numpy_transcription(gaussian_x, name, method, cls):
    digits_x = gaussian_x
    m1, m2 = tiny_pair(cls, seed=11)
    X = digits_x.flatten(1).numpy()
    p1, p2 = numpy_params(m1), numpy_params(m2)
    L = len(m1.architecture.layers)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        finder = point_finders.make_point_finder(name, m1, m2, digits_x, cls.__name__, dtype)
        assert finder.end_time == ref.end_time(name, L)
        for t in times(finder.end_time):
            expected = ref.FINDERS[name](p1, p2, X, t, NUMPY_CONNECT[method])
            got = finder.point(t, method).params
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                assert a.dtype == dtype and tuple(a.shape) == b.shape
                error = np.linalg.norm(a.double().numpy() - b) / max(np.linalg.norm(b), 1e-30)
                assert error < tol, (name, method, t, dtype, error)


@pytest.mark.parametrize("name,method,cls", list(cases()))
def test_starts_at_model_1_and_ends_at_model_2(digits_x, name, method, cls):
    m1, m2 = tiny_pair(cls, seed=3)
    finder = point_finders.make_point_finder(name, m1, m2, digits_x, cls.__name__)
    y1, y2 = outputs(list(m1.parameters()), digits_x), outputs(list(m2.parameters()), digits_x)
    start, end = finder.point(0, method), finder.point(finder.end_time, method)
    np.testing.assert_allclose(outputs(start.params, digits_x), y1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs(end.params, digits_x), y2, rtol=1e-4, atol=1e-4)
    exact_start = name in ("PointFinderWithBias", "PointFinderTransportation",
                           "PointFinderSimultaneous", "PointFinderStepWiseButterfly",
                           "PointFinderStepWiseTransportation")
    exact_end = "Transportation" not in name and name != "PointFinderInverseWithBiasOT"
    tol = 0 if method == "lin_connect" else 1e-6
    for point, model, exact in ((start, m1, exact_start), (end, m2, exact_end)):
        if exact:
            for a, b in zip(point.params, model.parameters()):
                torch.testing.assert_close(a, b.detach().float(), rtol=tol, atol=tol)
    if not exact_start:  # a re-fitted layer differs only on units dead on the data
        layers = chain(m1, start.params)
        original = chain(m1, [p.float() for p in m1.parameters()])
        alive = m1.float()(digits_x.float(), N=0).amax(0) > 0
        assert not alive[0] and alive.any()
        torch.testing.assert_close(layers[1][0][:, alive], original[1][0][:, alive],
                                   rtol=1e-3, atol=1e-4)
        assert layers[1][0][:, ~alive].abs().max() < 1e-5


@pytest.mark.parametrize("method", ["lin_connect", "arc_connect"])
def test_segments_meet_at_integer_t(digits_x, method):
    """B-fly's segments meet bit for bit (arc's coefficients are exact at both ends), OT + B-fly's
    compute the same function there (model 2's side permuted), WA's jump as the reference's."""
    m1, m2 = tiny_pair(Tiny5NoBias, seed=5)
    def build(name):
        return point_finders.make_point_finder(name, m1, m2, digits_x, "Tiny5NoBias")
    butterfly, transport = build("PointFinderStepWiseButterfly"), build("PointFinderStepWiseTransportation")
    inverse = build("PointFinderStepWiseInverse")
    for k in (1, 2, 3):
        left, right = butterfly.point(k, method, left=True), butterfly.point(k, method)
        assert all(torch.equal(a, b) for a, b in zip(left.params, right.params))  # bit for bit
        left, right = transport.point(k, method, left=True), transport.point(k, method)
        np.testing.assert_allclose(outputs(left.params, digits_x), outputs(right.params, digits_x),
                                   rtol=1e-4, atol=1e-4)
    assert inverse.discontinuities == (1, 2, 3)
    for k in (1, 2, 3):
        right = outputs(inverse.point(k, method).params, digits_x)
        jump = outputs(inverse.point(k, method, left=True).params, digits_x) - right
        assert np.abs(jump).max() > 1e-2 * np.abs(right).max()  # the reference's jump, kept
    last = inverse.L - 1  # t = L-1 is continuous
    np.testing.assert_allclose(outputs(inverse.point(last, method, left=True).params, digits_x),
                               outputs(inverse.point(last, method).params, digits_x), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["PointFinderInverseWithBias", "PointFinderStepWiseInverse",
                                  "PointFinderStepWiseInverseOT"])
def test_hidden_features_are_the_point_networks(digits_x, name):
    """What a WA point carries of its training features (``hidden``, or the outputs of its shared
    layer's terms) is that of the point's own network; a point of the last segment carries none
    (its segment's evaluation runs model 2's shared layers once)."""
    cls = TinyOneLayer if "WithBias" in name else Tiny5NoBias
    m1, m2 = tiny_pair(cls, seed=8, dtype=torch.float32)
    finder = point_finders.make_point_finder(name, m1, m2, digits_x, cls.__name__)
    x = digits_x.float()
    for t in (0.4, 1.5, finder.end_time - 0.2, finder.end_time):
        point = finder.point(t, "arc_connect")
        net = finder.network(point.params)
        last = finder.locate(t, finder.end_time)[0] == finder.L - 1
        assert (point.hidden is None and point.shared.train_terms is None) == last
        if last:
            continue
        if point.hidden is None:
            shared = point.shared
            layer = net.architecture.layers[shared.layer]
            W, b = finder.layers(point.params)[shared.layer]
            torch.testing.assert_close(segment_evaluation.combined(shared.train_terms, shared.coefficients),
                                       linear_part(layer, net.features(x, shared.layer), W, b),
                                       rtol=1e-5, atol=1e-5)
            continue
        layer, blocks = point.hidden
        hidden = torch.cat(blocks)
        torch.testing.assert_close(net.features(x, layer), hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.forward_from(hidden, layer), net(x), rtol=1e-5, atol=1e-5)


def test_ot_permutation_keeps_the_function(digits_x):
    m1, m2 = tiny_pair(Tiny5NoBias, seed=2)
    layers = chain(m2, list(m2.parameters()))
    perm = torch.randperm(layers[1][0].shape[0], generator=torch.Generator().manual_seed(0))
    permuted = permute_hidden(layers, 1, perm)
    np.testing.assert_allclose(outputs(unchain(m2, permuted), digits_x),
                               outputs(unchain(m2, layers), digits_x), rtol=1e-12, atol=1e-12)
    recovered = ot_permutation(layers[1][0], permuted[1][0])  # B[recovered] aligned to A
    assert torch.equal(permuted[1][0][recovered], layers[1][0])
    net = TinyOneLayer(10, 64).double()
    one = chain(net, list(net.parameters()))
    perm = torch.randperm(12)
    np.testing.assert_allclose(outputs(unchain(net, permute_hidden(one, 0, perm)), digits_x),
                               outputs(unchain(net, one), digits_x), rtol=1e-12, atol=1e-12)


def test_ot_permutation_is_the_earth_mover_plan():
    """Against POT's exact network simplex with uniform weights and normalised squared cost."""
    import ot
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(60, 7, generator=g), torch.randn(60, 7, generator=g)
    cost = torch.cdist(A.double(), B.double()).pow(2).numpy()
    plan = ot.emd(np.full(60, 1 / 60), np.full(60, 1 / 60), cost / cost.max())
    assert torch.equal(ot_permutation(A, B), torch.from_numpy(plan.argmax(axis=1)))


def test_weight_adjustment_is_least_squares_even_rank_deficient():
    torch.manual_seed(0)
    N, h = 200, 9
    F = torch.rand(N, h, dtype=torch.float64)
    F[:, 2] = 0                     # a dead unit
    F[:, 5] = F[:, 4]               # two identical units
    F_target = torch.rand(N, h, dtype=torch.float64)
    W = torch.randn(3, h, dtype=torch.float64)
    adjusted = adjust(W, F_target, F)
    assert torch.isfinite(adjusted).all()
    expected = W.numpy() @ F_target.numpy().T @ np.linalg.pinv(F.numpy().T)
    np.testing.assert_allclose(adjusted.numpy(), expected, rtol=1e-8, atol=1e-10)
    lstsq = np.linalg.lstsq(F.numpy(), (F_target @ W.T).numpy(), rcond=None)[0].T
    np.testing.assert_allclose(adjusted.numpy(), lstsq, rtol=1e-8, atol=1e-10)
    assert adjusted[:, 2].abs().max() == 0
    single = adjust(W.float(), F_target.float(), F.float())
    assert single.dtype == torch.float32 and torch.isfinite(single).all()
    assert adjust(torch.ones(2, 3), torch.ones(5, 3), torch.zeros(5, 3)).abs().max() == 0  # all dead
    wide = torch.relu(torch.randn(6, 20, dtype=torch.float64))  # fewer samples than features
    wide[3] = wide[1]
    wide_target = torch.randn(6, 20, dtype=torch.float64)
    np.testing.assert_allclose(adjust(W[:, :1].repeat(1, 20), wide_target, wide).numpy(),
                               W[:, :1].repeat(1, 20).numpy() @ wide_target.numpy().T
                               @ np.linalg.pinv(wide.numpy().T), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("keep_bytes", [0, 2 ** 29])  # Gram accumulated over chunks, or kept whole
@pytest.mark.parametrize("samples", [300, 12])       # more samples than features, or fewer
def test_streamed_least_squares_matches_pinv(keep_bytes, samples):
    g = torch.Generator().manual_seed(7)
    F = torch.relu(torch.randn(samples, 20, dtype=torch.float64, generator=g))
    F[:, 3] = 0
    targets = [torch.randn(samples, k, dtype=torch.float64, generator=g) for k in (4, 1)]
    solver = StreamingLeastSquares(keep_bytes)
    for i in range(0, samples, 7):
        solver.add(F[i:i + 7], *(t[i:i + 7] for t in targets))
    for fitted, t in zip(solver.fit(), targets):
        expected = (np.linalg.pinv(F.numpy()) @ t.numpy()).T
        if samples < 20 and keep_bytes == 0:  # h x h normal equations of a rank-12 Gram
            np.testing.assert_allclose(fitted.numpy() @ F.numpy().T, expected @ F.numpy().T,
                                       rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_allclose(fitted.numpy(), expected, rtol=1e-7, atol=1e-9)


def test_connectors():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(lin_connect(a, b, 0), a) and torch.equal(lin_connect(a, b, 1), b)
    torch.testing.assert_close(arc_connect(a, b, 0), a)
    torch.testing.assert_close(arc_connect(a, b, 1), b)
    assert lin_connect(a, b, np.float64(0.3)).dtype == torch.float32
    m = torch.cat([a, b]).mean(0)
    torch.testing.assert_close(arc_connect(a, b, 0.5), m + (a - m + b - m) * np.cos(np.pi / 4))
    u, v = torch.randn(5), torch.randn(5)
    mid = (u + v) / 2
    torch.testing.assert_close(arc_connect(u, v, 0.5), mid + (u - mid + v - mid) * np.cos(np.pi / 4))
    kernels = torch.randn(3, 2, 3, 3), torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(arc_connect(*kernels, 1.0), kernels[1])


def test_bad_finder_choices(digits_x):
    m1, m2 = tiny_pair(Tiny3NoBias, seed=1)
    with pytest.raises(UserError, match="does not fit model Tiny3NoBias.*PointFinderStepWiseInverse"):
        point_finders.make_point_finder("PointFinderWithBias", m1, m2, digits_x, "Tiny3NoBias")
    with pytest.raises(UserError, match="unknown point finder"):
        point_finders.make_point_finder("PointFinderMagic", m1, m2, digits_x, "Tiny3NoBias")
    finder = point_finders.make_point_finder("PointFinderStepWiseInverse", m1, m2, digits_x, "x")
    with pytest.raises(UserError, match="outside this path, which runs from 0 to 3"):
        finder.point(3.5, "lin_connect")
    with pytest.raises(UserError, match="unknown method"):
        finder.point(1, "spline_connect")


def test_a_new_matching_is_one_part_and_one_row(monkeypatch, digits_x):
    """The example of docs/METHODS.md, "Adding a procedure": a matching by inner products of the
    incoming rows, composed with the layer schedule and the re-fit, runs end to end."""
    import procedures
    from point_finders.matching import MATCHINGS, Matching, assignment, butterfly

    def correlation_rows(one, two):
        A, B = butterfly(one[0], one[1], None), butterfly(two[0], two[1], None)
        return assignment((A @ B.T).double(), maximize=True)

    monkeypatch.setitem(MATCHINGS, "correlation_rows", Matching(correlation_rows))
    monkeypatch.setitem(procedures.PROCEDURES, "CorrelationWA", procedures.Procedure(
        "extra", {"lin_connect": "Correlation + WA"}, "layers", "correlation_rows", "refit",
        procedures.TABLE2))
    m1, m2 = tiny_pair(Tiny3NoBias, seed=4)
    finder = point_finders.make_point_finder("CorrelationWA", m1, m2, digits_x, "Tiny3NoBias")
    assert finder.end_time == 3 and procedures.paper_name("CorrelationWA", "lin_connect") == \
        "Correlation + WA (extra)"
    end = finder.point(3, "lin_connect")
    np.testing.assert_allclose(outputs(end.params, digits_x), outputs(list(m2.parameters()), digits_x),
                               rtol=1e-4, atol=1e-4)
    for t in (0.5, 1.5):
        assert np.isfinite(outputs(finder.point(t, "lin_connect").params, digits_x)).all()
    assert set(finder._perms) == {0, 1}  # one matching solved per segment that moves a hidden layer
    with pytest.raises(UserError, match="needs dense layers without biases"):
        point_finders.make_point_finder("CorrelationWA", *tiny_pair(TinyOneLayer, seed=4), digits_x, "x")
