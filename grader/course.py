"""The course on disk, and running nbgrader on it: paths, labs, workspace configs, the release.

Shared by the grading driver (grader/grade.py), the workers (grader/worker.py) and the release tools.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
SAMPLES = Path(__file__).resolve().parent / "samples"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z0-9_.]+)["']""")  # a hidden test's check("name", ...)


def all_labs() -> list[str]:
    return sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir() and list(p.glob("*.ipynb")))


def nbgrader(args: list[str], workspace: Path, log: Path, env: dict | None = None,
             timeout: float | None = None) -> int:
    """Run one nbgrader command in the workspace; its output goes to the log file. Returns its exit status."""
    full_env = dict(os.environ, XAILAB_GRADING="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1",
                    JUPYTER_PATH=str(workspace / "jupyter"),
                    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    **(env or {}))
    with open(log, "a") as fh:
        fh.write(f"\n$ nbgrader {' '.join(args)}\n")
        fh.flush()
        try:
            return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=workspace, env=full_env,
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n(stopped after {timeout:.0f} s)\n")
            return -9


def write_config(workspace: Path, release: Path | None = None, kernel: str | None = None) -> None:
    """A course config for a workspace, on top of grader/nbgrader_config.py; with `kernel`, autograde
    runs notebooks in that kernel through the hardened Execute step (grader/execute.py)."""
    lines = [
        "c = get_config()",
        f"load_subconfig({str(REPO / 'grader' / 'nbgrader_config.py')!r})",
        f"c.CourseDirectory.root = {str(workspace)!r}",
        f"c.CourseDirectory.source_directory = {str(SOLUTIONS)!r}",
        f"c.CourseDirectory.release_directory = {str(release or workspace / 'release')!r}",
        f"c.CourseDirectory.db_url = 'sqlite:///{workspace / 'gradebook.db'}'",
    ]
    if kernel:
        lines += [
            "from grader.execute import GuardedExecute",
            "from nbconvert.preprocessors import ClearMetadataPreprocessor",
            "from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput,",
            "                                    SaveAutoGrades)",
            "c.Autograde.autograde_preprocessors = [GuardedExecute, IgnorePattern, ClearMetadataPreprocessor,",
            "                                       LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]",
            f"c.GuardedExecute.kernel_name = {kernel!r}",
            "c.KernelManager.transport = 'ipc'",
        ]
    (workspace / "nbgrader_config.py").write_text("\n".join(lines) + "\n")


def release(out: Path, labs: list[str] | None = None) -> None:
    """Generate the student notebooks of `labs` (default: all) from solutions/ into `out`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        write_config(workspace, out.resolve())
        for lab in labs or all_labs():
            if (out / lab).exists():
                shutil.rmtree(out / lab)
            if nbgrader(["generate_assignment", lab, "--force", "--create"], workspace, workspace / "log"):
                raise RuntimeError(f"generate_assignment {lab} failed:\n{(workspace / 'log').read_text()[-3000:]}")
