"""Declarative checks called by name from hidden test cells.

A check holds its inputs, the reference call, the comparison with its tolerance and the feedback
message. It sees the student's function only as a `Student` (grader/checks/student.py): in the
test suite the function runs in this process, while grading it runs in the sandboxed notebook and
the verdict is made here, in the trusted checker. Either way a check is silent, deterministic
(fixed seeds and thread count), bounded in time, and turns every student error — an exception, a
wrong shape, a loop that never ends — into one clear feedback line.

Time limits do not depend on how busy the machine is: a check's budget is a multiple of the answer
key's own time on the same cases (with a floor), scaled by how slow a small fixed workload runs right
now; only the student's function counts against it (references are computed once, in `setup`), and
a check that runs out of time is tried once more before it fails.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from grader.checks.student import (BadReply, KernelLost, LocalStudent, OutOfTime, Reply, Student, StudentError,
                                   probe_seconds)
from xailab import grading

FLOOR_S = 10.0  # the smallest budget of a check, in seconds of the student's own run time
KEY_FACTOR = 20.0  # budget = max(FLOOR_S, KEY_FACTOR × the answer key's time on the same cases) × load
MAX_LOAD = 10.0  # the load factor's ceiling (a loop that never ends must still fail in bounded time)

__all__ = ["Case", "Check", "CheckFailed", "Reply", "Student", "all_of", "as_tensor", "assert_close",
           "checks_for", "prepared_check", "property_check", "reference_check", "register", "run_check"]


class CheckFailed(AssertionError):
    """The student's function did not behave as the check requires (the message says how)."""


@dataclass
class Case:
    """One input of a check: keyword arguments for the function and a short description."""

    description: str
    kwargs: dict[str, Any]
    index: int = 0  # position within its check (set by setup)
    raises: str | None = None  # an input the docstring calls invalid: the function must raise this error


@contextlib.contextmanager
def quiet():
    """No warnings, nothing on stderr, the course's thread count, grad mode restored."""
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.set_num_threads(grading.THREADS)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)


@dataclass
class Check:
    """`inputs()` builds the cases; `compare(student, case)` raises CheckFailed when wrong.

    For reference comparisons use `reference_check`; for properties write `compare` directly.
    """

    name: str
    task: str
    message: str
    inputs: Callable[[], list[Case]]
    compare: Callable[[Student, Case], None]
    prepare: Callable[[list[Case]], None] | None = None  # e.g. compute references, outside the time limit
    floor_s: float = FLOOR_S
    _cases: list[Case] | None = field(default=None, repr=False)
    key_seconds: float = 0.0  # the answer key's own run time on the cases
    probe_s: float = 0.0  # the load probe's time when the key was timed
    key: Callable | None = field(default=None, repr=False)  # the answer key, when not grader.answers.<lab>.<task>

    @property
    def lab(self) -> str:
        return self.name.split(".")[0]

    def answer_key(self) -> Callable:
        if self.key is not None:
            return self.key
        return getattr(importlib.import_module(f"grader.answers.{self.lab}"), self.task)

    def setup(self) -> list[Case]:
        """Cases, references and the answer key's timing: computed once per process, then reused
        (the function under test only ever gets copies, so nothing can damage them)."""
        if self._cases is None:
            with quiet():
                torch.manual_seed(0)
                cases = self.inputs()
                for index, case in enumerate(cases):
                    case.index = index
                if self.prepare is not None:
                    self.prepare(cases)
                probe = probe_seconds(fresh=True)
                key = LocalStudent(self.answer_key(), self.task)
                try:
                    self.run(key, cases)
                except (AssertionError, StudentError, BadReply, OutOfTime) as err:
                    raise RuntimeError(f"the answer key fails this check ({type(err).__name__}: {err})") from None
                self.key_seconds, self.probe_s, self._cases = key.used, probe, cases
        return self._cases

    def budget(self, fresh: bool = False) -> float:
        """Seconds the student's function may use for this check, measured against the load right now."""
        load = min(MAX_LOAD, max(1.0, probe_seconds(fresh) / max(self.probe_s, 1e-6)))
        return max(self.floor_s, KEY_FACTOR * self.key_seconds) * load

    def run(self, student: Student, cases: list[Case]) -> None:
        for case in cases:
            if case.raises:
                expect_error(student, case, self.task)
            else:
                self.compare(student, case)


def expect_error(fn: Student, case: Case, task: str) -> None:
    """The call with the case's (invalid) arguments raises `case.raises`: not another error, not a result."""
    try:
        fn.call(case.kwargs)
    except StudentError as err:
        if err.kind == case.raises:
            return
        raise CheckFailed(f"{task} on {case.description} raised {err}; the docstring asks for a {case.raises}.") from None
    raise CheckFailed(f"{task} accepted {case.description} and returned a result; the docstring asks for a "
                      f"{case.raises} (raise {case.raises}(...) with a message that names the valid choices).")


REGISTRY: dict[str, Check] = {}


def register(check_: Check) -> Check:
    REGISTRY[check_.name] = check_
    return check_


def get(name: str) -> Check:
    lab = name.split(".")[0]
    if name not in REGISTRY:
        importlib.import_module(f"grader.checks.{lab}")
    if name not in REGISTRY:
        raise KeyError(f"no check named {name!r}")
    return REGISTRY[name]


def checks_for(lab: str, task: str | None = None) -> list[Check]:
    """All checks of a lab (optionally of one task), in definition order."""
    importlib.import_module(f"grader.checks.{lab}")
    return [c for n, c in REGISTRY.items() if n.startswith(lab + ".") and (task is None or c.task == task)]


