"""Typical mistakes in Lab 5, one function each."""
import math

import torch
import torch.nn.functional as F

from grader.answers import lab05 as ref


# --- layer_activation
def la_hook_left(model, layer, inputs):
    stored = []
    layer.register_forward_hook(lambda m, a, out: stored.append(out))
    model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return stored[-1]


def la_detached(model, layer, inputs):
    with torch.no_grad():
        return ref.layer_activation(model, layer, inputs)


def la_first_call(model, layer, inputs):
    stored = []
    handle = layer.register_forward_hook(lambda m, a, out: stored.append(out))
    try:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        handle.remove()
    return stored[0]


def la_layer_input(model, layer, inputs):
    stored = []
    handle = layer.register_forward_hook(lambda m, a, out: stored.append(a[0]))
    try:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        handle.remove()
    return stored[-1]


def la_no_dict(model, layer, inputs):
    stored = []
    handle = layer.register_forward_hook(lambda m, a, out: stored.append(out))
    try:
        model(inputs)
    finally:
        handle.remove()
    return stored[-1]


# --- make_objective
def _objective(layer, reduce, channel=None, direction=None, position=None, pick=None):
    if (channel is None) == (direction is None):
        raise ValueError("exactly one of channel and direction")

    def objective(model, images):
        acts = ref.layer_activation(model, layer, images)
        if position is not None:
            acts = pick(acts, position)
        if channel is not None:
            index = torch.as_tensor(channel).reshape(-1).expand(acts.shape[0])
            per = acts[torch.arange(acts.shape[0]), index]
        else:
            d = torch.as_tensor(direction, dtype=acts.dtype).reshape(-1, acts.shape[1]).expand(acts.shape[0], -1)
            per = torch.einsum("bc,bchw->bhw", d, acts)
        return reduce(per)
    return objective


def _at(acts, position):
    x, y = position
    return acts[:, :, y:y + 1, x:x + 1]


def mo_max_over_space(layer, channel=None, direction=None, position=None):
    return _objective(layer, lambda p: p.amax(dim=(1, 2)), channel, direction, position, _at)


def mo_sum_over_space(layer, channel=None, direction=None, position=None):
    return _objective(layer, lambda p: p.sum(dim=(1, 2)), channel, direction, position, _at)


def mo_mean_over_batch(layer, channel=None, direction=None, position=None):
    return _objective(layer, lambda p: p.mean().expand(p.shape[0]), channel, direction, position, _at)


def mo_xy_swapped(layer, channel=None, direction=None, position=None):
    return _objective(layer, lambda p: p.mean(dim=(1, 2)), channel, direction, position,
                      lambda acts, pos: acts[:, :, pos[0]:pos[0] + 1, pos[1]:pos[1] + 1])


def mo_first_channel_for_all(layer, channel=None, direction=None, position=None):
    if channel is not None:
        channel = int(torch.as_tensor(channel).reshape(-1)[0])
    return ref.make_objective(layer, channel, direction, position)


def mo_cosine_direction(layer, channel=None, direction=None, position=None):
    if direction is not None:
        direction = torch.as_tensor(direction)
        direction = direction / direction.norm(dim=-1, keepdim=True)
    return ref.make_objective(layer, channel, direction, position)


def mo_no_value_error(layer, channel=None, direction=None, position=None):
    if channel is None and direction is None:
        channel = 0
    if channel is not None and direction is not None:
        direction = None
    return ref.make_objective(layer, channel, direction, position)


def mo_detached(layer, channel=None, direction=None, position=None):
    inner = ref.make_objective(layer, channel, direction, position)

    def objective(model, images):
        with torch.no_grad():
            return inner(model, images)
    return objective


# --- total_variation
def tv_batch_axis(images):
    d0 = (images[1:] - images[:-1]).abs().sum(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return (F.pad(d0, (0, 1)) + dx) / images[0].numel()


def tv_squared(images):
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3))
    return (dx + dy) / images[0].numel()


def tv_not_normalised(images):
    return ref.total_variation(images) * images[0].numel()


