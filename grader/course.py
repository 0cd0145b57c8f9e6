"""The course on disk, and running nbgrader on it: paths, labs, workspace configs, the release.

Shared by the grading driver (grader/grade.py), the workers (grader/worker.py) and the release tools.
"""
from __future__ import annotations

import json
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


def _run(argv: list[str], workspace: Path, log: Path, env: dict | None = None, timeout: float | None = None,
         capture: bool = False) -> subprocess.CompletedProcess | None:
    """Run a command in the workspace with the course's environment; its output goes to the log file (with
    `capture`, stdout is kept in the result and only stderr is logged). None when it ran out of time."""
    full_env = dict(os.environ, XAILAB_GRADING="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1",
                    JUPYTER_PATH=str(workspace / "jupyter"),
                    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    **(env or {}))
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(argv[1:])}\n")
        fh.flush()
        try:
            return subprocess.run(argv, cwd=workspace, env=full_env, stdout=subprocess.PIPE if capture else fh,
                                  stderr=fh if capture else subprocess.STDOUT, timeout=timeout, text=True)
        except subprocess.TimeoutExpired:
            fh.write(f"\n(stopped after {timeout:.0f} s)\n")
            return None


def nbgrader(args: list[str], workspace: Path, log: Path, env: dict | None = None,
             timeout: float | None = None) -> int:
    """Run one nbgrader command in the workspace; its output goes to the log file. Returns its exit status."""
    done = _run([sys.executable, "-m", "nbgrader", *args], workspace, log, env, timeout)
    return -9 if done is None else done.returncode


def generate_assignments(labs: list[str], workspace: Path, log: Path) -> list[str]:
    """`nbgrader generate_assignment LAB --force --create` for every lab, in one process (nbgrader's start,
    about 2 s, is paid once rather than once per lab); returns the labs where it failed."""
    if not labs:
        return []
    done = _run([sys.executable, "-m", "grader.course", *labs], workspace, log, capture=True)
    try:
        failed = json.loads(done.stdout.strip().splitlines()[-1])
    except (AttributeError, IndexError, ValueError):
        return list(labs)  # the process itself failed: no lab is known to be done
    return [lab for lab in labs if lab in failed]


def _generate(labs: list[str]) -> list[str]:
    """Inside the workspace: nbgrader's API generates each lab; nbgrader's log goes to stderr (the log file)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.apps.baseapp import NbGrader

    app = NbGrader()
    app.load_config_file()
    api = NbGraderAPI(config=app.config)
    failed = []
    for lab in labs:
        result = api.generate_assignment(lab, force=True, create=True)
        print(f"$ nbgrader generate_assignment {lab}", result.get("log", ""), result.get("error", ""), sep="\n",
              file=sys.stderr, flush=True)
        if not result.get("success"):
            failed.append(lab)
    return failed


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
        labs = labs or all_labs()
        for lab in labs:
            if (out / lab).exists():
                shutil.rmtree(out / lab)
        failed = generate_assignments(labs, workspace, workspace / "log")
        if failed:
            raise RuntimeError(f"generate_assignment {', '.join(failed)} failed:\n{(workspace / 'log').read_text()[-3000:]}")


if __name__ == "__main__":  # python -m grader.course LAB...: see generate_assignments
    print(json.dumps(_generate(sys.argv[1:])))
