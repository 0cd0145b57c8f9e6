"""The student release: a self-contained bundle with the released notebooks and the xailab wheel.

    python -m grader.bundle [--out dist/student]      (make release)
    python -m grader.bundle --sync                    only rewrite the setup cells in solutions/

Everything students see is derived from one course setting, `course.toml` ([release] repository,
branch, package): the install URL in each lab's setup cell, and the "Open in Colab" links. The
bundle holds the released notebooks (labs/), the wheel, a README and the student environment files
— and nothing of the answer key: tests/test_release.py searches it (inside the wheel too).
"""
from __future__ import annotations

import argparse
import re
import string
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import nbformat

from grader.grade import REPO, SOLUTIONS, all_labs
from grader.notebooks import grade_id

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
TEMPLATES = REPO / "grader" / "student"  # README.md, requirements-student.txt, environment-student.yml

# The setup cell of every lab (grade_id "setup", locked). {package} comes from course.toml.
SETUP_CELL = '''\
# Setup: run this cell first. On Colab it installs the course package xailab; elsewhere it uses yours.
import importlib.util, subprocess, sys
from IPython import get_ipython
XAILAB = "{package}"


class SetupFailed(Exception):  # one line instead of a traceback; "Run all" stops here
    def _render_traceback_(self):
        return [f"Setup failed: {{self}}"]


def _no_xailab(line, cell):  # stands in for %%experiment while xailab is missing
    raise SetupFailed("this experiment needs the course package xailab: run the setup cell first.")


if importlib.util.find_spec("xailab") is None:
    get_ipython().register_magic_function(_no_xailab, "cell", "experiment")
    if "google.colab" not in sys.modules:
        raise SetupFailed(f"the course package xailab is not installed for this kernel ({{sys.executable}}). "
                          "Install it as the course README says (or pick the kernel that has it), then run this cell again.")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-color", XAILAB], capture_output=True, text=True)
    if pip.returncode:
        raise SetupFailed("could not install the course package xailab (pip: " + (pip.stderr.strip().splitlines() or ["?"])[-1][:150]
                          + "). Check the connection, Runtime → Restart session, run this cell again; if it still fails, tell the course staff.")
    importlib.invalidate_caches()
try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    import matplotlib.pyplot as plt
    import xailab
    from xailab import load_model, seed_everything, get_device, progress
    from xailab.plot import show_maps, show_tokens
except ImportError as err:
    raise SetupFailed(f"the course package does not load ({{err}}). Reinstall xailab as the course README says, "
                      "restart the kernel and run this cell again.") from None

seed_everything(0)
device = get_device()   # the labs run on a CPU; a GPU only makes them faster
print("device:", device, "· xailab", xailab.__version__)'''


# ----------------------------------------------------------------------------- the course setting

def settings() -> dict:
    """course.toml's [release] table, with `package` filled in (default: the wheel in the repository)."""
    release = tomllib.loads((REPO / "course.toml").read_text())["release"]
    release.setdefault("branch", "main")
    if not release.get("package"):
        release["package"] = f"xailab @ {raw_url(release, wheel_name())}"
    return release


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def wheel_name() -> str:
    return f"xailab-{version()}-py3-none-any.whl"


def raw_url(release: dict, path: str) -> str:
    return f"https://raw.githubusercontent.com/{release['repository']}/{release['branch']}/{path}"


def colab_url(release: dict, path: str) -> str:
    return f"https://colab.research.google.com/github/{release['repository']}/blob/{release['branch']}/{path}"


def setup_source(release: dict | None = None) -> str:
    return SETUP_CELL.format(package=(release or settings())["package"])


def student_requirement(package: str) -> str:
    """The course package with its `student` extra (JupyterLab): "xailab[student] @ URL" or "xailab[student]==1.0"."""
    return re.sub(r"^xailab(?![\w\[-])", "xailab[student]", package.strip())


# ----------------------------------------------------------------------------- setup cells

def setup_cell(nb):
    return next((c for c in nb.cells if grade_id(c) == "setup"), None)


def stale_setup_cells() -> list[Path]:
    """Solution notebooks whose setup cell differs from the one course.toml gives."""
    wanted = setup_source()
    stale = []
    for lab in all_labs():
        for path in sorted((SOLUTIONS / lab).glob("*.ipynb")):
            cell = setup_cell(nbformat.read(str(path), as_version=4))
            if cell is None or cell.source != wanted:
                stale.append(path)
    return stale


