"""The adversarial corpus graded together with honest controls: no attack pays, nobody loses.

One grading run (two workers) of grader/adversarial/ (30 attacks on Lab 1, 2 honest controls) through the real
pipeline, sandbox and checker included. Asserted: every submission gets exactly the score its honest
work deserves; the run completes; the feedback of each student holds nothing of anyone else's, nor
the answer key; nothing outside the sandbox changed; no process survives its submission; every
abnormal end is named in the notes.
"""
import hashlib
import json
import shutil
import subprocess

import pytest

from grader.adversarial import BG_MARKER, CORPUS, LAB, marker
from grader.grade import REPO, grade, table

pytestmark = pytest.mark.slow  # 34 notebooks graded end to end: make test-slow

EXPECTED = json.loads((CORPUS / "expected.json").read_text())
PROTECTED = ["grader", "solutions", "xailab", "data", "labs"]


def digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def survivors() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if BG_MARKER in line or line.strip() == "sleep 600"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adversarial")
    submissions = tmp / "submissions"
    shutil.copytree(CORPUS, submissions, ignore=shutil.ignore_patterns("expected.json"))
    before = {name: digest(REPO / name) for name in PROTECTED}
    submitted = digest(submissions)
    rows = grade(submissions, labs=[LAB], workspace=tmp / "workspace", jobs=2)
    print(table(rows))
    return dict(rows={r.student: r for r in rows}, workspace=tmp / "workspace", before=before,
                after={name: digest(REPO / name) for name in PROTECTED}, submitted=submitted,
                submitted_after=digest(submissions))


def test_every_submission_gets_its_honest_score(graded):
    rows = graded["rows"]
    assert set(rows) == set(EXPECTED), "every submission is graded, none twice (a folder named * included)"
    wrong = {s: (rows[s].auto_score, honest, rows[s].notes) for s, honest in EXPECTED.items()
             if rows[s].auto_score != honest}
    assert not wrong, f"scores differ from the honest ones: {wrong}"


def test_tampering_and_abnormal_ends_are_named(graded):
    notes = {s: "; ".join(r.notes) for s, r in graded["rows"].items()}
    for student in ("input-transformer", "post-run-hook"):  # they hide the failures from the kernel's report
        assert "tampering suspected" in notes[student], (student, notes[student])
    for student in ("os-exit", "ignores-interrupt"):
        assert "kernel stopped" in notes[student], (student, notes[student])
    assert "imports captum" in notes["uses-captum"]
    assert "put back from the release" in notes["deleted-answer-cell"]
    assert "grade_id vanilla_gradient" in notes["duplicated-cell"]
    assert "metadata missing" in notes["huge-cell-text"]
    for student in ("control-full",):
        assert notes[student] == "", notes[student]


def test_nothing_private_in_any_feedback(graded):
    key_lines = [line.strip() for line in (REPO / "grader" / "answers" / "lab01.py").read_text().splitlines()
                 if len(line.strip()) > 40 and not line.strip().startswith(("#", '"""', "def "))]
    feedback = graded["workspace"] / "feedback"
    pages = list(feedback.rglob("*.html"))
    assert len(pages) == len(EXPECTED)
    for page in pages:
        owner = page.parent.parent.name
        text = page.read_text(errors="replace")
        assert len(text) < 5_000_000, f"{owner}'s feedback is {len(text)} bytes"
        leaked = [s for s in EXPECTED if marker(s) in text and owner not in (s, _safe(s))]
        assert not leaked, f"{owner}'s feedback holds the work of {leaked}"
        assert not [line for line in key_lines if line in text], f"{owner}'s feedback holds answer-key code"
        roster = [c for c in ("control-full", "control-partial") if c != owner and c in text]
        assert not roster, f"{owner}'s feedback names other students: {roster}"


def _safe(student: str) -> str:
    from grader.grade import safe_ids
    return safe_ids([student])[student]


def test_nothing_outside_the_sandbox_changed(graded):
    assert graded["before"] == graded["after"], "the repository changed during grading"
    assert graded["submitted"] == graded["submitted_after"], "a submission changed another's files"
    assert (graded["workspace"] / "gradebook.db").exists()


def test_no_process_survives(graded):
    assert not survivors(), survivors()
