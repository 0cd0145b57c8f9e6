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
              signed: bool | None = None, size: float = 2.6, suptitle: str | None = None,
              colorbar: bool = True) -> None:
    """Draw one row: the image (if given), then each attribution map with its colour bar.

    Signed maps use a blue-white-red scale centred on 0, non-negative maps a black-to-yellow one;
    each map has its own scale (its largest |value|). Nothing is returned, so the figure is drawn
    once, also when the call is the last line of a cell.
    """
    panels = ([("input", None)] if image is not None else []) + list(maps.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) * (1.15 if colorbar else 1), size))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, attribution) in zip(axes, panels):
        if attribution is None:
            ax.imshow(to_image(image), cmap="gray")
        else:
            heat = to_heatmap(attribution, reduce)
            is_signed = bool((heat < 0).any()) if signed is None else signed
            vmax = float(heat.abs().max()) or 1.0
            shown = ax.imshow(heat.numpy(), cmap="bwr" if is_signed else "inferno",
                              vmin=-vmax if is_signed else 0, vmax=vmax)
            if colorbar:
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=7)
                bar.formatter.set_powerlimits((-2, 3))
                bar.ax.yaxis.get_offset_text().set_fontsize(7)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()


def show_bars(values: dict, ylabel: str | None = None, title: str | None = None, errors: dict | None = None,
              log: bool = False, size: tuple[float, float] | None = None, fmt: str = "{:.2f}") -> None:
    """A bar chart comparing methods: `values` maps a method to a number, or a group to {method: number}.

    Grouped values give one cluster of bars per group (e.g. per model) and a legend of the methods.
    `errors` (same layout) draws error bars; `log` uses a logarithmic axis. Each bar is labelled
    with its value (`fmt`). Nothing is returned (the figure is drawn once).
    """
    import numpy as np

    grouped = all(isinstance(v, dict) for v in values.values())
    groups = list(values) if grouped else [""]
    table = values if grouped else {"": values}
    methods = list(dict.fromkeys(m for g in groups for m in table[g]))
    errs = (errors if grouped else {"": errors}) if errors else None
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=size or (max(4.0, 0.45 * len(groups) * len(methods) + 2.0), 3.2))
    xs = np.arange(len(groups))
    for k, method in enumerate(methods):
        heights = [float(table[g].get(method, np.nan)) for g in groups]
        yerr = [float(errs[g].get(method, 0.0)) for g in groups] if errs else None
        pos = xs + (k - (len(methods) - 1) / 2) * width
        bars = ax.bar(pos, heights, width * 0.92, yerr=yerr, capsize=3 if yerr else 0,
                      label=method if grouped else None,
                      color=None if grouped else plt.cm.tab10(np.arange(len(methods)) % 10)[k])
        ax.bar_label(bars, labels=[fmt.format(h) if np.isfinite(h) else "" for h in heights], fontsize=7, padding=2)
    if grouped:
        ax.set_xticks(xs, groups)
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.set_xticks(xs + (np.arange(len(methods)) - (len(methods) - 1) / 2) * width, methods,
                      rotation=20 if len(methods) > 4 else 0, ha="right" if len(methods) > 4 else "center")
    if log:
        ax.set_yscale("log")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()


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
