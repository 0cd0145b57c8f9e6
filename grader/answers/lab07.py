"""Lab 7 answer key: TCAV — concept activation vectors, directional derivatives, scores, significance."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from grader.answers.lab01 import target_scores


def _first(output):
    """A layer's output tensor (transformer blocks of older transformers versions return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def layer_activations(model, layer, inputs, batch_size=64):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(_first(out).detach()))
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
    finally:
        handle.remove()
    return torch.cat(stored)


def train_cav(concept_acts, random_acts, l2=0.01):
    """Minimise (1/N) Σ_i log(1 + exp(−y_i (w·x_i + b))) + (l2/2)·‖w‖², y = +1 concept, −1 random.

    The minimiser lies in the span of the examples (the penalty removes any other component):
    w = Xᵀα. Newton's method on (α, b) needs only the N×N Gram matrix K = X Xᵀ (kernel logistic
    regression), so it runs in float64 to machine precision at any width D.
    """
    xc, xr = concept_acts.detach().flatten(1), random_acts.detach().flatten(1)
    x = torch.cat([xc, xr]).double()
    y = torch.cat([torch.ones(len(xc)), -torch.ones(len(xr))]).double().to(x.device)
    n = len(x)
    k = x @ x.T
    alpha = torch.zeros(n, dtype=x.dtype, device=x.device)
    b = torch.zeros((), dtype=x.dtype, device=x.device)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)

    def objective(alpha, b):
        return F.softplus(-y * (k @ alpha + b)).mean() + 0.5 * l2 * alpha @ (k @ alpha)

    value = objective(alpha, b)
    for _ in range(100):
        p = torch.sigmoid(-y * (k @ alpha + b))     # 1 − σ(y·margin)
        g = -y * p / n                               # ∂loss/∂margin
        s = p * (1 - p) / n                          # ∂²loss/∂margin²
        # Newton system H Δ = ∇ with H = diag(K, 1)·M: solve M Δ = r instead (K may be singular)
        m = torch.cat([torch.cat([s[:, None] * k + l2 * eye, s[:, None]], 1),
                       torch.cat([s @ k, s.sum()[None]])[None]])
        r = torch.cat([g + l2 * alpha, g.sum()[None]])
        step = torch.linalg.solve(m, r)
        decrement = (k @ r[:-1]) @ step[:-1] + r[-1] * step[-1]   # ∇·Δ
        if decrement <= 1e-15 * value:               # converged to float64 precision
            break
        t = 1.0
        while t > 1e-12:                             # backtracking (Armijo) line search
            new_alpha, new_b = alpha - t * step[:-1], b - t * step[-1]
            new = objective(new_alpha, new_b)
            if new <= value - 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            break                                    # no further decrease in float64
        alpha, b, value = new_alpha, new_b, new
    w = x.T @ alpha
    return (w / w.norm()).to(concept_acts.dtype)


def mean_cav(concept_acts, random_acts):
    diff = concept_acts.detach().flatten(1).double().mean(0) - random_acts.detach().flatten(1).double().mean(0)
    return (diff / diff.norm()).to(concept_acts.dtype)


def directional_derivatives(model, layer, inputs, target, cav):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(_first(out)))
    try:
        x = inputs.detach().clone().requires_grad_(True)
        scores = target_scores(model, x, target)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(scores.sum(), stored[-1])
    return torch.tensordot(grad.flatten(1), cav.to(grad.dtype), dims=([1], [-1]))  # (B,) or (B, K)


def tcav_score(derivatives):
    return (derivatives > 0).to(torch.float32).mean(0)


def tcav(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [train_cav(concept_sets[i], random_sets[i], l2) for i in range(r)]
    cavs += [train_cav(random_sets[i], random_sets[(i + 1) % r], l2) for i in range(r)]
    scores = tcav_score(directional_derivatives(model, layer, class_inputs, target, torch.stack(cavs)))
    return scores[:r], scores[r:]


def significance(concept_scores, random_scores, alpha=0.05, n_tests=1):
    from scipy.stats import ttest_ind

    a = torch.as_tensor(concept_scores).double().cpu().numpy()
    b = torch.as_tensor(random_scores).double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttest_ind(a, b).pvalue)
    if p != p:  # nan: both samples constant and equal
        p = 1.0
    return p, p < alpha / n_tests


def _pool(hidden, attention_mask, pooling):
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)
    raise ValueError(f"unknown pooling {pooling!r}")


def text_activations(model, layer, input_ids, attention_mask, pooling="cls"):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(_first(out)))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return _pool(stored[-1].detach(), attention_mask, pooling)


def text_directional_derivatives(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(_first(out)))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    index = torch.as_tensor(target, device=logits.device).reshape(-1).expand(logits.shape[0])
    score = logits.gather(1, index[:, None]).sum()
    (grad,) = torch.autograd.grad(score, stored[-1])           # (B, T, H)
    if pooling == "cls":
        g = grad[:, 0]
    elif pooling == "mean":                                    # every real token moves along the CAV
        g = (grad * attention_mask.unsqueeze(-1).to(grad.dtype)).sum(1)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    return torch.tensordot(g, cav.to(g.dtype), dims=([1], [-1]))
