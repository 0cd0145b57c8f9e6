"""The course's small CNNs: a feature extractor, then global average pooling and one linear layer.

The GAP → linear head is what CAM needs; plain modules (no in-place ReLU, no BatchNorm) keep
hooks and LRP rules simple."""
import torch
from torch import nn


def conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]


class GapCNN(nn.Module):
    """`features` (a Sequential) → `pool` (global average) → `flatten` → `classifier` (Linear)."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))
