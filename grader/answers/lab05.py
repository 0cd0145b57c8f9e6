"""Lab 5 answer key: feature visualisation (activation maximisation) and dataset examples."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The square root of ImageNet's colour correlation matrix (Lucid / Lucent), rows = RGB output.
COLOUR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                        [0.27, 0.00, -0.05],
                                        [0.27, -0.09, 0.03]])


def layer_activation(model, layer, inputs):
    stored = []
    handle = layer.register_forward_hook(lambda module, args, output: stored.append(output))
    try:
        if isinstance(inputs, dict):
            model(**inputs)
        else:
            model(inputs)
    finally:
        handle.remove()
    return stored[-1]


def make_objective(layer, channel=None, direction=None, position=None):
    if (channel is None) == (direction is None):
        raise ValueError("give exactly one of channel and direction")

    def objective(model, images):
        acts = layer_activation(model, layer, images)                 # (B,C,H,W)
        if position is not None:
            x, y = position
            acts = acts[:, :, y:y + 1, x:x + 1]
        if channel is not None:
            index = torch.as_tensor(channel, device=acts.device).reshape(-1).expand(acts.shape[0])
            per_channel = acts[torch.arange(acts.shape[0], device=acts.device), index]   # (B,H,W)
        else:
            d = torch.as_tensor(direction, dtype=acts.dtype, device=acts.device)
            d = d.reshape(-1, acts.shape[1]).expand(acts.shape[0], -1)               # (B,C)
            per_channel = torch.einsum("bc,bchw->bhw", d, acts)
        return per_channel.mean(dim=(1, 2))

    return objective


def total_variation(images):
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().sum(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return (dx + dy) / images[0].numel()


def l2_penalty(images, centre=0.5):
    return ((images - centre) ** 2).mean(dim=(1, 2, 3))


def random_transform(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0,
                     pad_value=0.5):
    b = images.shape[0]
    x = F.pad(images, [pad] * 4, mode="constant", value=pad_value)
    shifts = torch.randint(-jitter, jitter + 1, (b, 2), generator=generator)
    s = scales[0] + (scales[1] - scales[0]) * torch.rand(b, generator=generator)
    a = (angles[0] + (angles[1] - angles[0]) * torch.rand(b, generator=generator)) * (math.pi / 180)
    x = torch.stack([torch.roll(x[i], shifts=(int(shifts[i, 1]), int(shifts[i, 0])), dims=(-2, -1))
                     for i in range(b)])
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fourier_image(spectrum, size, decay=1.0):
    h, w = (size, size) if isinstance(size, int) else size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freqs = (fx ** 2 + fy ** 2).sqrt()
    scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay
    complex_spectrum = torch.view_as_complex(spectrum.contiguous())
    return torch.fft.irfft2(complex_spectrum * scale.to(spectrum.device), s=(h, w), norm="ortho") / 4


def decorrelate_colours(image):
    matrix = COLOUR_CORRELATION_SQRT.to(image)
    matrix = matrix / matrix.norm(dim=0).max()
    return torch.sigmoid(torch.einsum("ij,bjhw->bihw", matrix, image))


def visualise(model, objective, batch=1, size=64, steps=64, parameterisation="fft", transforms=None, lr=0.05,
              decay=1.0, tv_weight=0.0, l2_weight=0.0, generator=None):
    if parameterisation == "fft":
        shape = (batch, 3, size, size // 2 + 1, 2)

        def to_image(p):
            return decorrelate_colours(fourier_image(p, size, decay))
    elif parameterisation == "pixel":
        shape = (batch, 3, size, size)
        to_image = torch.sigmoid
    else:
        raise ValueError(f"unknown parameterisation {parameterisation!r}")
    param = (0.01 * torch.randn(shape, generator=generator)).requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=lr)
    for _ in range(steps):
        image = to_image(param)
        seen = image if transforms is None else random_transform(image, generator, **transforms)
        loss = (-objective(model, seen) + tv_weight * total_variation(image)
                + l2_weight * l2_penalty(image)).sum()
        (param.grad,) = torch.autograd.grad(loss, param)
        optimiser.step()
    return to_image(param).detach()


@torch.no_grad()
def top_activating_examples(model, layer, channel, images, k=8, batch_size=64):
    scores = torch.cat([layer_activation(model, layer, images[i:i + batch_size])[:, channel].mean(dim=(1, 2))
                        for i in range(0, len(images), batch_size)])
    values, order = torch.sort(scores, descending=True, stable=True)
    return values[:k], order[:k]


@torch.no_grad()
def top_activating_tokens(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch = model.encode(list(sentences))
    acts = layer_activation(model, layer, batch)[:, :, neuron]        # (N,T)
    valid = batch["attention_mask"].bool()
    if exclude_special:
        ids = batch["input_ids"]
        valid &= (ids != model.tokenizer.cls_token_id) & (ids != model.tokenizer.sep_token_id)
    flat = torch.where(valid, acts, torch.full_like(acts, -math.inf)).flatten()
    values, order = torch.sort(flat, descending=True, stable=True)
    t = acts.shape[1]
    return values[:k], order[:k] // t, order[:k] % t
