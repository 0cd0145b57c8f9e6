"""Lab 4 answer key: layer-wise relevance propagation (rules, composites, conservation, BatchNorm merging)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

STABILIZER = 1e-9  # added (sign-matched) to the denominator of every rule except ε
WEIGHTED = (nn.Linear, nn.Conv2d)
AVG_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def leaf_layers(model: nn.Module) -> list[nn.Module]:
    """The model's modules without children, in the order they were registered (= forward order here)."""
    return [m for m in model.modules() if not list(m.children())]


def stabilize(z: torch.Tensor, delta: float) -> torch.Tensor:
    """z + δ·sign(z), with sign(0) = +1."""
    return z + delta * torch.where(z >= 0, 1.0, -1.0).to(z)


def _forward(layer, a, weight, bias=None):
    if isinstance(layer, nn.Linear):
        return F.linear(a, weight, bias)
    return F.conv2d(a, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _backward(layer, a, weight, s):
    """The gradient trick: c = ∂(z·s)/∂a for z = layer'(a) with the given weight (= weightᵀ s)."""
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        (c,) = torch.autograd.grad(_forward(layer, a, weight), a, s)
    return c


def _contributions(layer, a, R, w_pos, w_neg, bias, delta):
    """R_j = Σ_k z̃_jk / Σ_j z̃_jk · R_k, where z̃_jk = a_j·w_pos for a_j ≥ 0 and a_j·w_neg for a_j < 0."""
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    z = _forward(layer, a_pos, w_pos) + _forward(layer, a_neg, w_neg)
    if bias is not None:
        z = z + bias.reshape(1, -1, *([1] * (z.dim() - 2)))
    s = R / stabilize(z, delta)
    return a_pos * _backward(layer, a_pos, w_pos, s) + a_neg * _backward(layer, a_neg, w_neg, s)


def _zbox(layer, a, R, low, high):
    w = layer.weight
    low = torch.as_tensor(low, dtype=a.dtype, device=a.device).expand_as(a)
    high = torch.as_tensor(high, dtype=a.dtype, device=a.device).expand_as(a)
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    z = _forward(layer, a, w) - _forward(layer, low, w_pos) - _forward(layer, high, w_neg)
    s = R / stabilize(z, STABILIZER)
    return a * _backward(layer, a, w, s) - low * _backward(layer, low, w_pos, s) - high * _backward(layer, high, w_neg, s)


def lrp_layer(layer, a, R, rule="epsilon", eps=0.25, gamma=0.25, low=0.0, high=1.0):
    a, R = a.detach(), R.detach()
    if isinstance(layer, WEIGHTED):
        w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        if rule in ("zero", "epsilon"):
            return _contributions(layer, a, R, w, w, b, eps if rule == "epsilon" else STABILIZER)
        if rule == "gamma":
            b = None if b is None else b + gamma * b.clamp(min=0)
            return _contributions(layer, a, R, w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0), b, STABILIZER)
        if rule == "zplus":
            b = None if b is None else b.clamp(min=0)
            return _contributions(layer, a, R, w.clamp(min=0), w.clamp(max=0), b, STABILIZER)
        if rule == "zbox":
            return _zbox(layer, a, R, low, high)
        raise ValueError(f"unknown rule {rule!r}")
    if isinstance(layer, nn.ReLU):
        return R
    if isinstance(layer, nn.Flatten):
        return R.reshape(a.shape)
    if isinstance(layer, nn.MaxPool2d):  # winner takes all: the gradient routes R to the maximum
        with torch.enable_grad():
            x = a.requires_grad_(True)
            (r,) = torch.autograd.grad(layer(x), x, R)
        return r
    if isinstance(layer, AVG_POOLS):  # proportional to the inputs' share of the average
        with torch.enable_grad():
            x = a.requires_grad_(True)
            z = layer(x)
            (c,) = torch.autograd.grad(z, x, R / stabilize(z.detach(), STABILIZER))
        return a.detach() * c
    raise TypeError(f"no LRP rule for {type(layer).__name__}")


def _target_relevance(logits: torch.Tensor, target) -> torch.Tensor:
    index = torch.as_tensor(target, device=logits.device).reshape(-1).expand(logits.shape[0])
    return torch.zeros_like(logits).scatter(1, index[:, None], logits.gather(1, index[:, None]))


def lrp(model, inputs, target, composite=None, all_layers=False):
    layers = leaf_layers(model)
    rules = composite(layers) if composite is not None else [dict(rule="zero")] * len(layers)
    activations = [inputs.detach()]
    with torch.no_grad():
        for layer in layers:
            activations.append(layer(activations[-1]))
    R = _target_relevance(activations[-1], target)
    relevances = [R]
    for layer, a, rule in reversed(list(zip(layers, activations[:-1], rules))):
        R = lrp_layer(layer, a, R, **rule)
        relevances.insert(0, R)
    return relevances if all_layers else relevances[0]


def make_composite(first="zbox", conv="gamma", dense="epsilon", eps=0.25, gamma=0.25, low=0.0, high=1.0):
    params = dict(eps=eps, gamma=gamma, low=low, high=high)

    def composite(layers):
        rules, seen_weighted = [], False
        for layer in layers:
            rule = "zero"  # ignored by parameter-free layers
            if isinstance(layer, WEIGHTED):
                rule = conv if isinstance(layer, nn.Conv2d) else dense
                if not seen_weighted and first is not None:
                    rule = first
                seen_weighted = True
            rules.append(dict(rule=rule, **params))
        return rules

    return composite


def conservation(model, inputs, target, composite=None):
    return torch.stack([r.flatten(1).sum(1) for r in lrp(model, inputs, target, composite, all_layers=True)])


@torch.no_grad()
def merge_batchnorm(layer, bn):
    merged = copy.deepcopy(layer)
    scale = (bn.running_var + bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    shape = (-1, *([1] * (layer.weight.dim() - 1)))
    merged.weight.copy_(layer.weight * scale.reshape(shape))
    bias = torch.zeros_like(scale) if layer.bias is None else layer.bias
    merged.bias = nn.Parameter(bias * scale + shift)
    return merged


def canonize(model):
    out = []
    for layer in leaf_layers(model):
        if isinstance(layer, BATCHNORMS) and out and isinstance(out[-1], WEIGHTED):
            out[-1] = merge_batchnorm(out[-1], layer)
        else:
            out.append(copy.deepcopy(layer))
    return nn.Sequential(*out).eval()


# ---------------------------------------------------------------- helpers for experiments and tests

def bias_free(model: nn.Module) -> nn.Module:
    """A copy of `model` with every bias set to zero."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m.modules():
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
    return m