def run_check(name: str, fn: Callable | Student, isolate: bool = True) -> tuple[bool, str]:
    """Run check `name` on `fn` (a function, or a Student while grading); return (passed, feedback).

    Never raises, never writes to stderr. `isolate=False` (the checker's threads) leaves the process's
    warnings, stderr and thread settings alone: the checker sets them once."""
    try:
        chk = get(name)
    except (KeyError, ImportError) as err:
        return False, f"✗ {name}: no such check ({err}). This is not your fault: tell your instructor."
    if isinstance(fn, Student):
        student = fn
    elif callable(fn):
        student = LocalStudent(fn, chk.task)
    else:
        return False, f"✗ {name}: {chk.task} is not a function (got {type(fn).__name__})."
    try:
        cases = chk.setup()
    except Exception as err:  # noqa: BLE001
        return False, (f"✗ {name}: the grader could not prepare this test ({type(err).__name__}: {err}). "
                       "This is not your fault: tell your instructor.")
    budget = 0.0
    for attempt in (1, 2):
        budget = chk.budget(fresh=attempt == 2)
        student.start(budget)
        try:
            with quiet() if isolate else contextlib.nullcontext():
                chk.run(student, cases)
        except OutOfTime:
            if attempt == 1:
                continue  # a busy moment is not the student's fault: measure the load again, try once more
            return False, (f"✗ {name}: {chk.task} did not finish within its time budget of {budget:.0f} s "
                           f"({KEY_FACTOR:.0f}× the answer key's time on the same inputs, measured on the grading "
                           "machine at the same moment; tried twice). Batch the work where you loop over examples, "
                           "steps or windows, and make sure every loop ends.")
        except CheckFailed as err:
            return False, f"✗ {name}: {err}"
        except StudentError as err:
            return False, f"✗ {name}: {chk.task} raised {err}"
        except BadReply as err:
            return False, f"✗ {name}: {err}"
        except KernelLost as err:
            return False, f"✗ {name}: {err}"
        except Exception as err:  # noqa: BLE001 - the result had a form the check could not handle
            return False, f"✗ {name}: {chk.task}'s result could not be checked ({type(err).__name__}: {err})."
        return True, f"✓ {name}: {chk.message} ({student.used:.1f} s)"
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- comparison helpers

def as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} should return a torch.Tensor, got {type(value).__name__}.")
    return value.detach().cpu()


def assert_close(actual: Any, expected: torch.Tensor, what: str, rtol: float, atol: float, hint: str = "",
                 scale_atol: float = 0.0) -> None:
    """Shape first, then values, with a message that says by how much and where.

    Entry bound: atol + scale_atol × max|expected| + rtol × |expected|. `scale_atol` is for results
    whose small entries carry the rounding of large ones (e.g. relevance divided by near-zero
    pre-activations), which differs with the number of threads and the batch size."""
    actual = as_tensor(actual, what)
    expected = expected.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}".strip())
    actual = actual.to(expected.dtype) if actual.is_floating_point() else actual.to(torch.float64).to(expected.dtype)
    if not torch.isfinite(actual).all():
        raise CheckFailed(f"{what}: the result contains NaN or inf. {hint}".strip())
    diff = (actual - expected).abs()
    bound = atol + scale_atol * expected.abs().max() + rtol * expected.abs()
    if (diff > bound).any():
        scale = expected.abs().max().item() or 1.0
        raise CheckFailed(
            f"{what}: values differ from the reference (max abs difference {diff.max().item():.3g}, "
            f"reference magnitude {scale:.3g}; {(diff > bound).float().mean().item():.0%} of entries off). {hint}".strip()
        )


# ---------------------------------------------------------------- check builders

def prepared_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]],
                   expected: Callable[[Case], Any], compare: Callable[[Student, Case, Any], None]) -> Check:
    """A check whose expected value `expected(case)` is computed once, in setup (never in the
    student's time), and handed to `compare(student, case, expected_value)`."""
    cache: dict[int, Any] = {}  # expected values by case index

    def prepare(cases: list[Case]) -> None:
        for case in cases:
            if case.raises:
                continue
            torch.manual_seed(0)
            cache[case.index] = expected(case)

    return register(Check(name, task, message, inputs, lambda fn, case: compare(fn, case, cache[case.index]),
                          prepare))


def reference_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]], reference: Callable,
                    rtol: float = 1e-4, atol: float = 1e-5, hint: str = "",
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None, scale_atol: float = 0.0) -> Check:
    """Compare `fn(**case.kwargs)` with `reference(**case.kwargs)` on every case (both seeded with 0)."""

    def expected(case: Case) -> torch.Tensor:
        return reference(**copy_kwargs(case.kwargs)).detach()

    def compare(fn: Student, case: Case, expected_value: torch.Tensor) -> None:
        actual = as_tensor(fn(**case.kwargs), task)
        if transform is not None:
            actual, expected_value = transform(actual), transform(expected_value)
        assert_close(actual, expected_value, f"{task} on {case.description}", rtol, atol, hint, scale_atol)

    return prepared_check(name, task, message, inputs, expected, compare)


def copy_kwargs(kwargs: dict) -> dict:
    """Fresh copies of the tensor arguments (for reference calls made in this process)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def property_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]],
                   prop: Callable[[Student, Case], None]) -> Check:
    """A check of a property (`prop(student, case)` raises CheckFailed when violated)."""
    return register(Check(name, task, message, inputs, prop))


def all_of(*props):
    """One property made of several, checked in order."""
    def prop(fn, case):
        for p in props:
            p(fn, case)
    return prop
