"""scripts/reproduce.py end to end in a tiny setting (Digits, 2 epochs, a few points per path)."""
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

import reproduce  # scripts/reproduce.py, on pytest's pythonpath (pyproject.toml)
import reproduction
from conftest import assert_user_error, run_script
from utils import UserError

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
#: the alignments beside both tables, without and with REPAIR: name -> (finder, method[, "repair"])
ALIGNED = {"Linear + weight matching": ("WeightMatching", "lin_connect"),
           "Linear + activation matching": ("ActivationMatching", "lin_connect"),
           "Linear + weight matching + REPAIR": ("WeightMatching", "lin_connect", "repair"),
           "Linear + activation matching + REPAIR": ("ActivationMatching", "lin_connect", "repair")}


def tiny_flags(root):
    return ["--dataset=Digits", f"--checkpoints={root / 'checkpoints'}",
            f"--experiments={root / 'experiments'}", f"--results={root / 'RESULTS.md'}",
            "--widths=100", "--table1_epochs=2", "--table2_epochs=2", "--table1_points=2",
            "--table2_points=2", "--members=3", "--curve_epochs=1", "--table2_curve_epochs=1",
            "--curve_sweep=1,2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The driver end to end in the tiny Digits setting (about 6 minutes: the tests that use it
    are marked slow; the fake-result tests below cover the page and the steps' logic quickly)."""
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
    training = float(curve["build_time"]) if str(curve["point_finder"]) == "Bezier" else 0.0
    return cells + [str(len(curve["ts"])), f"{float(curve['computation_time']) + training:.0f}"]


@pytest.mark.slow
def test_every_row_is_read_from_the_saved_files(run):
    root, _ = run
    page = (root / "RESULTS.md").read_text()
    assert "not run" not in page and "Incomplete" not in page
    experiments = root / "experiments"
    for header, procedures, model_of in (("width", TABLE1, lambda c: f"LinearOneLayer{c}"),
                                         ("model", TABLE2, lambda c: c)):
        rows = table_rows(page, header)
        assert [row[1] for row in rows] == list(procedures) + list(ALIGNED) + [
            "Bezier curve, trained 1 epoch"]
        for row in rows:
            folder = "Bezier-1" if row[1].startswith("Bezier") else "-".join(
                {**procedures, **ALIGNED}[row[1]])
            curve = np.load(experiments / "eval" / model_of(row[0]) / folder / "curve.npz")
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


@pytest.mark.slow
def test_every_command_is_an_ordinary_script_call(run):
    root, result = run
    page = (root / "RESULTS.md").read_text()
    block = page.split("```")[-2].strip().splitlines()
    # trainings and paths of Table 1 (with the alignments, its Bezier curve and the sweep's
    # second), Table 2 (with the alignments and its Bezier curve), ensembles
    assert len(block) == 2 + 6 + 4 + 2 + 2 + 2 + 8 + 4 + 2 + 1 + 2
    for command in block:
        assert re.match(r"python3 (train|eval_curve|eval_ensemble)\.py --", command), command
        assert f"$ {command}" in result.stdout


@pytest.mark.slow
def test_rerun_skips_finished_steps_and_resumes_missing_ones(run):
    root, _ = run
    npz = root / "experiments" / "eval" / "Linear3NoBias" / "PointFinderSimultaneous-arc_connect" / "curve.npz"
    others = sorted((root / "experiments").rglob("*.npz"))
    stamps = {p: os.stat(p).st_mtime_ns for p in others}
    npz.unlink()
    shutil.rmtree(root / "checkpoints" / "LinearOneLayer100")  # every Table-1 result still exists
    result = run_script(SCRIPT, *tiny_flags(root))
    assert result.returncode == 0, result.stderr
    # the end-points and both Bezier curves of LinearOneLayer100 are not needed
    assert "35 steps, 30 already done, 4 not needed (every result that uses them exists), 1 to run" \
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


# ------------------------------------------------------------------ fast checks on small fake files

def fake_curve(step, finite=True, **overrides):
    """A small ``curve.npz`` for ``step`` (with ``overrides`` of its arrays) and its plot."""
    ts = np.linspace(0, 1, int(step.identity["points"]))
    identity = {k: v for k, v in step.identity.items() if k != "points"}
    results = {"ts": ts, "computation_time": 3.0, "build_time": 1.0, "device": "cpu (fake)",
               **identity}
    for k, key in enumerate(("tr_loss", "tr_err", "te_err")):
        values = 1 + k + np.sin(np.pi * ts)
        if not finite:
            values[2] = np.nan
        results.update({key: values, f"{key}_max": np.nanmax(values), f"{key}_int": np.nanmean(values)})
    results.update(finite=finite, nonfinite_ts=ts[2:3] if not finite else np.array([]))
    write_result(step, {**results, **overrides})


def fake_ensemble(step, members=3, **overrides):
    accuracy = np.linspace(90, 95, members)
    write_result(step, {"one_model_accuracy": accuracy, "ensemble_accuracy": accuracy + 1,
                        "ensemble_parameters": 1000 * np.arange(1, members + 1),
                        "ensemble_accuracy_adjusted": accuracy + 0.5,
                        "one_model_accuracy_adjusted": accuracy - 0.5,
                        "ensemble_parameters_adjusted": 600 + 400 * np.arange(1, members + 1),
                        "computation_time": 2.0, "layer_ind": int(step.identity["layer"]) + 1,
                        **{k: v if k != "layer" else int(v) for k, v in step.identity.items()},
                        **overrides})


def fake_checkpoint(step, **overrides):
    """A small checkpoint recording ``step``'s identity (with ``overrides``), as train.py's would."""
    os.makedirs(os.path.dirname(step.output), exist_ok=True)
    record = {k: v if k in ("model", "dataset", "curve") else int(v) for k, v in step.identity.items()}
    torch.save({"model_state": {"w": torch.zeros(1)}, **record, **overrides}, step.output)


def write_result(step, results):
    os.makedirs(os.path.dirname(step.output), exist_ok=True)
    with open(step.plot, "wb") as f:
        f.write(b"png")
    np.savez(step.output, **results)


def fill(experiment):
    """Fake results for every evaluation step of ``experiment``; returns those steps."""
    steps = [step for step, _ in experiment.steps() if not step.trains]
    for step in steps:
        (fake_curve if step.output.endswith("curve.npz") else fake_ensemble)(step)
    return steps


def report_flags(root):
    return tiny_flags(root) + ["--report_only"]


@pytest.fixture
def fake(tmp_path):
    """The tiny setting with fake results for every evaluation step: (root, experiment, steps)."""
    args = reproduce.parse_args(report_flags(tmp_path))
    reproduction.check_args(args)
    experiment = reproduction.Experiment(args)
    return tmp_path, experiment, fill(experiment)


def tree(root):
    return sorted((str(p), p.stat().st_mtime_ns if p.is_file() else None) for p in root.rglob("*"))


def test_fake_results_make_a_complete_page(fake):
    root, experiment, steps = fake
    assert all(step.done for step in steps)
    reproduce.main(report_flags(root))
    page = (root / "RESULTS.md").read_text()
    assert "not run" not in page and "unreadable" not in page and "non-finite" not in page
    assert len(table_rows(page, "width")) == 11 and len(table_rows(page, "members")) == 3


def test_trained_curves_are_rows_beside_the_procedures_and_a_sweep(fake):
    """A Bezier row per model, its time with the curve's training; the barrier-vs-epochs table;
    the curve trainings in the plan, after the end-points they start from."""
    root, experiment, _ = fake
    reproduction.write_results(experiment)
    page = (root / "RESULTS.md").read_text()
    for first, name in (("width", "Bezier curve, trained 1 epoch"), ("model", "Bezier curve, trained 1 epoch")):
        rows = [r for r in table_rows(page, first) if r[1] == name]
        assert len(rows) == 1 and rows[0][-1] == "4"  # 3 s of evaluation + 1 s of training
    assert [r[0] for r in table_rows(page, "curve epochs")] == ["1", "2"]
    plan = [step for step, _ in experiment.steps()]
    trainings = [step for step in plan if "--curve=Bezier" in step.command]
    assert len(trainings) == 3  # Table 1 (also the sweep's 1 epoch), the sweep's 2, Table 2
    for step in trainings:
        assert "--fix_start" in step.command and "--init_end=" in step.command
        start = next(p for p in plan if p.output == step.argv[step.argv.index("--fix_start") - 1]
                     .split("=", 1)[1])
        assert plan.index(start) < plan.index(step)


def test_figures_folder_lower_cases_the_file_name_only(fake):
    root, _, _ = fake
    results = root / "Docs" / "My.Results.md"
    reproduce.main(report_flags(root) + [f"--results={results}"])
    assert sorted(os.listdir(root / "Docs")) == ["My.Results-comparison.md", "My.Results.md",
                                                 "my.results", "my.results-comparison"]
    assert sorted(os.listdir(root / "Docs" / "my.results")) == sorted(reproduction.FIGURES)
    assert "(my.results/ensemble.png)" in results.read_text()
    assert reproduction.figures_dir("Docs/RESULTS.md") == os.path.join("Docs", "results")


@pytest.mark.parametrize("damage", ["random bytes", "truncated zip", "folder", "no tr_loss",
                                    "npy file", "strings"])
def test_a_damaged_result_is_an_unreadable_row_and_runs_again(fake, damage, capsys):
    root, experiment, steps = fake
    curve = steps[0]  # Table 1, LinearOneLayer100, Linear
    size = os.path.getsize(curve.output)
    os.remove(curve.output)
    if damage == "random bytes":
        open(curve.output, "wb").write(np.random.default_rng(0).bytes(size))
    elif damage == "truncated zip":
        fake_curve(curve)
        data = open(curve.output, "rb").read()
        open(curve.output, "wb").write(data[:len(data) // 2])
    elif damage == "folder":
        os.makedirs(curve.output)
    elif damage == "no tr_loss":
        np.savez(curve.output, ts=np.arange(5.0), model="LinearOneLayer100", dataset="Digits",
                 point_finder="PointFinderWithBias", method="lin_connect")
    elif damage == "npy file":
        np.save(curve.output + ".npy", np.arange(3))
        os.rename(curve.output + ".npy", curve.output)
    else:
        fake_curve(curve, tr_loss=np.array(["a", "b", "c", "d", "e"]))
    assert not curve.done and curve.output in curve.state()
    reproduce.main(report_flags(root))
    page = (root / "RESULTS.md").read_text()
    assert table_rows(page, "width")[0][2:] == ["unreadable"] * 14
    assert "**Unreadable:** 1 result file(s)" in page and f"{curve.output}: " in page
    assert "1 unreadable" in capsys.readouterr().out


def test_an_ensemble_result_damaged_or_shorter_gives_no_traceback(fake):
    root, experiment, steps = fake
    wa1, wa2 = steps[-2:]
    open(wa1.output, "wb").write(b"PK\x03\x04 not really a zip")
    reproduce.main(report_flags(root))
    page = (root / "RESULTS.md").read_text()
    assert [row[4:6] for row in table_rows(page, "members")] == [["unreadable"] * 2] * 3
    fake_ensemble(wa1, members=2)  # a result of fewer members than the other
    reproduce.main(report_flags(root))
    assert table_rows((root / "RESULTS.md").read_text(), "members")[2][4] == "no such member"


def test_a_result_without_its_plot_is_not_done(fake):
    _, experiment, steps = fake
    os.remove(steps[0].plot)
    os.remove(steps[-1].plot)
    assert "curve.png" in steps[0].state() and "ensemble.png" in steps[-1].state()
    train = next(step for step, _ in experiment.steps() if step.trains)
    assert train.state() == "not run"
    fake_checkpoint(train)
    assert train.done


@pytest.mark.parametrize("change, fragment", [
    ({"seed": 2}, "is a checkpoint of model="), ({"curve": "Bezier"}, "curve=Bezier"),
    (None, "is not a readable PyTorch checkpoint"),
])
def test_a_foreign_or_damaged_checkpoint_stops_the_driver(fake, change, fragment):
    """A training's checkpoint of another run (another seed, a curve where an end-point belongs) or
    a damaged one is neither trusted nor replaced: the driver stops before running anything, naming
    the file (train.py would refuse to replace it anyway)."""
    _, experiment, _ = fake
    train = next(step for step, _ in experiment.steps() if step.trains)
    if change is None:
        os.makedirs(os.path.dirname(train.output), exist_ok=True)
        open(train.output, "wb").write(b"half a checkpoint")
    else:
        fake_checkpoint(train, **change)
    with pytest.raises(UserError, match=re.escape(fragment)) as err:
        reproduction.check_identities(experiment)
    assert train.output in str(err.value) and "move it away" in str(err.value)


def run_fakes(monkeypatch, fail=()):
    """Replace running a step by writing a fake result; returns the list of the outputs 'run'."""
    ran = []

    def run(step):
        ran.append(step.output)
        if step.trains:
            fake_checkpoint(step)
        elif step.output not in fail:
            (fake_curve if step.output.endswith("curve.npz") else fake_ensemble)(step)
        return 0
    monkeypatch.setattr(reproduction.Step, "run", run)
    return ran


def test_unreadable_results_run_again_and_missing_plots_are_redrawn(fake, monkeypatch, capsys):
    root, experiment, steps = fake
    open(steps[0].output, "wb").write(b"garbage")
    ensemble = next(step for step in steps if step.output.endswith("ens_stat.npz"))
    for step in (steps[1], ensemble):
        os.remove(step.plot)
    ran = run_fakes(monkeypatch)
    assert reproduction.run_steps(experiment) == []
    out = capsys.readouterr().out
    assert f"drew the missing plot {steps[1].plot} from {steps[1].output}" in out
    assert f"drew the missing plot {ensemble.plot}" in out
    assert "35 steps, 26 already done, 6 not needed (every result that uses them exists), 3 to run" in out
    assert f"runs again: '{steps[0].output}' cannot be used" in out
    assert ran == [experiment.checkpoint("LinearOneLayer100", s, 2) for s in (1, 2)] + [
        steps[0].output]
    assert all(step.done for step in steps) and os.path.getsize(steps[1].plot) > 10000


def test_a_step_that_exits_0_without_a_complete_result_failed(fake, monkeypatch, capsys):
    root, experiment, steps = fake
    os.remove(steps[0].output)
    run_fakes(monkeypatch, fail=[steps[0].output])
    assert [step.output for step in reproduction.run_steps(experiment)] == [steps[0].output]
    assert f"step failed (exit 0) after 0 s: it wrote no {steps[0].output}" in capsys.readouterr().out


@pytest.mark.parametrize("index, identity, expected", [
    (0, {"model": "LinearOneLayer500"}, "model=LinearOneLayer500"),
    (0, {"method": "arc_connect"}, "method=arc_connect"),
    (0, {"ts": np.linspace(0, 1, 3)}, "points=3"),
    (-1, {"layer": 7}, "layer=7"),
    (-1, {"dataset": "MNIST"}, "dataset=MNIST")])
def test_another_steps_result_stops_the_driver_before_anything(fake, monkeypatch, index, identity,
                                                               expected):
    root, experiment, steps = fake
    step = steps[index]
    (fake_curve if index == 0 else fake_ensemble)(step, **identity)
    before = tree(root)
    ran = run_fakes(monkeypatch)
    for flags in (tiny_flags(root), report_flags(root)):
        with pytest.raises(UserError) as err:
            reproduce.main(flags)
        message = str(err.value)
        assert "\n" not in message and step.output in message and expected in message
        assert "--experiments" in message and "move it away" in message
    assert ran == [] and tree(root) == before


def test_a_result_on_other_end_points_is_not_compared(fake, capsys):
    """A path whose end-points' train loss differs from the rest of its table's (end-points
    retrained, e.g. on another CPU) is marked and listed, on both pages; rounding is tolerated."""
    root, experiment, steps = fake
    ts = np.linspace(0, 1, int(steps[0].identity["points"]))
    fake_curve(steps[0], tr_loss=1.0005 + np.sin(np.pi * ts))  # retrained: 5e-4 off
    fake_curve(steps[1], tr_loss=1 + 1e-6 + np.sin(np.pi * ts))  # the same nets, other rounding
    reproduce.main(report_flags(root))
    page = (root / "RESULTS.md").read_text()
    rows = table_rows(page, "width")
    assert rows[0][2:] == ["other end-points"] * 14 and rows[1][2] != "other end-points"
    assert "**Other end-points:** 1 result file(s)" in page and steps[0].output in page
    assert "1 computed on other end-points" in capsys.readouterr().out
    comparison = (root / "COMPARISON.md").read_text()
    assert "LinearOneLayer100: Linear (other end-points)" in comparison
    assert reproduction.other_end_points(["not run", {"tr_loss": np.ones(3)},
                                          {"tr_loss": np.full(3, 2.0)},
                                          {"tr_loss": np.full(3, 2.0)}]) == [False, True, False, False]


def test_a_non_finite_path_is_shown_as_such(fake):
    root, experiment, steps = fake
    fake_curve(steps[0], finite=False)
    assert steps[0].done  # the path was computed: not worth running again
    reproduce.main(report_flags(root))
    page = (root / "RESULTS.md").read_text()
    row = table_rows(page, "width")[0]
    assert row[2] == "non-finite at t = 0.5" and set(row[3:14]) == {"non-finite"}
    assert row[14:] == ["5", "3"]
    assert "nan" not in page


def test_the_step_log_is_whole_or_kept_aside(tmp_path):
    script = tmp_path / "noisy.py"
    script.write_text("print('hello')\nraise SystemExit(3)\n")
    log = tmp_path / "logs" / "step.log"
    step = reproduction.Step(str(script), {"flag": 1}, str(tmp_path / "out"), str(log))
    assert step.run() == 3
    assert log.read_text().splitlines() == [step.command, "hello"]
    assert step.last_line() == "hello" and os.listdir(log.parent) == ["step.log"]
    log.unlink()
    log.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        step.run()


BAD_FLAGS = [["--widths=abc"], ["--widths=100,-5"], ["--widths=,"], ["--widths=100,100"],
             ["--widths=1e3"], ["--table1_epochs=0"], ["--table2_points=nan"], ["--members=1"],
             ["--members=2.5"], ["--table2_models=VGG16"], ["--table2_models=LinearOneLayer100"],
             ["--table2_models=Linear3NoBias,,"], ["--ensemble_model=Nope"], ["--dataset=Nope"],
             ["--launcher=mpirun -np 2"], ["--launcher=torchrun --nproc_per_node=2 -- x.py"],
             ["--launcher=torchrun 'unclosed"], ["--launcher=torchrun --nproc_per_node=0"],
             ["--launcher=torchrun --standalone --nnodes_typo=2"],
             pytest.param(["--cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                               reason="a GPU is visible"))]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda flags: flags[0])
def test_a_bad_flag_is_one_line_before_any_file(tmp_path, capsys, monkeypatch, flags):
    run_fakes(monkeypatch)
    with pytest.raises((UserError, SystemExit)) as err:
        reproduce.main(tiny_flags(tmp_path) + flags)
    if err.type is SystemExit:
        assert err.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: argument ")
    else:
        assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_bad_paths_are_one_line_before_any_file(tmp_path, monkeypatch):
    ran = run_fakes(monkeypatch)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe\x00")
    cases = [(f"--results={tmp_path / 'folder'}", "is a folder"),
             (f"--results={tmp_path / 'file' / 'R.md'}", "is a file"),
             (f"--results={tmp_path / 'R'}", "no file extension"),
             (f"--discussion={tmp_path / 'none.md'}", "does not exist"),
             (f"--discussion={tmp_path / 'folder'}", "not a file"),
             (f"--discussion={tmp_path / 'binary.md'}", "not UTF-8"),
             (f"--experiments={tmp_path / 'file'}", "--experiments"),
             (f"--checkpoints={tmp_path / 'file' / 'c'}", "--checkpoints")]
    (tmp_path / "figs").write_text("x")  # where the figures of figs.md go
    cases.append((f"--results={tmp_path / 'figs.md'}", "figs"))
    before = tree(tmp_path)
    for flag, fragment in cases:
        with pytest.raises(UserError) as err:
            reproduce.main(tiny_flags(tmp_path / "run") + [flag])
        assert "\n" not in str(err.value) and fragment in str(err.value), (flag, str(err.value))
    assert tree(tmp_path) == before and ran == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_results_folder_is_one_line(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable"):
        reproduce.main(report_flags(tmp_path) + [f"--results={tmp_path / 'locked' / 'R.md'}"])


def test_cli_flag_mistakes_are_one_line(tmp_path):
    assert_user_error(run_script(SCRIPT, *tiny_flags(tmp_path), "--widths=100,-5"), "--widths")
    assert os.listdir(tmp_path) == []


def test_a_launcher_runs_every_step_through_torchrun(tmp_path, monkeypatch):
    """--launcher: every step is ``torchrun <flags> -- script.py ...`` with this Python; a real
    training step runs so; the driver itself refuses to be started by torchrun."""
    flags = tiny_flags(tmp_path) + ["--launcher=torchrun --standalone --nproc_per_node=2"]
    experiment = reproduction.Experiment(reproduce.parse_args(flags))
    steps = [step for step, _ in experiment.steps()]
    for step in steps:
        assert step.command.startswith("torchrun --standalone --nproc_per_node=2 -- ")
        assert step.process()[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node=2", "--"]
    training = steps[0]
    assert training.argv[0] == "train.py" and training.run() == 0 and training.done
    assert open(training.log).read().startswith("torchrun --standalone --nproc_per_node=2 -- train.py")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="without torchrun"):
        reproduction.check_args(reproduce.parse_args(flags))


def test_the_comparison_page_has_every_family_per_model(fake):
    """docs/COMPARISON.md: per model, the paper's procedures, both alignments with and without
    REPAIR and the trained curve, flattest first, with findings and one figure per model."""
    root, experiment, steps = fake
    for step in steps:  # barriers that differ: the flattest path is weight matching + REPAIR
        if step.identity.get("point_finder") == "WeightMatching" and "repair" in step.identity:
            ts = np.linspace(0, 1, int(step.identity["points"]))
            fake_curve(step, tr_loss=1 + 0.1 * np.sin(np.pi * ts), computation_time=np.array(2.0))
    reproduction.write_results(experiment)
    page = (root / "COMPARISON.md").read_text()
    for model in ("LinearOneLayer100", "Linear3NoBias"):
        section = page.split(f"`{model}`", 1)[1].split("\n## ", 1)[0]
        rows = [row[1:] for row in table_rows(section, "#")]
        assert {row[0] for row in rows} == {"paper", "alignment", "alignment + REPAIR",
                                            "trained curve"}
        assert rows[0][1] == "Linear + weight matching + REPAIR" and len(rows) == 4 + len(
            reproduction.TABLE1 if model.startswith("LinearOne") else reproduction.TABLE2) + 1
        assert "REPAIR takes Linear + weight matching's train-loss barrier from +1.000 to +0.100" \
            in section
        assert ("that an alignment beats (a clearly lower barrier at no higher cost, up to 5% for "
                "timing noise)") in section
        assert (root / "comparison" / f"comparison_{model}.png").stat().st_size > 10000
    assert "Paths without numbers" not in page


def test_a_discussion_is_never_a_page_the_driver_writes(tmp_path):
    """A discussion file that is the results page or the comparison page (given, or by default
    beside the results page) is refused before anything is written: the page would replace it."""
    flags = report_flags(tmp_path)
    notes = tmp_path / "NOTES.md"
    notes.write_text("hand-written\n")
    for extra in ([f"--results={notes}", f"--discussion={tmp_path / 'NOTES-comparison.md'}"],
                  [f"--comparison={notes}", f"--discussion={notes}"],
                  [f"--comparison_discussion={tmp_path / 'RESULTS.md'}"]):
        for path in (tmp_path / "NOTES-comparison.md", tmp_path / "RESULTS.md"):
            path.write_text("hand-written\n")
        with pytest.raises(UserError, match="the page would replace the discussion"):
            reproduction.check_args(reproduce.parse_args(flags + extra))
    assert all(p.read_text() == "hand-written\n" for p in tmp_path.glob("*.md"))


def test_a_file_of_the_users_at_a_pages_path_is_never_replaced(tmp_path):
    """A file at the results page's or the comparison page's path (given, or by default beside the
    results page) that the driver did not write is refused before anything is written; the
    driver's own pages are rewritten."""
    flags = report_flags(tmp_path)
    for name, extra in (("RESULTS.md", []), ("COMPARISON.md", []),
                        ("mine.md", [f"--comparison={tmp_path / 'mine.md'}"])):
        (tmp_path / name).write_text("my notes\n")
        with pytest.raises(UserError, match="is not a page this driver wrote"):
            reproduction.check_args(reproduce.parse_args(flags + extra))
        assert (tmp_path / name).read_text() == "my notes\n"
        (tmp_path / name).unlink()
    args = reproduce.parse_args(flags)
    reproduction.check_args(args)
    reproduction.write_results(reproduction.Experiment(args))
    for page in ("RESULTS.md", "COMPARISON.md"):
        assert (tmp_path / page).read_text().startswith("# ")
    reproduction.check_args(reproduce.parse_args(flags))  # its own pages: rewritten


def test_the_comparison_page_goes_beside_the_results_page(tmp_path):
    for results, page in (("docs/RESULTS.md", "docs/COMPARISON.md"),
                          ("docs/RESULTS-cuda.md", "docs/COMPARISON-cuda.md"),
                          ("out/page.md", "out/page-comparison.md")):
        assert reproduction.comparison_page(results) == page
    flags = report_flags(tmp_path)
    with pytest.raises(UserError, match="same file"):
        reproduction.check_args(reproduce.parse_args(flags + [f"--comparison={tmp_path / 'RESULTS.md'}"]))
    args = reproduce.parse_args(flags + ["--comparison="])
    reproduction.check_args(args)
    reproduction.write_results(reproduction.Experiment(args))
    assert (tmp_path / "RESULTS.md").exists() and not (tmp_path / "COMPARISON.md").exists()


def test_a_tie_is_not_a_win_on_the_comparison_page():
    """Rows within the margins (a barrier lower by under 0.002 or 10%, a cost up to 5% higher)
    do not beat each other; a clearly flatter row at no higher cost does."""
    import comparison

    def row(name, barrier, time):
        r = comparison.Row.__new__(comparison.Row)
        r.name, r.barrier, r.time = name, barrier, time
        return r
    paper = row("OT", 0.023, 13.0)
    assert comparison.beaten_by(paper, [paper, row("tie", 0.0225, 12.0)]) == []
    assert comparison.beaten_by(paper, [paper, row("slower", 0.010, 14.0)]) == []
    winner = row("win", 0.020, 13.5)
    assert comparison.beaten_by(paper, [paper, winner]) == [winner]


def test_relative_paths_mean_the_same_to_the_driver_and_its_steps(tmp_path, monkeypatch):
    """Run from a folder other than the project's, a step reads and writes its relative paths
    (--checkpoints, --experiments) there, where the driver looks for them."""
    monkeypatch.chdir(tmp_path)
    flags = [flag.replace(str(tmp_path) + os.sep, "") for flag in tiny_flags(tmp_path)]
    assert "--checkpoints=checkpoints" in flags
    training = next(step for step, _ in reproduction.Experiment(reproduce.parse_args(flags)).steps())
    assert training.argv[0] == "train.py" and training.run() == 0 and training.done
    assert os.path.isfile(tmp_path / training.output) and not os.path.isabs(training.output)
