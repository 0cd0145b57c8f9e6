"""Grading one submission, wherever it runs: in the driver's process, a local worker, or a Dask worker.

A `Job` carries everything a worker needs (the repaired notebooks and the course's template: the
released notebooks and the gradebook with the assignment's cells), so a worker on another machine
needs only the course's environment. Each worker process keeps a private nbgrader workspace and one
trusted checker (checks are set up once per worker, then reused). `grade_one` runs nbgrader autograde
in the sandbox, scores every graded cell from the checker's record, annotates the notebook with the
verdicts, generates the student's feedback page, and returns a `Result` of plain data that the driver
merges into the course's gradebook.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grader import sandbox
from grader.checker import Checker, Session
from grader.course import CHECK_CALL, SOLUTIONS, nbgrader, write_config
from grader.execute import NOT_RUN, STOPPED
from grader.notebooks import grade_id

AUTOGRADE_TIMEOUT_S = 1800  # one submission: a safety net far above any honest notebook


@dataclass
class Template:
    """What every worker needs of the course: released notebooks and the gradebook after generate_assignment."""

    release: dict[str, dict[str, bytes]]  # lab -> notebook file name -> bytes
    gradebook: bytes
    use_sandbox: bool = True
    threads: int = 2  # torch threads per notebook (fewer when several are graded at once)

    @property
    def key(self) -> str:
        h = hashlib.sha256(self.gradebook)
        for lab in sorted(self.release):
            for name, data in sorted(self.release[lab].items()):
                h.update(f"{lab}/{name}".encode())
                h.update(data)
        h.update(f"{self.use_sandbox} {self.threads}".encode())
        return h.hexdigest()[:16]


@dataclass
class Job:
    student: str  # the folder name as submitted
    sid: str  # the safe nbgrader id
    lab: str
    notebooks: dict[str, bytes]  # file name -> repaired notebook
    notes: list[str] = field(default_factory=list)  # from collecting and repairing


@dataclass
class Result:
    student: str
    sid: str
    lab: str
    notes: list[str]
    seconds: float
    grades: list[dict]  # one per graded cell: notebook, cell, auto_score, max_score, needs_manual_grade
    autograded: dict[str, bytes]  # file name -> annotated autograded notebook
    verdicts: list[dict]  # the checker's record: name, passed, message, seconds
    timings: dict[str, float]  # the cost breakdown of this submission
    worker: str = ""
    feedback: dict[str, bytes] = field(default_factory=dict)  # file name -> the student's feedback page


class WorkerContext:
    """A worker's private nbgrader workspace and its checker."""

    def __init__(self, template: Template, root: Path | None = None):
        os.environ["XAILAB_THREADS"] = str(template.threads)  # before the checker imports xailab.grading
        import xailab.grading

        xailab.grading.THREADS = template.threads

        self.root = Path(root or tempfile.mkdtemp(prefix="xailab-worker-"))
        if root is None:  # students' notebooks do not outlive the worker
            atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.use_sandbox = template.use_sandbox
        for lab, notebooks in template.release.items():
            folder = self.root / "release" / lab
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in notebooks.items():
                (folder / name).write_bytes(data)
        (self.root / "gradebook.db").write_bytes(template.gradebook)
        write_config(self.root, kernel=sandbox.KERNEL_NAME if self.use_sandbox else "python3")
        sandbox.install_kernelspec(self.root / "jupyter")
        self.checker = Checker(self.root / "run")
        self._nbgrader = None

    def feedback(self, lab: str, sid: str, notes: list[str]) -> dict[str, bytes]:
        """The submission's feedback pages (nbgrader generate_feedback, run in this process: no start-up per
        submission) from this workspace's gradebook, which holds its trusted scores."""
        from nbgrader.apps import NbGraderAPI
        from traitlets.config.loader import PyFileConfigLoader

        if self._nbgrader is None:
            self._nbgrader = NbGraderAPI(config=PyFileConfigLoader("nbgrader_config.py", str(self.root)).load_config())
        folder = self.root / "feedback" / sid / lab
        shutil.rmtree(folder, ignore_errors=True)
        done = self._nbgrader.generate_feedback(lab, sid)
        pages = {p.name: p.read_bytes() for p in sorted(folder.glob("*.html"))}
        if not done.get("success") or not pages:
            notes.append(f"generate_feedback failed for {lab}: {(done.get('error') or 'no page written').strip()[-200:]}")
        shutil.rmtree(folder, ignore_errors=True)
        return pages


_CONTEXTS: dict[str, WorkerContext] = {}


def context(template: Template) -> WorkerContext:
    if template.key not in _CONTEXTS:
        _CONTEXTS[template.key] = WorkerContext(template)
    return _CONTEXTS[template.key]


