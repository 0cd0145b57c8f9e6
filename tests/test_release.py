"""The student release: what students get installs, runs every lab, and holds none of the answers.

The wheel is built from the sources, installed alone into a folder (pip --target) and imported by a
kernel that sees that folder and the environment's third-party packages but neither the repository
nor the editable install; every lab's full sample runs there from a folder outside the repository.
(`make colab-check` does the same in a fresh Colab-like virtual environment, experiments included.)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from grader.bundle import (COLAB_BADGE, build, colab_url, settings, setup_cell, setup_source, stale_setup_cells,
                           student_requirement, wheel_files)
from grader.colab_check import FAKE_COLAB, install_wheel, kernel, run_notebook, student_env
from grader.grade import REPO, SAMPLES, all_labs
from xailab.assets import read_manifest

LABS = all_labs()
SAMPLED = [lab for lab in LABS if list((SAMPLES / "sample-full" / lab).glob("*.ipynb"))]  # a lab in the making has none yet
SITE = os.pathsep.join(site.getsitepackages())  # third-party packages, without the repository
MARKERS = re.compile(r"### (BEGIN|END) (SOLUTION|HIDDEN TESTS)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "student"
    summary = build(out)
    return out, summary


# ----------------------------------------------------------------------------- the wheel

def test_wheel_holds_every_module_and_checkpoint(bundle):
    _, summary = bundle
    names = set(wheel_files(summary["wheel"]))
    modules = {f"xailab/{p.relative_to(REPO / 'xailab').as_posix()}" for p in (REPO / "xailab").rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    data = {f"xailab_data/{rel}" for rel in read_manifest(REPO / "data")} | {"xailab_data/MANIFEST"}
    assert not data - names, f"checkpoint files missing from the wheel: {sorted(data - names)}"
    stray = [n for n in names if n.split("/")[0] not in ("xailab", "xailab_data") and ".dist-info/" not in n]
    assert not stray, f"files outside xailab/ and xailab_data/ in the wheel: {stray}"
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n], "compiled files in the wheel"


def test_wheel_does_not_pin_torch(bundle):
    _, summary = bundle
    with zipfile.ZipFile(summary["wheel"]) as archive:
        meta = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch = [r for r in requires if re.match(r"torch\b", r)]
    assert torch and not any(op in torch[0] for op in ("==", "<", "~=")), f"torch must stay unpinned: {torch}"
    assert any(r.startswith("jupyterlab") and "extra == \"student\"" in r for r in requires), \
        "the student extra should bring JupyterLab"


# ----------------------------------------------------------------------------- no answers in the bundle

def bundle_texts(root: Path) -> dict[str, str]:
    """Every text in the bundle, the files inside the wheel included: {path: text}."""
    texts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if not name.endswith((".safetensors",)):
                        texts[f"{rel}!{name}"] = archive.read(name).decode("utf-8", "replace")
        elif path.suffix in (".ipynb", ".md", ".txt", ".yml", ".py", ".json", ".toml"):
            texts[rel] = path.read_text()
    return texts


def normalise(line: str) -> str:
    return " ".join(line.split())


def released_lines() -> set[str]:
    """Code lines students are meant to see: the solution notebooks minus solution regions and hidden tests."""
    keep = set()
    for path in (REPO / "solutions").rglob("*.ipynb"):
        for cell in nbformat.read(str(path), as_version=4).cells:
            inside = False
            for line in cell.source.splitlines():
                if MARKERS.search(line):
                    inside = "BEGIN" in line
                    continue
                if not inside:
                    keep.add(normalise(line))
    return keep


def package_lines() -> set[str]:
    return {normalise(line) for path in (REPO / "xailab").rglob("*.py") for line in path.read_text().splitlines()}


def answer_key_lines() -> set[str]:
    """Distinctive lines of the answer key: grader/answers/*.py and the notebooks' solution regions,
    minus what students see anyway (signatures and given helpers in the released notebooks, the
    package's own code), imports, decorators, comments and short generic lines."""
    lines = set()
    for path in (REPO / "grader" / "answers").glob("*.py"):
        lines |= {normalise(line) for line in path.read_text().splitlines()}
    for path in (REPO / "solutions").rglob("*.ipynb"):
        for cell in nbformat.read(str(path), as_version=4).cells:
            for region in re.findall(r"### BEGIN (?:SOLUTION|HIDDEN TESTS)(.*?)### END", cell.source, re.S):
                lines |= {normalise(line) for line in region.splitlines()}
    seen = released_lines() | package_lines()
    return {line for line in lines if len(line) >= 24 and line not in seen
            and not line.startswith(("#", '"""', "import ", "from ", "@"))}


def answer_key_functions() -> set[str]:
    """Names of the functions students write: the grade_ids of the solution code cells."""
    names = set()
    for path in (REPO / "solutions").rglob("*.ipynb"):
        for cell in nbformat.read(str(path), as_version=4).cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type == "code" and meta.get("solution") and re.fullmatch(r"\w+", meta.get("grade_id", "")):
                names.add(meta["grade_id"])
    return names


def code_text(where: str, text: str) -> str:
    """The text itself, or the sources of a notebook's cells."""
    if not where.endswith(".ipynb"):
        return text
    return "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                     for c in json.loads(text)["cells"])


def leaks(texts: dict[str, str], key: set[str]) -> list[str]:
    found = []
    functions = answer_key_functions()
    for where, text in texts.items():
        if re.search(r"(^|/|!)(grader|solutions|tests)/", where):
            found.append(f"{where}: instructor folder")
        if MARKERS.search(text):
            found.append(f"{where}: solution or hidden-test markers")
        # the hidden-test client (xailab.grading) names the grader and shows a check call in its docs
        if not where.endswith("!xailab/grading.py"):
            if re.search(r"^\s*(from|import) grader\b", code_text(where, text), re.M):
                found.append(f"{where}: an import of the grader")
            if re.search(r"""check\(\s*["']lab\d\d\.""", text):
                found.append(f"{where}: a hidden-test call")
        if "!xailab/" in where:
            defined = set(re.findall(r"^\s*def (\w+)\(", text, re.M)) & functions
            found += [f"{where}: defines {name}(), a function of the answer key" for name in sorted(defined)]
        body = {normalise(line) for line in code_text(where, text).splitlines()}
        found += [f"{where}: answer-key line {line!r}" for line in sorted(body & key)[:3]]
    return found


def test_the_leak_search_finds_planted_answers(tmp_path):
    key = answer_key_lines()
    assert len(key) > 100, f"only {len(key)} distinctive answer-key lines: the search would prove little"
    (tmp_path / "lab").mkdir()
    answer = next((REPO / "grader" / "answers").glob("lab0*.py"))
    shutil.copy(answer, tmp_path / "lab" / "notes.py")
    solution = nbformat.read(str(next((REPO / "solutions" / LABS[0]).glob("*.ipynb"))), as_version=4)
    nbformat.write(solution, str(tmp_path / "lab" / "copy.ipynb"))
    found = leaks(bundle_texts(tmp_path), key)
    assert any("notes.py: answer-key line" in f for f in found), found
    assert any("copy.ipynb: solution or hidden-test markers" in f for f in found), found


def test_bundle_holds_no_answer_key(bundle):
    root, _ = bundle
    texts = bundle_texts(root)
    assert any("!xailab/" in w for w in texts) and any(w.endswith(".ipynb") for w in texts)
    found = leaks(texts, answer_key_lines())
    assert not found, "the student bundle gives answers away:\n" + "\n".join(found[:20])


# ----------------------------------------------------------------------------- one course setting

def test_setup_cells_come_from_course_toml():
    stale = stale_setup_cells()
    assert not stale, (f"setup cells differ from course.toml's: {[str(p.relative_to(REPO)) for p in stale]} — copy "
                       "Lab 1's setup cell, or run `make release` (it rewrites them from course.toml)")
    assert f'XAILAB = "{settings()["package"]}"' in setup_source()


def test_bundle_links_and_install_come_from_course_toml(bundle):
    root, summary = bundle
    release = settings()
    readme = (root / "README.md").read_text()
    for lab in summary["labs"]:
        nb = nbformat.read(str(root / lab["path"]), as_version=4)
        url = colab_url(release, lab["path"])
        assert f"[![Open In Colab]({COLAB_BADGE})]({url})" in nb.cells[0].source, f"{lab['path']}: no Colab badge"
        assert setup_cell(nb).source == setup_source(release)
        assert url in readme, f"README: no Colab link for {lab['lab']}"
    requirement = student_requirement(release["package"])
    for name in ("requirements-student.txt", "environment-student.yml", "README.md"):
        assert requirement in (root / name).read_text(), f"{name} does not install {requirement}"
    assert "$" not in readme.replace("$$", ""), "an unfilled placeholder in the student README"


# ----------------------------------------------------------------------------- the wheel runs every lab

ISOLATED = """\
import importlib.util, os, sys
assert importlib.util.find_spec("grader") is None, "the instructor's grader is importable"
import xailab, xailab.assets
assert xailab.__file__.startswith(os.environ["WHEEL_TARGET"]), xailab.__file__
assert str(xailab.assets.data_dir()).startswith(os.environ["WHEEL_TARGET"]), xailab.assets.data_dir()
"""


@pytest.mark.slow  # every lab end to end: make test-slow
def test_installed_wheel_runs_every_lab_outside_the_repository(bundle, tmp_path):
    _, summary = bundle
    target = tmp_path / "site-packages"
    seconds = install_wheel(summary["wheel"], target)
    assert seconds < 60, f"installing the wheel took {seconds:.0f} s"
    env = student_env(PYTHONPATH=os.pathsep.join([str(target), SITE]), WHEEL_TARGET=str(target), XAILAB_GRADING="1")
    times = {"install": round(seconds, 1)}
    with kernel(sys.executable, "-S") as name:  # -S: no site-packages .pth files, so no editable xailab
        for lab in SAMPLED:
            src = next((SAMPLES / "sample-full" / lab).glob("*.ipynb"))
            work = tmp_path / "work" / lab
            work.mkdir(parents=True)
            shutil.copy(src, work / src.name)
            start = time.perf_counter()
            report = run_notebook(work / src.name, name, env, pre=(ISOLATED,))
            times[lab] = round(time.perf_counter() - start, 1)
            assert report["error"] is None, f"{lab} fails with the installed wheel: {report['error']}"
            noisy = [c["grade_id"] for c in report["cells"] if c["stderr"] and (c["grade_id"] or "").startswith("test_")]
            assert not noisy, f"{lab}: test cells wrote to stderr with the installed wheel: {noisy}"
    print("seconds:", times)


# ----------------------------------------------------------------------------- the setup cell fails politely

def setup_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup_source()), nbformat.v4.new_code_cell("%%experiment\nprint('ran')"),
                nbformat.v4.new_code_cell("print(device)")]
    nbformat.write(nb, str(path))
    return path


def error_lines(cell) -> list[str]:
    return [line for o in cell.outputs if o.output_type == "error" for line in o.traceback]


def test_setup_without_xailab_says_what_to_do(tmp_path):
    path = setup_notebook(tmp_path / "lab.ipynb")
    with kernel(sys.executable, "-S") as name:
        report = run_notebook(path, name, student_env(PYTHONPATH=SITE), allow_errors=True)
    setup, experiment, _ = report["nb"].cells
    lines = error_lines(setup)
    assert len(lines) == 1 and lines[0].startswith("Setup failed: the course package xailab is not installed"), lines
    assert not [o for o in setup.outputs if o.output_type == "stream"], "no other output than the message"
    lines = error_lines(experiment)
    assert lines == ["Setup failed: this experiment needs the course package xailab: run the setup cell first."], lines


def test_setup_on_colab_reports_a_failed_install_in_one_line(tmp_path):
    path = setup_notebook(tmp_path / "lab.ipynb")
    missing = (tmp_path / "nowhere" / "xailab-0.1.0-py3-none-any.whl").as_uri()
    with kernel(sys.executable, "-S") as name:
        report = run_notebook(path, name, student_env(PYTHONPATH=SITE), pre=(FAKE_COLAB,), allow_errors=True,
                              patch_setup=lambda s: s.replace(settings()["package"], f"xailab @ {missing}"))
    lines = error_lines(report["nb"].cells[0])
    assert len(lines) == 1 and lines[0].startswith("Setup failed: could not install the course package xailab (pip: "), lines
    assert "Traceback" not in lines[0] and "\x1b[" not in lines[0], lines
    assert error_lines(report["nb"].cells[1])[0].startswith("Setup failed: this experiment needs"), "experiment stand-in"
