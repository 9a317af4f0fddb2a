"""What the scripts guarantee against careless or hostile input (README, "What the scripts
guarantee"): one ``error:`` line and exit status 2 for every mistake, nothing of the user's
removed or half-written, no non-finite number passed on silently, usual file permissions.

Most cases run the scripts' ``main`` in-process through ``cli.run`` (what the command line
runs), so an unexpected exception fails the test as a traceback would; a few run as subprocesses.
"""
import errno
import os

import numpy as np
import pytest
import torch

import cli
import eval_curve
import eval_ensemble
import train
import utils
from conftest import assert_user_error, run_script
from utils import UserError

DIGITS = ["--dataset=Digits"]


def fails(capsys, main, *argv):
    """Run ``main(argv)`` as the command line does; return its single ``error:`` line."""
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda: main(list(argv)))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_.value.code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Two LinearOneLayer end-points trained for one epoch on Digits."""
    root = tmp_path_factory.mktemp("guarantees")
    for seed in (1, 2):
        train.main([f"--dir={root / str(seed)}", *DIGITS, "--model=LinearOneLayer", "--epochs=1",
                    f"--seed={seed}"])
    return [str(root / str(seed) / "checkpoint-1.pt") for seed in (1, 2)]


def curve_args(folder, start, end, *extra, finder="PointFinderWithBias"):
    return [f"--dir={folder}", f"--point_finder={finder}", "--model=LinearOneLayer", *DIGITS,
            "--num_points=3", f"--start={start}", f"--end={end}", *extra]


def ensemble_args(folder, members, *extra):
    return [f"--dir={folder}", *DIGITS, "--model=Linear3NoBias", "--name=checkpoint-1",
            "--layer=1", "--layer_ind=2", f"--model_paths={members}", *extra]


def edited(path, target, change):
    """Save a copy of checkpoint ``path`` at ``target`` after ``change(checkpoint)``."""
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return str(target)


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("script,flag", [
    (eval_curve, "--batch_size=-1"), (eval_curve, "--batch_size=0"),
    (eval_curve, "--num_points=1"), (eval_curve, "--beg_time=nan"), (eval_curve, "--end_time=inf"),
    (eval_curve, "--num-workers=-2"), (eval_curve, "--device=-1"),
    (eval_ensemble, "--batch_size=-1"), (eval_ensemble, "--max_models=0"),
    (train, "--lr=-0.1"), (train, "--momentum=-1"), (train, "--momentum=1.5"), (train, "--wd=-1"),
    (train, "--batch_size=0"), (train, "--epochs=0"), (train, "--save_freq=abc"),
    (train, "--lr=nan"), (train, "--seed=-3"),
    # beyond what torch and numpy take, or any sensible size (no traceback, no runaway allocation)
    (train, f"--seed={2 ** 32}"), (train, f"--batch_size={10 ** 20}"),
    (train, f"--num_bends={10 ** 9}"), (eval_curve, f"--num_points={10 ** 9}"),
    (eval_curve, f"--batch_size={10 ** 20}")])
def test_bad_numbers_are_one_line_naming_the_flag(capsys, tmp_path, endpoints, script, flag):
    argv = {eval_curve: curve_args(tmp_path / "out", *endpoints),
            eval_ensemble: ensemble_args(tmp_path / "out", tmp_path),
            train: [f"--dir={tmp_path / 'out'}", *DIGITS, "--model=LinearOneLayer"]}[script]
    line = fails(capsys, script.main, *argv, flag)
    assert flag.split("=")[0] in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [train, eval_curve, eval_ensemble])
def test_an_empty_dir_is_refused(capsys, tmp_path, endpoints, members, script, monkeypatch):
    """``--dir=`` would write into the current folder: one line, nothing written there."""
    monkeypatch.chdir(tmp_path)
    argv = {eval_curve: curve_args("", *endpoints), eval_ensemble: ensemble_args("", members),
            train: ["--dir=", *DIGITS, "--model=LinearOneLayer"]}[script]
    assert "--dir is empty" in fails(capsys, script.main, *argv)
    assert os.listdir(tmp_path) == []


def test_negative_end_time_is_blamed_on_end_time(capsys, tmp_path, endpoints):
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path, *endpoints), "--end_time=-1")
    assert "--end_time" in line and "--beg_time" not in line


def test_argparse_mistakes_are_one_line_from_the_command_line(tmp_path):
    result = run_script("eval_curve.py", "--point_finder=PointFinderWithBias", "--model=X",
                        "--start=a", "--end=b", "--batch_size=-1")
    assert_user_error(result, "--batch_size", "at least 1")
    assert result.returncode == 2


# ----------------------------------------------------------------------------- output folders

def test_early_errors_leave_no_folder(capsys, tmp_path, endpoints):
    fails(capsys, eval_curve.main, *curve_args(tmp_path / "new", endpoints[0], tmp_path / "nope.pt"))
    fails(capsys, train.main, f"--dir={tmp_path / 'new'}", "--dataset=FashionMNIST",
          f"--data_path={tmp_path / 'no_data'}", "--model=LinearOneLayer")
    fails(capsys, eval_ensemble.main, *ensemble_args(tmp_path / "new", tmp_path / "none"))
    assert not (tmp_path / "new").exists() and not (tmp_path / "no_data").exists()


@pytest.mark.parametrize("name", ["curve.npz", "curve.png"])
def test_result_path_that_is_a_folder(capsys, tmp_path, endpoints, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep.txt").write_text("mine")
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path, *endpoints))
    assert name in line and "folder" in line
    assert (tmp_path / name / "keep.txt").read_text() == "mine"


def test_folders_and_files_given_for_each_other(capsys, tmp_path, endpoints):
    (tmp_path / "file").write_text("x")
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path / "out", tmp_path, endpoints[1]))
    assert "--start checkpoint" in line and "is a folder, not a file" in line
    line = fails(capsys, train.main, f"--dir={tmp_path / 'out'}", *DIGITS, "--model=LinearOneLayer",
                 f"--resume={tmp_path}")
    assert "--resume file" in line and "is a folder, not a file" in line
    line = fails(capsys, eval_ensemble.main, *ensemble_args(tmp_path / "out", tmp_path / "file"))
    assert "--model_paths folder" in line and "is a file, not a folder" in line
    assert not (tmp_path / "out").exists()


def test_dir_below_a_file(capsys, tmp_path, endpoints):
    (tmp_path / "file").write_text("x")
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path / "file" / "sub", *endpoints))
    assert "is a file" in line


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.npz"
    target.write_text("old")

    def disk_full(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="No space left on device"):
        utils.atomic_write(str(target), disk_full)
    assert os.listdir(tmp_path) == ["result.npz"] and target.read_text() == "old"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        utils.write_text(str(tmp_path / "a.txt"), "x")
        with open(tmp_path / "b.txt", "w") as f:  # what open() gives
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_script_outputs_are_readable_by_others(tmp_path, endpoints):
    old = os.umask(0o022)
    try:
        eval_curve.main(curve_args(tmp_path, *endpoints))
    finally:
        os.umask(old)
    for name in ("curve.npz", "curve.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert os.stat(endpoints[0]).st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("state", [[1, 2], {"w": 1.0}, {}, "weights"])
def test_model_state_that_is_not_tensors(capsys, tmp_path, endpoints, state):
    bad = str(tmp_path / "bad.pt")
    torch.save({"epoch": 1, "model_state": state}, bad)
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path / "out", bad, endpoints[1]))
    assert "bad.pt" in line and "model_state" in line


@pytest.mark.parametrize("finder", ["PointFinderWithBias", "PointFinderTransportation"])
def test_non_finite_end_point_is_refused_by_name(capsys, tmp_path, endpoints, finder):
    bad = edited(endpoints[1], tmp_path / "nan.pt",
                 lambda c: c["model_state"]["fc.0.weight"].__setitem__((0, 0), float("nan")))
    line = fails(capsys, eval_curve.main,
                 *curve_args(tmp_path / "out", endpoints[0], bad, finder=finder))
    assert "nan.pt" in line and "non-finite" in line and "fc.0.weight" in line
    assert not (tmp_path / "out").exists()


def test_path_with_non_finite_points_is_saved_marked_and_reported(capsys, tmp_path, endpoints):
    """Finite weights whose outputs overflow: every point is non-finite, the run says where."""
    huge = edited(endpoints[1], tmp_path / "huge.pt",
                  lambda c: c["model_state"]["fc.2.weight"].mul_(1e38))
    line = fails(capsys, eval_curve.main, *curve_args(tmp_path / "out", endpoints[0], huge))
    assert "not finite at t = " in line and "finite=False" in line
    result = np.load(tmp_path / "out" / "curve.npz")
    assert not bool(result["finite"]) and 1.0 in result["nonfinite_ts"]
    assert 0.0 not in result["nonfinite_ts"]  # model 1 is fine
    assert (tmp_path / "out" / "curve.png").is_file()


def test_finite_path_is_marked_finite(tmp_path, endpoints):
    eval_curve.main(curve_args(tmp_path, *endpoints))
    result = np.load(tmp_path / "curve.npz")
    assert bool(result["finite"]) and result["nonfinite_ts"].size == 0


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three one-epoch Linear3NoBias members on Digits."""
    root = tmp_path_factory.mktemp("members")
    for seed in (1, 2, 3):
        train.main([f"--dir={root / f'chp{seed}'}", *DIGITS, "--model=Linear3NoBias",
                    "--epochs=1", f"--seed={seed}"])
    return root


