"""The class report (grader/report.py) on a synthetic grading workspace: its parts, escaping of
everything students wrote, figures that exist, and what a real headless browser shows."""
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from classroom import INJECTION, LABS, make_workspace
from grader import report


class Page(HTMLParser):
    """Element ids, image sources, tags, attributes and the visible text of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.images, self.tags, self.attributes, self.chunks = set(), [], Counter(), set(), []
        self.feed(text)
        self.text = " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        for name, value in attrs:
            self.attributes.add(name)
            if name == "id":
                self.ids.add(value)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.chunks.append(data)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    planted = make_workspace(root, students=12, copies=1, seed=3)
    path = report.build_report(root)
    return root, planted, path


def test_report_parts(workspace):
    root, planted, path = workspace
    assert path == root / "report.html"
    page = Page(path.read_text(encoding="utf-8"))
    assert {"overview", "scores", "mistakes", "time", "notes", "problems", "shared"} <= page.ids
    # figures: every image is a PNG next to the report
    names = {Path(src).name for src in page.images}
    expected = {"scores.png", "time.png", "slowest.png", "notes.png"} | {f"mistakes-{lab}.png" for lab in LABS} \
        | {f"similarity-{lab}.png" for lab in LABS}
    assert expected <= names, expected - names
    for src in page.images:
        assert not src.startswith(("http:", "https:", "//")), src
        png = root / src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, src
    # no script, no event handler: the students' HTML is shown as text
    assert page.tags["script"] == 0 and not any(a.startswith("on") for a in page.attributes)
    assert INJECTION in page.text, "the odd name / message should be shown literally"
    assert "Content-Security-Policy" in path.read_text()
    # scores: one row per lab with the class mean
    summary = json.loads((root / "summary.json").read_text())
    for lab in LABS:
        scores = [r["auto_score"] for r in summary["rows"] if r["lab"] == lab]
        assert f"{sum(scores) / len(scores):.1f} / " in page.text
    # mistakes: the share of the class that failed a check, from the verdicts
    records = [json.loads(p.read_text()) for p in sorted((root / "results").glob("*.json"))]
    for lab in LABS:
        lab_records = [r for r in records if r["lab"] == lab]
        failed = Counter()
        for r in lab_records:
            passed = {v["name"] for v in r["verdicts"] if v["passed"]}
            for name in report.lab_checks(lab):
                failed[name] += name not in passed
        name, n = failed.most_common(1)[0]
        assert f"{name} — {100 * n / len(lab_records):.0f} % failed ({n} of {len(lab_records)})" in page.text
    assert "raised RuntimeError: " + INJECTION in page.text  # a grouped message, escaped
    # the slowest submission is the one whose code is slow
    slow = max(records, key=lambda r: r["seconds"])
    assert slow["student"] == "student003"
    # notes: one row per submission with a note beyond "N test cells failed", the most serious first
    notes_html = path.read_text().split('id="notes"')[1].split('id="problems"')[0]
    noted = [r for r in summary["rows"] if any(not n[0].isdigit() for n in r["notes"])]
    assert notes_html.count("<tr>") - 1 == len(noted) > 0
    for r in noted:
        assert report.esc(r["student"]) in notes_html, r["student"]
    kinds = [k for k, _, _ in report.NOTE_KINDS if k in notes_html]
    assert sorted(kinds, key=notes_html.index) == kinds, "notes are not sorted by kind"
    # problems of the run
    assert "stray.txt: not a student folder" in page.text
    # shared answers: the planted copies and nothing else, with the disclaimer
    shared = path.read_text().split('id="shared"')[1]
    assert "never a penalty" in shared
    for lab in LABS:
        assert f"{lab}: 1 pair among 12 submissions" in Page(shared).text
    a, b = planted["copies"][LABS[0]][0]
    assert f"{a} ↔ {b}" in Page(shared).text
    assert shared.count('class="sbs"') >= 2 and 'class="hit"' in shared
    # links to each student's feedback
    assert 'href="feedback/student003/lab01-saliency/lab01.html"' in path.read_text()


def test_report_embedded_and_cli(workspace, tmp_path, capsys):
    """--embed puts the figures inside the page; answers come from the journaled results when the
    autograded folder is gone."""
    root, planted, _ = workspace
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "autograded")
    report.main([str(copy), "--embed"])
    assert "report.html" in capsys.readouterr().out
    page = Page((copy / "report.html").read_text())
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    a, b = planted["copies"][LABS[0]][0]
    assert f"{a} ↔ {b}" in page.text
    report.main([str(copy), "--no-similarity"])
    assert "shared" not in Page((copy / "report.html").read_text()).ids


def test_broken_workspace(tmp_path):
    """Nothing graded yet, unreadable results, notebooks with odd metadata: a report all the same."""
    empty = tmp_path / "empty"
    empty.mkdir()
    page = Page(report.build_report(empty).read_text())
    assert "No graded submissions" in page.text and "No answers to compare" in page.text
    ws = tmp_path / "broken"
    (ws / "results").mkdir(parents=True)
    (ws / "results" / "a--lab01-saliency.json").write_text("{not json")
    record = {"student": "b <b>", "sid": "b", "lab": "lab01-saliency", "notes": ["KeyError in answer cell occlusion"],
              "seconds": 3.0, "grades": [], "verdicts": [{"name": "lab01.occlusion.cnn", "passed": False,
                                                          "message": "✗ lab01.occlusion.cnn: <i>oops</i>"}],
              "timings": {"total": 3.0}, "autograded": {}}
    (ws / "results" / "b--lab01-saliency.json").write_text(json.dumps(record))
    folder = ws / "autograded" / "b" / "lab01-saliency"
    folder.mkdir(parents=True)
    (folder / "lab01.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {"nbgrader": "x"},
                                                               "source": 5}, "junk"]}))
    text = report.build_report(ws).read_text()
    page = Page(text)
    assert "results/a--lab01-saliency.json" in page.text  # named, not silently dropped
    assert "<i>oops</i>" in page.text and "<i>" not in text
    assert "lab01.occlusion.cnn — 100 % failed (1 of 1)" in page.text


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def test_report_in_a_headless_browser(workspace, tmp_path):
    """Chromium renders the report offline: the screenshot shows the page with its figures."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium binary on this machine (`apt-get install chromium`; make venv installs it as root)")
    from PIL import Image

    root, _, path = workspace
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    path.as_uri()], capture_output=True, timeout=180, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    image = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(image) == 1280 * 2000
    counts = np.bincount((image[:, 0] << 16) | (image[:, 1] << 8) | image[:, 2])
    assert counts.max() / len(image) < 0.9, f"the page looks blank ({counts.max() / len(image):.0%} one colour)"
    assert (counts > 0).sum() > 200, "too few colours for a page with figures"

    def near(colour, tol=12):
        return int((np.abs(image - np.array(colour)) <= tol).all(1).sum())

    # the score histograms (#4e79a7) and the mistakes chart (wrong result #d62728) were loaded and drawn
    assert near((0x4E, 0x79, 0xA7)) > 2000, "the score histogram is not on the screenshot"
    assert near((0xD6, 0x27, 0x28)) > 500, "the mistakes chart is not on the screenshot"
    assert near((0x26, 0x32, 0x38)) > 20000, "the page header is not on the screenshot"
    shutil.copy(shot, root / "report-screenshot.png")  # kept next to the report for a person to look at
