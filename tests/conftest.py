import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """One torch thread for the test: the slow reference versions make many tiny autograd calls and
    one-row forward passes, which threads only slow down (use with pytest.mark.usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
