"""The function under test, as a check sees it.

A check never calls the student's function directly: it calls a `Student`, which sends the
arguments to where the function lives and gets plain values back. `LocalStudent` runs the function
in this process (the test suite, instructors validating a notebook); the grading checker's
`RemoteStudent` (grader/checker.py) runs it in the sandboxed notebook kernel. Both go through the
same request and reply codecs (xailab.grading), so a check that passes locally behaves the same
while grading:

* arguments are copies (pickled; course models travel by name) — a check cannot look at an object
  after the call: ask for `observe=True` (side effects on modules and tensors among the arguments)
  or pass a `post(output, kwargs)` that turns the result into plain values inside the kernel;
* what comes back is a plain tensor, number, string, None, or a list/tuple/dict of these.

Nothing that reaches the kernel may hold expected values or answer-key code: `dump_request`
refuses objects from `grader.answers` and any other grader module that is not a check module.
"""
from __future__ import annotations

import io
import math
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from xailab import grading

# Check modules and fixtures travel by value (the kernel has no `grader` package).
_BY_VALUE_PREFIXES = ("grader.checks", "grader.fixtures")
_ZOO_IDS: dict[int, tuple[str, str, Any]] = {}  # id(module) -> (zoo name, submodule path, module)


class StudentError(Exception):
    """The student's function raised (type and first line of the message). `kind` is the exception's
    type name; `facts` what `observe=True` saw after the error (e.g. a hook left behind)."""

    def __init__(self, message: str = "", kind: str = "", facts: dict | None = None):
        super().__init__(message)
        self.kind, self.facts = kind, facts or {}


class OutOfTime(BaseException):
    """The check's time budget is spent (BaseException: a check's `except Exception` must not swallow it)."""


class KernelLost(BaseException):
    """The notebook's kernel stopped answering (died, hung with its alarm disabled, or sent garbage)."""


class BadReply(Exception):
    """The reply could not be graded (e.g. the function returned a model); the message says why."""


def mark_zoo_model(name: str, model: torch.nn.Module) -> None:
    """Course models (and their layers) are sent by name and loaded from the zoo in the kernel."""
    for path, module in model.named_modules():
        _ZOO_IDS[id(module)] = (name, path, module)


def _register_check_modules() -> None:
    import cloudpickle

    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(_BY_VALUE_PREFIXES) and not getattr(module, "_xailab_by_value", False):
            cloudpickle.register_pickle_by_value(module)
            module._xailab_by_value = True


def _grader_origin(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    elif isinstance(obj, (types.FunctionType, type, types.MethodType)):
        name = getattr(obj, "__module__", "") or ""
    else:
        name = type(obj).__module__ or ""
    return name if name == "grader" or name.startswith("grader.") else None


def dump_request(request: dict) -> bytes:
    """Pickle a request for the kernel; refuses answer-key code and other grader internals."""
    import cloudpickle

    _register_check_modules()

    class RequestPickler(cloudpickle.Pickler):
        def persistent_id(self, obj):
            entry = _ZOO_IDS.get(id(obj))
            if entry is not None and entry[2] is obj:
                return ("zoo", entry[0], entry[1])
            origin = _grader_origin(obj)
            if origin and not origin.startswith(_BY_VALUE_PREFIXES):
                raise pickle_error(f"a check tried to send {origin} ({type(obj).__name__}) to the notebook; "
                                   "only inputs, toy models and check-module code may go there")
            return None

    buffer = io.BytesIO()
    RequestPickler(buffer, protocol=5).dump(request)
    return buffer.getvalue()


def pickle_error(message: str) -> Exception:
    import pickle

    return pickle.PicklingError(message)


@dataclass
class Reply:
    output: Any
    seconds: float
    facts: dict = field(default_factory=dict)


def interpret_reply(task: str, header: dict, blob: bytes) -> Reply:
    """Turn a reply into a Reply, or raise what the check should see (StudentError, OutOfTime, BadReply)."""
    seconds = header.get("seconds", 0.0)
    seconds = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0 else 0.0
    if header.get("timeout"):
        raise OutOfTime()
    if "error" in header:
        err = header["error"] if isinstance(header["error"], dict) else {}
        kind, message = str(err.get("type", "Exception"))[:80], str(err.get("message", ""))[:300]
        facts = header.get("facts", {})
        raise StudentError(f"{kind}: {message}" if message else kind, kind, facts if isinstance(facts, dict) else {})
    if "unsupported" in header:
        raise BadReply(f"{task} returned {str(header['unsupported'])[:120]}, which cannot be graded: return tensors "
                       "(or numbers, or tuples/lists/dicts of them) as the docstring says.")
    try:
        output = grading.unpack_value(header.get("output"), blob)
    except Exception as err:  # noqa: BLE001 - a malformed reply is the kernel's fault
        raise KernelLost(f"the notebook sent a malformed reply ({type(err).__name__})") from None
    facts = header.get("facts", {})
    return Reply(output, seconds, facts if isinstance(facts, dict) else {})


class Student:
    """The function under test. `student(**kwargs)` returns its output; `call` gives more control."""

    def __init__(self, task: str):
        self.task = task
        self.budget = math.inf
        self.used = 0.0

    def start(self, budget: float) -> None:
        """Begin a check with `budget` seconds of the student's own run time."""
        self.budget, self.used = budget, 0.0

    def __call__(self, *args, **kwargs):
        return self.call(kwargs, args=args).output

    def call(self, kwargs: dict, post: Callable | None = None, observe: bool = False, seed: int = 0,
             args: tuple = ()) -> Reply:
        """Call the function. `post(output, kwargs)` runs after it, where it lives (e.g. to apply a
        returned module to inputs); `observe` reports side effects on modules and tensors in kwargs."""
        remaining = self.budget - self.used
        if remaining <= 0:
            raise OutOfTime()
        request = {"args": tuple(args), "kwargs": dict(kwargs), "post": post, "observe": observe, "seed": seed}
        header, blob = self._exchange(dump_request(request), remaining)
        reply = interpret_reply(self.task, header, blob)  # may raise after accounting below
        self.used += reply.seconds
        return reply

    def _exchange(self, request: bytes, budget: float) -> tuple[dict, bytes]:
        raise NotImplementedError


class LocalStudent(Student):
    """Runs the function in this process, through the same codecs as a grading run."""

    def __init__(self, fn: Callable, task: str):
        super().__init__(task)
        self.fn = fn

    def _exchange(self, request: bytes, budget: float) -> tuple[dict, bytes]:
        return grading.serve_call(self.fn, grading.load_request(request), budget)


# ----------------------------------------------------------------------------- load

def _probe_once() -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=g)
    start = time.perf_counter()
    for _ in range(40):
        a = torch.tanh(a @ a * 0.01)
    return time.perf_counter() - start


_PROBE: list[float] = [-math.inf, 0.0]  # (when measured, seconds)
PROBE_TTL_S = 10.0


def probe_seconds(fresh: bool = False) -> float:
    """Time of a small fixed workload (~30 ms on a quiet 2-core machine; median of 3, each long
    enough to span several scheduler time slices): how fast this machine is right now. Reused for
    PROBE_TTL_S seconds unless `fresh`."""
    if not fresh and time.monotonic() - _PROBE[0] < PROBE_TTL_S:
        return _PROBE[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(grading.THREADS)
    try:
        seconds = statistics.median(_probe_once() for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    _PROBE[:] = [time.monotonic(), seconds]
    return seconds