def sync_setup_cells() -> list[Path]:
    """Write course.toml's setup cell into every solution notebook that differs; returns those."""
    wanted, changed = setup_source(), []
    for path in stale_setup_cells():
        nb = nbformat.read(str(path), as_version=4)
        cell = setup_cell(nb)
        if cell is None:
            raise SystemExit(f"{path} has no setup cell (grade_id 'setup'): copy Lab 1's")
        cell.source = wanted
        nbformat.write(nb, str(path))
        changed.append(path)
    return changed


# ----------------------------------------------------------------------------- the bundle

def build_wheel(out: Path) -> Path:
    """Build the xailab wheel (no build isolation: setuptools from this environment) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Build from a copy of the package sources only: no stale build/ or egg-info leaks in.
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "setup.py", "xailab", "data"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
                REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")}
                                            if (REPO / name).is_dir() else {}))
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "-q", "-w", str(out), str(src)], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building the xailab wheel failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    wheel = out / wheel_name()
    if not wheel.exists():
        raise RuntimeError(f"expected {wheel}, got {sorted(p.name for p in out.iterdir())}")
    return wheel


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return sorted(archive.namelist())


def add_colab_badge(nb, url: str) -> None:
    """Put an "Open in Colab" badge at the top of the notebook's first (title) cell."""
    first = nb.cells[0]
    badge = f"[![Open In Colab]({COLAB_BADGE})]({url})"
    if first.cell_type == "markdown" and COLAB_BADGE not in first.source:
        first.source = badge + "\n\n" + first.source


def lab_title(nb) -> str:
    first = nb.cells[0].source.lstrip()
    match = re.match(r"#\s+(.+)", first)
    return match.group(1).strip() if match else ""


def render(name: str, **values: str) -> str:
    return string.Template((TEMPLATES / name).read_text()).safe_substitute(values)


def build(out: Path, labs_dir: Path | None = None) -> dict:
    """Write the student bundle into `out` (wiped first) from labs/ and the package; returns a summary."""
    release = settings()
    labs_dir = labs_dir or REPO / "labs"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    labs = []
    for lab in all_labs():
        for path in sorted((labs_dir / lab).glob("*.ipynb")):
            nb = nbformat.read(str(path), as_version=4)
            cell = setup_cell(nb)
            if cell is None or cell.source != setup_source(release):
                raise SystemExit(f"{path}: its setup cell is not course.toml's; run `make release` "
                                 "(it rewrites the setup cells and regenerates labs/)")
            rel, title = f"{lab}/{path.name}", lab_title(nb)
            add_colab_badge(nb, colab_url(release, rel))
            (out / lab).mkdir(exist_ok=True)
            nbformat.write(nb, str(out / rel))
            labs.append({"lab": lab, "path": rel, "title": title, "colab": colab_url(release, rel)})
    wheel = build_wheel(out)
    values = dict(repository=release["repository"], requirement=student_requirement(release["package"]),
                  wheel=wheel.name, version=version(),
                  labs_table="\n".join(f"| [{lab['title'] or lab['lab']}]({lab['path']}) | "
                                       f"[![Open In Colab]({COLAB_BADGE})]({lab['colab']}) |" for lab in labs))
    for name in ("README.md", "requirements-student.txt", "environment-student.yml"):
        (out / name).write_text(render(name, **values))
    return {"labs": labs, "wheel": wheel, "package": release["package"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "student")
    parser.add_argument("--sync", action="store_true", help="only rewrite the setup cells in solutions/")
    args = parser.parse_args()
    changed = sync_setup_cells()
    for path in changed:
        print(f"setup cell updated from course.toml: {path.relative_to(REPO)}")
    if args.sync:
        return
    if changed:
        from grader.grade import release as generate

        generate(REPO / "labs")
        print("labs/ regenerated; run `make samples` to rebuild the sample submissions")
    summary = build(args.out)
    print(f"student bundle: {args.out}  ({len(summary['labs'])} labs, {summary['wheel'].name}, "
          f"{summary['wheel'].stat().st_size / 1e6:.1f} MB)")
    print(f"setup cells install: {summary['package']}")


if __name__ == "__main__":
    main()
