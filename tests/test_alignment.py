"""Permutation alignment over the architecture's hidden-unit groups (docs/METHODS.md, "Permutation
alignment"): a planted permutation is recovered exactly by weight and by activation matching for
every model of the registry, the path to the planted twin is constant, the weight-matching
objective never decreases and ends at a fixed point, correlations are those of the data, and
eval_curve.py runs both finders end to end and records the permutation."""
import numpy as np
import pytest
import torch

import eval_curve
import models
from models.dense import LinearNoBias
import point_finders
from models.architecture import Architecture, Described, after, linear_part, permute, unit_rows
from point_finders.alignment import (ActivationStatistics, WeightMatching, activation_matching,
                                     weight_matching)
from point_finders.matching import assignment
import train
from utils import UserError

SHAPES = {"LinearOneLayer": (1, 8, 8), "Linear3NoBias": (1, 8, 8), "VGG16": (3, 32, 32),
          "PreResNet110": (3, 32, 32)}
SAMPLES = {"LinearOneLayer": 96, "Linear3NoBias": 96, "VGG16": 96, "PreResNet110": 16}
MODELS = list(SHAPES)
ALIGNERS = {"WeightMatching": weight_matching, "ActivationMatching": activation_matching}


def planted(name, seed=0):
    """A random ``name`` network (float64, BatchNorm statistics random too), a twin with every
    group's units randomly permuted, the permutations, and inputs on which no unit is dead."""
    torch.manual_seed(seed)
    model = models.build_model(name, 10, SHAPES[name]).double().eval()
    groups = model.architecture.groups
    generator = torch.Generator().manual_seed(seed + 1)
    perms = {g.name: torch.randperm(g.size, generator=generator) for g in groups}
    x = torch.randn(SAMPLES[name], *SHAPES[name], dtype=torch.float64, generator=generator)
    calibrate(model, x)
    revive(model, x)
    twin = models.build_model(name, 10, SHAPES[name]).double().eval()
    twin.load_state_dict(permute(model.state_dict(), groups, perms))
    return model, twin, perms, x


