"""Curated wrong implementations (the typical mistakes) for every task: each must lose points.

A lab's module defines ``MUTANTS = {task: {mutant_name: function}}``. `tests/test_mutants.py`
runs every hidden check of the task on each mutant and on the blank stub.
"""
import importlib


def mutants_for(lab: str) -> dict:
    return importlib.import_module(f"grader.mutants.{lab}").MUTANTS


def blank_stub(*args, **kwargs):
    """What the released notebook contains before the student writes anything."""
    raise NotImplementedError()
