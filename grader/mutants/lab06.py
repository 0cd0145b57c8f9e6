"""Typical mistakes in Lab 6 (network dissection), one function each."""
import contextlib
import math

import torch
import torch.nn.functional as F

from grader.answers import lab06 as ref


# --- collect_activations
def ca_layer_input(model, layer, images, batch_size=64):
    stored = []
    handle = layer.register_forward_hook(lambda m, inputs, output: stored.append(inputs[0]))
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    handle.remove()
    return torch.cat(stored)


def ca_hook_left(model, layer, images, batch_size=64):
    stored = []
    layer.register_forward_hook(lambda m, inputs, output: stored.append(output))
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    return torch.cat(stored)


def ca_last_batch_only(model, layer, images, batch_size=64):
    stored = {}
    handle = layer.register_forward_hook(lambda m, inputs, output: stored.update(out=output))
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    handle.remove()
    return stored["out"]


def ca_one_pass(model, layer, images, batch_size=64):
    return ref.collect_activations(model, layer, images, batch_size=len(images))


def ca_one_image_at_a_time(model, layer, images, batch_size=64):
    return ref.collect_activations(model, layer, images, batch_size=1)


# --- unit_thresholds
def th_all_units_together(activations, quantile=0.995):
    flat = activations.reshape(1, 1, -1)
    return ref.unit_thresholds(flat, quantile).expand(activations.shape[1]).clone()


def th_first_batch(activations, quantile=0.995):
    return ref.unit_thresholds(activations[:64], quantile)


def th_mean_per_image(activations, quantile=0.995):
    return torch.stack([ref.unit_thresholds(a[None], quantile) for a in activations]).mean(0)


def th_position_q_times_m(activations, quantile=0.995):
    k = activations.shape[1]
    values = activations.transpose(0, 1).reshape(k, -1).sort(1).values
    m = values.shape[1]
    p = min(quantile * m, m - 1)
    lo = math.floor(p)
    return values[:, lo] + (p - lo) * (values[:, min(lo + 1, m - 1)] - values[:, lo])


def th_nearest_rank(activations, quantile=0.995):
    k = activations.shape[1]
    values = activations.transpose(0, 1).reshape(k, -1)
    return torch.quantile(values, quantile, dim=1, interpolation="nearest")


def th_units_mixed(activations, quantile=0.995):
    """reshape(K, -1) without moving the unit axis first: rows mix units and images."""
    k = activations.shape[1]
    return torch.quantile(activations.reshape(k, -1), quantile, dim=1)


def th_torch_quantile(activations, quantile=0.995):
    k = activations.shape[1]
    return torch.quantile(activations.transpose(0, 1).reshape(k, -1), quantile, dim=1)


# --- unit_masks
def um_nearest(activations, thresholds, size):
    return F.interpolate(activations, size=size, mode="nearest") > thresholds.reshape(1, -1, 1, 1)


def um_threshold_first(activations, thresholds, size):
    low = (activations > thresholds.reshape(1, -1, 1, 1)).float()
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False) > 0.5


def um_greater_equal(activations, thresholds, size):
    return F.interpolate(activations, size=size, mode="bilinear", align_corners=False) >= thresholds.reshape(1, -1, 1, 1)


def um_align_corners(activations, thresholds, size):
    return F.interpolate(activations, size=size, mode="bilinear", align_corners=True) > thresholds.reshape(1, -1, 1, 1)


def um_thresholds_on_last_axis(activations, thresholds, size):
    up = F.interpolate(activations, size=size, mode="bilinear", align_corners=False)
    return up > thresholds


# --- dataset_iou
def _batches(unit_masks, concept_masks):
    if isinstance(unit_masks, torch.Tensor):
        return [(unit_masks, concept_masks)]
    return list(zip(unit_masks, concept_masks))


def iou_mean_per_image(unit_masks, concept_masks):
    per_image = [ref.dataset_iou(u[i:i + 1], c[i:i + 1]) for u, c in _batches(unit_masks, concept_masks)
                 for i in range(len(u))]
    return torch.stack(per_image).mean(0)


def iou_union_is_sum(unit_masks, concept_masks):
    inter = area = 0
    for u, c in _batches(unit_masks, concept_masks):
        u, c = u.flatten(2).float(), c.flatten(2).float()
        inter = inter + torch.einsum("bkp,bcp->kc", u, c)
        area = area + u.sum((0, 2))[:, None] + c.sum((0, 2))[None, :]
    return torch.where(area > 0, inter / area, torch.zeros_like(area))


def iou_first_batch_only(unit_masks, concept_masks):
    u, c = _batches(unit_masks, concept_masks)[0]
    return ref.dataset_iou(u, c)


