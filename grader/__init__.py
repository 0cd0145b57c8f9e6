"""Instructor-side package: the answer key, the hidden-test check library and the grading driver.

Hidden test cells call checks by name through the student package's thin client,
``from xailab.grading import check; check("lab01.vanilla_gradient.cnn", vanilla_gradient)``;
while grading, the verdict is made by the trusted checker (grader/checker.py) that runs these
checks. Students never install this package.
"""
