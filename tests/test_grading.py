"""The main job: real nbgrader runs over the bundled samples give the expected grades — serially, on
two local workers, on a Dask cluster, after a resumed interruption, and on a machine whose CPUs are
saturated by other work."""
import json
import multiprocessing
import shutil
import time

import pytest

from grader.grade import SAMPLES, grade, table
from grader.worker import Job, grade_one

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
STUDENTS = ("sample-full", "sample-blank", "sample-partial", "sample-stripped")
ONE_LAB = "lab02-cam"  # the runs of a single lab use one that grades quickly (no endless loop in its partial sample)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("grading")
    rows = grade(SAMPLES, workspace=workspace, jobs=2)
    print(table(rows))
    return workspace, {(r.student, r.lab): r for r in rows}


def test_every_lab_has_the_four_samples():
    for lab, students in EXPECTED.items():
        assert set(students) == set(STUDENTS), lab
        for student in students:
            assert list((SAMPLES / student / lab).glob("*.ipynb")), f"{student}/{lab} missing"


@pytest.mark.parametrize("lab,student", [(lab, s) for lab, ss in EXPECTED.items() for s in ss])
def test_sample_scores(graded, lab, student):
    _, rows = graded
    row, expected = rows[(student, lab)], EXPECTED[lab][student]
    assert row.auto_score == expected["score"], f"{student}/{lab}: {row.auto_score} ≠ {expected['score']}; {row.notes}"
    failed = next((n for n in row.notes if "test cells failed" in n), "")
    for cell in expected.get("failed", []):
        assert cell in failed, f"{cell} should fail for {student}: {row.notes}"
    if "failed" in expected:
        assert failed.count("test_") == len(expected["failed"]), row.notes


def test_full_marks_are_the_maximum(graded):
    _, rows = graded
    for (student, lab), row in rows.items():
        if student in ("sample-full", "sample-stripped"):
            assert row.auto_score == row.auto_max > 0
            assert not any("tampering" in n or "abnormally" in n for n in row.notes), row.notes


def test_stripped_metadata_is_recorded(graded):
    _, rows = graded
    for (student, lab), row in rows.items():
        if student == "sample-stripped":
            assert any("metadata missing" in n for n in row.notes), row.notes


def test_feedback_export_and_journal(graded):
    workspace, rows = graded
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
    record = json.loads((workspace / "results" / f"sample-full--{next(iter(EXPECTED))}.json").read_text())
    t = record["timings"]
    assert t["total"] > 0 and t["imports"] > 0 and t["student_code_in_checks"] > 0
    assert sum(v for k, v in t.items() if k != "total") <= t["total"] * 1.05


def subset(tmp_path, labs, students=STUDENTS):
    subs = tmp_path / "submissions"
    for student in students:
        for lab in labs:
            shutil.copytree(SAMPLES / student / lab, subs / student / lab)
    return subs


def test_serial_dask_cluster_and_resume_agree(graded, tmp_path):
    """One lab three ways: in this process, on a Dask cluster given by its address, and resumed after
    two results were lost — always the grades of the two-worker run."""
    _, rows = graded
    lab = ONE_LAB
    subs = subset(tmp_path, [lab])
    serial = grade(subs, workspace=tmp_path / "serial")
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        clustered = grade(subs, workspace=tmp_path / "cluster", scheduler=cluster.scheduler_address)
    for run in (serial, clustered):
        assert {r.student: r.auto_score for r in run} == {s: rows[(s, lab)].auto_score for s in STUDENTS}
    journal = tmp_path / "serial" / "results"
    lost = sorted(journal.glob("*.json"))[:2]
    for path in lost:
        path.unlink()
    start = time.perf_counter()
    resumed = grade(subs, workspace=tmp_path / "serial", resume=True)
    assert {r.student: r.auto_score for r in resumed} == {r.student: r.auto_score for r in serial}
    assert len(list(journal.glob("*.json"))) == len(STUDENTS)
    print(f"resume regraded {len(lost)} of {len(STUDENTS)} in {time.perf_counter() - start:.1f} s")


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
