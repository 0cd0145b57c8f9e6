"""Typical mistakes in Lab 1, one function each."""
import torch
import torch.nn.functional as F
from torch import nn

from grader.answers import lab01 as ref


def _index(target, n):
    return torch.as_tensor(target).reshape(-1).expand(n)


# --- vanilla gradient
def grad_of_softmax(model, inputs, target, absolute=False):
    x = inputs.detach().clone().requires_grad_(True)
    p = F.softmax(model(x), 1).gather(1, _index(target, len(x))[:, None]).sum()
    (g,) = torch.autograd.grad(p, x)
    return g.abs() if absolute else g


def grad_of_loss(model, inputs, target, absolute=False):
    x = inputs.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), _index(target, len(x)), reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g.abs() if absolute else g


def always_absolute(model, inputs, target, absolute=False):
    return ref.vanilla_gradient(model, inputs, target).abs()


def first_target_for_all(model, inputs, target, absolute=False):
    return ref.vanilla_gradient(model, inputs, _index(target, len(inputs))[0].item(), absolute)


def modifies_inputs(model, inputs, target, absolute=False):
    inputs.requires_grad_(True)
    score = model(inputs).gather(1, _index(target, len(inputs))[:, None]).sum()
    score.backward()
    g = inputs.grad.clone()
    return g.abs() if absolute else g


def leaves_train_mode(model, inputs, target, absolute=False):
    model.train()
    return ref.vanilla_gradient(model, inputs, target, absolute)


def param_grads_accumulate(model, inputs, target, absolute=False):
    x = inputs.detach().clone().requires_grad_(True)
    model(x).gather(1, _index(target, len(x))[:, None]).sum().backward()
    return x.grad.abs() if absolute else x.grad


# --- gradient × input
def gxi_grad_only(model, inputs, target):
    return ref.vanilla_gradient(model, inputs, target)


def gxi_abs_grad(model, inputs, target):
    return ref.vanilla_gradient(model, inputs, target, absolute=True) * inputs


def gxi_softmax(model, inputs, target):
    return grad_of_softmax(model, inputs, target) * inputs


# --- SmoothGrad
def _smooth(model, inputs, target, n_samples, sigma, absolute, batch_size):
    """SmoothGrad with an explicit per-example sigma (B,), the rest as in the reference."""
    x = inputs.detach()
    b = x.shape[0]
    s = sigma.reshape(1, b, *([1] * (x.dim() - 1)))
    noisy = (x[None] + torch.randn(n_samples, *x.shape) * s).reshape(n_samples * b, *x.shape[1:])
    index = _index(target, b).repeat(n_samples)
    g = torch.cat([ref.vanilla_gradient(model, noisy[i:i + batch_size], index[i:i + batch_size])
                   for i in range(0, len(noisy), batch_size)]).reshape(n_samples, *x.shape)
    return (g.abs() if absolute else g).mean(0)


def _ranges(x):
    f = x.detach().flatten(1)
    return f.max(1).values - f.min(1).values


