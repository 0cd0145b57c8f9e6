"""Plots of attributions: heat maps over images, coloured tokens, curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def to_image(x: torch.Tensor):
    """(C,H,W) or (H,W) tensor in [0,1] → array for imshow."""
    x = x.detach().cpu().float()
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.clamp(0, 1).numpy()


def to_heatmap(attribution: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Collapse the channel axis of a (C,H,W) attribution to (H,W): 'sum', 'abs' (sum of |·|) or 'max'."""
    a = attribution.detach().cpu().float()
    if a.dim() == 3:
        a = {"sum": a.sum(0), "abs": a.abs().sum(0), "max": a.abs().max(0).values}[reduce]
    return a


def show_maps(image: torch.Tensor | None, maps: dict[str, torch.Tensor], reduce: str = "sum",
              signed: bool | None = None, size: float = 2.6, suptitle: str | None = None):
    """One row: the image (if given), then each attribution map, with a colour scale centred on 0 for signed maps."""
    panels = ([("input", None)] if image is not None else []) + list(maps.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, attribution) in zip(axes, panels):
        if attribution is None:
            ax.imshow(to_image(image), cmap="gray")
        else:
            heat = to_heatmap(attribution, reduce)
            is_signed = bool((heat < 0).any()) if signed is None else signed
            vmax = float(heat.abs().max()) or 1.0
            ax.imshow(heat.numpy(), cmap="bwr" if is_signed else "inferno",
                      vmin=-vmax if is_signed else 0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_tokens(tokens: list[str], scores: torch.Tensor, title: str | None = None):
    """Tokens as text, background colour = score (red positive, blue negative); returns an HTML object."""
    from IPython.display import HTML

    s = scores.detach().cpu().float()
    vmax = float(s.abs().max()) or 1.0
    spans = []
    for token, value in zip(tokens, s.tolist()):
        a = abs(value) / vmax
        colour = f"rgba(220,40,40,{a:.2f})" if value >= 0 else f"rgba(40,80,220,{a:.2f})"
        spans.append(f'<span title="{value:.3g}" style="background:{colour};padding:1px 3px;'
                     f'margin:1px;border-radius:3px">{token}</span>')
    head = f"<b>{title}</b><br>" if title else ""
    return HTML(f'<div style="line-height:2">{head}{" ".join(spans)}</div>')
