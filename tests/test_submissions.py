"""The driver's view of a submissions folder: every layout it accepts, and a message for every file it
does not use (fast: no grading)."""
import shutil
import zipfile

import pytest

from grader.grade import SAMPLES, UsageError, grade, safe_ids
from grader.submissions import find

LAB = "lab01-saliency"
RELEASE = {LAB: ["lab01.ipynb"], "lab02-cam": ["lab02.ipynb"]}
NOTEBOOK = SAMPLES / "sample-full" / LAB / "lab01.ipynb"


def put(path, source=NOTEBOOK):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)


def test_standard_and_lab_level_missing(tmp_path):
    put(tmp_path / "in" / "ada" / LAB / "lab01.ipynb")
    put(tmp_path / "in" / "bob" / "lab01.ipynb")  # no lab folder
    put(tmp_path / "in" / "cy" / LAB / "lab01 (1).ipynb")  # renamed by a re-download
    found = find(tmp_path / "in", RELEASE, tmp_path / "scratch")
    assert set(found.submissions) == {("ada", LAB), ("bob", LAB), ("cy", LAB)}
    assert found.submissions[("cy", LAB)]["lab01.ipynb"].name == "lab01 (1).ipynb"
    assert any("as lab01-saliency/lab01.ipynb" in n for n in found.notes[("bob", LAB)])
    assert any("graded lab01 (1).ipynb as lab01.ipynb" in n for n in found.notes[("cy", LAB)])
    assert not found.problems


def test_zip_archives_from_an_lms(tmp_path):
    (tmp_path / "in").mkdir()
    with zipfile.ZipFile(tmp_path / "in" / "dee.zip", "w") as zf:
        zf.write(NOTEBOOK, f"dee/{LAB}/lab01.ipynb")
        zf.writestr("../../escape.txt", "outside")
    with zipfile.ZipFile(tmp_path / "in" / "eve.zip", "w") as zf:
        zf.write(NOTEBOOK, "lab01.ipynb")
    (tmp_path / "in" / "broken.zip").write_bytes(b"not a zip")
    found = find(tmp_path / "in", RELEASE, tmp_path / "scratch")
    assert set(found.submissions) == {("dee", LAB), ("eve", LAB)}
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "scratch" / "escape.txt").exists()
    assert any("broken.zip" in p and "not a readable zip" in p for p in found.problems)


def test_every_unused_file_is_named(tmp_path):
    put(tmp_path / "in" / "lab01.ipynb")  # no student
    put(tmp_path / "in" / "fay" / "lab99-unknown" / "lab99.ipynb")
    (tmp_path / "in" / "gus").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hello")
    put(tmp_path / "in" / "hal" / LAB / "lab01.ipynb")
    with zipfile.ZipFile(tmp_path / "in" / "hal.zip", "w") as zf:
        zf.write(NOTEBOOK, "lab01.ipynb")
    found = find(tmp_path / "in", RELEASE, tmp_path / "scratch")
    problems = " | ".join(found.problems)
    assert "lab01.ipynb is at the top level" in problems
    assert "lab99.ipynb matches no lab" in problems
    assert "'gus': no notebook" in problems
    assert "notes.txt" in problems
    assert "'hal' appears twice" in problems
    assert set(found.submissions) == {("hal", LAB)}


def test_labs_left_out_with_the_labs_option_are_not_problems(tmp_path):
    put(tmp_path / "in" / "jo" / LAB / "lab01.ipynb")
    put(tmp_path / "in" / "jo" / "lab02-cam" / "lab02.ipynb")
    put(tmp_path / "in" / "kim" / "lab02.ipynb")  # no lab folder
    put(tmp_path / "in" / "kim" / "lab99.ipynb")
    only_lab01 = {LAB: RELEASE[LAB]}
    found = find(tmp_path / "in", only_lab01, tmp_path / "scratch", {"lab02-cam": RELEASE["lab02-cam"]})
    assert set(found.submissions) == {("jo", LAB)}
    assert found.problems == ["student 'kim': lab99.ipynb matches no lab of this course (not graded)"]


def test_empty_lab_folder_is_a_submission_graded_zero(tmp_path):
    (tmp_path / "in" / "ivy" / LAB).mkdir(parents=True)
    found = find(tmp_path / "in", RELEASE, tmp_path / "scratch")
    assert found.submissions == {("ivy", LAB): {}}


def test_empty_folder_and_unknown_lab(tmp_path):
    (tmp_path / "in").mkdir()
    assert "is empty" in find(tmp_path / "in", RELEASE, tmp_path / "s").problems[0]
    with pytest.raises(UsageError, match="unknown lab 'lab11-nothing'"):
        grade(tmp_path / "in", labs=["lab11-nothing"], workspace=tmp_path / "ws")


def test_safe_ids_are_stable_unique_and_safe():
    names = ["*", "José Ñúñez 李", "ada", "a b", "a_b", "../x", ""]
    ids = safe_ids(names)
    assert ids["ada"] == "ada" and ids == safe_ids(list(reversed(names)))
    assert len(set(ids.values())) == len(names)
    assert all(i and all(c.isalnum() or c in "_-" for c in i) for i in ids.values())
