"""The grading driver: autograde a class's submissions with the real nbgrader pipeline, trusted.

    python -m grader grade [SUBMISSIONS] [--labs lab01-saliency ...] [--workspace build/grading]
                           [--jobs N | --scheduler tcp://HOST:8786] [--resume] [--no-sandbox]

SUBMISSIONS holds <student>/<lab>/<notebook>.ipynb (nbgrader's `submitted` layout; see
grader/submissions.py for the other layouts accepted); by default the bundled samples. The driver
runs generate_assignment, repairs what editors and students break, grades every submission
(grader/worker.py: sandboxed kernel, trusted checker, scores from the checker's record, the feedback
page) — one after the other, on N local workers, or on a Dask cluster — merges the results into one
gradebook and feedback folder, then runs export and writes the class report.

Every submission's result is journaled in <workspace>/results/ as soon as it is merged, so
`--resume` after an interruption grades only what is missing. Bad notebooks, bad folders and abnormal
ends are recorded in the notes or the run's problems, never fatal to the run.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from grader import sandbox
from grader.course import REPO, SAMPLES, SOLUTIONS, all_labs, generate_assignments, nbgrader, release, write_config  # noqa: F401 (re-exported)
from grader.report import after_grading
from grader.notebooks import answer_imports, deduplicate_grade_ids, read_notebook, reinsert_missing_cells, restore_metadata
from grader.submissions import find
from grader.worker import Job, Result, Template, grade_one



class SandboxUnavailable(RuntimeError):
    """No sandbox can be built on this machine (the message says why)."""


class UsageError(ValueError):
    """The driver was asked for something that does not exist (the message says what)."""


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
    sid: str = ""


class Rows(list):
    """The graded rows, plus the run's problems (files that could not be graded as a submission) and
    where the class report went."""

    problems: list[str]
    report: str = ""


# ---------------------------------------------------------------- submissions in, safe names

def safe_ids(names: list[str]) -> dict[str, str]:
    """A file- and command-line-safe nbgrader id for every student name (`*`, spaces, unicode), stable
    across runs: the name itself when it is safe, else a slug plus a short hash of the name."""
    ids: dict[str, str] = {}
    for name in sorted(names):
        base = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_")[:40] or "student"
        ids[name] = base if base == name else f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return ids


def repaired(files: dict[str, Path], release_dir: Path, notes: list[str]) -> dict[str, bytes]:
    """The submission's notebooks after repairing metadata, duplicates and deleted cells."""
    out = {}
    for release_path in sorted(release_dir.glob("*.ipynb")):
        path = files.get(release_path.name)
        if path is None:
            notes.append(f"{release_path.name} missing from the submission")
            continue
        nb, problem = read_notebook(path)
        if nb is None:
            notes.append(f"{path.name}: {problem}")
            continue
        released = nbformat.read(str(release_path), as_version=4)
        notes += deduplicate_grade_ids(nb, released)
        notes += restore_metadata(nb, released)
        notes += reinsert_missing_cells(nb, released)
        notes += answer_imports(nb)
        out[release_path.name] = nbformat.writes(nb).encode()
    return out


def _job_key(job: Job) -> str:
    h = hashlib.sha256(f"{job.student}\0{job.lab}".encode())
    for name, data in sorted(job.notebooks.items()):
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- merging results into the course gradebook

PAGES = ("autograded", "feedback")  # a result's files: workspace/<kind>/<student>/<lab>/

def merge(workspace: Path, result: Result, key: str) -> None:
    """Put one worker's result into the course's gradebook and autograded folder, and journal it."""
    from nbgrader.api import Gradebook, MissingEntry

    with warnings.catch_warnings(), Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush notices from inside nbgrader's API
        gb.update_or_create_student(result.sid)
        if result.grades:
            gb.update_or_create_submission(result.lab, result.sid)
        for g in result.grades:
            try:
                grade = gb.find_grade(g["cell"], g["notebook"], result.lab, result.sid)
            except MissingEntry:
                continue
            grade.auto_score = g["auto_score"]
            grade.needs_manual_grade = g["needs_manual_grade"]
        gb.db.commit()
    for kind in PAGES:  # the result's files replace the submission's folder
        folder, files = workspace / kind / result.sid / result.lab, getattr(result, kind)
        shutil.rmtree(folder, ignore_errors=True)
        if files:
            folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    journal = workspace / "results" / f"{result.sid}--{result.lab}.json"
    journal.parent.mkdir(exist_ok=True)
    record = asdict(result)
    for kind in PAGES:
        record[kind] = {k: base64.b64encode(v).decode() for k, v in getattr(result, kind).items()}
    record["key"] = key
    journal.write_text(json.dumps(record) + "\n")