def iou_nan_when_empty(unit_masks, concept_masks):
    inter = au = ac = 0
    for u, c in _batches(unit_masks, concept_masks):
        u, c = u.flatten(2).float(), c.flatten(2).float()
        inter = inter + torch.einsum("bkp,bcp->kc", u, c)
        au, ac = au + u.sum((0, 2)), ac + c.sum((0, 2))
    return inter / (au[:, None] + ac[None, :] - inter)


def iou_precision(unit_masks, concept_masks):
    inter = au = 0
    for u, c in _batches(unit_masks, concept_masks):
        u, c = u.flatten(2).float(), c.flatten(2).float()
        inter = inter + torch.einsum("bkp,bcp->kc", u, c)
        au = au + u.sum((0, 2))
    return torch.where(au[:, None] > 0, inter / au[:, None].clamp(min=1), torch.zeros_like(inter))


def iou_tensor_only(unit_masks, concept_masks):
    """Treats every argument as one tensor: a list of batches becomes a stack, a stream breaks."""
    return ref.dataset_iou(torch.as_tensor(unit_masks), torch.as_tensor(concept_masks))


# --- label_units
def lu_greater_equal(iou, concept_names, min_iou=0.04):
    best, index = iou.max(dim=1)
    labels = [concept_names[i] if b >= min_iou else None for b, i in zip(best.tolist(), index.tolist())]
    rows = [(u, labels[u], best[u].item()) for u in range(len(labels)) if labels[u] is not None]
    return labels, sorted(rows, key=lambda r: (-r[2], r[0]))


def lu_no_threshold(iou, concept_names, min_iou=0.04):
    return ref.label_units(iou, concept_names, min_iou=-1.0)


def lu_unsorted(iou, concept_names, min_iou=0.04):
    labels, table = ref.label_units(iou, concept_names, min_iou)
    return labels, sorted(table)


def lu_last_of_ties(iou, concept_names, min_iou=0.04):
    flipped = iou.flip(1)
    labels, table = ref.label_units(flipped, list(reversed(concept_names)), min_iou)
    return labels, table


def lu_ascending(iou, concept_names, min_iou=0.04):
    labels, table = ref.label_units(iou, concept_names, min_iou)
    return labels, table[::-1]


# --- ablate_units
@contextlib.contextmanager
def ab_hook_left(model, layer, units):
    def zero(module, inputs, output):
        output = output.clone()
        output[:, units] = 0
        return output

    layer.register_forward_hook(zero)
    yield model


@contextlib.contextmanager
def ab_no_finally(model, layer, units):
    def zero(module, inputs, output):
        output = output.clone()
        output[:, units] = 0
        return output

    handle = layer.register_forward_hook(zero)
    yield model
    handle.remove()


@contextlib.contextmanager
def ab_zero_input(model, layer, units):
    def zero(module, inputs):
        x = inputs[0].clone()
        x[:, units] = 0
        return (x,)

    handle = layer.register_forward_pre_hook(zero)
    try:
        yield model
    finally:
        handle.remove()


@contextlib.contextmanager
def ab_keep_only(model, layer, units):
    def keep(module, inputs, output):
        kept = torch.zeros_like(output)
        kept[:, units] = output[:, units]
        return kept

    handle = layer.register_forward_hook(keep)
    try:
        yield model
    finally:
        handle.remove()


@contextlib.contextmanager
def ab_weights_not_restored(model, layer, units):
    convs = [m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)] or [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1:]
    with torch.no_grad():
        for conv in convs:
            conv.weight[units] = 0
            conv.bias[units] = 0
    yield model


# --- token_concept_iou
@torch.no_grad()
def _token_acts(model, layer, sentences):
    batch = model.encode(sentences)
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(out))
    try:
        model(**batch)
    finally:
        handle.remove()
    return stored[0], batch["attention_mask"].bool()


