"""Solution notebooks run end to end and pass their own tests; released notebooks are current."""
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grader.grade import REPO, all_labs, release
from grader.notebooks import execute, stderr_cells

LABS = all_labs()


def notebook(lab: str, root: str = "solutions") -> Path:
    return next((REPO / root / lab).glob("*.ipynb"))


@pytest.mark.parametrize("lab", LABS)
def test_solution_notebook_runs_silently(lab):
    """Every cell runs (visible and hidden tests pass: a failing cell raises) and no test cell writes to
    stderr. The same notebook through nbgrader's real pipeline: tests/test_grading.py (sample-full).
    Not a duplicate of grading sample-full: only here do the %%experiment cells run (grading skips
    them), the hidden checks run in-process as an instructor validating a solution sees them, and test
    cells are held to a silent stderr."""
    nb, seconds = execute(notebook(lab))
    noisy = stderr_cells(nb)
    test_cells = [c for c in noisy if c.startswith("test_")]
    assert not test_cells, f"test cells wrote to stderr (nbgrader would score them 0): {test_cells}"
    print(f"{lab}: {seconds:.1f} s")


def nbgrader(*args, cwd=REPO):
    """nbgrader validate executes the notebook; experiments skip themselves."""
    env = dict(os.environ, XAILAB_GRADING="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("lab", LABS)
def test_nbgrader_validate_invert_on_release(lab):
    """No test cell passes on the released notebook (the blank sample): with the blank stub failing
    every check (tests/test_mutants.py), this is why make test grades the blank sample only of the
    labs in FOUR_SAMPLE_LABS (tests/test_grading.py)."""
    result = nbgrader("validate", "--invert", str(notebook(lab, "labs")))
    assert "Success! The notebook does not pass any tests." in result.stdout, result.stdout + result.stderr


def test_labs_are_generated_from_solutions(tmp_path):
    release(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO / "labs") for p in (REPO / "labs").rglob("*") if p.is_file())
    assert fresh == committed, "labs/ has different files than solutions/ generates: run `make labs`"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, REPO / "labs" / p, shallow=False)]
    assert not stale, f"labs/ is stale for {stale}: run `make labs` (never edit labs/ by hand)"


def test_released_notebooks_do_not_import_the_grader():
    for path in (REPO / "labs").rglob("*.ipynb"):
        assert "import grader" not in path.read_text() and "from grader" not in path.read_text(), path


@pytest.mark.parametrize("lab", LABS)
def test_every_graded_test_cell_calls_existing_hidden_checks(lab):
    """Scores come from the checker's record: a graded test cell without a hidden check could only be
    scored by the student's own kernel, so every one calls at least one, and every name exists."""
    from grader.checks import checks_for
    from grader.worker import test_cells

    names = {c.name for c in checks_for(lab.split("-")[0])}
    cells = test_cells(lab)
    assert cells, f"{lab} has no graded test cells"
    for notebook, by_cell in cells.items():
        for cell, calls in by_cell.items():
            assert calls, f"{lab}/{notebook}: graded test cell {cell} calls no hidden check"
            unknown = [c for c in calls if c not in names]
            assert not unknown, f"{lab}/{notebook}: {cell} calls unknown checks {unknown}"
