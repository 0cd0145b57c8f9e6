"""Run the labs as a student would, away from the repository, and time every cell.

    python -m grader.colab_check [LAB ...]      (make colab-check; slow: builds a Colab-like venv)

colab-check builds the student bundle (dist/student/), then a fresh virtual environment holding only
what Colab preinstalls (torch and torchvision from the local wheel store, transformers, matplotlib,
scikit-learn, scikit-image, tqdm, ipykernel, …; cached in build/colab-check/base), and runs every
lab's full sample in it from a folder outside the repository, experiments included. The kernel
believes it is on Colab, so the setup cell installs xailab from the bundle's wheel with pip, as it
would from the course URL. Per lab it records the wall time, and per cell the wall and CPU time
(the kernel's process time: an upper bound for the wall time on an idle 2-core machine) and how many
figures the cell drew. The report is build/colab-check/report.json.

The helpers (kernels for another interpreter, installing the wheel into a folder, running and
timing a notebook) are shared with tests/test_release.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from grader.grade import REPO, SAMPLES, all_labs

BUILD = REPO / "build" / "colab-check"
# What Colab preinstalls that the labs touch (versions: those of requirements.txt where it pins them).
COLAB_PACKAGES = ["torch", "torchvision", "transformers", "safetensors", "matplotlib", "numpy", "scipy",
                  "pandas", "scikit-learn", "scikit-image", "tqdm", "ipykernel", "ipywidgets", "timm",
                  "pillow", "requests"]

# A first cell that records every top-level cell's wall and CPU time (nested run_cell calls of
# %%experiment are folded into their cell).
TIMER = """\
import time as _t
_xl_stack, _xl_times = [], []
def _xl_pre(*args):
    _xl_stack.append((_t.perf_counter(), _t.process_time()))
def _xl_post(*args):
    if _xl_stack:
        wall, cpu = _xl_stack.pop()
        if not _xl_stack:
            _xl_times.append((_t.perf_counter() - wall, _t.process_time() - cpu))
get_ipython().events.register("pre_run_cell", _xl_pre)
get_ipython().events.register("post_run_cell", _xl_post)"""
TIMES = "import json as _j; print(_j.dumps(_xl_times))"  # every cell since the timer cell, before this one
FAKE_COLAB = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')"


# ----------------------------------------------------------------------------- kernels and installs

@contextlib.contextmanager
def kernel(python: str | Path, *flags: str):
    """A Jupyter kernel that runs `python` (with interpreter flags, e.g. -S): yields its name."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "xailab-student"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [str(python), *flags, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "xailab student", "language": "python"}))
        before = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, before) if p)
        try:
            yield "xailab-student"
        finally:
            if before is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = before


def install_wheel(wheel: Path, target: Path, python: str | Path = sys.executable) -> float:
    """pip install the wheel alone (no dependencies) into folder `target`; returns the seconds taken."""
    start = time.perf_counter()
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                             "--target", str(target), str(wheel)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"pip install --target failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start


