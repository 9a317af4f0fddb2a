"""The newcomer's view: the provenance eval_curve.py saves, the summary table and figure the demo
ends with (scripts/path_summary.py), and the whole demo in its quick setting (marked slow)."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import eval_curve
import train
from conftest import ROOT, assert_user_error, run_script


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """Two LinearOneLayer end-points (1 epoch on Digits) and two paths between them."""
    root = tmp_path_factory.mktemp("demo")
    for seed in (1, 2):
        train.main([f"--dir={root / f'chp{seed}'}", "--dataset=Digits", "--model=LinearOneLayer",
                    "--epochs=1", f"--seed={seed}"])
    ends = [root / f"chp{seed}" / "checkpoint-1.pt" for seed in (1, 2)]
    for finder, method in (("PointFinderWithBias", "arc_connect"),
                           ("PointFinderInverseWithBiasOT", "lin_connect")):
        eval_curve.main([f"--dir={root / 'eval' / f'{finder}-{method}'}", "--dataset=Digits",
                         "--model=LinearOneLayer", f"--point_finder={finder}", f"--method={method}",
                         "--num_points=5", f"--start={ends[0]}", f"--end={ends[1]}"])
    return root, ends


def test_curve_npz_records_its_provenance(curves):
    root, ends = curves
    result = np.load(root / "eval" / "PointFinderInverseWithBiasOT-lin_connect" / "curve.npz")
    assert str(result["paper_name"]) == "OT + Weight Adjustment (Table 1)"
    for which, path in zip(("start", "end"), ends):
        assert str(result[f"{which}_checkpoint"]) == str(path)
        assert str(result[f"{which}_sha256"]) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert int(result["train_size"]) == 1437 and int(result["test_size"]) == 360
    loss = result["tr_loss"]
    assert float(result["tr_loss_barrier"]) == pytest.approx(loss.max() - (loss[0] + loss[-1]) / 2)
    assert float(result["te_err_barrier"]) == pytest.approx(
        result["te_err"].max() - (result["te_err"][0] + result["te_err"][-1]) / 2)


def test_summary_line_names_the_paper_procedure(curves, capsys):
    root, ends = curves
    eval_curve.main([f"--dir={root / 'again'}", "--dataset=Digits", "--model=LinearOneLayer",
                     "--point_finder=PointFinderWithBias", "--num_points=3", f"--start={ends[0]}",
                     f"--end={ends[1]}"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("summary: PointFinderWithBias + lin_connect [Linear (Table 1)]: ")
    assert "barrier" in last


def test_path_summary_table_and_figure(curves, tmp_path):
    root, _ = curves
    figure = tmp_path / "summary.png"
    result = run_script("scripts/path_summary.py", f"--figure={figure}", str(root / "eval"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "LinearOneLayer on Digits (2 paths)" in lines
    header = next(line for line in lines if line.startswith("paper's name"))
    assert "train loss barrier" in header and "build s" in header
    rows = [line for line in lines if "PointFinder" in line]
    assert rows[0].startswith("Arc ") and rows[1].startswith("OT + Weight Adjustment")
    assert figure.stat().st_size > 10000


def test_path_summary_mistakes(tmp_path):
    assert_user_error(run_script("scripts/path_summary.py", str(tmp_path)), "no curve.npz under")
    assert_user_error(run_script("scripts/path_summary.py", str(tmp_path / "nope")),
                      "is not a folder")


@pytest.mark.slow
def test_quick_demo_ends_with_tables_and_figure(tmp_path):
    """The whole demo with 1-epoch end-points and 5 points per path (about 3 minutes)."""
    env = dict(os.environ, QUICK="1", OUT=str(tmp_path / "runs"), PYTHONPATH=ROOT,
               PYTHON=sys.executable)
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "LinearOneLayer on Digits (6 paths)" in out and "Linear3NoBias on Digits (8 paths)" in out
    assert "OT + WA (Table 2)" in out and "WA(1) ensemble of 5" in out and "WA(2) ensemble of 5" in out
    assert (tmp_path / "runs" / "summary.png").stat().st_size > 10000
