"""Lab 1 answer key: gradients, SmoothGrad, guided backpropagation, occlusion, token saliency."""
from __future__ import annotations

import torch
from torch import nn


def target_scores(model: nn.Module, inputs: torch.Tensor, target, **kwargs) -> torch.Tensor:
    """Pre-softmax score of the target class for each example: (B,)."""
    logits = model(**kwargs) if inputs is None else model(inputs, **kwargs)
    index = torch.as_tensor(target, device=logits.device).reshape(-1).expand(logits.shape[0])
    return logits.gather(1, index[:, None]).squeeze(1)


def vanilla_gradient(model, inputs, target, absolute=False):
    x = inputs.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target_scores(model, x, target).sum(), x)
    return grad.abs() if absolute else grad


def gradient_x_input(model, inputs, target):
    return vanilla_gradient(model, inputs, target) * inputs.detach()


def smoothgrad(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64,
               generator=None):
    x = inputs.detach()
    b = x.shape[0]
    flat = x.reshape(b, -1)
    sigma = noise_level * (flat.max(1).values - flat.min(1).values)
    sigma = sigma.reshape(1, b, *([1] * (x.dim() - 1)))
    noise = torch.randn((n_samples, *x.shape), generator=generator, dtype=x.dtype).to(x.device) * sigma
    noisy = (x[None] + noise).reshape(n_samples * b, *x.shape[1:])
    index = torch.as_tensor(target).reshape(-1).expand(b).repeat(n_samples)
    grads = torch.cat([vanilla_gradient(model, noisy[i:i + batch_size], index[i:i + batch_size])
                       for i in range(0, len(noisy), batch_size)])
    grads = grads.reshape(n_samples, *x.shape)
    return (grads.abs() if absolute else grads).mean(0)


RELUS = (nn.ReLU, nn.ReLU6)


def guided_backprop(model, inputs, target):
    def guide(module, grad_input, grad_output):
        return (grad_input[0].clamp(min=0),)

    handles = [m.register_full_backward_hook(guide) for m in model.modules() if isinstance(m, RELUS)]
    try:
        return vanilla_gradient(model, inputs, target)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def occlusion(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    stride = stride or patch
    b, c, h, w = inputs.shape
    x = inputs.detach()
    base = target_scores(model, x, target)
    windows = []
    for top in range(0, h - patch + 1, stride):
        for left in range(0, w - patch + 1, stride):
            mask = torch.zeros(h, w, dtype=torch.bool, device=x.device)
            mask[top:top + patch, left:left + patch] = True
            windows.append(mask)
    masks = torch.stack(windows)  # (K,H,W)
    index = torch.as_tensor(target).reshape(-1).expand(b)
    drops = []
    per_chunk = max(1, batch_size // b)
    for i in range(0, len(masks), per_chunk):
        m = masks[i:i + per_chunk, None, None]  # (k,1,1,H,W)
        occluded = torch.where(m, torch.as_tensor(baseline, dtype=x.dtype), x[None]).reshape(-1, c, h, w)
        scores = target_scores(model, occluded, index.repeat(m.shape[0])).reshape(-1, b)
        drops.append(base[None] - scores)
    drops = torch.cat(drops)  # (K,B)
    total = torch.einsum("kb,khw->bhw", drops, masks.to(x.dtype))
    count = masks.sum(0).to(x.dtype)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def token_saliency(model, input_ids, attention_mask, target, reduction="l2"):
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    scores = target_scores(model, None, target, inputs_embeds=embeds, attention_mask=attention_mask)
    (grad,) = torch.autograd.grad(scores.sum(), embeds)
    if reduction == "l2":
        per_token = grad.norm(dim=-1)
    elif reduction == "grad_x_input":
        per_token = (grad * embeds).sum(-1)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    return per_token * attention_mask.to(per_token.dtype)

