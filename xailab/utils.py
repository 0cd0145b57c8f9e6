"""Seeding, device choice, progress bars, and the grading-mode switch."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; optionally fix the number of CPU threads (for determinism)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def get_device(prefer_gpu: bool = True) -> torch.device:
    """CUDA when available (and wanted), else CPU. The labs never require a GPU."""
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def grading_mode() -> bool:
    """True while the autograder runs a notebook: long experiments skip themselves then."""
    return os.environ.get("XAILAB_GRADING", "") == "1"


def progress(iterable, desc: str | None = None, total: int | None = None, **kwargs):
    """A tqdm progress bar that works in notebooks and terminals, silent while grading."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=grading_mode(), **kwargs)
