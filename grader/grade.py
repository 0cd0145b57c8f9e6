"""The grading driver: autograde a folder of submissions with the real nbgrader pipeline.

    python -m grader grade [SUBMISSIONS] [--labs lab01-saliency ...] [--workspace build/grading]

SUBMISSIONS holds <student>/<lab>/<notebook>.ipynb (nbgrader's `submitted` layout); by default the
bundled samples in grader/samples/. In a fresh scratch workspace the driver runs
generate_assignment → (metadata repair) → autograde → generate_feedback → export, then prints a
per-student, per-lab table. Bad notebooks are recorded in the table, never fatal to the run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from grader.notebooks import read_notebook, restore_metadata

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
SAMPLES = Path(__file__).resolve().parent / "samples"


@dataclass
class Row:
    student: str
    lab: str
    auto_score: float = 0.0
    auto_max: float = 0.0
    manual_max: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def all_labs() -> list[str]:
    return sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir() and list(p.glob("*.ipynb")))


def nbgrader(args: list[str], workspace: Path, log: Path) -> int:
    """Run one nbgrader command in the workspace; its output goes to the log file."""
    env = dict(os.environ, XAILAB_GRADING="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    with open(log, "a") as fh:
        fh.write(f"\n$ nbgrader {' '.join(args)}\n")
        fh.flush()
        return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=workspace, env=env,
                              stdout=fh, stderr=subprocess.STDOUT).returncode


def write_config(workspace: Path, release: Path | None = None) -> None:
    """A course config for the scratch workspace, on top of grader/nbgrader_config.py."""
    (workspace / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"load_subconfig({str(REPO / 'grader' / 'nbgrader_config.py')!r})\n"
        f"c.CourseDirectory.root = {str(workspace)!r}\n"
        f"c.CourseDirectory.source_directory = {str(SOLUTIONS)!r}\n"
        f"c.CourseDirectory.release_directory = {str(release or workspace / 'release')!r}\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{workspace / 'gradebook.db'}'\n"
    )


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


def collect(submissions: Path, workspace: Path, labs: list[str]) -> dict[tuple[str, str], Row]:
    """Copy submissions into the workspace, repairing metadata; unreadable ones are recorded."""
    rows = {}
    for student_dir in sorted(p for p in submissions.iterdir() if p.is_dir()):
        for lab in labs:
            lab_dir = student_dir / lab
            if not lab_dir.is_dir():
                continue
            row = rows[(student_dir.name, lab)] = Row(student_dir.name, lab)
            target = workspace / "submitted" / student_dir.name / lab
            target.mkdir(parents=True)
            for release_path in sorted((workspace / "release" / lab).glob("*.ipynb")):
                path = lab_dir / release_path.name
                if not path.exists():
                    row.notes.append(f"{release_path.name} missing from the submission")
                    continue
                nb, problem = read_notebook(path)
                if nb is None:
                    row.notes.append(f"{path.name}: {problem}")
                    continue
                release = nbformat.read(str(release_path), as_version=4)
                row.notes += restore_metadata(nb, release)
                nbformat.write(nb, str(target / path.name))
    return rows


def cell_notes(autograded: Path) -> list[str]:
    """Name the answer cells that raised and the test cells that failed."""
    notes, failed = [], []
    for nb_path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if not meta or not errors:
                continue
            if meta.get("grade"):
                failed.append(meta["grade_id"])
            elif meta.get("solution"):
                notes.append(f"{errors[0]['ename']} in answer cell {meta['grade_id']}")
    if failed:
        notes.append(f"{len(failed)} test cells failed: {', '.join(failed)}")
    return notes


def scores(workspace: Path, rows: dict[tuple[str, str], Row]) -> None:
    """Autograded points per submission from the gradebook; maxima from the lab itself."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        for (student, lab), row in rows.items():
            source = gb.find_assignment(lab)
            row.auto_max = source.max_code_score
            row.manual_max = source.max_written_score
            try:
                sub = gb.find_submission(lab, student)
            except MissingEntry:
                row.notes.append("nothing to grade: scored 0")
                continue
            row.auto_score = sub.code_score


def grade(submissions: Path = SAMPLES, labs: list[str] | None = None,
          workspace: Path = REPO / "build" / "grading") -> list[Row]:
    labs = labs or [lab for lab in all_labs() if any((s / lab).is_dir() for s in submissions.iterdir())]
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    write_config(workspace)
    log = workspace / "nbgrader.log"
    for lab in labs:
        if nbgrader(["generate_assignment", lab, "--force", "--create"], workspace, log):
            raise RuntimeError(f"nbgrader generate_assignment {lab} failed; see {log}")
    rows = collect(submissions, workspace, labs)
    for (student, lab), row in rows.items():
        if not list((workspace / "submitted" / student / lab).glob("*.ipynb")):
            continue
        start = time.perf_counter()
        nbgrader(["autograde", lab, "--student", student, "--create", "--force"], workspace, log)
        row.seconds = time.perf_counter() - start
        row.notes += cell_notes(workspace / "autograded" / student / lab)
    for lab in labs:
        nbgrader(["generate_feedback", lab, "--force"], workspace, log)
    nbgrader(["export", "--to", str(workspace / "grades.csv")], workspace, log)
    scores(workspace, rows)
    result = sorted(rows.values(), key=lambda r: (r.lab, r.student))
    (workspace / "summary.json").write_text(json.dumps([asdict(r) for r in result], indent=2) + "\n")
    return result


def table(rows: list[Row]) -> str:
    lines = [f"{'student':18s} {'lab':18s} {'auto score':>12s} {'written':>8s} {'time':>6s}  notes",
             "-" * 100]
    for r in rows:
        written = f"{r.manual_max:g} pts" if r.manual_max else "-"
        notes = "; ".join(r.notes) if r.notes else "ok"
        lines.append(f"{r.student:18s} {r.lab:18s} {r.auto_score:>5g} / {r.auto_max:<4g} {written:>8s} "
                     f"{r.seconds:>5.1f}s  {notes}")
    return "\n".join(lines)

