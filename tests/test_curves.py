"""Trained curves (Bezier, PolyChain): their coefficients, their gradients, training that flattens
the path, exact resume, every model of the registry, eval_curve.py on a curve, bad input."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curves
import eval_curve
import models
import train
from conftest import assert_user_error, run_script
from test_point_finders import Tiny3NoBias, tiny_pair
from utils import UserError

DIGITS = ["--dataset=Digits", "--model=LinearOneLayer100"]


@pytest.mark.parametrize("kind", curves.CURVES)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_coefficients_sum_to_one_and_two_bends_are_the_line(kind, n):
    for t in np.linspace(0, 1, 41):
        c = curves.COEFFICIENTS[kind](t, n)
        assert len(c) == n and min(c) >= 0 and abs(sum(c) - 1) < 1e-12
        assert c[0] == (1.0 if t == 0 else c[0]) and c[-1] == (1.0 if t == 1 else c[-1])
        if n == 2:
            assert np.allclose(c, [1 - t, t], rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_polychain_passes_through_every_bend(n):
    for j in range(n):
        assert curves.polychain(j / (n - 1), n) == [1.0 if k == j else 0.0 for k in range(n)]


def tiny_curve(kind="Bezier", n=3, fixed=(0, 2), seed=0):
    """A float64 curve of Tiny3NoBias with random (non-linear) bends."""
    nets = [Tiny3NoBias(10, 64).double() for _ in range(n)]
    torch.manual_seed(seed)
    for net in nets:
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    curve = curves.Curve(nets[0], kind, n, fixed)
    for j, net in enumerate(nets[1:], 1):
        curve.set_bend(j, net.parameters())
    return curve, nets


@pytest.mark.parametrize("kind", curves.CURVES)
def test_fixed_ends_give_exactly_the_end_points(kind):
    curve, nets = tiny_curve(kind)
    x = torch.randn(20, 1, 8, 8, dtype=torch.float64)
    for t, net in ((0.0, nets[0]), (1.0, nets[2])):
        assert torch.equal(curve(x, t), net(x))
    assert [p.requires_grad for p in curve.bends] == [False] * 3 + [True] * 3 + [False] * 3


def bend_gradients(curve, x, y, t):
    """The free bends' gradients after a forward pass at ``t`` and its backward pass."""
    for p in curve.parameters():
        p.grad = None
    F.cross_entropy(curve(x, t), y).backward()
    curve.bend_gradients()
    return [p.grad for p in curve.parameters() if p.requires_grad]


@pytest.mark.parametrize("fixed", [(), (0, 3)])
@pytest.mark.parametrize("kind", curves.CURVES)
def test_gradient_reaching_a_bend_is_its_coefficient_times_the_networks(kind, fixed):
    """... with the weight decay of w(t) (0.5 wd ||w(t)||², wd = 0.01) in the network's loss; every
    bend free, or the ends fixed (two free bends of different coefficients beside a fixed part)."""
    curve, _ = tiny_curve(kind, n=4, fixed=fixed)
    x, y = torch.randn(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    t = 0.37
    c, size = curve.coefficients(t), len(curve.names)
    free = [j for j in range(4) if curve.bends[j * size].requires_grad]
    curve.weight_decay = 0.01
    grads = bend_gradients(curve, x, y, t)
    net = curves.network(curve, t)
    loss = F.cross_entropy(net(x), y) + 0.005 * sum(p.pow(2).sum() for p in net.parameters())
    net_grads = torch.autograd.grad(loss, list(net.parameters()))
    curve.weight_decay = 0.0
    for k, j in enumerate(free):
        for i in range(size):
            torch.testing.assert_close(grads[k * size + i], c[j] * net_grads[i], rtol=1e-10, atol=1e-14)
    grads = bend_gradients(curve, x, y, t)
    # and against finite differences, on a few coordinates of every free bend
    for k, j in enumerate(free):
        bend = curve.bends[j * size]
        for index in [(0, 0), (3, 17), (5, 40)]:
            with torch.no_grad():
                bend[index] += 1e-6
                up = F.cross_entropy(curve(x, t), y).item()
                bend[index] -= 2e-6
                down = F.cross_entropy(curve(x, t), y).item()
                bend[index] += 1e-6
            assert abs((up - down) / 2e-6 - grads[k * size][index].item()) < 1e-7


def test_attached_optimizer_steps_with_the_bends_gradients():
    """``attach``: an ordinary loop (zero_grad, backward, step) trains the free bends, each by its
    share of the gradient; the model's own gradients are taken, not left to accumulate; a step
    before any backward pass changes nothing."""
    curve, _ = tiny_curve()
    x, y = torch.randn(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    expected = [p.detach().add(g, alpha=-0.1)  # SGD's update, as it computes it
                for p, g in zip(curve.bend(1), bend_gradients(curve, x, y, 0.4))]
    optimizer = torch.optim.SGD(curve.bend(1), lr=0.1)
    curve.attach(optimizer)
    optimizer.zero_grad(set_to_none=True)
    before = [p.clone() for p in curve.parameters()]
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, curve.parameters()))
    for p in curve.parameters():
        p.grad = None
    F.cross_entropy(curve(x, 0.4), y).backward()
    optimizer.step()
    assert all(torch.equal(p, e) for p, e in zip(curve.bend(1), expected))
    assert all(p.grad is None for p in curve.model.parameters())


