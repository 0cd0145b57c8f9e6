"""Lab 6 answer key: network dissection (Bau et al. 2017) for CNN units and transformer FFN neurons."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F


def collect_activations(model, layer, images, batch_size=64):
    stored = []
    handle = layer.register_forward_hook(lambda module, inputs, output: stored.append(output))
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
    finally:
        handle.remove()
    return torch.cat(stored)


def unit_thresholds(activations, quantile=0.995):
    units = activations.shape[1]
    values = activations.transpose(0, 1).reshape(units, -1)       # (K, M): one row per unit
    m = values.shape[1]
    position = quantile * (m - 1)                                   # a Python float: exact for any M in memory
    below = math.floor(position)
    top = values.topk(m - below).values                             # v_{M-1}, …, v_{below+1}, v_below per row
    upper = top[:, -min(2, m - below)]                              # v_{below+1} (v_below when below = M − 1)
    return top[:, -1] + (position - below) * (upper - top[:, -1])


def unit_masks(activations, thresholds, size):
    upsampled = F.interpolate(activations, size=size, mode="bilinear")   # align_corners=False is the default
    return upsampled > thresholds.reshape(1, -1, 1, 1)


def dataset_iou(unit_masks, concept_masks):
    if isinstance(unit_masks, torch.Tensor):
        unit_masks, concept_masks = [unit_masks], [concept_masks]
    intersection = unit_area = concept_area = 0
    for units, concepts in zip(unit_masks, concept_masks):
        u = units.flatten(2).float()                                # (B, K, P)
        c = concepts.flatten(2).float()                             # (B, C, P)
        intersection = intersection + torch.einsum("bkp,bcp->kc", u, c)
        unit_area = unit_area + u.sum((0, 2))
        concept_area = concept_area + c.sum((0, 2))
    union = unit_area[:, None] + concept_area[None, :] - intersection
    return torch.where(union > 0, intersection / union, torch.zeros_like(union))


def label_units(iou, concept_names, min_iou=0.04):
    best, index = iou.max(dim=1)                                    # ties: the first concept
    scores = best.tolist()
    labels = [concept_names[i] if s > min_iou else None for s, i in zip(scores, index)]
    table = [(k, labels[k], scores[k]) for k in range(len(labels)) if labels[k] is not None]
    return labels, sorted(table, key=lambda row: -row[2])           # stable: ties keep the unit order


@contextlib.contextmanager
def ablate_units(model, layer, units):
    def zero(module, inputs, output):
        keep = output.new_ones(output.shape[1])
        keep[units] = 0
        return output * keep[:, None, None]

    handle = layer.register_forward_hook(zero)
    try:
        yield
    finally:
        handle.remove()


def token_concept_iou(model, layer, sentences, concept_masks, quantile=0.95, batch_size=64):
    batch = model.encode(sentences)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    stored = []
    handle = layer.register_forward_hook(lambda module, inputs, output: stored.append(output))
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                model(input_ids=ids[start:start + batch_size], attention_mask=attention[start:start + batch_size])
    finally:
        handle.remove()
    real = attention.bool()
    values = torch.cat(stored)[real]                                # (M, K): the real tokens only
    active = values > unit_thresholds(values, quantile)
    concepts = concept_masks.to(real.device).transpose(1, 2)[real]  # (M, C)
    return dataset_iou(active.T[None], concepts.T[None])
