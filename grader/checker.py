"""The trusted checker: makes every hidden-test verdict of a grading run, outside the student's kernel.

One `Checker` per grading run holds the answer key, the models and the references (each check is
set up once per run, then reused for every student). Each submission gets a `Session`: a Unix
socket (bound read-only into that submission's sandbox) and a record of verdicts. A hidden test
cell's `check(name, fn)` (xailab.grading) connects, names the check, and serves the checker's calls
of `fn`; the check runs here on the plain values that come back, and the verdict is recorded here.
The grading driver scores the notebook from this record, not from what the kernel printed.

Data from the kernel is never unpickled: frames are size-limited JSON plus safetensors.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grader.checks import get, run_check
from grader.checks.student import KernelLost, Student
from xailab import grading
from xailab.grading import recv_frame, send_frame

NAME = re.compile(r"^lab\d\d\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
GRACE_S = 15.0  # beyond a call's budget (at least): loading models in the kernel, (de)serialising
OWN_WORK_S = 1800.0  # the checker's own work (waiting its turn, references, comparisons) never times a cell out
_COMPUTE = threading.Lock()  # checks compute one at a time; released while a kernel works


@dataclass
class Verdict:
    name: str
    passed: bool
    message: str
    seconds: float  # the whole check, as the checker saw it
    seconds_student: float = 0.0  # the student's own run time inside it


class RemoteStudent(Student):
    """The student's function in the sandboxed kernel, reached through the session's connection."""

    def __init__(self, conn: socket.socket, task: str, session: Session):
        super().__init__(task)
        self.conn, self.session = conn, session

    def _exchange(self, request: bytes, budget: float) -> tuple[dict, bytes]:
        wait = budget + max(GRACE_S, 0.5 * self.budget)  # the grace grows with the load, like the budget
        self.session.mark_busy(wait)
        _COMPUTE.release()
        try:
            self.conn.settimeout(wait)
            send_frame(self.conn, {"op": "call", "budget_s": budget}, request)
            header, blob = recv_frame(self.conn)
        except socket.timeout:
            raise KernelLost(f"the notebook did not answer within {wait:.0f} s (the function's time budget plus a "
                             "grace period): it kept running after its budget was spent") from None
        except (OSError, ValueError) as err:
            raise KernelLost(f"the connection to the notebook was lost ({str(err)[:120]})") from None
        finally:
            _COMPUTE.acquire()
            self.session.mark_busy(OWN_WORK_S)
        if header.get("op") != "result":
            raise KernelLost("the notebook sent an unexpected message")
        return header, blob


@dataclass
class Session:
    """One submission's socket and record of verdicts."""

    folder: Path
    verdicts: list[Verdict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # protocol problems, for the notes
    setup_seconds: float = 0.0  # preparing checks (first use in this worker) during this session

    @property
    def socket_path(self) -> Path:
        return self.folder / "checker.sock"

    @property
    def busy_file(self) -> Path:
        return self.folder / "busy"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.socket_path))
        self.socket_path.chmod(0o666)  # the sandboxed kernel runs as another user
        self._server.listen(4)
        self._server.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self._server.close()
        except OSError:
            pass
        self._thread.join(timeout=5)
        for path in (self.socket_path, self.busy_file):
            path.unlink(missing_ok=True)

    def mark_busy(self, seconds: float) -> None:
        """Tell the notebook executor that a check is running (until the deadline): don't interrupt."""
        tmp = self.busy_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"until": time.time() + seconds}))
        tmp.replace(self.busy_file)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                self._one_check(conn)
            self.busy_file.unlink(missing_ok=True)

    def _one_check(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            header, _ = recv_frame(conn, max_header=4096, max_blob=0)
        except (OSError, ValueError) as err:
            self.errors.append(f"a malformed request to the checker ({str(err)[:80]})")
            return
        name = header.get("name")
        if header.get("op") != "check" or not isinstance(name, str) or not NAME.match(name):
            self.errors.append(f"a request for an unknown check ({str(name)[:60]!r})")
            return
        start = time.perf_counter()
        self.mark_busy(OWN_WORK_S)  # the notebook's cell waits for the checker's turn and its references
        with _COMPUTE:
            try:
                chk = get(name)
                chk.setup()  # once per worker; a failure is reported by run_check below
            except Exception:  # noqa: BLE001
                chk = None
            self.setup_seconds += time.perf_counter() - start
            student = RemoteStudent(conn, chk.task if chk else name.split(".")[1], self)
            passed, message = run_check(name, student, isolate=False)
        self.verdicts.append(Verdict(name, passed, message, time.perf_counter() - start, student.used))
        try:
            conn.settimeout(10)
            send_frame(conn, {"op": "verdict", "passed": passed, "message": message})
        except OSError:
            pass

    def passed(self, name: str) -> bool | None:
        """True when every call of check `name` passed; None when it never ran."""
        results = [v.passed for v in self.verdicts if v.name == name]
        return all(results) if results else None

    def message(self, name: str) -> str | None:
        messages = [v.message for v in self.verdicts if v.name == name]
        return messages[-1] if messages else None


class Checker:
    """One per grading run: sessions for submissions; checks set up once and shared by all."""

    def __init__(self, root: Path):
        self.root = root
        torch.set_num_threads(grading.THREADS)
        warnings.simplefilter("ignore")

    def session(self, key: str) -> Session:
        session = Session(self.root / key)
        session.start()
        return session
