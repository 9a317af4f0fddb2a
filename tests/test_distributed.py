"""Data-parallel runs under ``torchrun`` (2 CPU processes, ``gloo``), launched exactly as the README
says (``torchrun --standalone --nproc_per_node=2 -- script.py ...``): the numbers of one process,
files written by rank 0 only, resume across process counts, failures that end the whole job."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import data
import distributed
import eval_curve
import eval_ensemble
import train
from conftest import ROOT
from distributed_cases import compute

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
DIGITS = ["--dataset=Digits"]


def torchrun(*args, timeout=600):
    """``torchrun --standalone --nproc_per_node=2 -- <args>`` in the project folder."""
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "--", *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=timeout)


def relative(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), 1e-300)


# ----------------------------------------------------------------------------- without processes

@pytest.mark.parametrize("total", [1, 2, 7, 1437, 4096, 5001])
@pytest.mark.parametrize("batch_size", [1, 3, 500, 4096])
@pytest.mark.parametrize("size", [2, 3, 8])
def test_rank_slices_are_exactly_the_single_process_batches(total, batch_size, size):
    parts = []
    for r in range(size):
        local = len(range(r, total, size))
        slices = distributed.rank_slices(total, local, batch_size, r, size)
        parts.append([[r + i * size for i in range(local)[s]] for s in slices])
    assert len({len(p) for p in parts}) == 1  # every rank walks the same number of batches
    for k, start in enumerate(range(0, total, batch_size)):
        rows = sorted(row for p in parts for row in p[k])
        assert rows == list(range(start, min(start + batch_size, total)))


def test_batch_parts_split_every_batch():
    x = torch.arange(103)
    whole = list(data.batch_sampler(x, 10, True, torch.Generator().manual_seed(4)))
    parts = [list(data.batch_sampler(x, 10, True, torch.Generator().manual_seed(4), r, 3))
             for r in range(3)]
    for k, batch in enumerate(whole):
        pieces = [p[k] for p in parts]
        assert sorted(sum(pieces, [])) == sorted(batch)
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_one_process_is_unchanged():
    x = torch.arange(10)
    assert distributed.shard(x) is x and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.sums(1, 2.5) == [1.0, 2.5] and distributed.gather_rows(x) is x
    assert distributed.launcher() == "python3"


def test_help_shows_the_invocation_that_works():
    for script in (train, eval_curve, eval_ensemble):
        text = script.build_parser().format_help()
        assert f"torchrun --standalone --nproc_per_node=8 -- {script.__name__}.py" in text


# ----------------------------------------------------------------------------- 2 processes

def test_every_kind_of_finder_gives_the_single_process_numbers(tmp_path):
    """float64: Simultaneous, B-fly, WA, OT + B-fly, OT + WA, Table 1's OT + WA on tiny nets and
    Digits (1437 training images), a VGG16 B-fly point and PreResNet110 with BatchNorm recomputed
    on 7 images in batches of 3 and 4, WA(n) weights and ensemble accuracy: 1e-9."""
    result = torchrun("tests/distributed_cases.py", str(tmp_path / "two.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = np.load(tmp_path / "two.npz"), compute()
    assert sorted(two.files) == sorted(one)
    assert any("batchnorm" in key for key in one)
    for key in one:
        assert relative(one[key], two[key]) < 1e-9, key


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One process: 3 epochs of LinearOneLayer100 on Digits (seed 1), and a second end-point."""
    folder = tmp_path_factory.mktemp("train")
    common = DIGITS + ["--model=LinearOneLayer100", "--epochs=3", "--save_freq=1", "--lr=0.05"]
    train.main([f"--dir={folder / 'one'}", "--seed=1", *common])
    train.main([f"--dir={folder / 'other'}", "--seed=2", *common])
    return folder, common


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def assert_close_weights(a, b):
    a, b = weights(a), weights(b)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)


