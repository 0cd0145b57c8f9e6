"""Frozen features for Lab 9 (training-data influence), precomputed and shipped with the course.

* `mnist_features(split)`: the 64-d global-average-pooled features of `mnist-cnn` (the input of its
  linear classifier) of the first 1,000 training digits or the 1,000 test digits of
  `xailab.datasets.mnist.load_mnist`, standardised with the mean and standard deviation of the
  training features.
* `review_features(split)`: the 384-d mean-pooled all-MiniLM-L6-v2 embeddings of the drug reviews of
  `xailab.datasets.text.load_drug_reviews` (546 train, 343 test; the input of `minilm-sentiment`'s
  head), standardised the same way. `review_texts(split)` gives the reviews in the same order.

Both return float32 features (N, D) and int64 labels (N,), fresh copies each call.
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _bank():
    from xailab import load_model

    return load_model("influence-features")


def _split(name: str, split: str, standardise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    bank = _bank()
    x, y = bank(f"{name}_{split}_features"), bank(f"{name}_{split}_labels")
    if standardise:
        train = bank(f"{name}_train_features")
        x = (x - train.mean(0)) / train.std(0).clamp(min=1e-6)
    return x.clone(), y.clone()


def mnist_features(split: str = "train", standardise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist-cnn's pooled features (1000, 64) and labels (1000,) of the first 1,000 training digits
    ('train') or the 1,000 test digits ('test'); standardised with the training statistics."""
    return _split("mnist", split, standardise)


def mnist_images(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits behind `mnist_features(split)`, in the same order: (1000, 1, 28, 28) and labels."""
    from xailab.datasets.mnist import load_mnist

    x, y = load_mnist(split)
    return x[:1000].clone(), y[:1000].clone()


def review_features(split: str = "train", standardise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM embeddings (N, 384) and sentiment labels (N,) (1 = positive) of the drug reviews of `split`."""
    return _split("reviews", split, standardise)


def review_texts(split: str = "train") -> list[str]:
    """The drug reviews behind `review_features(split)`, in the same order."""
    from xailab.datasets.text import load_drug_reviews

    return [text for text, _ in load_drug_reviews(split)]