def test_non_finite_ensemble_member_is_refused_by_name(capsys, tmp_path, members):
    folder = tmp_path / "members"
    for seed in (1, 2, 3):
        (folder / f"chp{seed}").mkdir(parents=True)
        os.link(members / f"chp{seed}" / "checkpoint-1.pt",
                folder / f"chp{seed}" / "checkpoint-1.pt")
    os.remove(folder / "chp2" / "checkpoint-1.pt")
    edited(members / "chp2" / "checkpoint-1.pt", folder / "chp2" / "checkpoint-1.pt",
           lambda c: c["model_state"]["linear_layers.2.weight"].fill_(float("inf")))
    line = fails(capsys, eval_ensemble.main, *ensemble_args(tmp_path / "out", folder))
    assert "chp2/checkpoint-1.pt" in line and "non-finite" in line
    assert not (tmp_path / "out").exists()


def test_model_without_wa_layers_is_refused(capsys, tmp_path):
    line = fails(capsys, eval_ensemble.main, f"--dir={tmp_path / 'out'}", "--dataset=CIFAR10",
                 "--model=PreResNet110", "--name=x", "--layer=1", "--layer_ind=2",
                 f"--model_paths={tmp_path}")
    assert "PreResNet110 has no layer that WA(n) can adjust" in line


