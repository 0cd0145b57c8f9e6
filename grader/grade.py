"""The grading driver: autograde a folder of submissions with the real nbgrader pipeline, trusted.

    python -m grader grade [SUBMISSIONS] [--labs lab01-saliency ...] [--workspace build/grading] [--no-sandbox]

SUBMISSIONS holds <student>/<lab>/<notebook>.ipynb (nbgrader's `submitted` layout); by default the
bundled samples in grader/samples/. In a fresh scratch workspace the driver runs
generate_assignment → (repair of what editors and students break) → autograde → trusted scores →
generate_feedback → export, then prints a per-student, per-lab table.

Trust: each notebook runs in a sandboxed kernel (grader/sandbox.py); its hidden checks are decided by
the trusted checker of this run (grader/checker.py), and after autograde every graded cell's score
is set from the checker's record through nbgrader's gradebook API — so formgrader, feedback and the
export all show trusted scores. Bad notebooks and abnormal ends are recorded in the notes, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from grader import sandbox
from grader.checker import Checker, Session
from grader.execute import NOT_RUN, STOPPED
from grader.notebooks import (answer_imports, deduplicate_grade_ids, grade_id, read_notebook, reinsert_missing_cells,
                              restore_metadata)

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
SAMPLES = Path(__file__).resolve().parent / "samples"
AUTOGRADE_TIMEOUT_S = 1800  # one submission, a safety net far above any honest notebook
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z0-9_.]+)["']""")


class SandboxUnavailable(RuntimeError):
    """No sandbox can be built on this machine (the message says why)."""


@dataclass
class Row:
    student: str
    lab: str
    auto_score: float = 0.0
    auto_max: float = 0.0
    manual_max: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    sandboxed: bool = True


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
    """A course config for the scratch workspace, on top of grader/nbgrader_config.py; with `kernel`,
    autograde runs notebooks in that kernel through the hardened Execute step (grader/execute.py)."""
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


# ---------------------------------------------------------------- submissions in, safe names

def safe_ids(names: list[str]) -> dict[str, str]:
    """A file- and command-line-safe nbgrader id for every student folder name (`*`, spaces, unicode)."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_")[:40] or "student"
        sid = base if base == name and base not in taken else f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        while sid in taken:
            sid += "x"
        ids[name] = sid
        taken.add(sid)
    return ids


def collect(submissions: Path, workspace: Path, labs: list[str]) -> dict[tuple[str, str], tuple[Row, str]]:
    """Copy submissions into the workspace under safe ids, repairing what editors and students break;
    unreadable ones are recorded. Returns (student, lab) → (row, nbgrader student id)."""
    rows = {}
    students = sorted(p.name for p in submissions.iterdir() if p.is_dir())
    ids = safe_ids(students)
    for student in students:
        for lab in labs:
            lab_dir = submissions / student / lab
            if not lab_dir.is_dir():
                continue
            row = Row(student, lab)
            rows[(student, lab)] = (row, ids[student])
            target = workspace / "submitted" / ids[student] / lab
            target.mkdir(parents=True)
            for release_path in sorted((workspace / "release" / lab).glob("*.ipynb")):
                path = lab_dir / release_path.name
                if not path.is_file():
                    row.notes.append(f"{release_path.name} missing from the submission")
                    continue
                nb, problem = read_notebook(path)
                if nb is None:
                    row.notes.append(f"{path.name}: {problem}")
                    continue
                released = nbformat.read(str(release_path), as_version=4)
                row.notes += deduplicate_grade_ids(nb, released)
                row.notes += restore_metadata(nb, released)
                row.notes += reinsert_missing_cells(nb, released)
                row.notes += answer_imports(nb)
                nbformat.write(nb, str(target / path.name))
    return rows


# ---------------------------------------------------------------- trusted scores

def test_cells(lab: str) -> dict[str, dict[str, list[str]]]:
    """notebook → graded test cell → the hidden checks it calls (from the solution notebook)."""
    cells = {}
    for path in sorted((SOLUTIONS / lab).glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        cells[path.stem] = {grade_id(c): CHECK_CALL.findall(c.source) for c in nb.cells
                            if c.get("metadata", {}).get("nbgrader", {}).get("grade")
                            and not c.metadata["nbgrader"].get("solution")}
    return cells


def _cell_errors(autograded: Path) -> dict[str, dict[str, list[str]]]:
    """notebook → grade_id → the error names in its outputs, from the autograded notebooks."""
    found = {}
    for nb_path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        found[nb_path.stem] = {grade_id(c): [o.get("ename", "") for o in c.get("outputs", []) if o.get("output_type") == "error"]
                               for c in nb.cells if grade_id(c)}
    return found


def trusted_scores(workspace: Path, lab: str, sid: str, session: Session, row: Row) -> None:
    """Set every graded test cell's score from the checker's record (and the kernel's own errors,
    which can only lower it); annotate the autograded notebook with the checker's verdicts."""
    from nbgrader.api import Gradebook, MissingEntry

    autograded = workspace / "autograded" / sid / lab
    errors = _cell_errors(autograded)
    failed, tampered, not_run = [], [], []
    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        for notebook, cells in test_cells(lab).items():
            for cell_id, names in cells.items():
                try:
                    grade = gb.find_grade(cell_id, notebook, lab, sid)
                except MissingEntry:
                    continue
                cell_errors = errors.get(notebook, {}).get(cell_id)
                kernel_ok = cell_errors is not None and not cell_errors
                verdicts = [session.passed(n) for n in names]
                checker_ok = bool(names) and all(v is True for v in verdicts)
                if cell_errors and (NOT_RUN in cell_errors or STOPPED in cell_errors):
                    not_run.append(cell_id)
                if kernel_ok and not checker_ok:
                    tampered.append(cell_id)
                score = grade.max_score if (kernel_ok and checker_ok) else 0.0
                if score < grade.max_score:
                    failed.append(cell_id)
                grade.auto_score = score
                grade.needs_manual_grade = False
        gb.db.commit()
    if tampered:
        row.notes.append(f"tampering suspected: {len(tampered)} test cells reported passing in the notebook, "
                         f"but the checker recorded a failure or nothing: {', '.join(tampered)} (scored 0)")
    if not_run:
        row.notes.append(f"the notebook's kernel stopped: {len(not_run)} test cells not run")
    if failed:
        row.notes.append(f"{len(failed)} test cells failed: {', '.join(failed)}")
    row.notes += session.errors
    annotate(autograded, lab, session)


