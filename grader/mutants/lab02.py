"""Typical mistakes in Lab 2, one function each."""
import torch
import torch.nn.functional as F

from grader.answers import lab02 as ref
from grader.answers.lab01 import guided_backprop, vanilla_gradient


def _index(target, n):
    return torch.as_tensor(target).reshape(-1).expand(n)


def _features(model, inputs, layer):
    """The layer's output for `inputs` (with grad), the logits, and the (removed) hook."""
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(out))
    try:
        logits = model(inputs.detach())
    finally:
        handle.remove()
    return stored[-1], logits


def _up(maps, inputs, mode="bilinear", align_corners=False):
    return F.interpolate(maps[:, None], size=inputs.shape[-2:], mode=mode,
                         align_corners=None if mode == "nearest" else align_corners)[:, 0]


# --- CAM
def _cam_maps(model, inputs, target, features, classifier):
    with torch.no_grad():
        acts, _ = _features(model, inputs, features)
        return torch.einsum("bk,bkhw->bhw", classifier.weight[_index(target, len(acts))], acts)


def cam_no_relu(model, inputs, target, features, classifier):
    return _up(_cam_maps(model, inputs, target, features, classifier), inputs)


def cam_no_upsampling(model, inputs, target, features, classifier):
    return _cam_maps(model, inputs, target, features, classifier).clamp(min=0)


def cam_nearest(model, inputs, target, features, classifier):
    return _up(_cam_maps(model, inputs, target, features, classifier).clamp(min=0), inputs, "nearest")


def cam_with_bias(model, inputs, target, features, classifier):
    maps = _cam_maps(model, inputs, target, features, classifier)
    maps = maps + classifier.bias[_index(target, len(maps))][:, None, None].detach()
    return _up(maps.clamp(min=0), inputs)


def cam_normalised(model, inputs, target, features, classifier):
    maps = ref.cam(model, inputs, target, features, classifier)
    return maps / maps.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]


def cam_predicted_class(model, inputs, target, features, classifier):
    with torch.no_grad():
        predicted = model(inputs).argmax(1)
    return ref.cam(model, inputs, predicted, features, classifier)


def cam_hooks_left(model, inputs, target, features, classifier):
    stored = []
    features.register_forward_hook(lambda m, i, out: stored.append(out))
    with torch.no_grad():
        model(inputs)
    maps = torch.einsum("bk,bkhw->bhw", classifier.weight[_index(target, len(inputs))], stored[-1])
    return _up(maps.clamp(min=0), inputs)


# --- Grad-CAM
def _grad_cam(model, inputs, target, layer, score="logit", pool=(2, 3), relu=True, upsample=True):
    acts, logits = _features(model, inputs, layer)
    if score == "softmax":
        logits = logits.softmax(1)
    (grads,) = torch.autograd.grad(logits.gather(1, _index(target, len(logits))[:, None]).sum(), acts)
    weights = grads.mean(dim=pool, keepdim=True)
    maps = (weights * acts.detach()).sum(1)
    if relu:
        maps = maps.clamp(min=0)
    return _up(maps, inputs) if upsample else maps


def gc_no_relu(model, inputs, target, layer):
    return _grad_cam(model, inputs, target, layer, relu=False)


def gc_pool_channels(model, inputs, target, layer):
    """Averages the gradient over the channel axis instead of the spatial axes."""
    return _grad_cam(model, inputs, target, layer, pool=(1,))


def gc_pool_batch_too(model, inputs, target, layer):
    """Averages over the batch as well: every example gets the same weights."""
    return _grad_cam(model, inputs, target, layer, pool=(0, 2, 3))


def gc_input_gradient(model, inputs, target, layer):
    """Gradient of the input image instead of the layer's feature map: Grad-CAM of the pixels."""
    x = inputs.detach().clone().requires_grad_(True)
    logits = model(x)
    (grads,) = torch.autograd.grad(logits.gather(1, _index(target, len(logits))[:, None]).sum(), x)
    return (grads.mean((2, 3), keepdim=True) * x.detach()).sum(1).clamp(min=0)


