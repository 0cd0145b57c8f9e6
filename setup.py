"""Package discovery for the xailab wheel (the metadata is in pyproject.toml).

Every subpackage of xailab is found, never listed, so a new one cannot be forgotten; the course's
data/ folder ships as the top-level package `xailab_data` (checkpoints + MANIFEST).
tests/test_release.py builds the wheel, installs it away from the repository and runs every lab.
"""
from setuptools import find_namespace_packages, find_packages, setup

setup(
    packages=find_packages(include=["xailab", "xailab.*"])
    + ["xailab_data"] + [f"xailab_data.{name}" for name in find_namespace_packages(where="data")],
    package_dir={"xailab_data": "data"},
)
