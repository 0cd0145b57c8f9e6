"""Declarative checks called by name from hidden test cells.

A check holds its inputs, the reference call, the comparison with its tolerance and the
feedback message. Running one is silent on stderr (nbgrader zeroes a cell that writes there),
deterministic (fixed seeds and thread count), bounded in time, and turns every student error —
an exception, a wrong shape, a loop that never ends — into one clear AssertionError.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

TIME_LIMIT_S = 15


class CheckFailed(AssertionError):
    """The student's function did not behave as the check requires (the message says how)."""


@dataclass
class Case:
    """One input of a check: keyword arguments for the function and a short description."""

    description: str
    kwargs: dict[str, Any]
    index: int = 0  # position within its check (set when run)


@dataclass
class Check:
    """`inputs()` builds the cases; `compare(actual, case)` raises CheckFailed when wrong.

    For reference comparisons use `reference_check`; for properties write `compare` directly.
    """

    name: str
    task: str
    message: str
    inputs: Callable[[], list[Case]]
    compare: Callable[[Callable, Case], None]
    prepare: Callable[[list[Case]], None] | None = None  # e.g. compute references, outside the time limit
    time_limit_s: float = TIME_LIMIT_S

    def cases(self) -> list[Case]:
        """Built afresh on each run (models come from a cache that repairs damaged ones)."""
        torch.manual_seed(0)
        cases = self.inputs()
        for index, case in enumerate(cases):
            case.index = index
        if self.prepare is not None:
            self.prepare(cases)
        return cases

    def run(self, fn: Callable, cases: list[Case]) -> None:
        if not callable(fn):
            raise CheckFailed(f"{self.task} is not a function (got {type(fn).__name__}).")
        for case in cases:
            self.compare(fn, case)


REGISTRY: dict[str, Check] = {}


def register(check_: Check) -> Check:
    REGISTRY[check_.name] = check_
    return check_


def _load(name: str) -> Check:
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


class _Timeout(BaseException):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise _Timeout()

    try:
        previous = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # not in the main thread: no limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_check(name: str, fn: Callable) -> tuple[bool, str]:
    """Run check `name` on `fn`; return (passed, feedback). Never raises, never writes to stderr."""
    chk = _load(name)
    threads = torch.get_num_threads()
    grad_enabled = torch.is_grad_enabled()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.set_num_threads(2)
            try:
                cases = chk.cases()  # loading models and computing references is not the student's time
            except Exception as err:  # noqa: BLE001
                return False, (f"✗ {name}: the grader could not prepare this test ({type(err).__name__}: {err}). "
                               "This is not your fault: tell your instructor.")
            start = time.perf_counter()
            with _time_limit(chk.time_limit_s):
                chk.run(fn, cases)
    except CheckFailed as err:
        return False, f"✗ {name}: {err}"
    except _Timeout:
        return False, f"✗ {name}: stopped after {chk.time_limit_s:.0f} s — does your {chk.task} loop forever, or loop where it could batch?"
    except Exception as err:  # the student's code raised
        return False, f"✗ {name}: {chk.task} raised {type(err).__name__}: {err}"
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad_enabled)
    return True, f"✓ {name}: {chk.message} ({time.perf_counter() - start:.1f} s)"


def check(name: str, fn: Callable) -> None:
    """Hidden-test entry point: print the result; raise AssertionError (and lose the points) on failure."""
    passed, feedback = run_check(name, fn)
    print(feedback)
    if not passed:
        raise AssertionError(feedback) from None


# ---------------------------------------------------------------- comparison helpers

def as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} should return a torch.Tensor, got {type(value).__name__}.")
    return value.detach().cpu()


def assert_close(actual: Any, expected: torch.Tensor, what: str, rtol: float, atol: float, hint: str = "") -> None:
    """Shape first, then values, with a message that says by how much and where."""
    actual = as_tensor(actual, what)
    expected = expected.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}".strip())
    actual = actual.to(expected.dtype) if actual.is_floating_point() else actual.to(torch.float64).to(expected.dtype)
    if not torch.isfinite(actual).all():
        raise CheckFailed(f"{what}: the result contains NaN or inf. {hint}".strip())
    diff = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    if (diff > bound).any():
        scale = expected.abs().max().item() or 1.0
        raise CheckFailed(
            f"{what}: values differ from the reference (max abs difference {diff.max().item():.3g}, "
            f"reference magnitude {scale:.3g}; {(diff > bound).float().mean().item():.0%} of entries off). {hint}".strip()
        )


def prepared_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]],
                   expected: Callable[[Case], Any], compare: Callable[[Callable, Case, Any], None]) -> Check:
    """A check whose expected value `expected(case)` is computed once, before the time limit starts,
    and handed to `compare(fn, case, expected_value)`."""
    cache: dict[int, Any] = {}  # expected values by case index

    def prepare(cases: list[Case]) -> None:
        for case in cases:
            if case.index not in cache:
                cache[case.index] = expected(case)

    return register(Check(name, task, message, inputs, lambda fn, case: compare(fn, case, cache[case.index]),
                          prepare))


def reference_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]], reference: Callable,
                    rtol: float = 1e-4, atol: float = 1e-5, hint: str = "",
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Check:
    """Compare `fn(**case.kwargs)` with `reference(**case.kwargs)` on every case.

    Each call gets its own copy of the tensor arguments, so an in-place edit by the student
    cannot leak into the reference (that side effect has checks of its own).
    """

    def expected(case: Case) -> torch.Tensor:
        torch.manual_seed(0)
        return reference(**copy_kwargs(case.kwargs)).detach()

    def compare(fn: Callable, case: Case, expected_value: torch.Tensor) -> None:
        torch.manual_seed(0)
        actual = as_tensor(fn(**copy_kwargs(case.kwargs)), task)
        if transform is not None:
            actual, expected_value = transform(actual), transform(expected_value)
        assert_close(actual, expected_value, f"{task} on {case.description}", rtol, atol, hint)

    return prepared_check(name, task, message, inputs, expected, compare)


def copy_kwargs(kwargs: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def property_check(name: str, task: str, message: str, inputs: Callable[[], list[Case]],
                   prop: Callable[[Callable, Case], None]) -> Check:
    """A check of a property (`prop(fn, case)` raises CheckFailed when violated)."""
    return register(Check(name, task, message, inputs, prop))