def gc_softmax(model, inputs, target, layer):
    return _grad_cam(model, inputs, target, layer, score="softmax")


def gc_no_upsampling(model, inputs, target, layer):
    return _grad_cam(model, inputs, target, layer, upsample=False)


def gc_align_corners(model, inputs, target, layer):
    acts, logits = _features(model, inputs, layer)
    (grads,) = torch.autograd.grad(logits.gather(1, _index(target, len(logits))[:, None]).sum(), acts)
    maps = (grads.mean((2, 3), keepdim=True) * acts.detach()).sum(1).clamp(min=0)
    return _up(maps, inputs, align_corners=True)


def gc_relu_per_channel(model, inputs, target, layer):
    acts, logits = _features(model, inputs, layer)
    (grads,) = torch.autograd.grad(logits.gather(1, _index(target, len(logits))[:, None]).sum(), acts)
    return _up((grads.mean((2, 3), keepdim=True) * acts.detach()).clamp(min=0).sum(1), inputs)


def gc_hooks_left(model, inputs, target, layer):
    stored = []
    layer.register_forward_hook(lambda m, i, out: stored.append(out))
    logits = model(inputs.detach())
    (grads,) = torch.autograd.grad(logits.gather(1, _index(target, len(logits))[:, None]).sum(), stored[-1])
    return _up((grads.mean((2, 3), keepdim=True) * stored[-1].detach()).sum(1).clamp(min=0), inputs)


def gc_backward_accumulates(model, inputs, target, layer):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: (out.retain_grad(), stored.append(out)))
    logits = model(inputs.detach())
    handle.remove()
    logits.gather(1, _index(target, len(logits))[:, None]).sum().backward()
    acts = stored[-1]
    return _up((acts.grad.mean((2, 3), keepdim=True) * acts.detach()).sum(1).clamp(min=0), inputs)


# --- Guided Grad-CAM
def ggc_plain_gradient(model, inputs, target, layer):
    return vanilla_gradient(model, inputs, target) * ref.grad_cam(model, inputs, target, layer)[:, None]


def ggc_nearest(model, inputs, target, layer):
    cam = _grad_cam(model, inputs, target, layer, upsample=False)
    return guided_backprop(model, inputs, target) * _up(cam, inputs, "nearest")[:, None]


def ggc_no_relu(model, inputs, target, layer):
    return guided_backprop(model, inputs, target) * gc_no_relu(model, inputs, target, layer)[:, None]


def ggc_summed_channels(model, inputs, target, layer):
    return guided_backprop(model, inputs, target).sum(1) * ref.grad_cam(model, inputs, target, layer)


def ggc_added(model, inputs, target, layer):
    return guided_backprop(model, inputs, target) + ref.grad_cam(model, inputs, target, layer)[:, None]


# --- pointing game
def pg_global_argmax(heatmap, mask):
    """One argmax over the whole batch, used for every example."""
    peak = heatmap.flatten().argmax() % heatmap[0].numel()
    return mask.flatten(1)[:, peak].float()


def pg_row_argmax(heatmap, mask):
    """argmax over the last axis only: a hit when any row's maximum is inside the mask."""
    cols = heatmap.argmax(-1)                                   # (B,H)
    return mask.gather(2, cols[..., None])[..., 0].any(1).float()


def pg_swapped_coordinates(heatmap, mask):
    b, h, w = heatmap.shape
    peak = heatmap.flatten(1).argmax(1)
    col, row = peak // h, peak % h                              # divides by the wrong size
    return mask[torch.arange(b), row.clamp(max=h - 1), col.clamp(max=w - 1)].float()


def pg_abs_argmax(heatmap, mask):
    return ref.pointing_game(heatmap.abs(), mask)


def pg_first_mask(heatmap, mask):
    return ref.pointing_game(heatmap, mask[:1].expand_as(mask))