def student_env(**extra: str) -> dict:
    """The environment of a student's kernel: nothing of the repository, no grading switches."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "XAILAB_DATA", "XAILAB_CHECKER", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(MPLBACKEND="module://matplotlib_inline.backend_inline", HF_HUB_OFFLINE="1",
               XAILAB_GRADING="0", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- running a notebook

def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_notebook(path: Path, kernel_name: str, env: dict, *, pre: tuple[str, ...] = (),
                 timeout: int = 900, patch_setup=None, allow_errors: bool = False) -> dict:
    """Execute `path` in its folder with `kernel_name` and `env`; return a report.

    `pre` cells run first (not part of the report); `patch_setup(source)` may rewrite the setup
    cell; with `allow_errors` every cell runs. The report: seconds, error (the first failing cell,
    or None), per code cell its grade_id, wall and CPU seconds, figures drawn, whether it wrote to
    stderr and the errors it raised; and the executed notebook (nb, without the added cells).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    if patch_setup is not None:
        for cell in nb.cells:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "setup" or \
                    cell.source.startswith("# Setup"):
                cell.source = patch_setup(cell.source)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    nb.cells = [nbformat.v4.new_code_cell(TIMER)] + [nbformat.v4.new_code_cell(p) for p in pre] + nb.cells \
        + [nbformat.v4.new_code_cell(TIMES)]
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    start = time.perf_counter()
    with client.setup_kernel(env=env):
        try:
            for index, cell in enumerate(nb.cells[:-1]):
                client.execute_cell(cell, index)
        except CellExecutionError as err:
            error = str(err).strip().splitlines()[-1][:500] if str(err).strip() else "cell failed"
        seconds = time.perf_counter() - start
        times_cell = nb.cells[-1]
        client.execute_cell(times_cell, len(nb.cells) - 1)
    out = "".join(o.get("text", "") for o in times_cell.outputs if o.get("output_type") == "stream")
    times = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    times = times[len(pre):]
    cells = []
    for i, cell in enumerate(code):
        ran = i < len(times)
        figures = sum(1 for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")
                      and "image/png" in o.get("data", {}))
        cells.append({
            "index": next(k for k, c in enumerate(nb.cells) if c is cell) - 1 - len(pre),
            "grade_id": cell.get("metadata", {}).get("nbgrader", {}).get("grade_id"),
            "experiment": cell.source.lstrip().startswith("%%experiment"),
            "wall_s": round(times[i][0], 2) if ran else None,
            "cpu_s": round(times[i][1], 2) if ran else None,
            "figures": figures,
            "stderr": any(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in cell.get("outputs", [])),
            "errors": [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"],
            "first_line": cell.source.strip().splitlines()[0][:80],
        })
    if error is None:
        error = next((f"cell {c['index']}: {c['errors'][0]}" for c in cells if c["errors"]), None) if allow_errors else None
    nb.cells = nb.cells[1 + len(pre):-1]
    return {"notebook": str(path), "seconds": round(seconds, 1), "error": error, "cells": cells, "nb": nb}


def summary_line(lab: str, report: dict) -> str:
    longest = max((c for c in report["cells"] if c["wall_s"] is not None), key=lambda c: c["wall_s"], default=None)
    status = "ok" if not report["error"] else f"FAILED: {report['error'][:200]}"
    long = f"longest cell {longest['wall_s']:.1f} s wall / {longest['cpu_s']:.1f} s CPU (cell {longest['index']})" \
        if longest else ""
    return f"{lab:28s} {report['seconds']:7.1f} s  {long}  {status}"


# ----------------------------------------------------------------------------- colab-check

def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def base_env(python: str) -> Path:
    """The cached Colab-like base environment (rebuilt when its package list changes)."""
    pins = _pins()
    wanted = [f"{p}=={pins[p]}" if p in pins else p for p in COLAB_PACKAGES]
    base = BUILD / "base"
    stamp = base / "colab-packages.txt"
    if stamp.exists() and stamp.read_text().split() == wanted:
        return base
    shutil.rmtree(base, ignore_errors=True)
    print(f"building the Colab-like base environment in {base} (a few minutes, once)", flush=True)
    subprocess.run([python, "-m", "venv", str(base)], check=True, env=student_env())
    subprocess.run([str(base / "bin" / "python"), "-m", "pip", "install", "-q", *wanted], check=True, env=student_env())
    stamp.write_text("\n".join(wanted) + "\n")
    return base


def fresh_env(base: Path, where: Path) -> Path:
    """A new, empty venv whose interpreter also sees the base environment's packages (read-only)."""
    subprocess.run([str(base / "bin" / "python"), "-m", "venv", "--without-pip", str(where)], check=True, env=student_env())
    site = lambda root: next((root / "lib").glob("python3*/site-packages"))  # noqa: E731
    (site(where) / "colab-base.pth").write_text(str(site(base)) + "\n")
    return where / "bin" / "python"


def colab_check(labs: list[str], grading: bool = False) -> dict:
    from grader.bundle import build as build_bundle

    bundle = BUILD / "student"
    summary = build_bundle(bundle)
    wheel = summary["wheel"]
    base = base_env(os.environ.get("COLAB_PYTHON", shutil.which("python3.11") or sys.executable))
    report: dict = {"wheel": wheel.name, "wheel_bytes": wheel.stat().st_size, "labs": {}}
    with tempfile.TemporaryDirectory(prefix="colab-") as tmp:
        python = fresh_env(base, Path(tmp) / "venv")
        work = Path(tmp) / "content"  # Colab's working folder; nothing of the repository is here
        env = student_env(XAILAB_GRADING="1" if grading else "0")
        # the setup cell pip-installs the course package from the bundle, as on Colab from the course URL
        install = lambda source: source.replace(  # noqa: E731
            source.split('XAILAB = "', 1)[1].split('"', 1)[0], f"xailab @ {wheel.resolve().as_uri()}")
        with kernel(python) as name:
            for lab in labs:
                src = next((SAMPLES / "sample-full" / lab).glob("*.ipynb"))
                (work / lab).mkdir(parents=True)
                path = work / lab / src.name
                shutil.copy(src, path)
                result = run_notebook(path, name, env, pre=(FAKE_COLAB,), patch_setup=install, timeout=1800)
                result.pop("nb")
                setup = next((c for c in result["cells"] if c["grade_id"] == "setup"), None)
                result["setup_s"] = setup and setup["wall_s"]
                report["labs"][lab] = result
                print(summary_line(lab, result), f"(setup cell {result['setup_s']} s)", flush=True)
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.colab_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="labs to run (default: all)")
    parser.add_argument("--grading", action="store_true", help="skip the experiments (XAILAB_GRADING=1)")
    args = parser.parse_args()
    labs = args.labs or [lab for lab in all_labs() if list((SAMPLES / "sample-full" / lab).glob("*.ipynb"))]
    report = colab_check(labs, args.grading)
    failed = [lab for lab, r in report["labs"].items() if r["error"]]
    print(f"\nreport: {BUILD / 'report.json'}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
