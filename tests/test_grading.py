"""The main job: real nbgrader runs over the bundled samples give the expected grades — serially, on
two local workers, on a Dask cluster, after a resumed interruption, and on a machine whose CPUs are
saturated by other work.

What `make test` grades grows by one notebook a lab: the full sample of every lab (the lab's own
checks through the sandboxed checker, full marks), and all four samples of FOUR_SAMPLE_LABS, whose
partial samples hold every kind of planted bug the grader must survive (a syntax error, a function
that raises, an endless loop stopped by the time limits, wrong values), whose stripped samples have
their metadata restored and whose blank samples score 0. The blank, partial and stripped samples of
the other labs are graded against expected.json by `make test-slow` (`graded_rest`), as is the
agreement of serial, Dask and resumed grading on all four samples. A blank sample is the released
notebook, which make test still runs per lab (tests/test_notebooks.py: nbgrader validate --invert,
no test passes), and every check still fails on the blank stub per task (tests/test_mutants.py).

XAILAB_TEST_LABS="lab04 lab07" (names or lab numbers) grades only those labs, e.g. while adding one.
"""
import base64
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from grader.grade import SAMPLES, LabRuns, grade, table
from grader.worker import Job, grade_one

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
STUDENTS = ("sample-full", "sample-blank", "sample-partial", "sample-stripped")
EVERY_LAB = ("sample-full",)  # graded for every lab by make test
AGREEMENT = ("sample-full", "sample-blank")  # two different scores: the single-lab runs of make test
# Lab 1's partial sample alone has a syntax error, a raising function, an endless loop and wrong
# values (test_make_test_still_grades_every_kind_of_partial_bug keeps it so).
FOUR_SAMPLE_LABS = ("lab01-saliency",)


def selected_labs() -> list[str]:
    wanted = os.environ.get("XAILAB_TEST_LABS", "").replace(",", " ").split()
    labs = [lab for lab in EXPECTED if not wanted or lab in wanted or lab.split("-")[0] in wanted]
    if not labs:
        raise ValueError(f"XAILAB_TEST_LABS={' '.join(wanted)} names no lab of {', '.join(EXPECTED)}")
    return labs


LABS = selected_labs()
# the runs of a single lab use one that grades quickly (no endless loop in its partial sample)
ONE_LAB = "lab02-cam" if "lab02-cam" in LABS else LABS[0]


def in_make_test(lab: str, student: str) -> bool:
    return student in EVERY_LAB or lab in FOUR_SAMPLE_LABS


CASES = [(lab, s) for lab in LABS for s in EXPECTED[lab]]
DEFAULT = [case for case in CASES if in_make_test(*case)]
REST = [case for case in CASES if not in_make_test(*case)]


def subset(tmp_path, labs, students=STUDENTS):
    subs = tmp_path / "submissions"
    for student in students:
        for lab in labs:
            shutil.copytree(SAMPLES / student / lab, subs / student / lab)
    return subs


def grade_samples(tmp_path_factory, cases):
    """Grade these (lab, student) samples as one class on two workers; (workspace, rows by (student, lab))."""
    root = tmp_path_factory.mktemp("grading")
    subs = root / "submissions"
    for lab, student in cases:
        shutil.copytree(SAMPLES / student / lab, subs / student / lab)
    rows = grade(subs, workspace=root / "workspace", jobs=2)
    print(table(rows))
    return root / "workspace", {(r.student, r.lab): r for r in rows}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """make test: the full sample of every lab, all four samples of FOUR_SAMPLE_LABS."""
    return grade_samples(tmp_path_factory, DEFAULT)


@pytest.fixture(scope="module")
def graded_rest(tmp_path_factory):
    """make test-slow: the blank, partial and stripped samples of the other labs."""
    if not REST:
        pytest.skip("every selected lab's samples are graded by make test")
    return grade_samples(tmp_path_factory, REST)


