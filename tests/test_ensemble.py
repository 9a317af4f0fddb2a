"""WA(n) ensembling: the hybrid's math on tiny nets, eval_ensemble.py end to end, bad input."""
import os

import numpy as np
import pytest
import torch

import data
import eval_ensemble
import wa_ensemble
import models
import train
from conftest import assert_user_error, run_script, write_cifar
from models import LinearNoBias


class Tiny3NoBias(LinearNoBias):
    hidden = (24, 16)


@pytest.fixture(scope="module")
def digits():
    return data.load_split("Digits", None, True), data.load_split("Digits", None, False)


def tiny(seed):
    torch.manual_seed(seed)
    return Tiny3NoBias(num_classes=10, input_dim=64).double().eval()


def hybrid_of(base, member, x, layer):
    index = wa_ensemble.check_layers(base, "Tiny3NoBias", layer, layer + 1)
    weight, = wa_ensemble.adjusted_weights(base, [member], x, wa_ensemble.entering(base, layer), index,
                                           500)
    params = wa_ensemble.hybrid_parameters([p.detach() for p in base.parameters()], member,
                                             weight, index)
    net = Tiny3NoBias(num_classes=10, input_dim=64).double().eval()
    for p, value in zip(net.parameters(), params):
        p.data = value
    return net, params


