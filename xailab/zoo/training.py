"""A small, deterministic training loop shared by the course's image recipes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xailab.utils import progress, seed_everything


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (preds == labels).float().mean().item()


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float = 1e-3,
        batch: int = 64, seed: int = 0, shift: int = 0) -> torch.nn.Module:
    """Adam + cosine schedule; optional random translations of up to `shift` pixels."""
    seed_everything(seed, threads=2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(images) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in progress(range(epochs), desc="epochs"):
        model.train()
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch):
            idx = order[i:i + batch]
            x = images[idx]
            if shift:
                dx, dy = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