def test_training_on_2_processes_and_resuming_with_any_count(trained, tmp_path):
    """2-process training is 1-process training up to float32 rounding (the global batch's mean
    gradient; no dropout in this net); rank 0 alone writes; resume from a checkpoint of either
    count in either count."""
    folder, common = trained
    result = torchrun("train.py", f"--dir={tmp_path / 'two'}", "--seed=1", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and float(rows[-1][2]) < float(rows[0][2])  # train loss decreases
    assert (tmp_path / "two" / "command.sh").read_text().splitlines() == [
        f"torchrun --nproc_per_node=2 -- train.py --dir={tmp_path / 'two'} --seed=1 "
        + " ".join(common)]
    assert sorted(os.listdir(tmp_path / "two")) == ["checkpoint-0.pt", "checkpoint-1.pt",
                                                    "checkpoint-2.pt", "checkpoint-3.pt", "command.sh"]
    assert_close_weights(tmp_path / "two" / "checkpoint-3.pt", folder / "one" / "checkpoint-3.pt")

    train.main([f"--dir={tmp_path / 'on_one'}", f"--resume={tmp_path / 'two' / 'checkpoint-2.pt'}",
                "--seed=1", *common])
    assert_close_weights(tmp_path / "on_one" / "checkpoint-3.pt", folder / "one" / "checkpoint-3.pt")
    result = torchrun("train.py", f"--dir={tmp_path / 'on_two'}",
                      f"--resume={folder / 'one' / 'checkpoint-2.pt'}", "--seed=1", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close_weights(tmp_path / "on_two" / "checkpoint-3.pt", folder / "one" / "checkpoint-3.pt")


def test_curve_training_on_2_processes(trained, tmp_path):
    """A Bezier curve between the end-points trains to the single-process bends (the same t per
    mini-batch on every rank, the whole batch's gradient)."""
    folder, common = trained
    flags = DIGITS + ["--model=LinearOneLayer100", "--curve=Bezier", "--epochs=2", "--lr=0.05",
                      f"--init_start={folder / 'one' / 'checkpoint-3.pt'}", "--fix_start",
                      f"--init_end={folder / 'other' / 'checkpoint-3.pt'}", "--fix_end"]
    train.main([f"--dir={tmp_path / 'one'}", *flags])
    result = torchrun("train.py", f"--dir={tmp_path / 'two'}", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close_weights(tmp_path / "two" / "checkpoint-2.pt", tmp_path / "one" / "checkpoint-2.pt")


def assert_statistics_agree(one, two, keys, samples):
    """float32 statistics: losses to 1e-5 relative (the ranks' partial sums and Gram matrices
    round differently); an error may differ by one prediction on a near-tie per point."""
    for key in keys:
        if "err" in key or "acc" in key:
            assert np.abs(one[key] - two[key]).max() <= 100.0 / samples + 1e-9, key
        else:
            assert relative(one[key], two[key]) < 1e-5, key


def test_eval_curve_on_2_processes(trained, tmp_path):
    """OT + WA (Table 1) on Digits: the single-process curve.npz."""
    folder, _ = trained
    args = DIGITS + ["--model=LinearOneLayer100", "--point_finder=PointFinderInverseWithBiasOT",
                     f"--start={folder / 'one' / 'checkpoint-3.pt'}", "--num_points=5",
                     f"--end={folder / 'other' / 'checkpoint-3.pt'}"]
    eval_curve.main([f"--dir={tmp_path / 'one'}", *args])
    result = torchrun("eval_curve.py", f"--dir={tmp_path / 'two'}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("summary:") == 1  # rank 0 alone prints
    one, two = np.load(tmp_path / "one" / "curve.npz"), np.load(tmp_path / "two" / "curve.npz")
    assert int(two["processes"]) == 2 and int(two["train_size"]) == 1437
    assert_statistics_agree(one, two, ["tr_loss", "te_loss", "tr_err", "te_err"], 360)
    assert sorted(os.listdir(tmp_path / "two")) == ["curve.npz", "curve.png"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl, one per rank)")
def test_eval_curve_on_2_gpus(trained, tmp_path):
    """--cuda under torchrun: each rank on its local GPU, nccl; the single-GPU curve.npz."""
    folder, _ = trained
    args = DIGITS + ["--cuda", "--model=LinearOneLayer100", "--num_points=5",
                     "--point_finder=PointFinderInverseWithBiasOT",
                     f"--start={folder / 'one' / 'checkpoint-3.pt'}",
                     f"--end={folder / 'other' / 'checkpoint-3.pt'}"]
    eval_curve.main([f"--dir={tmp_path / 'one'}", *args])
    result = torchrun("eval_curve.py", f"--dir={tmp_path / 'two'}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = np.load(tmp_path / "one" / "curve.npz"), np.load(tmp_path / "two" / "curve.npz")
    assert str(two["device"]).startswith("cuda")
    assert_statistics_agree(one, two, ["tr_loss", "te_loss", "tr_err", "te_err"], 360)


def test_eval_ensemble_on_2_processes(trained, tmp_path):
    folder, _ = trained
    args = DIGITS + ["--model=LinearOneLayer100", f"--model_paths={folder}", "--name=checkpoint-3",
                     "--layer=0", "--layer_ind=2"]
    eval_ensemble.main([f"--dir={tmp_path / 'one'}", *args])
    result = torchrun("eval_ensemble.py", f"--dir={tmp_path / 'two'}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (np.load(tmp_path / k / "ens_stat.npz") for k in ("one", "two"))
    assert len(two["ensemble_accuracy"]) == 2
    assert_statistics_agree(one, two, ["one_model_accuracy", "ensemble_accuracy",
                                       "one_model_accuracy_adjusted", "ensemble_accuracy_adjusted"],
                            360)


def wrapper(tmp_path, body):
    """A script that runs eval_curve.py after ``body`` has sabotaged rank 1."""
    path = tmp_path / "sabotaged.py"
    path.write_text(textwrap.dedent(body) + textwrap.dedent("""
        import cli
        import eval_curve
        sys.argv[0] = "eval_curve.py"
        cli.run(eval_curve.main)
    """))
    return str(path)


@pytest.mark.parametrize("sabotage, fragment", [
    ("""
     import os, sys
     start = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--start=")][0]
     if os.environ["RANK"] == "1":  # the file is missing on this rank's node only
         isfile = os.path.isfile
         os.path.isfile = lambda p: p != start and isfile(p)
     """, "error: on rank 1 of 2: --start checkpoint"),
    ("""
     import os, signal, sys
     import segment_evaluation
     if os.environ["RANK"] == "1":  # killed as it evaluates the points on the test split
         evaluate, calls = segment_evaluation.evaluate_together, []
         def dying(*args, **kwargs):
             calls.append(args)
             if len(calls) == 2:
                 os.kill(os.getpid(), signal.SIGKILL)
             return evaluate(*args, **kwargs)
         segment_evaluation.evaluate_together = dying
     """, "killed"),
], ids=["bad input on one rank", "a killed rank"])
def test_a_failing_rank_ends_the_job_without_results(trained, tmp_path, sabotage, fragment):
    folder, _ = trained
    result = torchrun(wrapper(tmp_path, sabotage), f"--dir={tmp_path / 'out'}", *DIGITS,
                      "--model=LinearOneLayer100", "--point_finder=PointFinderSimultaneous",
                      f"--start={folder / 'one' / 'checkpoint-3.pt'}", "--num_points=4",
                      f"--end={folder / 'other' / 'checkpoint-3.pt'}", timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if "killed" in fragment:  # torchrun, checking its processes every 0.1 s, may stop rank 0 first
        assert len(errors) <= 1 and all("another process of this torchrun job stopped" in e
                                        for e in errors), result.stderr[-3000:]
        assert errors or re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9",
                                   result.stderr), result.stderr[-3000:]
    else:
        assert len(errors) == 1 and fragment in errors[0], result.stderr[-3000:]
    assert not (tmp_path / "out").exists()
