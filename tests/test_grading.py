"""The main job: real nbgrader runs over the bundled samples give the expected grades."""
import json
import shutil

import pytest

from grader.grade import SAMPLES, grade, table

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("grading")
    rows = grade(SAMPLES, workspace=workspace)
    print(table(rows))
    return workspace, {(r.student, r.lab): r for r in rows}


def test_every_lab_has_the_four_samples():
    for lab, students in EXPECTED.items():
        assert set(students) == {"sample-full", "sample-blank", "sample-partial", "sample-stripped"}, lab
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


def test_stripped_metadata_is_recorded(graded):
    _, rows = graded
    for (student, lab), row in rows.items():
        if student == "sample-stripped":
            assert any("metadata missing" in n for n in row.notes), row.notes


def test_feedback_and_export(graded):
    workspace, rows = graded
    for student, lab in rows:
        html = list((workspace / "feedback" / student / lab).glob("*.html"))
        assert html, f"no feedback for {student}/{lab}"
    grades = (workspace / "grades.csv").read_text()
    for student, lab in rows:
        assert student in grades and lab in grades


def test_bad_input_is_recorded_and_the_rest_graded_the_same(graded, tmp_path):
    """A second run — on a full sample beside an unreadable and a missing notebook — gives the same grade."""
    _, rows = graded
    lab = next(iter(EXPECTED))
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
