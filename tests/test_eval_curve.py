"""eval_curve.py end to end on Digits end-points: tables, curve.npz, curve.png, bad input."""
import os

import numpy as np
import pytest
import torch

import eval_curve
import train
from conftest import assert_user_error, run_script
from utils import UserError

REFERENCE_KEYS = ["ts", "dl", "tr_loss", "tr_nll", "tr_acc", "tr_err", "te_loss", "te_nll", "te_acc",
                  "te_err", "computation_time"] + [
    f"{q}_{s}" for q in ("tr_loss", "tr_nll", "tr_err", "te_loss", "te_nll", "te_err")
    for s in ("min", "max", "avg", "int")]


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Two LinearOneLayer and two Linear3NoBias end-points trained on Digits for a few epochs."""
    root = tmp_path_factory.mktemp("endpoints")
    paths = {}
    for model, epochs in (("LinearOneLayer", 4), ("Linear3NoBias", 2)):
        for seed in (1, 2):
            train.main([f"--dir={root / model / str(seed)}", "--dataset=Digits", f"--model={model}",
                        f"--epochs={epochs}", f"--seed={seed}"])
        paths[model] = [str(root / model / str(seed) / f"checkpoint-{epochs}.pt") for seed in (1, 2)]
    return paths


def run(tmp_path, endpoints, model, finder, method="lin_connect", *extra):
    start, end = endpoints[model]
    eval_curve.main([f"--dir={tmp_path}", f"--point_finder={finder}", f"--method={method}",
                     f"--model={model}", "--dataset=Digits", "--num_points=5", f"--start={start}",
                     f"--end={end}", *extra])
    return np.load(tmp_path / "curve.npz")


@pytest.mark.parametrize("finder", ["PointFinderWithBias", "PointFinderTransportation",
                                    "PointFinderInverseWithBias", "PointFinderInverseWithBiasOT"])
def test_table1_curves(tmp_path, endpoints, finder, capsys):
    result = run(tmp_path, endpoints, "LinearOneLayer", finder, "arc_connect")
    out = capsys.readouterr().out
    assert "Train error (%)" in out and "path length" in out
    for key in REFERENCE_KEYS:
        assert key in result.files, key
    end_time = 2 if "Inverse" in finder else 1
    np.testing.assert_allclose(result["ts"], np.linspace(0, end_time, 5))
    assert str(result["point_finder"]) == finder and str(result["method"]) == "arc_connect"
    assert result["dl"][0] == 0 and (result["dl"][1:] > 0).all()
    assert result["tr_err_max"] == result["tr_err"].max()
    assert sorted(os.listdir(tmp_path)) == ["curve.npz", "curve.png"]  # no temporary files left
    # the path starts at model 1 and ends at model 2 (as functions on the data)
    starts = [torch.load(p, weights_only=True) for p in endpoints["LinearOneLayer"]]
    assert abs(result["te_acc"][0] - digits_test_accuracy(starts[0])) < 1e-9
    assert abs(result["te_acc"][-1] - digits_test_accuracy(starts[1])) < 1e-9


def digits_test_accuracy(checkpoint):
    """Test accuracy of a LinearOneLayer checkpoint computed here, without the project's code."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    _, x, _, y = train_test_split(digits.images / 16.0, digits.target, test_size=0.2,
                                  random_state=0, stratify=digits.target)
    s = {k: v.double().numpy() for k, v in checkpoint["model_state"].items()}
    hidden = np.maximum(x.reshape(len(x), -1) @ s["fc.0.weight"].T + s["fc.0.bias"], 0)
    logits = hidden @ s["fc.2.weight"].T + s["fc.2.bias"]
    return 100.0 * (logits.argmax(1) == y).mean()


def test_step_wise_inverse_reports_jumps(tmp_path, endpoints, capsys):
    result = run(tmp_path, endpoints, "Linear3NoBias", "PointFinderStepWiseInverse")
    out = capsys.readouterr().out
    assert "The path jumps at t = 1" in out
    assert list(result["jump_ts"]) == [1.0]
    assert result["jump_tr_loss_left"].shape == (1,)
    np.testing.assert_allclose(result["ts"], np.linspace(0, 3, 5))


