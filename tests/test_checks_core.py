"""The check library itself: silent, bounded in time, and clear about what went wrong."""
import sys
import time
import warnings

import pytest
import torch

from grader.checks import (KEY_FACTOR, MAX_LOAD, Case, CheckFailed, assert_close, property_check, reference_check,
                           run_check)
from grader.checks.student import probe_seconds
from xailab.grading import check

reference_check("selftest.double", "double", "doubles its input",
                lambda: [Case("a vector", dict(x=torch.arange(4.0)))], lambda x: 2 * x).key = lambda x: 2 * x


def test_correct_function_passes_and_prints_to_stdout_only(capfd):
    check("selftest.double", lambda x: x * 2)
    out, err = capfd.readouterr()
    assert "✓ selftest.double" in out and err == ""


def test_wrong_values_fail_with_the_size_of_the_error():
    passed, message = run_check("selftest.double", lambda x: x * 3)
    assert not passed and "max abs difference 3" in message


def test_wrong_shape_is_named():
    passed, message = run_check("selftest.double", lambda x: (2 * x)[None])
    assert not passed and "expected shape (4,), got (1, 4)" in message


def test_exceptions_become_feedback():
    def broken(x):
        raise NotImplementedError()
    passed, message = run_check("selftest.double", broken)
    assert not passed and "raised NotImplementedError" in message


def test_non_tensor_and_non_callable():
    assert "should return a torch.Tensor" in run_check("selftest.double", lambda x: [1, 2])[1]
    assert "is not a function" in run_check("selftest.double", None)[1]


def test_student_warnings_and_stderr_never_reach_stderr(capfd):
    def noisy(x):
        warnings.warn("a UserWarning, as torch emits")
        print("debug output", file=sys.stderr)
        return 2 * x
    check("selftest.double", noisy)
    assert capfd.readouterr().err == ""


def test_hidden_failure_raises_assertion_error(capfd):
    with pytest.raises(AssertionError, match="differ"):
        check("selftest.double", lambda x: x)
    assert capfd.readouterr().err == ""


def test_endless_loop_is_stopped():
    chk = property_check("selftest.loop", "spin", "terminates", lambda: [Case("nothing", {})],
                         lambda fn, case: fn())
    chk.key, chk.floor_s = (lambda: None), 0.5

    def spin():
        while True:
            pass
    chk.setup()
    start = time.perf_counter()
    passed, message = run_check("selftest.loop", spin)
    elapsed = time.perf_counter() - start
    assert not passed and "did not finish within its time budget" in message
    # two tries of the load-scaled budget, plus the load measurements between them: nothing like "forever"
    bound = 2 * max(chk.floor_s, KEY_FACTOR * chk.key_seconds) * MAX_LOAD + 6 * probe_seconds(fresh=True) + 5
    assert elapsed < bound, f"stopped only after {elapsed:.1f} s (bound {bound:.1f} s)"


def test_assert_close_rejects_nan():
    with pytest.raises(CheckFailed, match="NaN"):
        assert_close(torch.tensor([float("nan")]), torch.tensor([0.0]), "f", 1e-5, 1e-5)