@pytest.mark.parametrize("layer", [0, 1])
def test_base_onto_itself_and_permutations_are_undone(digits, layer):
    (x, _), (x_test, _) = digits
    x, x_test = x.double(), x_test.double()
    base = tiny(0)
    net, _ = hybrid_of(base, base, x, layer)
    torch.testing.assert_close(net(x_test), base(x_test), rtol=1e-7, atol=1e-8)
    permuted = tiny(0)
    perm = torch.randperm(Tiny3NoBias.hidden[layer], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        permuted.linear_layers[layer].weight.copy_(permuted.linear_layers[layer].weight[perm])
        nxt = permuted.linear_layers[layer + 1].weight
        nxt.copy_(nxt[:, perm])
    torch.testing.assert_close(permuted(x_test), base(x_test))
    net, params = hybrid_of(base, permuted, x, layer)
    torch.testing.assert_close(net(x_test), permuted(x_test), rtol=1e-7, atol=1e-8)
    alive = base(x, N=layer).amax(0) > 0
    torch.testing.assert_close(params[layer + 1][:, alive], base.linear_layers[layer + 1].weight[:, alive])


def test_adjusted_weights_are_the_least_squares_solution(digits):
    (x, _), _ = digits
    x = x.double()
    base, member = tiny(0), tiny(5)
    _, params = hybrid_of(base, member, x, 1)
    F_base = base(x, N=1).detach().numpy()
    targets = (member(x, N=1) @ member.linear_layers[2].weight.T).detach().numpy()
    expected = np.linalg.lstsq(F_base, targets, rcond=None)[0].T
    np.testing.assert_allclose(params[2].numpy(), expected, rtol=1e-7, atol=1e-9)
    assert params[0] is not None and torch.equal(params[0], base.linear_layers[0].weight.detach())


def test_layer_pairs():
    model = models.build_model("Linear3NoBias", 10, (1, 8, 8))
    assert wa_ensemble.check_layers(model, "Linear3NoBias", 1, 2) == 2
    assert wa_ensemble.check_layers(model, "Linear3NoBias", 1, -1) == 2
    assert wa_ensemble.check_layers(model, "Linear3NoBias", 0, -2) == 1
    vgg = models.build_model("VGG16", 100, (3, 32, 32))
    assert wa_ensemble.check_layers(vgg, "VGG16", 9, -14) == 18
    assert wa_ensemble.check_layers(vgg, "VGG16", 10, -12) == 20
    assert wa_ensemble.check_layers(vgg, "VGG16", 3, -26) == 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three Linear3NoBias end-points on Digits in folders named like the README's."""
    root = tmp_path_factory.mktemp("ckpt") / "Linear3NoBias"
    for seed in (1, 2, 3):
        train.main([f"--dir={root / f'chp{seed}'}", "--dataset=Digits", "--model=Linear3NoBias",
                    "--epochs=2", f"--seed={seed}"])
    return root


def test_eval_ensemble_end_to_end(tmp_path, checkpoints, digits, capsys):
    eval_ensemble.main([f"--dir={tmp_path}", "--dataset=Digits", "--model=Linear3NoBias",
                        "--name=-2", "--layer=1", "--layer_ind=2", f"--model_paths={checkpoints}"])
    out = capsys.readouterr().out
    assert "WA(1) ensemble of 3" in out
    assert sorted(os.listdir(tmp_path)) == ["ens_stat.npz", "ensemble.png"]
    stats = np.load(tmp_path / "ens_stat.npz")
    paths = [str(checkpoints / f"chp{s}" / "checkpoint-2.pt") for s in (1, 2, 3)]
    assert list(stats["checkpoints"]) == paths
    assert stats["one_model_accuracy_adjusted"][0] == stats["one_model_accuracy"][0]
    # the running ensemble accuracy equals averaged softmax outputs computed here independently
    (_, _), (x_test, y_test) = digits
    probabilities = []
    for path in paths:
        state = torch.load(path, weights_only=True)["model_state"]
        h = x_test.flatten(1).double().numpy()
        for i in range(3):
            h = h @ state[f"linear_layers.{i}.weight"].double().numpy().T
            h = np.maximum(h, 0) if i < 2 else h
        e = np.exp(h - h.max(1, keepdims=True))
        probabilities.append(e / e.sum(1, keepdims=True))
        mean = np.mean(probabilities, axis=0)
        expected = 100 * (mean.argmax(1) == y_test.numpy()).mean()
        assert abs(stats["ensemble_accuracy"][len(probabilities) - 1] - expected) < 1e-6
    assert stats["ensemble_parameters"][-1] == 3 * stats["ensemble_parameters"][0]
    assert stats["ensemble_parameters_adjusted"][-1] < stats["ensemble_parameters"][-1]


def test_vgg16_ensemble_on_cifar100_format(tmp_path, no_cifar_md5):
    write_cifar(str(tmp_path / "data"), "CIFAR100", n_per_batch=6)
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = models.build_model("VGG16", 100, (3, 32, 32))
        os.makedirs(tmp_path / "ckpt" / f"chp{seed}")
        torch.save({"epoch": 200, "model_state": model.state_dict()},
                   tmp_path / "ckpt" / f"chp{seed}" / "checkpoint-200.pt")
    eval_ensemble.main([f"--dir={tmp_path / 'out'}", f"--data_path={tmp_path / 'data'}",
                        "--model=VGG16", "--name=200", "--layer=9", "--layer_ind=-14",
                        f"--model_paths={tmp_path / 'ckpt'}", "--dataset=CIFAR100"])
    stats = np.load(tmp_path / "out" / "ens_stat.npz")
    assert len(stats["ensemble_accuracy"]) == 2 and int(stats["layer_ind"]) == 18
    assert stats["one_model_accuracy_adjusted"][0] == stats["one_model_accuracy"][0]


@pytest.mark.parametrize("args,fragments", [
    (["--name=3", "--layer=1", "--layer_ind=2"], ["has '3' in its file name"]),
    (["--name=2", "--layer=1", "--layer_ind=1"],
     ["valid pairs: --layer=1 --layer_ind=2, --layer=0 --layer_ind=1"]),
    (["--name=2", "--layer=0", "--layer_ind=2", "--model=Linear5NoBias"], ["do not name the same"]),
    (["--name=2", "--layer=3", "--layer_ind=4", "--model=Linear5NoBias"],
     ["does not fit --model=Linear5NoBias"]),
])
def test_bad_input(tmp_path, checkpoints, args, fragments):
    base = [f"--dir={tmp_path / 'out'}", "--dataset=Digits", f"--model_paths={checkpoints}"]
    if not any(a.startswith("--model=") for a in args):
        base.append("--model=Linear3NoBias")
    assert_user_error(run_script("eval_ensemble.py", *base, *args), *fragments)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_a_member_of_another_data_set_is_refused(tmp_path, checkpoints):
    """A member recorded as trained on another data set is one error; nothing is written."""
    folder = tmp_path / "Linear3NoBias"
    for seed in (1, 2):
        (folder / f"chp{seed}").mkdir(parents=True)
        state = torch.load(checkpoints / f"chp{seed}" / "checkpoint-2.pt", weights_only=True)
        torch.save({**state, "dataset": "MNIST" if seed == 2 else "Digits"},
                   folder / f"chp{seed}" / "checkpoint-2.pt")
    assert_user_error(run_script("eval_ensemble.py", f"--dir={tmp_path / 'out'}", "--dataset=Digits",
                                 "--model=Linear3NoBias", "--name=2", "--layer=1", "--layer_ind=2",
                                 f"--model_paths={folder}"),
                      "was trained on MNIST, not on --dataset=Digits")
    assert not (tmp_path / "out").exists()
