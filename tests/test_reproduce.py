"""scripts/reproduce.py end to end in a tiny setting (Digits, 2 epochs, a few points per path)."""
import os
import re
import shutil

import numpy as np
import pytest

from conftest import assert_user_error, run_script

SCRIPT = "scripts/reproduce.py"
TABLE1 = {"Linear": ("PointFinderWithBias", "lin_connect"),
          "Arc": ("PointFinderWithBias", "arc_connect"),
          "Linear + Weight Adjustment": ("PointFinderInverseWithBias", "lin_connect"),
          "Arc + Weight Adjustment": ("PointFinderInverseWithBias", "arc_connect"),
          "OT": ("PointFinderTransportation", "lin_connect"),
          "OT + Weight Adjustment": ("PointFinderInverseWithBiasOT", "lin_connect")}
TABLE2 = {"Linear": ("PointFinderSimultaneous", "lin_connect"),
          "Arc": ("PointFinderSimultaneous", "arc_connect"),
          "Linear + B-fly": ("PointFinderStepWiseButterfly", "lin_connect"),
          "Arc + B-fly": ("PointFinderStepWiseButterfly", "arc_connect"),
          "Linear + WA": ("PointFinderStepWiseInverse", "lin_connect"),
          "Arc + WA": ("PointFinderStepWiseInverse", "arc_connect"),
          "OT + B-fly": ("PointFinderStepWiseTransportation", "lin_connect"),
          "OT + WA": ("PointFinderStepWiseInverseOT", "lin_connect")}


def tiny_flags(root):
    return ["--dataset=Digits", f"--checkpoints={root / 'checkpoints'}",
            f"--experiments={root / 'experiments'}", f"--results={root / 'RESULTS.md'}",
            "--widths=100", "--table1_epochs=2", "--table2_epochs=2", "--table1_points=2",
            "--table2_points=2", "--members=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    result = run_script(SCRIPT, *tiny_flags(root), timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


def table_rows(page, first_header):
    """The body rows of the Markdown table whose first header cell is ``first_header``."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{first_header}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def expected_path_cells(curve):
    cells = []
    for key, fmt in (("tr_loss", ".3f"), ("tr_err", ".2f"), ("te_err", ".2f")):
        v = curve[key]
        cells += [f"{v[0]:{fmt}} / {v[-1]:{fmt}}", f"{v.max():{fmt}}", f"{float(curve[key + '_int']):{fmt}}",
                  f"{v.max() - (v[0] + v[-1]) / 2:+{fmt}}"]
    return cells + [str(len(curve["ts"])), f"{float(curve['computation_time']):.0f}"]


def test_every_row_is_read_from_the_saved_files(run):
    root, _ = run
    page = (root / "RESULTS.md").read_text()
    assert "not run" not in page and "Incomplete" not in page
    experiments = root / "experiments"
    for header, procedures, model_of in (("width", TABLE1, lambda c: f"LinearOneLayer{c}"),
                                         ("model", TABLE2, lambda c: c)):
        rows = table_rows(page, header)
        assert [row[1] for row in rows] == list(procedures)
        for row in rows:
            finder, method = procedures[row[1]]
            curve = np.load(experiments / "eval" / model_of(row[0]) / f"{finder}-{method}" / "curve.npz")
            assert row[2:] == expected_path_cells(curve), row
    wa = {n: np.load(experiments / "eval_ensemble" / "Linear3NoBias" / f"WA{n}" / "ens_stat.npz")
          for n in (1, 2)}
    rows = table_rows(page, "members")
    assert len(rows) == 3
    for k, row in enumerate(rows):
        assert row == [str(k + 1), f"{wa[1]['one_model_accuracy'][k]:.2f}",
                       f"{wa[1]['ensemble_accuracy'][k]:.2f}", f"{wa[1]['ensemble_parameters'][k]:,}"] + [
            cell for n in (1, 2) for cell in (f"{wa[n]['ensemble_accuracy_adjusted'][k]:.2f}",
                                              f"{wa[n]['ensemble_parameters_adjusted'][k]:,}")]
    # WA(1) keeps one trunk: each further member adds only its last layer
    assert wa[1]["ensemble_parameters_adjusted"][-1] < wa[1]["ensemble_parameters"][-1] / 2
    for figure in ("table1_train_error.png", "table2_train_error.png", "ensemble.png"):
        assert (root / "results" / figure).stat().st_size > 0
        assert f"(results/{figure})" in page


def test_every_command_is_an_ordinary_script_call(run):
    root, result = run
    page = (root / "RESULTS.md").read_text()
    block = page.split("```")[-2].strip().splitlines()
    assert len(block) == 2 + 6 + 2 + 8 + 1 + 2  # trainings and paths of Table 1, Table 2, ensembles
    for command in block:
        assert re.match(r"python3 (train|eval_curve|eval_ensemble)\.py --", command), command
        assert f"$ {command}" in result.stdout


def test_rerun_skips_finished_steps_and_resumes_missing_ones(run):
    root, _ = run
    npz = root / "experiments" / "eval" / "Linear3NoBias" / "PointFinderSimultaneous-arc_connect" / "curve.npz"
    others = sorted((root / "experiments").rglob("*.npz"))
    stamps = {p: os.stat(p).st_mtime_ns for p in others}
    npz.unlink()
    shutil.rmtree(root / "checkpoints" / "LinearOneLayer100")  # every Table-1 result still exists
    result = run_script(SCRIPT, *tiny_flags(root))
    assert result.returncode == 0, result.stderr
    assert "21 steps, 18 already done, 2 not needed (every result that uses them exists), 1 to run" \
        in result.stdout
    assert npz.exists()
    assert all(os.stat(p).st_mtime_ns == stamps[p] for p in others if p != npz)


def test_user_mistakes(tmp_path):
    assert_user_error(run_script(SCRIPT, *tiny_flags(tmp_path), "--widths=123"), "LinearOneLayer123")
    assert_user_error(run_script(SCRIPT, *tiny_flags(tmp_path), "--table2_models=VGG16"), "VGG16")
    assert_user_error(run_script(SCRIPT, *tiny_flags(tmp_path), "--members=1"), "--members")
    assert_user_error(run_script(SCRIPT, "--dataset=MNIST", f"--data_path={tmp_path / 'none'}",
                                 f"--checkpoints={tmp_path}/c", f"--experiments={tmp_path}/e",
                                 f"--results={tmp_path}/R.md"), "MNIST")