def journaled(workspace: Path, sid: str, lab: str, key: str) -> Result | None:
    """The journaled result of this exact submission, if an earlier run merged it."""
    path = workspace / "results" / f"{sid}--{lab}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.pop("key", None) != key:
        return None
    for kind in PAGES:
        record[kind] = {k: base64.b64decode(v) for k, v in record.get(kind, {}).items()}
    return Result(**record)


def scores(workspace: Path, rows: dict[tuple[str, str], Row]) -> None:
    """Points per submission from the course gradebook (trusted by now); maxima from the lab itself."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        for (student, lab), row in rows.items():
            source = gb.find_assignment(lab)
            row.auto_max, row.manual_max = source.max_code_score, source.max_written_score
            try:
                row.auto_score = gb.find_submission(lab, row.sid).code_score
            except MissingEntry:
                if not any("missing" in n or "not a readable" in n for n in row.notes):
                    row.notes.append("nothing to grade: scored 0")


# ---------------------------------------------------------------- running the jobs

class LabRuns:
    """The jobs sorted by lab and cut into one run of consecutive jobs per worker. A worker prepares a lab's
    checks (references, the answer key's timing, the checker's models) the first time it grades that lab, so
    this way each lab is prepared by one worker (or two, where a run ends inside it) instead of by every worker.
    `next(worker)` is the next job of the worker's own run; a worker whose run is done takes the last job of
    the longest run left (the lab its owner reaches last), and the runs of workers that left are shared out."""

    def __init__(self, jobs: list[Job], workers: list[str]):
        ordered = sorted(jobs, key=lambda job: (job.lab, job.sid))
        self.runs: dict[str, deque[Job]] = {w: deque() for w in workers}
        self.orphans: deque[Job] = deque()  # jobs of no present worker
        for i, job in enumerate(ordered):
            (self.runs[workers[i * len(workers) // len(ordered)]] if workers else self.orphans).append(job)

    def keep(self, workers: set[str]) -> None:
        """Follow the cluster: runs of workers that left become orphans; new workers start with none."""
        for w in [w for w in self.runs if w not in workers]:
            self.orphans.extend(self.runs.pop(w))
        for w in sorted(workers):
            self.runs.setdefault(w, deque())

    def next(self, worker: str) -> Job | None:
        own = self.runs.setdefault(worker, deque())
        if own:
            return own.popleft()
        if self.orphans:
            return self.orphans.popleft()
        longest = max(self.runs.values(), key=len)
        return longest.pop() if longest else None


def _dispatch(jobs: list[Job], template: Template, workers: int, scheduler: str | None):
    """Yield results as they finish: in this process, on local Dask workers, or on a Dask cluster.

    On Dask each worker has one job at a time, the next of its `LabRuns` run, handed out as its last one
    finishes (jobs queued all at once get stolen by idle workers, across labs). A job's worker is a
    preference (`allow_other_workers`): a worker that leaves takes no job with it."""
    if workers <= 1 and scheduler is None:
        for job in jobs:
            yield grade_one(job, template)
        return
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None, silence_logs=40)
    client = Client(scheduler or cluster)
    try:
        if cluster is not None:
            client.wait_for_workers(workers)
        shared = client.scatter(template, broadcast=True)
        present = set(client.scheduler_info()["workers"])
        runs, running, placed = LabRuns(jobs, sorted(present)), as_completed(), {}

        def feed() -> None:
            runs.keep(present)
            for worker in sorted(present - set(placed.values())):
                job = runs.next(worker)
                if job is None:
                    return
                future = client.submit(grade_one, job, shared, key=f"grade-{job.sid}-{job.lab}-{_job_key(job)}",
                                       pure=False, workers=[worker], allow_other_workers=True)
                placed[future] = worker
                running.add(future)

        feed()
        for future in running:
            placed.pop(future, None)
            present = set(client.scheduler_info()["workers"]) or present
            feed()
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def grade(submissions: Path = SAMPLES, labs: list[str] | None = None,
          workspace: Path = REPO / "build" / "grading", use_sandbox: bool = True, jobs: int = 1,
          scheduler: str | None = None, resume: bool = False, progress: bool = False) -> Rows:
    if use_sandbox:
        reason = sandbox.unavailable_reason()
        if reason:
            raise SandboxUnavailable(f"no grading sandbox on this machine: {reason}. Install bubblewrap, or grade "
                                     "without isolation with --no-sandbox (the table will say so).")
    known = all_labs()
    unknown = [lab for lab in labs or [] if lab not in known]
    if unknown:
        raise UsageError(f"unknown lab {', '.join(map(repr, unknown))}: the labs are {', '.join(known)}")
    if workspace.exists() and not resume:
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    write_config(workspace)
    log = workspace / "nbgrader.log"
    course = {lab: sorted(p.name for p in (SOLUTIONS / lab).glob("*.ipynb")) for lab in known}
    names = {lab: course[lab] for lab in labs or known}
    shutil.rmtree(workspace / "incoming", ignore_errors=True)
    others = {lab: files for lab, files in course.items() if lab not in names}
    found = find(submissions, names, workspace / "incoming", others)
    release_names = {lab: names[lab] for lab in sorted({lab for _, lab in found.submissions})}
    failed = generate_assignments([lab for lab in release_names if not (workspace / "release" / lab).is_dir()],
                                  workspace, log)
    if failed:
        raise RuntimeError(f"nbgrader generate_assignment {', '.join(failed)} failed; see {log}")
    ids = safe_ids(sorted({student for student, _ in found.submissions}))
    rows: dict[tuple[str, str], Row] = {}
    pending: list[Job] = []
    results: list[Result] = []
    for (student, lab), files in sorted(found.submissions.items()):
        row = rows[(student, lab)] = Row(student, lab, sid=ids[student], sandboxed=use_sandbox,
                                         notes=list(found.notes.get((student, lab), [])))
        job = Job(student, ids[student], lab, repaired(files, workspace / "release" / lab, row.notes), list(row.notes))
        done = journaled(workspace, job.sid, lab, _job_key(job)) if resume else None
        if done is not None:
            results.append(done)
        else:
            pending.append(job)
    threads = 2 if scheduler else max(1, (os.cpu_count() or 2) // max(jobs, 1))
    template = Template({lab: {n: (workspace / "release" / lab / n).read_bytes() for n in names}
                         for lab, names in release_names.items()}, (workspace / "gradebook.db").read_bytes(),
                        use_sandbox, threads)
    bar = _progress(len(pending), progress)
    abnormal = 0
    start = time.perf_counter()
    keys = {(job.sid, job.lab): _job_key(job) for job in pending}
    for result in _dispatch(pending, template, jobs, scheduler):
        merge(workspace, result, keys[(result.sid, result.lab)])
        results.append(result)
        abnormal += any(n.startswith(("nbgrader autograde ended", "tampering", "the notebook's kernel stopped"))
                        for n in result.notes)
        if bar is not None:
            bar.set_postfix(abnormal=abnormal, refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    for result in results:
        row = rows[(result.student, result.lab)]
        row.notes, row.seconds = result.notes, result.seconds
    if nbgrader(["export", "--to", str(workspace / "grades.csv")], workspace, log):
        found.problems.append(f"nbgrader export failed (see {log})")
    scores(workspace, rows)
    out = Rows(sorted(rows.values(), key=lambda r: (r.lab, r.student)))
    out.problems = found.problems
    (workspace / "summary.json").write_text(json.dumps(
        {"rows": [asdict(r) for r in out], "problems": out.problems, "workers": jobs, "scheduler": scheduler,
         "seconds": round(time.perf_counter() - start, 1)}, indent=2, ensure_ascii=False) + "\n")
    out.report = after_grading(workspace)
    return out


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="grading", unit="notebook", file=sys.stderr, dynamic_ncols=True)


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
    problems = getattr(rows, "problems", [])
    if problems:
        lines += ["", "Not graded:"] + [f"  - {p}" for p in problems]
    return "\n".join(lines)