def sg_absolute_sigma(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    return _smooth(model, inputs, target, n_samples, torch.full((len(inputs),), noise_level), absolute, batch_size)


def sg_variance_for_std(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    return _smooth(model, inputs, target, n_samples, (noise_level * _ranges(inputs)) ** 2, absolute, batch_size)


def sg_batch_range(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    r = inputs.max() - inputs.min()
    return _smooth(model, inputs, target, n_samples, (noise_level * r).expand(len(inputs)), absolute, batch_size)


def sg_always_absolute(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    return _smooth(model, inputs, target, n_samples, noise_level * _ranges(inputs), True, batch_size)


def sg_abs_of_mean(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    mean = _smooth(model, inputs, target, n_samples, noise_level * _ranges(inputs), False, batch_size)
    return mean.abs() if absolute else mean


def sg_one_sample_at_a_time(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64, generator=None):
    return _smooth(model, inputs, target, n_samples, noise_level * _ranges(inputs), absolute, batch_size=1)


# --- guided backpropagation
def _guided(model, inputs, target, select, hook):
    handles = [m.register_full_backward_hook(hook) for m in select(model)]
    try:
        return ref.vanilla_gradient(model, inputs, target)
    finally:
        for h in handles:
            h.remove()


def _positive_grad_in(module, grad_in, grad_out):
    return (grad_in[0].clamp(min=0),)


def gb_plain_gradient(model, inputs, target):
    return ref.vanilla_gradient(model, inputs, target)


def gb_first_relu_only(model, inputs, target):
    return _guided(model, inputs, target, lambda m: [x for x in m.modules() if isinstance(x, nn.ReLU)][:1],
                   _positive_grad_in)


def gb_relu_but_not_relu6(model, inputs, target):
    return _guided(model, inputs, target, lambda m: [x for x in m.modules() if type(x) is nn.ReLU],
                   _positive_grad_in)


def gb_deconvnet(model, inputs, target):
    """Clamps the incoming gradient but forgets the forward mask (that is the deconvnet rule)."""
    return _guided(model, inputs, target, lambda m: [x for x in m.modules() if isinstance(x, ref.RELUS)],
                   lambda mod, gi, go: (go[0].clamp(min=0),))


def gb_hooks_left(model, inputs, target):
    for m in model.modules():
        if isinstance(m, ref.RELUS):
            m.register_full_backward_hook(_positive_grad_in)
    return ref.vanilla_gradient(model, inputs, target)


# --- occlusion
def occ_sum_not_mean(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    stride = stride or patch
    out = ref.occlusion(model, inputs, target, patch, stride, baseline, batch_size)
    h, w = inputs.shape[-2:]
    count = torch.zeros(h, w)
    for top in range(0, h - patch + 1, stride):
        for left in range(0, w - patch + 1, stride):
            count[top:top + patch, left:left + patch] += 1
    return out * count


def occ_sign_flipped(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    return -ref.occlusion(model, inputs, target, patch, stride, baseline, batch_size)


def occ_ignores_baseline(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    return ref.occlusion(model, inputs, target, patch, stride, 0.0, batch_size)


def occ_ignores_stride(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    return ref.occlusion(model, inputs, target, patch, patch, baseline, batch_size)


def occ_one_window_per_pass(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    return ref.occlusion(model, inputs, target, patch, stride, baseline, batch_size=len(inputs))


# --- token saliency
def ts_no_attention_mask(model, input_ids, attention_mask, target, reduction="l2"):
    return ref.token_saliency(model, input_ids, torch.ones_like(attention_mask), target, reduction) * attention_mask


def ts_sum_not_norm(model, input_ids, attention_mask, target, reduction="l2"):
    if reduction == "l2":
        embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        scores = ref.target_scores(model, None, target, inputs_embeds=embeds, attention_mask=attention_mask)
        (g,) = torch.autograd.grad(scores.sum(), embeds)
        return g.sum(-1) * attention_mask
    return ref.token_saliency(model, input_ids, attention_mask, target, reduction)


def ts_softmax(model, input_ids, attention_mask, target, reduction="l2"):
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    probs = F.softmax(model(inputs_embeds=embeds, attention_mask=attention_mask), 1)
    (g,) = torch.autograd.grad(probs.gather(1, _index(target, len(probs))[:, None]).sum(), embeds)
    per = g.norm(dim=-1) if reduction == "l2" else (g * embeds).sum(-1)
    return per * attention_mask


MUTANTS = {
    "vanilla_gradient": {
        "gradient of the softmax probability": grad_of_softmax,
        "gradient of the loss": grad_of_loss,
        "absolute value even when absolute=False": always_absolute,
        "first example's target for the whole batch": first_target_for_all,
        "inputs modified in place (requires_grad_ on the caller's tensor)": modifies_inputs,
        "model left in train mode": leaves_train_mode,
        ".backward() accumulating .grad on the parameters": param_grads_accumulate,
    },
    "gradient_x_input": {
        "gradient without × input": gxi_grad_only,
        "|gradient| × input": gxi_abs_grad,
        "softmax instead of logit": gxi_softmax,
    },
    "smoothgrad": {
        "σ absolute instead of relative to the range": sg_absolute_sigma,
        "variance passed where std is expected": sg_variance_for_std,
        "range of the whole batch instead of each example": sg_batch_range,
        "absolute values even when absolute=False": sg_always_absolute,
        "|mean| instead of mean of |·|": sg_abs_of_mean,
        "one sample per forward pass": sg_one_sample_at_a_time,
    },
    "guided_backprop": {
        "plain gradient (no ReLU overridden)": gb_plain_gradient,
        "only the first ReLU overridden": gb_first_relu_only,
        "nn.ReLU overridden but not nn.ReLU6": gb_relu_but_not_relu6,
        "deconvnet rule (forward mask forgotten)": gb_deconvnet,
        "hooks left registered on the model": gb_hooks_left,
    },
    "occlusion": {
        "overlapping windows summed, not averaged": occ_sum_not_mean,
        "f(occluded) − f(x): sign flipped": occ_sign_flipped,
        "baseline ignored (always 0)": occ_ignores_baseline,
        "stride ignored": occ_ignores_stride,
        "one forward pass per window": occ_one_window_per_pass,
    },
    "token_saliency": {
        "attention mask not passed to the model": ts_no_attention_mask,
        "sum over the hidden size instead of the L2 norm": ts_sum_not_norm,
        "softmax probability instead of logit": ts_softmax,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # σ taken as an absolute number: loses the expectation test only.
    "smoothgrad": '''def smoothgrad(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64,
               generator=None):
    grads = []
    noisy = torch.cat([inputs + noise_level * torch.randn(inputs.shape, generator=generator)
                       for _ in range(n_samples)])
    targets = torch.as_tensor(target).reshape(-1).expand(len(inputs)).repeat(n_samples)
    for i in range(0, len(noisy), batch_size):
        grads.append(vanilla_gradient(model, noisy[i:i + batch_size], targets[i:i + batch_size], absolute))
    return torch.cat(grads).reshape(n_samples, *inputs.shape).mean(0)''',
    # Raises: every guided-backprop test fails, nothing else does.
    "guided_backprop": '''def guided_backprop(model, inputs, target):
    raise RuntimeError("TODO: I did not get the hooks to work")''',
    # A syntax error: the function is never defined.
    "occlusion": '''def occlusion(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    stride = stride or patch
    for top in range(0, inputs.shape[2] - patch + 1, stride)
        pass''',
    # Loops forever: stopped by the time limits, the rest is graded.
    "token_saliency": '''def token_saliency(model, input_ids, attention_mask, target, reduction="l2"):
    scores = torch.zeros(input_ids.shape)
    i = 0
    while i < input_ids.shape[1]:
        scores[:, i] = 0.0
    return scores''',
}
