"""Comparing explanations: linear and rank correlation, mass inside a region."""
from __future__ import annotations

import torch


def rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis; tied values share their average rank (as Spearman requires)."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.detach().cpu().double().numpy(), axis=-1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per example between two maps of shape (B, ...): returns (B,)."""
    ra, rb = rank(a.flatten(1)), rank(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per example between two maps of shape (B, ...): returns (B,)."""
    a, b = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def mass_inside(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of |attribution| that falls inside a boolean (B,H,W) mask, per example."""
    heat = attribution.abs()
    if heat.dim() == 4:
        heat = heat.sum(1)
    return (heat * mask).flatten(1).sum(1) / heat.flatten(1).sum(1).clamp(min=1e-12)
