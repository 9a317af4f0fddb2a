"""train.py end to end on Digits: accuracy, bit-identical re-runs, exact resume, bad input."""
import os
import re

import pytest
import torch

import train
import training
from conftest import assert_user_error, run_script
from utils import UserError


def states(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 20-epoch run through the command line, as the README runs it."""
    folder = tmp_path_factory.mktemp("run")
    result = run_script("train.py", f"--dir={folder}", "--dataset=Digits", "--model=LinearOneLayer",
                        "--epochs=20", "--save_freq=10", "--seed=1")
    assert result.returncode == 0, result.stderr
    return folder, result.stdout


def test_reaches_90_percent_and_writes_checkpoints(trained):
    folder, stdout = trained
    assert sorted(os.listdir(folder)) == ["checkpoint-0.pt", "checkpoint-10.pt", "checkpoint-20.pt",
                                          "command.sh"]
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 20 and float(rows[-1][5]) > 90.0  # te_acc of the last epoch
    checkpoint = states(folder / "checkpoint-20.pt")
    assert {"epoch", "model_state", "optimizer_state"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 20 and checkpoint["model"] == "LinearOneLayer"
    assert checkpoint["num_classes"] == 10
    assert "--model=LinearOneLayer" in (folder / "command.sh").read_text()


def test_same_seed_is_bit_identical_and_resume_is_exact(trained, tmp_path):
    folder, _ = trained
    args = ["--dataset=Digits", "--model=LinearOneLayer", "--epochs=20", "--save_freq=10", "--seed=1"]
    train.main([f"--dir={tmp_path / 'again'}", *args])
    assert equal_states(states(folder / "checkpoint-20.pt")["model_state"],
                        states(tmp_path / "again" / "checkpoint-20.pt")["model_state"])
    train.main([f"--dir={tmp_path / 'resumed'}", f"--resume={folder / 'checkpoint-10.pt'}", *args])
    final = states(tmp_path / "resumed" / "checkpoint-20.pt")
    reference = states(folder / "checkpoint-20.pt")
    assert equal_states(final["model_state"], reference["model_state"])
    assert equal_states(final["optimizer_state"]["state"][0], reference["optimizer_state"]["state"][0])


def test_other_seed_other_weights(trained, tmp_path):
    folder, _ = trained
    train.main([f"--dir={tmp_path}", "--dataset=Digits", "--model=LinearOneLayer", "--epochs=1",
                "--seed=2"])
    assert not equal_states(states(folder / "checkpoint-0.pt")["model_state"],
                            states(tmp_path / "checkpoint-0.pt")["model_state"])


def test_another_runs_checkpoints_are_never_replaced(tmp_path):
    """A run into a folder holding another run's checkpoints (another seed, learning rate or
    --epochs, or a file that is no checkpoint) at the epochs it would save is one error and changes
    nothing; the same command again (the same files), a run of more epochs (the same initial
    weights in checkpoint-0.pt) and a --resume go ahead."""
    args = [f"--dir={tmp_path}", "--dataset=Digits", "--model=LinearOneLayer100", "--epochs=2"]
    train.main(args)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for extra, fragment in ((["--seed=5"], "--seed=1 there, 5 here"),
                            (["--epochs=4", "--save_freq=2"], "--epochs=2 there, 4 here"),
                            (["--lr=0.2"], "--lr=0.01 there, 0.2 here")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            train.main(args + extra)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    train.main(args)
    train.main(args[:-1] + ["--epochs=3"])
    train.main(args + ["--epochs=3", f"--resume={tmp_path / 'checkpoint-2.pt'}"])
    (tmp_path / "checkpoint-3.pt").write_text("notes")
    with pytest.raises(UserError, match="is not a checkpoint of train.py"):
        train.main(args + ["--epochs=3", f"--resume={tmp_path / 'checkpoint-2.pt'}"])
    assert (tmp_path / "checkpoint-3.pt").read_text() == "notes"


def test_random_streams_are_distinct():
    """A curve's ``t`` draws and each rank's training randomness (dropout under torchrun) come
    from different seeds, every epoch: no rank's dropout masks repeat the ``t`` sequence."""
    for seed, epoch in [(1, 1), (1, 2), (7, 30)]:
        t_seed = training.derived_seed(seed, epoch, training.CURVE_T_STREAM)
        ranks = {training.derived_seed(seed, epoch, training.RANK_STREAM, r) for r in range(8)}
        assert len(ranks) == 8 and t_seed not in ranks


def test_learning_rate_schedule():
    from utils import learning_rate_schedule as schedule
    assert schedule(0.1, 0, 10) == schedule(0.1, 5, 10) == 0.1
    assert abs(schedule(0.1, 7, 10) - 0.1 * (1 - 0.5 * 0.99)) < 1e-12
    assert abs(schedule(0.1, 9, 10) - 0.001) < 1e-12


@pytest.mark.parametrize("args,fragments", [
    (["--model=ResNet9"], ["unknown model 'ResNet9'", "Linear3NoBias"]),
    (["--model=LinearOneLayer", "--dataset=SVHN"], ["unknown data set 'SVHN'", "FashionMNIST"]),
    (["--model=LinearOneLayer", "--epochs=0"], ["argument --epochs: must be at least 1"]),
    (["--model=VGG16"], ["needs 32x32 images"]),
    (["--model=LinearOneLayer", "--resume=missing.pt"], ["'missing.pt' does not exist"]),
    (["--model=LinearOneLayer", "--cuda"], []),
])
def test_bad_input_is_one_line(tmp_path, args, fragments):
    if "--cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    base = [f"--dir={tmp_path / 'out'}", "--dataset=Digits", "--epochs=1"]
    assert_user_error(run_script("train.py", *base, *args), *fragments)


def test_resume_with_wrong_model_names_both(trained, tmp_path):
    folder, _ = trained
    result = run_script("train.py", f"--dir={tmp_path}", "--dataset=Digits", "--model=LinearOneLayer100",
                        "--epochs=20", f"--resume={folder / 'checkpoint-10.pt'}")
    assert_user_error(result, "written with --model=LinearOneLayer,",
                      "this run has --model=LinearOneLayer100")


def test_unwritable_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_script("train.py", f"--dir={blocker / 'sub'}", "--dataset=Digits",
                        "--model=LinearOneLayer", "--epochs=1")
    assert_user_error(result, "cannot write to --dir")


CURVE_STEPS = """
import sys, torch, curves, utils
if sys.argv[1] == "reuse":
    assert utils.reuse_freed_memory()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3000, 3000), torch.nn.ReLU(), torch.nn.Linear(3000, 10))
curve = curves.Curve(net, "Bezier", 3, fixed=(0, 2), weight_decay=1e-4)
trainable = [p for p in curve.parameters() if p.requires_grad]
optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, fused=True)
curve.attach(optimizer)
x, y = torch.randn(64, 3000), torch.randint(0, 10, (64,))
for _ in range(4):
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(curve(x), y).backward()
    optimizer.step()
torch.save(curve.state_dict(), sys.argv[2])
"""


def test_reusing_freed_memory_changes_no_result(tmp_path):
    """train.py keeps freed memory for reuse (utils.reuse_freed_memory): the same curve steps, with
    tensors over glibc's 32 MB mmap threshold (the gradients of w(t) and of the bend), give the same bits with and
    without it."""
    for mode in ("default", "reuse"):
        result = run_script("-c", CURVE_STEPS, mode, str(tmp_path / f"{mode}.pt"))
        assert result.returncode == 0, result.stderr
    assert equal_states(states(tmp_path / "default.pt"), states(tmp_path / "reuse.pt"))