# ----------------------------------------------------------------------------- training

def test_diverging_training_stops_and_keeps_the_last_finite_checkpoint(capsys, tmp_path):
    line = fails(capsys, train.main, f"--dir={tmp_path}", *DIGITS, "--model=LinearOneLayer",
                 "--epochs=3", "--save_freq=1", "--lr=1e6")
    assert "diverged in epoch" in line and "checkpoint-" in line
    saved = sorted(p for p in os.listdir(tmp_path) if p.endswith(".pt"))
    assert saved  # at least checkpoint-0.pt
    for name in saved:
        state = torch.load(tmp_path / name, weights_only=True)["model_state"]
        assert all(torch.isfinite(v).all() for v in state.values()), name


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 1-epoch training whose checkpoint-1.pt the resume tests edit."""
    folder = tmp_path_factory.mktemp("resume")
    train.main([f"--dir={folder}", *DIGITS, "--model=LinearOneLayer", "--epochs=1", "--seed=1"])
    return folder


RESUME = [*DIGITS, "--model=LinearOneLayer", "--epochs=2", "--seed=1"]


@pytest.mark.parametrize("change,fragment", [
    (lambda c: c.__setitem__("epoch", "ten"), "valid epoch"),
    (lambda c: c.__setitem__("epoch", -4), "valid epoch"),
    (lambda c: c.__setitem__("optimizer_state", {"state": {}, "param_groups": "x"}), "optimizer"),
    (lambda c: c["optimizer_state"]["param_groups"][0].__setitem__("params", [0]), "optimizer"),
    (lambda c: c["optimizer_state"]["state"][0].__setitem__("momentum_buffer", torch.zeros(3)),
     "optimizer"),
    (lambda c: c.__setitem__("rng_state", torch.zeros(3)), "RNG"),
    (lambda c: c.__setitem__("rng_state", "seed"), "RNG")])
def test_malformed_resume_file(capsys, tmp_path, run_dir, change, fragment):
    bad = edited(run_dir / "checkpoint-1.pt", tmp_path / "bad.pt", change)
    line = fails(capsys, train.main, f"--dir={tmp_path / 'out'}", f"--resume={bad}", *RESUME)
    assert "bad.pt" in line and fragment in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,fragment", [("--seed=2", "--seed=1"), ("--lr=0.02", "--lr=0.01"),
                                           ("--momentum=0.5", "--momentum=0.9"),
                                           ("--batch_size=64", "--batch_size=128")])
def test_resume_with_other_settings_is_refused(capsys, tmp_path, run_dir, flag, fragment):
    line = fails(capsys, train.main, f"--dir={tmp_path}", f"--resume={run_dir / 'checkpoint-1.pt'}",
                 *RESUME, flag)
    assert fragment in line and "same settings" in line


def test_resume_on_other_data_is_refused(capsys, tmp_path, run_dir):
    from conftest import write_mnist
    write_mnist(tmp_path / "mnist")
    line = fails(capsys, train.main, f"--dir={tmp_path / 'out'}",
                 f"--resume={run_dir / 'checkpoint-1.pt'}", "--dataset=MNIST",
                 f"--data_path={tmp_path / 'mnist'}", "--model=LinearOneLayer", "--epochs=2")
    assert "--dataset=Digits" in line or "does not fit" in line


def test_failed_run_keeps_the_command_record(capsys, run_dir):
    record = (run_dir / "command.sh").read_text()
    fails(capsys, train.main, f"--dir={run_dir}", *DIGITS, "--model=Nope")
    fails(capsys, train.main, f"--dir={run_dir}", *DIGITS, "--model=LinearOneLayer", "--lr=-1")
    assert (run_dir / "command.sh").read_text() == record


def test_command_record_keeps_every_run(tmp_path):
    train.main([f"--dir={tmp_path}", *DIGITS, "--model=LinearOneLayer", "--epochs=1"])
    train.main([f"--dir={tmp_path}", f"--resume={tmp_path / 'checkpoint-1.pt'}", *DIGITS,
                "--model=LinearOneLayer", "--epochs=2"])
    assert len((tmp_path / "command.sh").read_text().splitlines()) == 2
