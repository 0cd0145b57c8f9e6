"""Real photos from scikit-image and ImageNet's class names, offline."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def load_photo(name: str = "chelsea", size: int = 224) -> torch.Tensor:
    """A scikit-image photo as a (3,size,size) float tensor in [0,1], resized whole (not cropped)."""
    import skimage.data
    from skimage.transform import resize

    if name not in PHOTOS:
        raise ValueError(f"unknown photo '{name}'; choose from {PHOTOS}")
    image = getattr(skimage.data, name)()[..., :3]
    resized = resize(image, (size, size), anti_aliasing=True)  # float64 in [0,1]
    return torch.tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names (from torchvision's metadata; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