def grade_one(job: Job, template: Template) -> Result:
    """Autograde one submission in this process's workspace; never raises for a bad notebook."""
    ctx = context(template)
    start = time.perf_counter()
    notes = list(job.notes)
    submitted = ctx.root / "submitted" / job.sid / job.lab
    autograded = ctx.root / "autograded" / job.sid / job.lab
    for folder in (submitted, autograded):
        shutil.rmtree(folder, ignore_errors=True)
    submitted.mkdir(parents=True)
    for name, data in job.notebooks.items():
        (submitted / name).write_bytes(data)
    session = ctx.checker.session(f"{job.sid}--{job.lab}")  # opened even when there is nothing to run
    log = ctx.root / "nbgrader.log"
    timings_file = session.folder / "timings.json"
    rc = nbgrader(["autograde", job.lab, "--student", job.sid, "--create", "--force",
                   f"--GuardedExecute.busy_file={session.busy_file}",
                   f"--GuardedExecute.timings_file={timings_file}",
                   f"--KernelManager.ip={session.folder / 'kernel'}"],
                  ctx.root, log, env={sandbox.SOCKET_ENV: str(session.socket_path),
                                      "JUPYTER_RUNTIME_DIR": str(session.folder)},
                  timeout=AUTOGRADE_TIMEOUT_S) if job.notebooks else 0
    session.close()
    seconds = time.perf_counter() - start
    if rc != 0:
        notes.append(f"nbgrader autograde ended abnormally (exit status {rc})")
    notes += cell_notes(autograded)
    grades = trusted_scores(ctx.root, job.lab, job.sid, session, notes) if job.notebooks else []
    annotate(autograded, job.lab, session)
    pages = ctx.feedback(job.lab, job.sid, notes) if list(autograded.glob("*.ipynb")) else {}
    result = Result(job.student, job.sid, job.lab, notes, seconds, grades,
                    {p.name: p.read_bytes() for p in sorted(autograded.glob("*.ipynb"))},
                    [vars(v) for v in session.verdicts],
                    breakdown(timings_file, session, seconds), worker=f"{os.uname().nodename}:{os.getpid()}",
                    feedback=pages)
    shutil.rmtree(session.folder, ignore_errors=True)
    return result


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
    """notebook → grade_id → the error names in its outputs, from the autograded notebooks; a cell that
    was never executed (nbgrader stopped before it) counts as not run."""
    found = {}
    for nb_path in sorted(autograded.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        found[nb_path.stem] = {grade_id(c): [o.get("ename", "") for o in c.get("outputs", [])
                                             if o.get("output_type") == "error"]
                                            + ([] if c.get("execution_count") is not None else [NOT_RUN])
                               for c in nb.cells if grade_id(c) and c.cell_type == "code"}
    return found


def trusted_scores(workspace: Path, lab: str, sid: str, session: Session, notes: list[str]) -> list[dict]:
    """Set every graded test cell's score from the checker's record (the kernel's own errors can only
    lower it) in the workspace's gradebook; return every graded cell's grade as plain data."""
    from nbgrader.api import Gradebook, MissingEntry

    errors = _cell_errors(workspace / "autograded" / sid / lab)
    failed, tampered, not_run, grades = [], [], [], []
    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        for notebook, cells in test_cells(lab).items():
            for cell_id, names in cells.items():
                try:
                    grade = gb.find_grade(cell_id, notebook, lab, sid)
                except MissingEntry:
                    continue
                cell_errors = errors.get(notebook, {}).get(cell_id)
                kernel_ok = cell_errors is not None and not cell_errors
                checker_ok = bool(names) and all(session.passed(n) is True for n in names)
                if cell_errors and (NOT_RUN in cell_errors or STOPPED in cell_errors):
                    not_run.append(cell_id)
                if kernel_ok and not checker_ok:
                    tampered.append(cell_id)
                grade.auto_score = grade.max_score if (kernel_ok and checker_ok) else 0.0
                grade.needs_manual_grade = False
                if grade.auto_score < grade.max_score:
                    failed.append(cell_id)
        gb.db.commit()
        try:
            submission = gb.find_submission(lab, sid)
        except MissingEntry:
            submission = None
        for nb in submission.notebooks if submission else []:
            for g in nb.grades:
                grades.append(dict(notebook=nb.name, cell=g.name, auto_score=g.auto_score, max_score=g.max_score,
                                   needs_manual_grade=g.needs_manual_grade))
    if tampered:
        notes.append(f"tampering suspected: {len(tampered)} test cells reported passing in the notebook, "
                     f"but the checker recorded a failure or nothing: {', '.join(tampered)} (scored 0)")
    if not_run:
        notes.append(f"the notebook's kernel stopped: {len(not_run)} test cells not run")
    if failed:
        notes.append(f"{len(failed)} test cells failed: {', '.join(failed)}")
    notes += session.errors
    return grades


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
            if meta.get("solution") and not meta.get("grade") and errors and errors[0]["ename"] != NOT_RUN:
                notes.append(f"{errors[0]['ename']} in answer cell {meta['grade_id']}")
    return notes


def breakdown(timings_file: Path, session: Session, total: float) -> dict[str, float]:
    """Where a submission's grading time went: nbgrader and kernel start, imports (the setup cell),
    model loads (other cells before the first answer), the student's own code inside the hidden
    checks, preparing checks (references, answer-key timing: once per worker), the rest of the cells."""
    try:
        t = json.loads(timings_file.read_text())
    except (OSError, ValueError):
        t = {}
    cells = t.get("cells", [])
    student = sum(v.seconds_student for v in session.verdicts)
    checking = sum(v.seconds for v in session.verdicts)
    imports = sum(c["seconds"] for c in cells if c.get("grade_id") == "setup")
    first_answer = next((i for i, c in enumerate(cells) if c.get("solution")), len(cells))
    loads = sum(c["seconds"] for c in cells[:first_answer] if c.get("grade_id") != "setup")
    executed = sum(c["seconds"] for c in cells)
    return {
        "total": round(total, 2),
        "start": round(max(0.0, t.get("first_cell", 0.0) - t.get("started", 0.0)), 2) if t else 0.0,
        "imports": round(imports, 2),
        "model_loads": round(loads, 2),
        "student_code_in_checks": round(student, 2),
        "preparing_checks": round(session.setup_seconds, 2),
        "checker_and_transfer": round(max(0.0, checking - student - session.setup_seconds), 2),
        "other_cells": round(max(0.0, executed - imports - loads - checking), 2),
    }