def pg_mean_inside(heatmap, mask):
    """Hit when the map is larger inside the mask than outside on average."""
    inside = (heatmap * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    outside = (heatmap * ~mask).flatten(1).sum(1) / (~mask).flatten(1).sum(1)
    return (inside > outside).float()


# --- energy-based pointing game
def epg_signed(heatmap, mask):
    flat = heatmap.flatten(1)
    return (flat * mask.flatten(1)).sum(1) / flat.sum(1)


def epg_abs(heatmap, mask):
    return ref.energy_pointing_game(heatmap.abs(), mask)


def epg_inside_over_outside(heatmap, mask):
    e = heatmap.clamp(min=0).flatten(1)
    m = mask.flatten(1)
    return (e * m).sum(1) / (e * ~m).sum(1).clamp(min=1e-12)


def epg_batch_total(heatmap, mask):
    e = heatmap.clamp(min=0)
    return (e * mask).flatten(1).sum(1) / e.sum() * len(e)


def epg_in_place(heatmap, mask):
    heatmap.clamp_(min=0)
    return ref.energy_pointing_game(heatmap, mask)


def epg_mean_inside(heatmap, mask):
    """Mean energy inside the mask divided by the mean over the image."""
    e = heatmap.clamp(min=0).flatten(1)
    m = mask.flatten(1)
    return ((e * m).sum(1) / m.sum(1)) / e.mean(1).clamp(min=1e-12)


MUTANTS = {
    "cam": {
        "missing ReLU": cam_no_relu,
        "no upsampling (feature-map resolution)": cam_no_upsampling,
        "nearest instead of bilinear upsampling": cam_nearest,
        "classifier bias added to the map": cam_with_bias,
        "normalised to a maximum of 1": cam_normalised,
        "predicted class instead of the target": cam_predicted_class,
        "hook left registered on the model": cam_hooks_left,
    },
    "grad_cam": {
        "missing ReLU": gc_no_relu,
        "gradients pooled over the channel axis instead of the spatial axes": gc_pool_channels,
        "gradients pooled over the batch too": gc_pool_batch_too,
        "gradient of the input instead of the feature map": gc_input_gradient,
        "softmax probability instead of the logit": gc_softmax,
        "no upsampling": gc_no_upsampling,
        "align_corners=True": gc_align_corners,
        "ReLU on each channel before the sum": gc_relu_per_channel,
        "hooks left registered on the model": gc_hooks_left,
        ".backward() accumulating .grad on the parameters": gc_backward_accumulates,
    },
    "guided_grad_cam": {
        "plain gradient instead of guided backpropagation": ggc_plain_gradient,
        "Grad-CAM upsampled with nearest": ggc_nearest,
        "Grad-CAM without ReLU": ggc_no_relu,
        "guided backprop summed over channels": ggc_summed_channels,
        "added instead of multiplied": ggc_added,
    },
    "pointing_game": {
        "one argmax over the whole batch": pg_global_argmax,
        "argmax over the last axis only": pg_row_argmax,
        "row and column computed with the wrong size": pg_swapped_coordinates,
        "argmax of |map|": pg_abs_argmax,
        "first example's mask for all": pg_first_mask,
        "mean inside vs outside instead of the peak": pg_mean_inside,
    },
    "energy_pointing_game": {
        "negative values kept": epg_signed,
        "|map| instead of its positive part": epg_abs,
        "inside / outside instead of inside / total": epg_inside_over_outside,
        "normalised by the energy of the whole batch": epg_batch_total,
        "heatmap clamped in place": epg_in_place,
        "mean inside / mean overall": epg_mean_inside,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # Forgets the ReLU: loses the reference checks and the properties of Grad-CAM (its CAM is right).
    "grad_cam": '''def grad_cam(model, inputs, target, layer):
    acts = []
    handle = layer.register_forward_hook(lambda module, inp, out: acts.append(out))
    logits = model(inputs)
    handle.remove()
    scores = logits[torch.arange(len(logits)), torch.as_tensor(target).expand(len(logits))]
    grads = torch.autograd.grad(scores.sum(), acts[0])[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * acts[0]).sum(1, keepdim=True)
    return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()''',
    # Uses |map|: right on non-negative Grad-CAM maps, wrong on signed ones.
    "energy_pointing_game": '''def energy_pointing_game(heatmap, mask):
    energy = heatmap.abs().flatten(1)
    return (energy * mask.flatten(1)).sum(1) / energy.sum(1)''',
}