def annotate(autograded: Path, lab: str, session: Session) -> None:
    """Put the checker's verdicts at the top of each graded test cell's output (what feedback shows)."""
    cells = test_cells(lab)
    for nb_path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:
            names = cells.get(nb_path.stem, {}).get(grade_id(cell))
            if not names:
                continue
            lines = [session.message(n) or f"✗ {n}: not run (the cell did not reach this hidden test)" for n in names]
            verdict = nbformat.v4.new_output("stream", name="stdout",
                                             text="Autograder verdict:\n" + "\n".join(lines) + "\n" + "-" * 40 + "\n")
            cell.outputs = [verdict] + list(cell.get("outputs", []))
        nbformat.write(nb, str(nb_path))


def cell_notes(autograded: Path) -> list[str]:
    """Name the answer cells that raised."""
    notes = []
    for nb_path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if meta.get("solution") and not meta.get("grade") and errors and errors[0]["ename"] not in (NOT_RUN,):
                notes.append(f"{errors[0]['ename']} in answer cell {meta['grade_id']}")
    return notes


def scores(workspace: Path, rows: dict[tuple[str, str], tuple[Row, str]]) -> None:
    """Points per submission from the gradebook (trusted by now); maxima from the lab itself."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        for (student, lab), (row, sid) in rows.items():
            source = gb.find_assignment(lab)
            row.auto_max = source.max_code_score
            row.manual_max = source.max_written_score
            try:
                sub = gb.find_submission(lab, sid)
            except MissingEntry:
                if not any("scored 0" in n or "missing" in n or "not a readable" in n for n in row.notes):
                    row.notes.append("nothing to grade: scored 0")
                continue
            row.auto_score = sub.code_score


# ---------------------------------------------------------------- the run

def grade(submissions: Path = SAMPLES, labs: list[str] | None = None,
          workspace: Path = REPO / "build" / "grading", use_sandbox: bool = True) -> list[Row]:
    if use_sandbox:
        reason = sandbox.unavailable_reason()
        if reason:
            raise SandboxUnavailable(f"no grading sandbox on this machine: {reason}. Install bubblewrap, or grade "
                                     "without isolation with --no-sandbox (the table will say so).")
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
    write_config(workspace, kernel=sandbox.KERNEL_NAME if use_sandbox else "python3")
    sandbox.install_kernelspec(workspace / "jupyter")
    checker = Checker(workspace / "run")
    for (student, lab), (row, sid) in rows.items():
        row.sandboxed = use_sandbox
        if not list((workspace / "submitted" / sid / lab).glob("*.ipynb")):
            continue
        session = checker.session(f"{sid}--{lab}")
        start = time.perf_counter()
        rc = nbgrader(["autograde", lab, "--student", sid, "--create", "--force",
                       f"--GuardedExecute.busy_file={session.busy_file}",
                       f"--KernelManager.ip={session.folder / 'kernel'}"],
                      workspace, log, env={sandbox.SOCKET_ENV: str(session.socket_path),
                                           "JUPYTER_RUNTIME_DIR": str(session.folder)},
                      timeout=AUTOGRADE_TIMEOUT_S)
        row.seconds = time.perf_counter() - start
        session.close()
        if rc != 0:
            row.notes.append(f"nbgrader autograde ended abnormally (exit status {rc}; see {log.name})")
        autograded = workspace / "autograded" / sid / lab
        row.notes += cell_notes(autograded)
        trusted_scores(workspace, lab, sid, session, row)
    for lab in labs:
        if nbgrader(["generate_feedback", lab, "--force"], workspace, log):
            for (student, row_lab), (row, _) in rows.items():
                if row_lab == lab:
                    row.notes.append(f"generate_feedback failed for {lab} (see {log.name})")
    if nbgrader(["export", "--to", str(workspace / "grades.csv")], workspace, log):
        print(f"nbgrader export failed; see {log}", file=sys.stderr)
    scores(workspace, rows)
    result = sorted((r for r, _ in rows.values()), key=lambda r: (r.lab, r.student))
    (workspace / "summary.json").write_text(json.dumps([asdict(r) for r in result], indent=2) + "\n")
    return result


def table(rows: list[Row]) -> str:
    lines = [f"{'student':18s} {'lab':18s} {'auto score':>12s} {'written':>8s} {'time':>6s}  notes",
             "-" * 100]
    for r in rows:
        written = f"{r.manual_max:g} pts" if r.manual_max else "-"
        notes = "; ".join(r.notes) if r.notes else "ok"
        if not r.sandboxed:
            notes = "NOT SANDBOXED; " + notes
        lines.append(f"{r.student:18s} {r.lab:18s} {r.auto_score:>5g} / {r.auto_max:<4g} {written:>8s} "
                     f"{r.seconds:>5.1f}s  {notes}")
    return "\n".join(lines)
