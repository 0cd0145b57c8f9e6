"""Instructor-side package: the answer key, the hidden-test check library and the grading driver.

Hidden test cells call checks by name: ``from grader import check; check("lab01.gradient.cnn", vanilla_gradient)``.
Students never install this package.
"""
from grader.checks import check

__all__ = ["check"]
