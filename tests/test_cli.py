"""The command line: names agree with the code's registries, every flag has help and a stated
default, --help answers without importing torch, the paper's names of the procedures."""
import importlib
import subprocess
import sys

import pytest

import cli
import connectors
import curves
import data
import models
import point_finders
from conftest import ROOT

SCRIPTS = ["train.py", "eval_curve.py", "eval_ensemble.py", "scripts/reproduce.py",
           "scripts/path_summary.py"]


def test_names_match_the_registries():
    assert set(cli.MODELS) == set(models.MODELS)
    assert set(cli.FINDERS) == set(point_finders.FINDERS) | set(curves.COEFFICIENTS)
    assert cli.CONNECTORS == tuple(connectors.CONNECTORS)
    assert data.DATASETS is cli.DATASETS


def test_paper_names():
    assert cli.paper_name("PointFinderStepWiseInverseOT", "lin_connect") == "OT + WA (Table 2)"
    assert cli.paper_name("PointFinderInverseWithBias", "arc_connect") == \
        "Arc + Weight Adjustment (Table 1)"
    assert cli.paper_name("PointFinderTransportation", "arc_connect") == \
        "not one of the paper's procedures"
    assert [name for _, _, name in cli.procedures("Table 2")] == [
        "Linear", "Arc", "Linear + B-fly", "Arc + B-fly", "Linear + WA", "Arc + WA", "OT + B-fly",
        "OT + WA"]
    assert len(cli.procedures("Table 1")) == 6 and len(cli.procedures("Table 3")) == 6


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag_with_help_and_default_without_torch(script):
    """Every flag has a line of help; --help runs with torch made unimportable."""
    blocker = "import sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1], '--help']; "
    code = blocker + "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code, script], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    parser = importlib.import_module(script.replace("/", ".")[:-3]).build_parser()
    for action in parser._actions:
        assert action.help, f"{script}: {action.option_strings} has no help"
        assert (action.option_strings or [action.dest])[-1] in result.stdout
        if action.default not in (None, False) and not action.required \
                and action.dest != "help":
            assert "default" in action.help or str(action.default) in result.stdout, action


def test_every_top_level_module_is_installed():
    """The editable install (make) lists the top-level modules by name: a new one must be added to
    pyproject.toml, or the scripts cannot import it outside the repository's folder."""
    import pathlib
    import tomllib
    config = tomllib.loads((pathlib.Path(ROOT) / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = sorted(p.stem for p in pathlib.Path(ROOT).glob("*.py"))
    assert sorted(config["py-modules"]) == modules
    assert sorted(config["packages"]) == sorted(
        p.parent.name for p in pathlib.Path(ROOT).glob("*/__init__.py") if p.parent.name not in ("tests", "bench"))


def test_the_methods_page_lists_the_procedure_table():
    """docs/METHODS.md's procedure index shows exactly the rows of procedures.PROCEDURES."""
    import pathlib
    import procedures
    text = (pathlib.Path(ROOT) / "docs" / "METHODS.md").read_text()
    index = text.split("## Procedure index", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in index.splitlines() if line.startswith("| `")]
    assert [row[0].strip("`") for row in rows] == list(procedures.PROCEDURES)
    for row in rows:
        p = procedures.PROCEDURES[row[0].strip("`")]
        assert row[1] == p.schedule and row[3] == (p.adjustment or "-")
        assert row[4] in (p.needs, "same")
        assert row[5:7] == [p.names.get(m, "-") for m in ("lin_connect", "arc_connect")]
        assert row[7] == p.table.removeprefix("Table ")