RUNS = ["graded", pytest.param("graded_rest", marks=pytest.mark.slow)]


def test_every_lab_has_the_four_samples():
    for lab, students in EXPECTED.items():
        assert set(students) == set(STUDENTS), lab
        for student in students:
            assert list((SAMPLES / student / lab).glob("*.ipynb")), f"{student}/{lab} missing"


def test_make_test_still_grades_every_kind_of_partial_bug(graded):
    """What make test leaves to make test-slow hides no kind of partial submission: the partial samples
    it grades hold a syntax error (the function is then never defined), a function that raises, an
    endless loop interrupted by the cell's time limit, and wrong values the checker rejects."""
    workspace, rows = graded
    labs = [lab for lab in FOUR_SAMPLE_LABS if ("sample-partial", lab) in rows]
    if not labs:
        pytest.skip("XAILAB_TEST_LABS selects none of FOUR_SAMPLE_LABS")
    errors, rejected = set(), []
    for lab in labs:
        record = json.loads((workspace / "results" / f"sample-partial--{lab}.json").read_text())
        rejected += [v for v in record["verdicts"] if not v["passed"]]
        for data in record["autograded"].values():
            nb = json.loads(base64.b64decode(data))
            errors |= {o["ename"] for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"}
    if set(labs) == set(FOUR_SAMPLE_LABS):
        assert {"SyntaxError", "NameError", "CellTimeout"} <= errors, errors
        assert errors & {"RuntimeError", "NotImplementedError", "ValueError"}, errors
    assert rejected, "no wrong values rejected by the checker"


@pytest.mark.parametrize("lab,student", [case if in_make_test(*case) else pytest.param(*case, marks=pytest.mark.slow)
                                         for case in CASES])
def test_sample_scores(request, lab, student):
    _, rows = request.getfixturevalue("graded" if in_make_test(lab, student) else "graded_rest")
    row, expected = rows[(student, lab)], EXPECTED[lab][student]
    assert row.auto_score == expected["score"], f"{student}/{lab}: {row.auto_score} ≠ {expected['score']}; {row.notes}"
    failed = next((n for n in row.notes if "test cells failed" in n), "")
    for cell in expected.get("failed", []):
        assert cell in failed, f"{cell} should fail for {student}: {row.notes}"
    if "failed" in expected:
        assert failed.count("test_") == len(expected["failed"]), row.notes


@pytest.mark.parametrize("run", RUNS)
def test_full_marks_are_the_maximum(request, run):
    _, rows = request.getfixturevalue(run)
    for (student, lab), row in rows.items():
        if student in ("sample-full", "sample-stripped"):
            assert row.auto_score == row.auto_max > 0
            assert not any("tampering" in n or "abnormally" in n for n in row.notes), row.notes


@pytest.mark.parametrize("run", RUNS)
def test_stripped_metadata_is_recorded(request, run):
    _, rows = request.getfixturevalue(run)
    for (student, lab), row in rows.items():
        if student == "sample-stripped":
            assert any("metadata missing" in n for n in row.notes), row.notes


@pytest.mark.parametrize("run", RUNS)
def test_feedback_export_and_journal(request, run):
    workspace, rows = request.getfixturevalue(run)
    for student, lab in rows:
        html = list((workspace / "feedback" / student / lab).glob("*.html"))
        assert html, f"no feedback for {student}/{lab}"
        assert "Autograder verdict" in html[0].read_text()
        assert (workspace / "results" / f"{student}--{lab}.json").exists()
    grades = (workspace / "grades.csv").read_text()
    for student, lab in rows:
        assert student in grades and lab in grades
    summary = json.loads((workspace / "summary.json").read_text())
    assert len(summary["rows"]) == len(rows) and summary["workers"] == 2


def test_cost_breakdown(graded):
    workspace, rows = graded
    record = json.loads((workspace / "results" / f"sample-full--{LABS[0]}.json").read_text())
    t = record["timings"]
    assert t["total"] > 0 and t["imports"] > 0 and t["student_code_in_checks"] > 0
    assert sum(v for k, v in t.items() if k != "total") <= t["total"] * 1.05


@pytest.mark.parametrize("students", [AGREEMENT, pytest.param(STUDENTS, marks=pytest.mark.slow)],
                         ids=["full-and-blank", "four-samples"])
def test_serial_dask_cluster_and_resume_agree(tmp_path, students):
    """One lab three ways: in this process, on a Dask cluster given by its address, and resumed after
    half the results were lost — always the expected grades, which the two-worker run gives too
    (test_sample_scores). make test uses the full and blank samples (two different scores); make
    test-slow all four."""
    lab = ONE_LAB
    expected = {s: EXPECTED[lab][s]["score"] for s in students}
    subs = subset(tmp_path, [lab], students)
    workspaces = set(Path(tempfile.gettempdir()).glob("xailab-worker-*"))
    serial = grade(subs, workspace=tmp_path / "serial")
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        clustered = grade(subs, workspace=tmp_path / "cluster", scheduler=cluster.scheduler_address)
    for run in (serial, clustered):
        assert {r.student: r.auto_score for r in run} == expected
    # the cluster's worker removed its private workspace (students' notebooks) when it stopped
    assert len(set(Path(tempfile.gettempdir()).glob("xailab-worker-*")) - workspaces) <= 1  # this process's own
    journal = tmp_path / "serial" / "results"
    lost = sorted(journal.glob("*.json"))[:len(students) // 2]
    for path in lost:
        path.unlink()
    start = time.perf_counter()
    resumed = grade(subs, workspace=tmp_path / "serial", resume=True)
    assert {r.student: r.auto_score for r in resumed} == {r.student: r.auto_score for r in serial}
    assert len(list(journal.glob("*.json"))) == len(students)
    for r in resumed:  # feedback pages come with the results, journaled or graded again
        assert list((tmp_path / "serial" / "feedback" / r.sid / lab).glob("*.html")), r.student
    print(f"resume regraded {len(lost)} of {len(students)} in {time.perf_counter() - start:.1f} s")


def test_jobs_go_to_workers_in_runs_of_one_lab():
    """Two workers and a class of ten labs × four students (interleaved as the student ids sort): each
    worker grades one run of consecutive labs, so each lab's checks are prepared once instead of twice; a
    worker done early takes jobs from the end of the other's run; a departed worker's run is shared out."""
    labs = [f"lab{i:02d}" for i in range(1, 11)]
    jobs = [Job(f"s{n}", f"s{n}", lab, {}) for n in range(4) for lab in labs]
    runs = LabRuns(jobs, ["tcp://a", "tcp://b"])
    got = {"tcp://a": [], "tcp://b": []}
    for _ in range(20):  # the two workers take turns
        for w in got:
            got[w].append(runs.next(w))
    assert sorted(id(job) for js in got.values() for job in js) == sorted(id(job) for job in jobs)  # each once
    assert [job.lab for job in got["tcp://a"]] == sorted(labs * 4)[:20]  # lab by lab
    assert {job.lab for job in got["tcp://a"]}.isdisjoint({job.lab for job in got["tcp://b"]})
    assert runs.next("tcp://a") is None

    fast = LabRuns(jobs[:8], ["a", "b"])  # a is twice as fast: it finishes its run, then takes b's last lab
    order = [fast.next(w) for w in ("a", "b", "a", "a", "b", "a", "a", "b")]
    assert [job.lab for job in order] == ["lab01", "lab05", "lab02", "lab03", "lab06", "lab04", "lab08", "lab07"]
    assert fast.next("a") is None and fast.next("b") is None

    gone = LabRuns(jobs[:6], ["a", "b", "c"])
    assert [gone.next(w).lab for w in ("a", "b", "c")] == ["lab01", "lab03", "lab05"]
    gone.keep({"a", "c"})  # b left: its run goes to whoever is free first
    assert [gone.next(w).lab for w in ("c", "a", "a")] == ["lab06", "lab02", "lab04"]
    assert LabRuns(jobs[:3], []).next("x").lab == "lab01"  # a worker that joins later gets work too


def _burn(seconds):
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


@pytest.mark.slow  # two labs graded beside 3 busy processes per core: make test-slow
def test_grades_do_not_depend_on_load(tmp_path):
    """The full samples of two labs (Lab 2 once lost points to a busy machine), graded while busy
    processes saturate every CPU (3 per core, bounded in time), keep full marks."""
    labs = list(EXPECTED)[:2]
    subs = subset(tmp_path, labs, ("sample-full",))
    busy = [multiprocessing.Process(target=_burn, args=(900,), daemon=True)
            for _ in range(3 * multiprocessing.cpu_count())]
    for p in busy:
        p.start()
    try:
        rows = grade(subs, workspace=tmp_path / "ws")
    finally:
        for p in busy:
            p.terminate()
    print(table(rows))
    for r in rows:
        assert r.auto_score == r.auto_max, f"{r.lab} under load: {r.auto_score}/{r.auto_max}; {r.notes}"


def test_an_endless_loop_still_fails_quickly(tmp_path):
    """A function that never returns loses its check within a bounded time on a quiet machine."""
    from grader.checks import run_check

    def endless(model, inputs, target, absolute=False):
        while True:
            pass

    start = time.perf_counter()
    passed, message = run_check("lab01.vanilla_gradient.cnn", endless)
    took = time.perf_counter() - start
    assert not passed and "did not finish within its time budget" in message and "tried twice" in message
    assert took < 120, f"took {took:.0f} s"
    assert "forever" not in message, "the message must not accuse an endless loop"


def test_bad_input_is_recorded_and_the_rest_graded_the_same(graded, tmp_path):
    """A second run — on a full sample beside an unreadable and a missing notebook — gives the same grade."""
    _, rows = graded
    lab = ONE_LAB
    subs = tmp_path / "submissions"
    shutil.copytree(SAMPLES / "sample-full" / lab, subs / "full-again" / lab)
    (subs / "garbled" / lab).mkdir(parents=True)
    name = next((SAMPLES / "sample-full" / lab).glob("*.ipynb")).name
    (subs / "garbled" / lab / name).write_text('{"cells": [ this is not json')
    (subs / "absent" / lab).mkdir(parents=True)
    again = {r.student: r for r in grade(subs, labs=[lab], workspace=tmp_path / "ws")}
    assert again["full-again"].auto_score == rows[("sample-full", lab)].auto_score
    assert again["garbled"].auto_score == 0 and any("invalid JSON" in n for n in again["garbled"].notes)
    assert again["absent"].auto_score == 0 and any("missing" in n for n in again["absent"].notes)
    assert again["garbled"].auto_max == rows[("sample-full", lab)].auto_max


def test_worker_grades_a_job_without_the_driver(graded, tmp_path):
    """A worker needs only the job and the course template (what a Dask worker on another machine gets)."""
    workspace, rows = graded
    lab = ONE_LAB
    from grader.grade import Template

    name = next((SAMPLES / "sample-full" / lab).glob("*.ipynb")).name
    template = Template({lab: {name: (workspace / "release" / lab / name).read_bytes()}},
                        (workspace / "gradebook.db").read_bytes())
    result = grade_one(Job("solo", "solo", lab, {name: (SAMPLES / "sample-full" / lab / name).read_bytes()}), template)
    assert sum(g["auto_score"] for g in result.grades if g["auto_score"]) == rows[("sample-full", lab)].auto_score
    assert all(v["passed"] for v in result.verdicts)
    (page,) = result.feedback.values()  # the student's feedback page, made by the worker from its gradebook
    assert "Autograder verdict" in page.decode() and "✓ lab" in page.decode()
