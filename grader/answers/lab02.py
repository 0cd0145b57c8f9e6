"""Lab 2 answer key: CAM, Grad-CAM, Guided Grad-CAM, pointing game, energy-based pointing game."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grader.answers.lab01 import guided_backprop, target_scores


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """(B,h,w) → (B,H,W), bilinear with align_corners=False."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def class_index(target, n: int, device=None) -> torch.Tensor:
    return torch.as_tensor(target, device=device).reshape(-1).expand(n)


@torch.no_grad()
def cam(model, inputs, target, features, classifier):
    stored = []
    handle = features.register_forward_hook(lambda m, i, out: stored.append(out))
    try:
        model(inputs.detach())
    finally:
        handle.remove()
    acts = stored[-1]                                                 # (B,K,h,w)
    weights = classifier.weight[class_index(target, len(acts), acts.device)]  # (B,K)
    maps = torch.einsum("bk,bkhw->bhw", weights, acts).clamp(min=0)
    return upsample(maps, inputs.shape[-2:])


def grad_cam(model, inputs, target, layer):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(out))
    try:
        x = inputs.detach().clone().requires_grad_(True)
        scores = target_scores(model, x, target)
    finally:
        handle.remove()
    acts = stored[-1]
    (grads,) = torch.autograd.grad(scores.sum(), acts)
    weights = grads.mean(dim=(2, 3))                                 # (B,K)
    maps = torch.einsum("bk,bkhw->bhw", weights, acts.detach()).clamp(min=0)
    return upsample(maps, inputs.shape[-2:])


def guided_grad_cam(model, inputs, target, layer):
    return guided_backprop(model, inputs, target) * grad_cam(model, inputs, target, layer)[:, None]


def pointing_game(heatmap, mask):
    flat = heatmap.flatten(1)
    peak = flat.argmax(1)
    return mask.flatten(1).gather(1, peak[:, None])[:, 0].to(heatmap.dtype)


def energy_pointing_game(heatmap, mask):
    energy = heatmap.clamp(min=0).flatten(1)
    inside = (energy * mask.flatten(1)).sum(1)
    total = energy.sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(heatmap.dtype).tiny),
                       torch.zeros_like(total))


def gap_layers(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(features, classifier) of a zoo model with a GAP → linear head."""
    if hasattr(model, "net"):  # efficientnet-lite0
        return model.net.bn2, model.net.classifier
    return model.features, model.classifier