def tv_horizontal_only(images):
    return (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(dim=(1, 2, 3)) / images[0].numel()


def tv_means_of_differences(images):
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dx + dy


# --- l2_penalty
def l2_no_centre(images, centre=0.5):
    return (images ** 2).mean(dim=(1, 2, 3))


def l2_norm(images, centre=0.5):
    return (images - centre).flatten(1).norm(dim=1)


def l2_sum(images, centre=0.5):
    return ((images - centre) ** 2).sum(dim=(1, 2, 3))


def l2_whole_batch(images, centre=0.5):
    return ((images - centre) ** 2).mean().expand(images.shape[0])


# --- random_transform
def _affine(x, s, a_rad):
    cos, sin = torch.cos(a_rad) / s, torch.sin(a_rad) / s
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _draws(b, generator, jitter, scales, angles):
    shifts = torch.randint(-jitter, jitter + 1, (b, 2), generator=generator)
    s = scales[0] + (scales[1] - scales[0]) * torch.rand(b, generator=generator)
    a = angles[0] + (angles[1] - angles[0]) * torch.rand(b, generator=generator)
    return shifts, s, a


def _rolled(x, shifts, swap=False):
    return torch.stack([torch.roll(x[i], shifts=(int(shifts[i, 0 if swap else 1]), int(shifts[i, 1 if swap else 0])),
                                   dims=(-2, -1)) for i in range(len(x))])


def rt_one_draw_per_batch(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0,
                          pad_value=0.5):
    b = images.shape[0]
    x = F.pad(images, [pad] * 4, value=pad_value)
    shifts, s, a = _draws(1, generator, jitter, scales, angles)
    x = _rolled(x, shifts.expand(b, 2))
    return _affine(x, s.expand(b), a.expand(b) * math.pi / 180)


def rt_radians(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0, pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    shifts, s, a = _draws(len(x), generator, jitter, scales, angles)
    return _affine(_rolled(x, shifts), s, a)


def rt_scale_not_inverted(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0,
                          pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    shifts, s, a = _draws(len(x), generator, jitter, scales, angles)
    return _affine(_rolled(x, shifts), 1 / s, a * math.pi / 180)


def rt_clockwise(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0, pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    shifts, s, a = _draws(len(x), generator, jitter, scales, angles)
    return _affine(_rolled(x, shifts), s, -a * math.pi / 180)


def rt_no_jitter(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0, pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    _, s, a = _draws(len(x), generator, jitter, scales, angles)
    return _affine(x, s, a * math.pi / 180)


def rt_shift_axes_swapped(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0,
                          pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    shifts, s, a = _draws(len(x), generator, jitter, scales, angles)
    return _affine(_rolled(x, shifts, swap=True), s, a * math.pi / 180)


def rt_pad_zeros(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0, pad_value=0.5):
    return ref.random_transform(images, generator, jitter, scales, angles, pad, 0.0)


# --- fourier_image
def fi_no_spectrum_scaling(spectrum, size, decay=1.0):
    return ref.fourier_image(spectrum, size, 0.0)


def fi_no_division_by_4(spectrum, size, decay=1.0):
    return ref.fourier_image(spectrum, size, decay) * 4


def fi_default_norm(spectrum, size, decay=1.0):
    h, w = (size, size) if isinstance(size, int) else size
    return ref.fourier_image(spectrum, size, decay) * math.sqrt(h * w) ** -1


def fi_frequencies_transposed(spectrum, size, decay=1.0):
    h, w = (size, size) if isinstance(size, int) else size
    fy = torch.fft.fftfreq(w)[:, None][:h]
    fx = torch.fft.rfftfreq(h)[None, :]
    fx = F.pad(fx, (0, w // 2 + 1 - fx.shape[1])) if fx.shape[1] < w // 2 + 1 else fx[:, :w // 2 + 1]
    fy = F.pad(fy, (0, 0, 0, h - fy.shape[0])) if fy.shape[0] < h else fy
    freqs = (fx ** 2 + fy ** 2).sqrt()
    scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay
    return torch.fft.irfft2(torch.view_as_complex(spectrum.contiguous()) * scale, s=(h, w), norm="ortho") / 4


def fi_floor_at_one(spectrum, size, decay=1.0):
    h, w = (size, size) if isinstance(size, int) else size
    freqs = (torch.fft.rfftfreq(w)[None, :] ** 2 + torch.fft.fftfreq(h)[:, None] ** 2).sqrt()
    scale = 1.0 / (freqs + 1.0 / max(h, w)) ** decay
    return torch.fft.irfft2(torch.view_as_complex(spectrum.contiguous()) * scale, s=(h, w), norm="ortho") / 4


# --- decorrelate_colours
def _mix(image, matrix):
    return torch.einsum("ij,bjhw->bihw", matrix, image)


def dc_no_sigmoid(image):
    m = ref.COLOUR_CORRELATION_SQRT
    return _mix(image, m / m.norm(dim=0).max())


def dc_transposed(image):
    m = ref.COLOUR_CORRELATION_SQRT
    return torch.sigmoid(_mix(image, (m / m.norm(dim=0).max()).T))


def dc_row_norm(image):
    m = ref.COLOUR_CORRELATION_SQRT
    return torch.sigmoid(_mix(image, m / m.norm(dim=1).max()))


def dc_not_normalised(image):
    return torch.sigmoid(_mix(image, ref.COLOUR_CORRELATION_SQRT))


def dc_clamp_not_sigmoid(image):
    m = ref.COLOUR_CORRELATION_SQRT
    return _mix(image, m / m.norm(dim=0).max()).clamp(0, 1)


# --- visualise
def _visualise(model, objective, batch, size, steps, parameterisation, transforms, lr, decay, tv_weight, l2_weight,
               generator, sign=1.0, use_transforms=True, to_pixels=torch.sigmoid, backward=False, penalty_sign=1.0,
               n_steps=None):
    if parameterisation == "fft":
        shape = (batch, 3, size, size // 2 + 1, 2)

        def to_image(p):
            return ref.decorrelate_colours(ref.fourier_image(p, size, decay))
    else:
        shape = (batch, 3, size, size)
        to_image = to_pixels
    param = (0.01 * torch.randn(shape, generator=generator)).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    for _ in range(steps if n_steps is None else n_steps):
        image = to_image(param)
        seen = image if transforms is None or not use_transforms else ref.random_transform(image, generator, **transforms)
        loss = (-sign * objective(model, seen) + penalty_sign * (tv_weight * ref.total_variation(image)
                                                                 + l2_weight * ref.l2_penalty(image))).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        else:
            (param.grad,) = torch.autograd.grad(loss, param)
        opt.step()
    return to_image(param).detach()


def _variant(**change):
    """The reference loop with one thing changed (an argument such as lr, or one of _visualise's switches)."""
    def visualise(model, objective, batch=1, size=64, steps=64, parameterisation="fft", transforms=None, lr=0.05,
                  decay=1.0, tv_weight=0.0, l2_weight=0.0, generator=None):
        args = dict(batch=batch, size=size, steps=steps, parameterisation=parameterisation, transforms=transforms,
                    lr=lr, decay=decay, tv_weight=tv_weight, l2_weight=l2_weight, generator=generator)
        args.update(change)
        if args.pop("one_short", False):
            args["n_steps"] = max(steps - 1, 0)
        return _visualise(model, objective, **args)
    return visualise


vi_gradient_descent = _variant(sign=-1.0)
vi_transforms_ignored = _variant(use_transforms=False)
vi_backward_leaves_grads = _variant(backward=True)
vi_pixels_not_squashed = _variant(to_pixels=lambda p: p + 0.5)
vi_penalties_rewarded = _variant(penalty_sign=-1.0)
vi_lr_ignored = _variant(lr=0.05)
vi_one_step_short = _variant(one_short=True)


# --- top_activating_examples
def _scores(model, layer, channel, images, batch_size, reduce=lambda m: m.mean(dim=(1, 2))):
    with torch.no_grad():
        return torch.cat([reduce(ref.layer_activation(model, layer, images[i:i + batch_size])[:, channel])
                          for i in range(0, len(images), batch_size)])


def _top(scores, k, descending=True):
    values, order = torch.sort(scores, descending=descending, stable=True)
    return values[:k], order[:k]


def te_first_batch_only(model, layer, channel, images, k=8, batch_size=64):
    return _top(_scores(model, layer, channel, images[:batch_size], batch_size), k)


def te_max_over_space(model, layer, channel, images, k=8, batch_size=64):
    return _top(_scores(model, layer, channel, images, batch_size, lambda m: m.amax(dim=(1, 2))), k)


def te_lowest(model, layer, channel, images, k=8, batch_size=64):
    return _top(_scores(model, layer, channel, images, batch_size), k, descending=False)


def te_one_image_per_pass(model, layer, channel, images, k=8, batch_size=64):
    return _top(_scores(model, layer, channel, images, 1), k)


def te_all_images_at_once(model, layer, channel, images, k=8, batch_size=64):
    return _top(_scores(model, layer, channel, images, len(images)), k)


def te_topk_unstable_ties(model, layer, channel, images, k=8, batch_size=64):
    scores = _scores(model, layer, channel, images, batch_size)
    values, order = torch.sort(scores.flip(0), descending=True, stable=True)
    return values[:k], (len(scores) - 1 - order)[:k]


# --- top_activating_tokens
def _token_acts(model, layer, neuron, sentences):
    batch = model.encode(list(sentences))
    with torch.no_grad():
        acts = ref.layer_activation(model, layer, batch)[:, :, neuron]
    return batch, acts


def _token_top(acts, valid, k):
    flat = torch.where(valid, acts, torch.full_like(acts, -math.inf)).flatten()
    values, order = torch.sort(flat, descending=True, stable=True)
    t = acts.shape[1]
    return values[:k], order[:k] // t, order[:k] % t


def tt_padding_included(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch, acts = _token_acts(model, layer, neuron, sentences)
    ids = batch["input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)
    if exclude_special:
        valid &= (ids != model.tokenizer.cls_token_id) & (ids != model.tokenizer.sep_token_id)
    return _token_top(acts, valid, k)


def tt_specials_always_included(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch, acts = _token_acts(model, layer, neuron, sentences)
    return _token_top(acts, batch["attention_mask"].bool(), k)


def tt_one_token_per_sentence(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch, acts = _token_acts(model, layer, neuron, sentences)
    ids = batch["input_ids"]
    valid = batch["attention_mask"].bool()
    if exclude_special:
        valid &= (ids != model.tokenizer.cls_token_id) & (ids != model.tokenizer.sep_token_id)
    masked = torch.where(valid, acts, torch.full_like(acts, -math.inf))
    best, pos = masked.max(1)
    values, order = torch.sort(best, descending=True, stable=True)
    return values[:k], order[:k], pos[order][:k]


def tt_cls_only_excluded(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch, acts = _token_acts(model, layer, neuron, sentences)
    ids = batch["input_ids"]
    valid = batch["attention_mask"].bool()
    if exclude_special:
        valid &= ids != model.tokenizer.cls_token_id
    return _token_top(acts, valid, k)


MUTANTS = {
    "layer_activation": {
        "hook never removed": la_hook_left,
        "activation detached (computed under no_grad)": la_detached,
        "first call of a layer run twice": la_first_call,
        "the layer's input instead of its output": la_layer_input,
        "dict inputs passed as one positional argument": la_no_dict,
    },
    "make_objective": {
        "max over space instead of the mean": mo_max_over_space,
        "sum over space instead of the mean": mo_sum_over_space,
        "mean over the batch (one number for all images)": mo_mean_over_batch,
        "neuron position read as [x, y] instead of [y, x]": mo_xy_swapped,
        "first channel used for every image": mo_first_channel_for_all,
        "direction normalised (cosine-like) instead of the plain dot product": mo_cosine_direction,
        "no ValueError for neither / both of channel and direction": mo_no_value_error,
        "scores computed under no_grad": mo_detached,
    },
    "total_variation": {
        "differences along the batch axis instead of the height": tv_batch_axis,
        "squared differences": tv_squared,
        "not divided by C·H·W": tv_not_normalised,
        "horizontal differences only": tv_horizontal_only,
        "mean of each direction's differences (other normalisation)": tv_means_of_differences,
    },
    "l2_penalty": {
        "centre ignored (distance from 0)": l2_no_centre,
        "Euclidean norm instead of the mean square": l2_norm,
        "sum instead of the mean": l2_sum,
        "one value for the whole batch": l2_whole_batch,
    },
    "random_transform": {
        "one draw for the whole batch": rt_one_draw_per_batch,
        "angles used as radians": rt_radians,
        "scale not inverted in the sampling grid": rt_scale_not_inverted,
        "rotation clockwise": rt_clockwise,
        "jitter never applied": rt_no_jitter,
        "dx and dy swapped": rt_shift_axes_swapped,
        "pad_value ignored (zeros)": rt_pad_zeros,
    },
    "fourier_image": {
        "spectrum scaling missing (no 1/f^decay)": fi_no_spectrum_scaling,
        "not divided by 4": fi_no_division_by_4,
        "irfft2 without norm='ortho'": fi_default_norm,
        "height and width frequencies swapped": fi_frequencies_transposed,
        "1/(f + 1/max(H, W)) instead of a floor": fi_floor_at_one,
    },
    "decorrelate_colours": {
        "sigmoid missing": dc_no_sigmoid,
        "matrix transposed": dc_transposed,
        "normalised by the largest row norm": dc_row_norm,
        "matrix not normalised": dc_not_normalised,
        "clamp instead of sigmoid": dc_clamp_not_sigmoid,
    },
    "visualise": {
        "gradient descent (sign flipped)": vi_gradient_descent,
        "transforms ignored": vi_transforms_ignored,
        "loss.backward() leaves .grad on the model": vi_backward_leaves_grads,
        "pixel images not squashed into [0, 1]": vi_pixels_not_squashed,
        "penalties rewarded instead of subtracted": vi_penalties_rewarded,
        "learning rate ignored (always 0.05)": vi_lr_ignored,
        "one step short": vi_one_step_short,
    },
    "top_activating_examples": {
        "top-k over the first batch only": te_first_batch_only,
        "max over space instead of the mean": te_max_over_space,
        "the lowest activations": te_lowest,
        "one image per forward pass": te_one_image_per_pass,
        "all images in one forward pass (batch_size ignored)": te_all_images_at_once,
        "ties broken by the higher index": te_topk_unstable_ties,
    },
    "top_activating_tokens": {
        "padding positions included": tt_padding_included,
        "[CLS] and [SEP] never excluded": tt_specials_always_included,
        "only the best token of each sentence": tt_one_token_per_sentence,
        "only [CLS] excluded": tt_cls_only_excluded,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # Raises: every make_objective test fails, and test_visualise_start, whose visible check builds an objective.
    "make_objective": '''def make_objective(layer, channel=None, direction=None, position=None):
    raise NotImplementedError("TODO: objectives")''',
    # One random draw for the whole batch: loses the seeded and per-image transform tests only.
    "random_transform": '''def random_transform(images, generator=None, jitter=0, scales=(1.0, 1.0), angles=(0.0, 0.0), pad=0,
                     pad_value=0.5):
    x = F.pad(images, [pad] * 4, value=pad_value)
    shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator)
    s = scales[0] + (scales[1] - scales[0]) * torch.rand(1, generator=generator)
    a = torch.deg2rad(angles[0] + (angles[1] - angles[0]) * torch.rand(1, generator=generator))
    x = torch.roll(x, shifts=(int(shift[1]), int(shift[0])), dims=(-2, -1))
    theta = torch.cat([torch.cat([torch.cos(a), -torch.sin(a), torch.zeros(1)]),
                       torch.cat([torch.sin(a), torch.cos(a), torch.zeros(1)])]).reshape(1, 2, 3) / s
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)''',
    # Loops forever: stopped by the time limits, the rest is graded.
    "top_activating_examples": '''def top_activating_examples(model, layer, channel, images, k=8, batch_size=64):
    scores = []
    start = 0
    while start < len(images):
        with torch.no_grad():
            acts = layer_activation(model, layer, images[start:start + batch_size])
        scores.append(acts[:, channel].mean(dim=(1, 2)))
    scores = torch.cat(scores)
    values, order = torch.sort(scores, descending=True, stable=True)
    return values[:k], order[:k]''',
    # A syntax error: the function is never defined.
    "top_activating_tokens": '''def top_activating_tokens(model, layer, neuron, sentences, k=10, exclude_special=True):
    batch = model.encode(sentences)
    acts = layer_activation(model, layer, batch)[:, :, neuron]
    valid = batch["attention_mask"].bool(
    return acts''',
}
