"""The grading sandbox on its own: what a program inside can and cannot do (fast, no nbgrader)."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grader import sandbox

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox.unavailable_reason()}")


def inside(code: str, tmp_path) -> subprocess.CompletedProcess:
    args, fds = sandbox.command([sys.executable, "-c", textwrap.dedent(code)], tmp_path, sandbox.kernel_uid())
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=120, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_the_course_package_works_and_the_answers_are_invisible(tmp_path):
    out = inside(f"""
        import os, xailab, torch
        print("uid", os.getuid())
        print("model", type(xailab.load_model("mnist-cnn")).__name__)
        print("repo", sorted(os.listdir({str(REPO)!r})))
        for path in [{str(REPO / 'grader')!r}, {str(REPO / 'solutions')!r}, "/etc/shadow", "/root/.ssh",
                     {str(Path.home() / '.bash_history')!r}]:
            print("visible" if os.path.exists(path) else "absent", path)
        try:
            import captum.attr
        except ImportError as err:
            print("captum:", err)
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout
    assert "uid 0" not in lines and "model MnistCNN" in lines
    assert "grader" not in lines.split("repo")[1].split("\n")[0] and "solutions" not in lines.split("repo")[1].split("\n")[0]
    assert "visible" not in lines
    assert "implementations must be your own" in lines


def test_no_network_no_writes_outside_private_tmp(tmp_path):
    out = inside(f"""
        import socket, pathlib
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=3); print("network")
        except OSError:
            print("no network")
        for path in [{str(REPO / 'xailab' / 'x')!r}, {str(REPO / 'sandbox-probe')!r}, "/usr/x"]:
            try:
                pathlib.Path(path).write_text("x"); print("wrote", path)
            except OSError:
                print("refused", path)
        pathlib.Path("/tmp/mine").write_text("ok"); print("tmp ok")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no network" in out.stdout and "wrote" not in out.stdout and "tmp ok" in out.stdout
    assert not (REPO / "xailab" / "x").exists() and not (REPO / "sandbox-probe").exists()


def test_memory_is_limited(tmp_path):
    out = inside("""
        try:
            bytearray(8 * 2**30); print("8 GB allocated")
        except MemoryError:
            print("memory limited")
    """, tmp_path)
    assert "memory limited" in out.stdout, out.stdout + out.stderr


def test_processes_are_limited_and_none_survives(tmp_path):
    out = inside("""
        import subprocess
        procs = []
        try:
            for _ in range(600):
                procs.append(subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL))
        except OSError:
            print("process limit at", len(procs))
        for p in procs[:10]:
            p.kill()
        subprocess.Popen(["sh", "-c", "nohup sleep 301 >/dev/null 2>&1 &"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait()
    """, tmp_path)
    assert "process limit at" in out.stdout, out.stdout + out.stderr
    # The kernel kills the sandbox's processes when it ends; tearing down hundreds of them can take a
    # moment on a busy machine. An escaped process would live for 300 s.
    deadline = time.monotonic() + 30
    while True:
        ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,etimes,args"], capture_output=True, text=True).stdout
        alive = [line.strip() for line in ps.splitlines() if line.rstrip().endswith(("sleep 300", "sleep 301"))]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"processes outlived the sandbox by 30 s (pid ppid stat age args): {alive[:5]}"