@torch.no_grad()
def calibrate(model, x):
    """BatchNorm layers with random affine parameters and running statistics those of ``x``:
    every channel varies and none is dead after its ReLU."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch sets them
    model.train()(x)
    model.eval()


@torch.no_grad()
def revive(model, x):
    """A chain's hidden units that are zero on every input of ``x`` get their incoming weights
    negated, layer by layer, so that every unit is alive (a dead unit's activations say nothing
    about which unit it is, for activation matching as for any data-based method)."""
    h = x
    for l, layer in enumerate(model.architecture.layers[:-1]):
        W, b = model.tensor(layer.weight), model.tensor(layer.bias) if layer.bias else None
        output = after(layer, linear_part(layer, h, W, b), flatten=False)
        dead = unit_rows(output).amax(0) <= 0
        W[dead] *= -1
        if b is not None:
            b[dead] *= -1
        h = model.step(l, h, W, b)
    assert all((rows.amax(0) > 0).all() for rows in model.unit_activations(x).values())


def assert_undone(model, twin, found):
    aligned = permute(twin.state_dict(), model.architecture.groups, found)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(aligned[key], value, rtol=0, atol=0, msg=key)


def slow(*values):
    """A parameter set of the slow run only (a 6144-unit float64 weight matching, VGG16's)."""
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.mark.parametrize("name, aligner", [
    (name, aligner) if (name, aligner) not in {("Linear3NoBias", "WeightMatching"),
                                               ("VGG16", "WeightMatching")}
    else slow(name, aligner) for name in MODELS for aligner in ALIGNERS])
def test_a_planted_permutation_is_recovered_exactly(name, aligner):
    model, twin, planted_perms, x = planted(name)
    found, record = ALIGNERS[aligner](model, twin, x, seed=3)
    assert_undone(model, twin, found)
    for group in model.architecture.groups:  # found[g] is the inverse of the planted shuffle
        assert torch.equal(planted_perms[group.name][found[group.name]], torch.arange(group.size))
    if aligner == "WeightMatching":
        history = record["weight_matching_objective"]
        assert all(b >= a - 1e-9 * abs(a) for a, b in zip(history, history[1:]))
    else:
        np.testing.assert_allclose(record["activation_matching_correlation"], 1.0, rtol=1e-9)


@pytest.mark.parametrize("name, aligner", [
    slow("Linear3NoBias", "WeightMatching"), ("Linear3NoBias", "ActivationMatching"),
    ("PreResNet110", "WeightMatching"), ("PreResNet110", "ActivationMatching")])
def test_the_path_to_a_permuted_twin_is_constant(name, aligner):
    model, twin, _, x = planted(name)
    finder = point_finders.make_point_finder(aligner, model, twin, x, name, torch.float64)
    expected = model(x)
    for t in (0.0, 0.3, 0.5, 1.0):  # (the arc between equal ends passes by their mean: Eq. 6)
        network = finder.network(finder.point(t, "lin_connect").params)  # model 1's statistics
        torch.testing.assert_close(network(x), expected, rtol=1e-9, atol=1e-9)


class Small4NoBias(LinearNoBias):
    hidden = (128, 96, 64)


def test_weight_matching_never_decreases_and_ends_at_a_fixed_point():
    torch.manual_seed(0)
    one, two = (Small4NoBias(10, 64).double() for _ in range(2))
    groups = one.architecture.groups
    keys = [n for n, _ in one.named_parameters()]
    matching = WeightMatching(one.state_dict(), two.state_dict(), groups, keys)
    perms, history = matching.run(seed=1)
    assert len(history) >= 3 and all(b >= a for a, b in zip(history, history[1:]))
    assert history[-1] > history[0]
    assert not any(matching.step(g) for g in groups)  # one more sweep changes nothing
    shuffle = {g.name: torch.randperm(g.size) for g in groups}  # a planted permutation, 3 groups
    twin = Small4NoBias(10, 64).double()
    twin.load_state_dict(permute(one.state_dict(), groups, shuffle))
    found, _ = weight_matching(one, twin, None, seed=2)
    assert_undone(one, twin, found)


@pytest.mark.parametrize("name", ["Linear3NoBias", slow("VGG16"), "PreResNet110"])
@torch.no_grad()
def test_correlations_are_those_of_the_whole_data_whatever_the_batches(name):
    model, _, _, x = planted(name)
    torch.manual_seed(5)
    other = models.build_model(name, 10, SHAPES[name]).double().eval()
    statistics = ActivationStatistics()
    for xb in x.split(37):
        statistics.add(model.unit_activations(xb), other.unit_activations(xb))
    seen1, seen2 = model.unit_activations(x), other.unit_activations(x)
    assert set(seen1) == {g.name for g in model.architecture.groups}
    for group in model.architecture.groups:
        a1, a2 = seen1[group.name], seen2[group.name]
        assert a1.shape[1] == group.size
        with np.errstate(invalid="ignore"):  # a constant (dead) unit: 0/0, made 0 below
            expected = np.corrcoef(a1.T.numpy(), a2.T.numpy())[:group.size, group.size:]
        expected = np.nan_to_num(expected)  # a constant unit correlates with nothing
        np.testing.assert_allclose(statistics.correlation(group.name).numpy(), expected, atol=1e-9)


@torch.no_grad()
def test_chain_activations_are_the_layers_outputs():
    torch.manual_seed(0)
    model, x = models.build_model("VGG16", 10, (3, 32, 32)).eval(), torch.randn(4, 3, 32, 32)
    seen = model.unit_activations(x)
    for l in (0, 1, 12, 13):
        torch.testing.assert_close(seen[f"layer {l}"], unit_rows(model.features(x, l + 1)))


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Two LinearOneLayer100 end-points trained on Digits for 3 epochs."""
    root = tmp_path_factory.mktemp("endpoints")
    for seed in (1, 2):
        train.main([f"--dir={root / str(seed)}", "--dataset=Digits", "--model=LinearOneLayer100",
                    "--epochs=3", f"--seed={seed}"])
    return [str(root / str(seed) / "checkpoint-3.pt") for seed in (1, 2)]


@pytest.mark.parametrize("finder", ALIGNERS)
def test_eval_curve_records_the_permutation(tmp_path, endpoints, finder, capsys):
    eval_curve.main([f"--dir={tmp_path}", f"--point_finder={finder}", "--method=arc_connect",
                     "--model=LinearOneLayer100", "--dataset=Digits", "--num_points=5",
                     f"--start={endpoints[0]}", f"--end={endpoints[1]}"])
    result = np.load(tmp_path / "curve.npz")
    out = capsys.readouterr().out
    assert f"Arc + {finder.replace('Matching', ' matching').lower()}" in out and "summary:" in out
    assert [str(n) for n in result["aligned_groups"]] == ["layer 0"]
    perm = torch.from_numpy(result["perm_0"])
    assert sorted(perm.tolist()) == list(range(100)) and not torch.equal(perm, torch.arange(100))
    one, two = (torch.load(p, weights_only=True)["model_state"] for p in endpoints)
    model = models.build_model("LinearOneLayer100", 10, (1, 8, 8))
    twin = permute(two, model.architecture.groups, {"layer 0": perm})
    x = torch.rand(50, 64)
    model.load_state_dict(two)
    expected = model(x)
    model.load_state_dict(twin)  # the path's end: model 2's function
    torch.testing.assert_close(model(x), expected)
    np.testing.assert_allclose(result["ts"], np.linspace(0, 1, 5))
    key = "weight_matching_objective" if finder == "WeightMatching" else \
        "activation_matching_correlation"
    assert np.isfinite(result[key]).all() and float(result["build_time"]) > 0
    if finder == "WeightMatching":  # the path ends at the twin: its test accuracy is model 2's
        assert np.diff(result[key]).min() >= 0


@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros", "one unit", "wide range"])
@pytest.mark.parametrize("maximize", [False, True])
def test_the_assignment_solver_is_exact(kind, maximize):
    """The solver (lapjv) reaches scipy's optimum, on ties and degenerate costs too."""
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(0)
    n = 1 if kind == "one unit" else 300
    cost = {"uniform": rng.random((n, n)), "ties": rng.integers(0, 3, (n, n)).astype(float),
            "zeros": np.zeros((n, n)), "one unit": rng.random((1, 1)),
            "wide range": rng.standard_normal((n, n)) * 10.0 ** rng.integers(-6, 6, (n, n))}[kind]
    perm = assignment(torch.from_numpy(cost), maximize).numpy()
    assert sorted(perm.tolist()) == list(range(n))
    rows, cols = linear_sum_assignment(cost, maximize=maximize)
    optimum = cost[rows, cols].sum()
    assert abs(cost[np.arange(n), perm].sum() - optimum) <= 1e-12 * max(abs(optimum), 1.0)


class Bare(Described):
    """A network whose description has neither a chain nor hidden-unit groups."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def describe(self):
        return Architecture((), ())

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("finder", ALIGNERS)
def test_a_model_without_groups_is_one_line_naming_what_fits(finder):
    with pytest.raises(UserError) as error:
        point_finders.make_point_finder(finder, Bare(), Bare(), torch.randn(5, 4), "Bare")
    assert str(error.value) == (f"{finder} does not fit model Bare (it needs a network with "
                                f"hidden-unit groups); finders that fit it: PointFinderSimultaneous")
