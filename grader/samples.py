"""Build the bundled sample submissions of every lab from its solution and released notebooks.

    python -m grader.samples [LAB ...]   (make samples: every lab)

For each lab: sample-full (the answer key's code), sample-blank (the released notebook as is),
sample-partial (planted bugs from grader.mutants.<lab>.PARTIAL_SAMPLE) and sample-stripped
(sample-full after an editor dropped all cell metadata and ids).
"""
from __future__ import annotations

import copy
import importlib
import re

import nbformat

from grader.grade import REPO, SAMPLES, SOLUTIONS, all_labs
from grader.notebooks import grade_id

MARKERS = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$\n?", re.M)
WRITTEN = "Sample answer written for the demo submission; a grader reads it against the rubric."


def solution_sources(solution) -> dict[str, str]:
    """grade_id → the answer as a student would write it (solution markers removed)."""
    answers = {}
    for cell in solution.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            text = WRITTEN if cell.cell_type == "markdown" else MARKERS.sub("", cell.source)
            answers[meta["grade_id"]] = text
    return answers


def filled(release, answers: dict[str, str]):
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        if grade_id(cell) in answers and cell.metadata["nbgrader"].get("solution"):
            cell.source = answers[grade_id(cell)]
    return nb


def stripped(nb):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.metadata = {}
        cell.pop("id", None)
    nb.nbformat_minor = 4  # ids appear in 4.5; an old editor writes 4.4
    return nb


def build(lab: str) -> None:
    name = next((SOLUTIONS / lab).glob("*.ipynb")).name
    release = nbformat.read(str(REPO / "labs" / lab / name), as_version=4)
    solution = nbformat.read(str(SOLUTIONS / lab / name), as_version=4)
    answers = solution_sources(solution)
    full = filled(release, answers)
    partial_code = importlib.import_module(f"grader.mutants.{lab.split('-')[0]}").PARTIAL_SAMPLE
    samples = {
        "sample-full": full,
        "sample-blank": release,
        "sample-partial": filled(release, {**answers, **partial_code}),
        "sample-stripped": stripped(full),
    }
    for student, nb in samples.items():
        out = SAMPLES / student / lab / name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(out))


if __name__ == "__main__":
    import sys

    for lab in sys.argv[1:] or all_labs():
        build(lab)
        print(f"samples written for {lab}")