def test_a_graph_made_stale_by_a_later_forward_fails_loudly():
    """w(t) is written in place: backward through a forward whose weights a later forward replaced
    fails instead of giving the gradients of other weights (autograd's check of the weights it
    saved), and so do the bends' gradients when the weights were changed after the backward pass
    by anything but the curve."""
    curve, _ = tiny_curve()
    x, y = torch.randn(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    loss = F.cross_entropy(curve(x, 0.3), y)
    curve(x, 0.6)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    curve.zero_grad()
    F.cross_entropy(curve(x, 0.3), y).backward()
    with torch.no_grad():
        next(curve.model.parameters()).mul_(2)
    with pytest.raises(RuntimeError, match="changed between its forward pass"):
        curve.bend_gradients()


def test_gradients_add_up_over_backward_passes_until_zeroed():
    """Several forward and backward passes before a step (and a forward without gradients between
    them) give the sum of each pass's bend gradients, as for any module; ``zero_grad`` discards a
    pass's gradient still waiting in the model's parameters."""
    curve, _ = tiny_curve(fixed=(0,))
    x, y = torch.randn(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    parts = [[g.clone() for g in bend_gradients(curve, x[k::2], y[k::2], t)]
             for k, t in enumerate((0.3, 0.7))]
    curve.zero_grad()
    for k, t in enumerate((0.3, 0.7)):
        F.cross_entropy(curve(x[k::2], t), y[k::2]).backward()
        with torch.no_grad():
            curve(x, 0.5)
    curve.bend_gradients()
    summed = [p.grad for p in curve.parameters() if p.requires_grad]
    for total, a, b in zip(summed, *parts):
        torch.testing.assert_close(total, a + b, rtol=1e-12, atol=1e-15)
    F.cross_entropy(curve(x, 0.3), y).backward()
    curve.zero_grad()
    assert all(p.grad is None for p in curve.model.parameters())
    alone = bend_gradients(curve, x[1::2], y[1::2], 0.7)  # nothing of the discarded pass
    assert all(torch.equal(a, b) for a, b in zip(alone, parts[1]))
    curve.zero_grad()
    curve.requires_grad_(False)  # every bend fixed: nothing to give
    F.cross_entropy(curve(x, 0.3), y).backward()
    curve.bend_gradients()
    assert all(p.grad is None for p in curve.parameters())


def test_a_gradient_left_unaveraged_by_no_sync_is_refused():
    """Under ``DistributedDataParallel.no_sync`` a backward pass leaves each rank its own gradient
    of w(t); the next forward refuses to share it out (the ranks' bends would part)."""

    class Unsynced(nn.Module):  # the model's wrapper, as no_sync leaves DistributedDataParallel
        def __init__(self, model):
            super().__init__()
            self.module, self.require_backward_grad_sync = model, False

        def forward(self, x):
            return self.module(x)

    curve, _ = tiny_curve()
    curve.run_with(Unsynced(curve.model))
    x, y = torch.randn(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    F.cross_entropy(curve(x, 0.3), y).backward()
    with pytest.raises(RuntimeError, match="no_sync"):
        curve(x, 0.5)


def test_a_curve_after_loading_with_assign_uses_the_loaded_bends():
    curve, _ = tiny_curve()
    other, _ = tiny_curve(seed=1)
    curve.load_state_dict(other.state_dict(), assign=True)
    assert all(torch.equal(a, b) for a, b in zip(curve.weights(0.4), other.weights(0.4)))


def test_the_curve_copies_its_model_and_sets_its_mode():
    """The model given is left as it is; ``train()`` and ``eval()`` reach the curve's copy."""
    curve, nets = tiny_curve()
    before = [p.clone() for p in nets[0].parameters()]
    curve(torch.randn(3, 1, 8, 8, dtype=torch.float64), 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, nets[0].parameters()))
    assert curve.model is not nets[0]
    assert not curve.eval().model.training and curve.train().model.training


@pytest.mark.parametrize("one_pass", [True, False])
@pytest.mark.parametrize("free", [(1,), (1, 2)])
@pytest.mark.parametrize("expanded", [False, True])
@pytest.mark.parametrize("wd", [1e-3, 0.0])
def test_combination_by_slices_gives_the_bits_of_whole_tensor_operations(monkeypatch, free, expanded,
                                                                         wd, one_pass):
    """``combine`` and ``gradients`` work on a model's tensors in one call: slice by slice for a
    tensor larger than a slice (here 1000-element slices, the last shorter), one
    ``torch._foreach_*`` call per operation for the tensors that fit in one; w(t) and the
    gradients are those of whole-tensor operations in the same order, bit for bit: the terms in
    the order given (the curve's: fixed bends first, then the free ones); a free bend's gradient
    c (g + wd w), with and without decay. ``expanded``: the gradients of w are broadcast
    (non-contiguous) tensors. ``one_pass``: the first term written a tensor at a time (as on the
    CPU) or by a copy and a product for all the tensors (as on a GPU)."""
    monkeypatch.setattr(curves, "CHUNK_BYTES", 4 * 1000)
    monkeypatch.setattr(curves, "ONE_PASS_DEVICES", {"cpu"} if one_pass else set())
    torch.manual_seed(0)
    c, shapes = [0.3, 0.25, 0.4, 0.05], [(3000, 7), (5, 3), (40,)]
    bends = [[torch.randn(shape) for shape in shapes] for j in range(4)]
    order = sorted(range(4), key=lambda j: j in free)
    w = [torch.empty(shape) for shape in shapes]
    curves.combine([bends[j] for j in order], [c[j] for j in order], w)
    g = [torch.ones(()).expand(shape) if expanded else torch.randn(shape) for shape in shapes]
    grads = curves.gradients(g, w if wd else None, wd, [c[j] for j in free])
    for i in range(len(shapes)):
        expected = torch.mul(bends[order[0]][i], c[order[0]])
        for j in order[1:]:
            expected.add_(bends[j][i], alpha=c[j])
        assert torch.equal(w[i], expected)
        total = g[i].add(expected, alpha=wd) if wd else g[i]
        for k, j in enumerate(free):
            assert torch.equal(grads[k][i], total * c[j])


@pytest.mark.parametrize("name", ["VGG16", "PreResNet110"])
def test_every_architecture_has_curves(name):
    """No curve twin of any layer: the conv nets (BatchNorm included) train along a curve."""
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(models.build_model(name, 10, (3, 32, 32)).eval())
    curve = curves.Curve(nets[0], "Bezier", 3, fixed=(0, 2))
    curve.set_bend(2, nets[1].parameters())
    curve.init_linear()
    x = torch.randn(4, 3, 32, 32)
    curve.eval()
    assert torch.equal(curve(x, 0.0), nets[0](x)) and torch.equal(curve(x, 1.0), nets[1](x))
    curve.train()
    F.cross_entropy(curve(x), torch.arange(4)).backward()
    curve.bend_gradients()
    size = len(curve.names)
    assert all(p.grad is None for p in curve.bend(0)) and all(p.grad is not None for p in curve.bend(1))
    assert size == len(list(nets[0].parameters()))


@pytest.fixture(scope="module")
def ends(tmp_path_factory):
    """Two LinearOneLayer100 end-points on Digits (4 epochs, seeds 1 and 2)."""
    folder = tmp_path_factory.mktemp("ends")
    for seed in (1, 2):
        train.main([f"--dir={folder / str(seed)}", *DIGITS, "--epochs=4", "--save_freq=4",
                    "--lr=0.05", f"--seed={seed}"])
    return folder / "1" / "checkpoint-4.pt", folder / "2" / "checkpoint-4.pt"


def curve_flags(ends, kind="Bezier"):
    return [*DIGITS, f"--curve={kind}", f"--init_start={ends[0]}", f"--init_end={ends[1]}",
            "--fix_start", "--fix_end", "--lr=0.05"]


def states(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def mid_curve_loss(path):
    import data
    checkpoint = states(path)
    model = models.build_model("LinearOneLayer100", 10, (1, 8, 8))
    curve = curves.Curve(model, checkpoint["curve"], checkpoint["num_bends"])
    curve.load_state_dict(checkpoint["model_state"])
    x, y = data.load_split("Digits", None, True)
    with torch.no_grad():
        return F.cross_entropy(curves.network(curve, 0.5)(x), y).item()


def test_training_lowers_the_middle_and_resumes_bit_identically(ends, tmp_path):
    flags = curve_flags(ends) + ["--epochs=4", "--save_freq=2"]
    train.main([f"--dir={tmp_path / 'run'}", *flags])
    start = states(tmp_path / "run" / "checkpoint-0.pt")
    end = states(tmp_path / "run" / "checkpoint-4.pt")
    assert start["curve"] == "Bezier" and start["num_bends"] == 3 and start["fix_start"]
    assert start["init_start"] == os.path.abspath(ends[0]) and end["training_time"] > 0
    assert mid_curve_loss(tmp_path / "run" / "checkpoint-4.pt") < \
        0.8 * mid_curve_loss(tmp_path / "run" / "checkpoint-0.pt")
    size = len(start["model_state"]) // 3
    for i in range(size):  # the fixed ends never move; the middle bend starts on the line
        assert torch.equal(start["model_state"][f"bends.{i}"], end["model_state"][f"bends.{i}"])
        middle = 0.5 * (start["model_state"][f"bends.{i}"] + start["model_state"][f"bends.{2 * size + i}"])
        torch.testing.assert_close(start["model_state"][f"bends.{size + i}"], middle)
    train.main([f"--dir={tmp_path / 'resumed'}", f"--resume={tmp_path / 'run' / 'checkpoint-2.pt'}",
                *flags])
    resumed = states(tmp_path / "resumed" / "checkpoint-4.pt")
    assert all(torch.equal(resumed["model_state"][k], v) for k, v in end["model_state"].items())
    assert resumed["training_time"] > states(tmp_path / "run" / "checkpoint-2.pt")["training_time"]


def test_eval_curve_evaluates_a_trained_curve(ends, tmp_path, capsys):
    flags = curve_flags(ends, "PolyChain") + ["--epochs=1", "--num_bends=4"]
    train.main([f"--dir={tmp_path / 'curve'}", *flags])
    checkpoint = tmp_path / "curve" / "checkpoint-1.pt"
    eval_curve.main([f"--dir={tmp_path / 'eval'}", *DIGITS, "--point_finder=PolyChain",
                     f"--curve_checkpoint={checkpoint}", f"--start={ends[0]}", "--num_points=7"])
    assert "PolyChain [PolyChain curve (trained" in capsys.readouterr().out
    eval_curve.main([f"--dir={tmp_path / 'line'}", *DIGITS, "--point_finder=PointFinderSimultaneous",
                     f"--start={ends[0]}", f"--end={ends[1]}", "--num_points=7"])
    curve, line = (np.load(tmp_path / k / "curve.npz") for k in ("eval", "line"))
    assert set(line.files) - set(curve.files) == set()
    assert float(curve["build_time"]) == states(checkpoint)["training_time"]
    for key in ("tr_loss", "te_loss", "tr_err", "te_err"):  # the same ends
        np.testing.assert_allclose(curve[key][[0, -1]], line[key][[0, -1]], rtol=1e-6)
    assert os.path.isfile(tmp_path / "eval" / "curve.png")


@pytest.fixture(scope="module")
def others(ends, tmp_path_factory):
    """An end-point of another model and a 1-epoch Bezier curve between ``ends``."""
    folder = tmp_path_factory.mktemp("others")
    train.main([f"--dir={folder / 'other'}", "--dataset=Digits", "--model=LinearOneLayer",
                "--epochs=1"])
    train.main([f"--dir={folder / 'c'}", *curve_flags(ends), "--epochs=1"])
    return folder / "other" / "checkpoint-1.pt", folder / "c" / "checkpoint-1.pt"


@pytest.mark.parametrize("flags, fragment", [
    (["--curve=Spline"], "unknown curve 'Spline'"),
    (["--curve="], "unknown curve ''"),
    (["--curve=Bezier", "--num_bends=1"], "at least 2 bends"),
    (["--curve=Bezier", "--fix_start"], "--fix_start keeps the curve's start"),
    (["--curve=Bezier", "--num_bends=2", "--init_start={start}", "--init_end={end}", "--fix_start",
      "--fix_end"], "leaves no bend to train"),
    (["--fix_end", "--init_end={end}"], "only apply to a curve"),
    (["--curve=Bezier", "--init_start={start}", "--init_end={other}", "--fix_start", "--fix_end"],
     "does not fit --model=LinearOneLayer100"),
    (["--curve=Bezier", "--init_start={start}", "--init_end={curve}"], "is a Bezier curve"),
    (["--curve=Bezier", "--init_start={start}", "--init_end={mnist}"], "was trained on MNIST"),
])
def test_bad_curve_training_is_one_error_and_writes_nothing(ends, others, tmp_path, flags, fragment):
    mnist = tmp_path / "mnist.pt"  # the same network, recorded as trained on another data set
    torch.save({**states(ends[1]), "dataset": "MNIST"}, mnist)
    names = {"start": ends[0], "end": ends[1], "other": others[0], "curve": others[1], "mnist": mnist}
    with pytest.raises(UserError, match=re.escape(fragment)):
        train.main([f"--dir={tmp_path / 'out'}", *DIGITS, *[f.format(**names) for f in flags]])
    assert not (tmp_path / "out").exists()


def test_resuming_a_curve_from_other_end_points_is_refused(ends, others, tmp_path):
    """The curve of ``others`` (trained from ends[0] to ends[1]) resumed with the ends swapped: one
    error naming both, nothing written (the checkpoint would record ends the curve does not have)."""
    flags = [*DIGITS, "--curve=Bezier", f"--init_start={ends[1]}", f"--init_end={ends[0]}",
             "--fix_start", "--fix_end", "--lr=0.05", "--epochs=2", f"--resume={others[1]}"]
    with pytest.raises(UserError, match=re.escape(f"initialised with --init_start={ends[0]}")):
        train.main([f"--dir={tmp_path / 'out'}", *flags])
    assert not (tmp_path / "out").exists()


def test_bad_curve_evaluation_is_one_line(ends, others, tmp_path):
    curve = others[1]
    cases = [(["--point_finder=Bezier"], "give --curve_checkpoint"),
             (["--point_finder=PolyChain", f"--curve_checkpoint={curve}"], "use --point_finder=Bezier"),
             (["--point_finder=Bezier", f"--curve_checkpoint={ends[0]}"], "is not a curve"),
             (["--point_finder=Bezier", f"--curve_checkpoint={curve}", "--method=arc_connect"],
              "no connector"),
             (["--point_finder=Bezier", f"--curve_checkpoint={curve}", f"--end={ends[0]}"],
              "not the curve's fixed end"),
             (["--point_finder=PointFinderSimultaneous", f"--curve_checkpoint={curve}",
               f"--start={ends[0]}", f"--end={ends[1]}"], "--curve_checkpoint goes with")]
    for flags, fragment in cases:
        with pytest.raises(UserError, match=re.escape(fragment)):
            eval_curve.main([f"--dir={tmp_path / 'out'}", *DIGITS, *flags])
    assert not (tmp_path / "out").exists()


def test_a_curve_mistake_on_the_command_line_is_one_line(ends, tmp_path):
    assert_user_error(run_script("train.py", f"--dir={tmp_path / 'out'}", *DIGITS, "--curve=Bezier",
                                 "--num_bends=1"), "at least 2 bends")
    assert_user_error(run_script("eval_curve.py", f"--dir={tmp_path / 'out'}", *DIGITS,
                                 "--point_finder=Bezier"), "give --curve_checkpoint")
    assert not (tmp_path / "out").exists()


def test_a_tiny_pair_curve_starts_on_the_line():
    m1, m2 = tiny_pair(Tiny3NoBias, seed=3)
    curve = curves.Curve(m1, "Bezier", 5, fixed=(0, 4))
    curve.set_bend(4, m2.parameters())
    curve.init_linear()
    for t in (0.1, 0.5, 0.83):  # a Bezier curve with its bends evenly on a line is that line
        for w, a, b in zip(curve.weights(t), m1.parameters(), m2.parameters()):
            torch.testing.assert_close(w, (1 - t) * a + t * b)


def test_a_model_with_tied_parameters_has_curves():
    """A parameter shared by two layers is one tensor of each bend: w(t) reaches both layers, and
    the bend's gradient gathers both uses (that of the network at t)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    net[2].weight = net[0].weight
    curve = curves.Curve(net, "Bezier", 3, fixed=(0, 2))
    assert len(curve.bend(1)) == 3
    with torch.no_grad():
        for p in curve.parameters():
            p.normal_()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    F.cross_entropy(curve(x, 0.3), y).backward()
    curve.bend_gradients()
    at_t = curves.network(curve, 0.3)
    assert at_t[2].weight is at_t[0].weight
    expected = torch.autograd.grad(F.cross_entropy(at_t(x), y), list(at_t.parameters()))
    for p, g in zip(curve.bend(1), expected):
        torch.testing.assert_close(p.grad, curve.coefficients(0.3)[1] * g, rtol=1e-12, atol=1e-15)
