"""Every hidden check passes on the answer key, fails on the blank stub, and every curated
mutant (a typical mistake) fails at least one check of its task — so it loses points."""
import importlib
from pathlib import Path

import pytest

from grader.checks import checks_for, run_check
from grader.mutants import blank_stub

LABS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "grader" / "checks").glob("lab*.py"))


def tasks(lab):
    return sorted({c.task for c in checks_for(lab)})


def answer(lab, task):
    return getattr(importlib.import_module(f"grader.answers.{lab}"), task)


PARAMS = [(lab, task) for lab in LABS for task in tasks(lab)]
MUTANT_PARAMS = [(lab, task, name) for lab in LABS
                 for task, mutants in importlib.import_module(f"grader.mutants.{lab}").MUTANTS.items()
                 for name in mutants]


@pytest.mark.parametrize("lab,task", PARAMS)
def test_answer_key_passes_every_check(lab, task):
    for chk in checks_for(lab, task):
        passed, message = run_check(chk.name, answer(lab, task))
        assert passed, message


@pytest.mark.parametrize("lab,task", PARAMS)
def test_blank_stub_fails_every_check(lab, task):
    for chk in checks_for(lab, task):
        passed, message = run_check(chk.name, blank_stub)
        assert not passed, f"{chk.name} passes on the blank stub"


@pytest.mark.parametrize("lab,task", PARAMS)
def test_every_task_has_mutants(lab, task):
    mutants = importlib.import_module(f"grader.mutants.{lab}").MUTANTS
    assert len(mutants.get(task, {})) >= 3, f"{lab}.{task} needs at least 3 curated mutants"


@pytest.mark.parametrize("lab,task,mutant", MUTANT_PARAMS)
def test_mutant_loses_points(lab, task, mutant):
    fn = importlib.import_module(f"grader.mutants.{lab}").MUTANTS[task][mutant]
    results = [run_check(chk.name, fn) for chk in checks_for(lab, task)]
    assert any(not passed for passed, _ in results), f"mutant '{mutant}' of {task} passes every check"