def tc_padding_included(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    acts, _ = _token_acts(model, layer, sentences)
    k = acts.shape[-1]
    values = acts.reshape(-1, k)
    active = values > ref.unit_thresholds(values, quantile)
    concepts = concept_masks.transpose(1, 2).reshape(-1, concept_masks.shape[1])
    return ref.dataset_iou(active.T[None], concepts.T[None])


def tc_one_threshold(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    acts, real = _token_acts(model, layer, sentences)
    values = acts[real]
    active = values > ref.unit_thresholds(values.reshape(-1, 1), quantile)
    concepts = concept_masks.transpose(1, 2)[real]
    return ref.dataset_iou(active.T[None], concepts.T[None])


def tc_special_tokens_dropped(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    acts, real = _token_acts(model, layer, sentences)
    ids = model.encode(sentences)["input_ids"]
    special = torch.tensor(model.tokenizer.all_special_ids)
    real = real & ~torch.isin(ids, special)
    values = acts[real]
    active = values > ref.unit_thresholds(values, quantile)
    return ref.dataset_iou(active.T[None], concept_masks.transpose(1, 2)[real].T[None])


def tc_no_attention_mask(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    batch = model.encode(sentences)
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(out))
    with torch.no_grad():
        model(input_ids=batch["input_ids"])
    handle.remove()
    real = batch["attention_mask"].bool()
    values = stored[0][real]
    active = values > ref.unit_thresholds(values, quantile)
    return ref.dataset_iou(active.T[None], concept_masks.transpose(1, 2)[real].T[None])


def tc_quantile_ignored(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    return ref.token_concept_iou(model, layer, sentences, concept_masks, 0.995, batch_size)


def tc_mean_per_sentence(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    acts, real = _token_acts(model, layer, sentences)
    thresholds = ref.unit_thresholds(acts[real], quantile)
    per = []
    for i in range(len(sentences)):
        active = acts[i][real[i]] > thresholds
        per.append(ref.dataset_iou(active.T[None], concept_masks[i].T[real[i]].T[None]))
    return torch.stack(per).mean(0)


MUTANTS = {
    "collect_activations": {
        "the layer's input instead of its output": ca_layer_input,
        "hook never removed": ca_hook_left,
        "only the last batch kept": ca_last_batch_only,
        "batch_size ignored: all images in one forward pass": ca_one_pass,
        "one image per forward pass": ca_one_image_at_a_time,
    },
    "unit_thresholds": {
        "one quantile over all units together": th_all_units_together,
        "thresholds from the first batch (64 images) only": th_first_batch,
        "mean of per-image quantiles": th_mean_per_image,
        "position q·M instead of q·(M − 1)": th_position_q_times_m,
        "nearest rank instead of linear interpolation": th_nearest_rank,
        "reshape(K, −1) without moving the unit axis first": th_units_mixed,
        "one torch.quantile call per row (fails beyond 2^24 values)": th_torch_quantile,
    },
    "unit_masks": {
        "nearest instead of bilinear upsampling": um_nearest,
        "threshold before upsampling": um_threshold_first,
        ">= instead of >": um_greater_equal,
        "align_corners=True": um_align_corners,
        "thresholds broadcast along the width": um_thresholds_on_last_axis,
    },
    "dataset_iou": {
        "mean of per-image IoUs": iou_mean_per_image,
        "union = sum of the areas (intersection counted twice)": iou_union_is_sum,
        "only the first batch of a stream": iou_first_batch_only,
        "NaN where the union is empty": iou_nan_when_empty,
        "intersection over the unit's area (precision)": iou_precision,
        "a list of batches treated as one tensor": iou_tensor_only,
    },
    "label_units": {
        ">= min_iou instead of >": lu_greater_equal,
        "no min_iou: every unit labelled": lu_no_threshold,
        "table sorted by unit, not by IoU": lu_unsorted,
        "ties go to the last concept": lu_last_of_ties,
        "table sorted from low to high IoU": lu_ascending,
    },
    "ablate_units": {
        "hook never removed": ab_hook_left,
        "hook not removed when the with-block raises (no finally)": ab_no_finally,
        "zeroes the layer's input channels": ab_zero_input,
        "zeroes every unit except the listed ones": ab_keep_only,
        "conv weights zeroed and never restored": ab_weights_not_restored,
    },
    "token_concept_iou": {
        "padding tokens included": tc_padding_included,
        "one threshold over all neurons": tc_one_threshold,
        "[CLS] and [SEP] dropped": tc_special_tokens_dropped,
        "model run without the attention_mask": tc_no_attention_mask,
        "quantile ignored (always 0.995)": tc_quantile_ignored,
        "mean of per-sentence IoUs": tc_mean_per_sentence,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # Nearest-neighbour upsampling: subtly wrong, loses the unit_masks tests only.
    "unit_masks": '''def unit_masks(activations, thresholds, size):
    up = F.interpolate(activations, size=size, mode="nearest")
    return up > thresholds[None, :, None, None]''',
    # Raises: both dataset_iou tests fail, nothing else does.
    "dataset_iou": '''def dataset_iou(unit_masks, concept_masks):
    raise NotImplementedError("I will stream this later")''',
    # A syntax error: the function is never defined.
    "label_units": '''def label_units(iou, concept_names, min_iou=0.04):
    best, index = iou.max(dim=1
    return [concept_names[i] for i in index], []''',
    # Loops forever: stopped by the time limits, the rest is graded.
    "token_concept_iou": '''def token_concept_iou(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    batch = model.encode(sentences)
    start = 0
    while start < len(sentences):
        model(**batch)
    return torch.zeros(1)''',
}
