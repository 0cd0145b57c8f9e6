"""Lab 3 answer key: Integrated Gradients — quadrature rules, completeness, baselines, tokens."""
from __future__ import annotations

import math

import torch
from torchvision.transforms.functional import gaussian_blur

from grader.answers.lab01 import target_scores

RULES = ("left", "right", "midpoint", "trapezoid")


def riemann_rule(n_steps, rule="midpoint"):
    """(alphas, weights) on [0, 1] with n_steps intervals of width 1/n (float64).

    left α_k = k/n, k = 0..n−1; right α_k = k/n, k = 1..n; midpoint α_k = (k + ½)/n, k = 0..n−1:
    weights 1/n. trapezoid α_k = k/n, k = 0..n (n + 1 points), weights 1/n, ½n at both ends.
    """
    k = torch.arange(n_steps + (rule == "trapezoid"), dtype=torch.float64)
    if rule in ("left", "trapezoid"):
        alphas = k / n_steps
    elif rule == "right":
        alphas = (k + 1) / n_steps
    elif rule == "midpoint":
        alphas = (k + 0.5) / n_steps
    else:
        raise ValueError(f"unknown rule {rule!r}; choose from {RULES}")
    weights = torch.full_like(alphas, 1 / n_steps)
    if rule == "trapezoid":
        weights[[0, -1]] = 0.5 / n_steps
    return alphas, weights


def as_baseline(inputs: torch.Tensor, baseline) -> torch.Tensor:
    """None → zeros; a number → that constant; a tensor → broadcast to the shape of `inputs`."""
    x = inputs.detach()
    if baseline is None:
        return torch.zeros_like(x)
    return torch.as_tensor(baseline, dtype=x.dtype, device=x.device).detach().expand_as(x)


def integrated_gradients(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    """IG = (x − x′) ⊙ Σ_k w_k ∇S(x′ + α_k (x − x′)); each forward pass holds whole steps of the batch."""
    x = inputs.detach()
    b = x.shape[0]
    base = as_baseline(x, baseline)
    delta = x - base
    alphas, weights = riemann_rule(n_steps, rule)
    index = torch.as_tensor(target, device=x.device).reshape(-1).expand(b)
    per_chunk = max(1, batch_size // b)
    ones = [1] * x.dim()
    total = torch.zeros_like(x)
    for i in range(0, len(alphas), per_chunk):
        a = alphas[i:i + per_chunk].to(x.device, x.dtype).reshape(-1, *ones)
        w = weights[i:i + per_chunk].to(x.device, x.dtype).reshape(-1, *ones)
        path = (base + a * delta).reshape(-1, *x.shape[1:]).requires_grad_(True)
        (grad,) = torch.autograd.grad(target_scores(model, path, index.repeat(len(a))).sum(), path)
        total += (w * grad.reshape(len(a), *x.shape)).sum(0)
    return total * delta


@torch.no_grad()
def completeness_gap(model, inputs, target, attributions, baseline=None):
    """Σ attributions − (S(x) − S(x′)) per example: (B,)."""
    x = inputs.detach()
    change = target_scores(model, x, target) - target_scores(model, as_baseline(x, baseline), target)
    return attributions.detach().flatten(1).sum(1) - change


def steps_until_converged(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4,
                          max_steps=512, batch_size=64):
    """Smallest n in start, 2·start, 4·start, … ≤ max_steps with |gap| < tol·|S(x) − S(x′)| for every
    example; None if there is none."""
    with torch.no_grad():
        x = inputs.detach()
        change = (target_scores(model, x, target) - target_scores(model, as_baseline(x, baseline), target)).abs()
    n = start
    while n <= max_steps:
        attr = integrated_gradients(model, inputs, target, baseline, n, rule, batch_size)
        if (completeness_gap(model, inputs, target, attr, baseline).abs() < tol * change).all():
            return n
        n *= 2
    return None


def make_baseline(inputs, kind="black", sigma=10.0, generator=None):
    """black: zeros; blur: Gaussian blur, kernel 2⌈3σ⌉+1 (torchvision, reflect padding);
    uniform: U[0, 1) noise drawn with torch.rand(inputs.shape, generator=generator)."""
    x = inputs.detach()
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "blur":
        k = 2 * math.ceil(3 * sigma) + 1
        return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
    if kind == "uniform":
        return torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    raise ValueError(f"unknown baseline kind {kind!r}")


def expected_integrated_gradients(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint",
                                  batch_size=64, generator=None):
    """Mean of IG over n_baselines uniform-noise baselines, drawn one after the other."""
    total = torch.zeros_like(inputs.detach())
    for _ in range(n_baselines):
        base = make_baseline(inputs, "uniform", generator=generator)
        total += integrated_gradients(model, inputs, target, base, n_steps, rule, batch_size)
    return total / n_baselines


def token_baseline(input_ids, attention_mask, tokenizer):
    """[CLS] [PAD] … [SEP] [PAD]…: real tokens become [PAD]; [CLS], [SEP] and padding
    (attention_mask 0) stay."""
    keep = (attention_mask == 0) | (input_ids == tokenizer.cls_token_id) | (input_ids == tokenizer.sep_token_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))


def token_integrated_gradients(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint",
                               batch_size=64):
    """IG through the input embeddings from the token baseline, summed per token: (B, T), 0 on padding."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(input_ids)
        base = embed(token_baseline(input_ids, attention_mask, model.tokenizer))
    b = input_ids.shape[0]

    def on_embeddings(e):  # whole steps per pass: row r is example r mod B
        return model(inputs_embeds=e, attention_mask=attention_mask.repeat(e.shape[0] // b, 1))

    attr = integrated_gradients(on_embeddings, x, target, base, n_steps, rule, batch_size)
    return attr.sum(-1) * attention_mask.to(attr.dtype)