def test_partial_path_is_announced(tmp_path, endpoints, capsys):
    result = run(tmp_path, endpoints, "Linear3NoBias", "PointFinderStepWiseButterfly",
                 "lin_connect", "--end_time=1")
    assert "evaluating part of the path only" in capsys.readouterr().out
    assert result["ts"][-1] == 1.0 and float(result["end_time_of_path"]) == 2


def test_reference_checkpoints_give_the_same_path(tmp_path, endpoints):
    """A checkpoint holding only what the reference saves (epoch, model_state, optimizer_state)."""
    converted = []
    for i, path in enumerate(endpoints["LinearOneLayer"]):
        full = torch.load(path, weights_only=True)
        bare = {k: full[k] for k in ("epoch", "model_state", "optimizer_state")}
        converted.append(str(tmp_path / f"ref{i}.pt"))
        torch.save(bare, converted[-1])
    ours = run(tmp_path / "ours", endpoints, "LinearOneLayer", "PointFinderInverseWithBias")
    theirs = run(tmp_path / "theirs", {"LinearOneLayer": converted}, "LinearOneLayer",
                 "PointFinderInverseWithBias")
    for key in ("tr_loss", "te_err", "dl"):
        np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("model,args,fragments", [
    ("Linear3NoBias", ["--point_finder=PointFinderWithBias"],
     ["PointFinderWithBias does not fit model Linear3NoBias", "PointFinderStepWiseInverse"]),
    ("Linear3NoBias", ["--point_finder=PointFinderStepWiseInverse", "--end_time=4"],
     ["reaches model 2 at t=3", "--end_time=3"]),
    ("Linear3NoBias", ["--point_finder=PointFinderStepWiseInverse", "--num_points=1"],
     ["argument --num_points: must be at least 2"]),
    ("Linear3NoBias", ["--point_finder=PointFinderSimultaneous", "--method=bezier"],
     ["unknown method 'bezier'"]),
    ("Linear3NoBias", ["--point_finder=PointFinderFoo"], ["unknown point finder"]),
    ("LinearOneLayer", ["--point_finder=PointFinderSimultaneous", "--model=Linear3NoBias"],
     ["does not fit --model=Linear3NoBias", "saved for model LinearOneLayer"]),
])
def test_bad_input(tmp_path, endpoints, model, args, fragments):
    start, end = endpoints[model]
    base = [f"--dir={tmp_path / 'out'}", "--dataset=Digits", f"--model={model}",
            f"--start={start}", f"--end={end}"]
    result = run_script("eval_curve.py", *base, *args)
    assert_user_error(result, *fragments)
    assert not any(f.endswith((".npz", ".png")) for f in os.listdir(tmp_path / "out")) \
        if (tmp_path / "out").exists() else True


def test_missing_checkpoint(tmp_path):
    result = run_script("eval_curve.py", f"--dir={tmp_path}", "--dataset=Digits",
                        "--model=LinearOneLayer", "--point_finder=PointFinderWithBias",
                        "--start=nowhere.pt", "--end=nowhere.pt")
    assert_user_error(result, "--start checkpoint 'nowhere.pt' does not exist")


def test_end_points_of_another_data_set_are_refused(tmp_path, endpoints):
    """An end-point recorded as trained on another data set (same shapes) is one error naming both,
    as train.py's --init_start refuses it; nothing is written."""
    start, end = endpoints["LinearOneLayer"]
    other = tmp_path / "mnist.pt"
    torch.save({**torch.load(end, weights_only=True), "dataset": "MNIST"}, other)
    with pytest.raises(UserError, match="was trained on MNIST, not on --dataset=Digits"):
        eval_curve.main([f"--dir={tmp_path / 'out'}", "--point_finder=PointFinderWithBias",
                         "--model=LinearOneLayer", "--dataset=Digits", f"--start={start}",
                         f"--end={other}"])
    assert not (tmp_path / "out").exists()
