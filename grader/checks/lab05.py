"""Hidden-test checks of Lab 5 (feature visualisation and dataset examples).

Deterministic parts are compared with the answer key on concept-cnn, EfficientNet-Lite0 and two
transformers (activations, objectives, penalties, seeded transforms, the Fourier parameterisation,
top-k examples and tokens) and tested for properties with exact values on hand-made cases.
`visualise` is judged by outcomes only: the image it returns at step 0 and after a few plain steps,
the objective value it reaches within a step budget (≥ 80 % of the answer key's gain on the same
objective), the high-frequency energy of Fourier vs pixel images, and what the objective saw (one
batched call per step, the transformed size). Objectives sent to the notebook are defined here:
they run truncated forward passes (no hooks) and record how they were called.
"""
from __future__ import annotations

import functools
import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from grader.answers import lab05 as ref
from grader.checks import (Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, prepared_check,
                           property_check, reference_check)
from grader.checks.properties import (ForwardCounter, check_no_side_effects, extra_dim, no_graph,
                                       no_hooks_left_on_error, side_effect_free)
from grader.fixtures import SENTENCES, model, text_batch
from xailab.datasets.photos import PHOTOS, load_photo

# ------------------------------------------------------------------ inputs


def fresh(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().clone() for t in tensors)


@lru_cache(maxsize=None)
def _concepts(n: int, seed: int) -> torch.Tensor:
    from xailab.datasets.concepts import make_concept_dataset

    return make_concept_dataset(n, seed=seed)["images"]


def concepts(n: int = 4, seed: int = 5) -> torch.Tensor:
    return _concepts(n, seed).clone()


@lru_cache(maxsize=None)
def _photos(size: int) -> torch.Tensor:
    return torch.stack([load_photo(name, size) for name in PHOTOS])


def photos(size: int = 64) -> torch.Tensor:
    """The four course photos, resized whole to size × size."""
    return _photos(size).clone()


@lru_cache(maxsize=None)
def _crops(size: int, crop: int, stride: int) -> torch.Tensor:
    x = _photos(size)
    patches = x.unfold(2, crop, stride).unfold(3, crop, stride)            # (4,3,n,n,crop,crop)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, crop, crop).contiguous()


def crops(size: int = 128, crop: int = 48, stride: int = 40) -> torch.Tensor:
    """Square crops of the four photos on a grid (a small 'dataset' of real image patches)."""
    return _crops(size, crop, stride).clone()


def concept_cnn():
    return model("concept-cnn")


def effnet():
    return model("efficientnet-lite0")


TINY_FFN = "model.bert.encoder.layer.{}.intermediate"
MINILM_FFN = "model.encoder.encoder.layer.{}.intermediate"

# ------------------------------------------------------------------ objectives sent to the notebook


class Objective:
    """objective(model, images) → (B,) scores, computed without hooks; records every call.

    `kind`: "class" (logit of class[i] for image i), "concept" (mean of channel[i] of concept-cnn's
    features[:depth] output), "effnet" (mean of channel[i] of EfficientNet-Lite0's blocks[:depth] output).
    """

    def __init__(self, kind: str, index, depth: int = 0):
        self.kind, self.depth = kind, depth
        self.index = torch.as_tensor(index).reshape(-1)
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        self.ranges: list[tuple[float, float]] = []

    def __call__(self, model, images):
        self.calls += 1
        self.shapes.append(tuple(images.shape))
        self.ranges.append((float(images.detach().min()), float(images.detach().max())))
        n = len(self.index)
        if images.dim() != 4 or images.shape[0] != n or images.shape[1] != 3:
            raise ValueError(f"the objective of this test scores a batch of {n} RGB images (B = {n}, 3, H, W); "
                             f"it was given shape {tuple(images.shape)}")
        rows = torch.arange(n)
        if self.kind == "class":
            return model(images)[rows, self.index]
        if self.kind == "concept":
            acts = model.features[:self.depth](images)
        else:
            net = model.net
            acts = net.blocks[:self.depth](net.bn1(net.conv_stem((images * 255.0 - 127.0) / 128.0)))
        return acts[rows, self.index].mean(dim=(1, 2))


def evaluate(objective: Objective, m: nn.Module, images: torch.Tensor, tv_weight=0.0, l2_weight=0.0) -> float:
    """Mean over the batch of score − tv_weight·TV − l2_weight·L2 (what visualise maximises), untransformed."""
    with torch.no_grad():
        fresh_objective = Objective(objective.kind, objective.index, objective.depth)
        value = fresh_objective(m, images) - tv_weight * ref.total_variation(images) - l2_weight * ref.l2_penalty(images)
    return float(value.mean())


def high_frequency_ratio(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share of each image's spectral energy (mean removed) above `cutoff` cycles per pixel: (B,)."""
    x = images - images.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)                           # (B,H,W)
    h, w = images.shape[-2:]
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).sqrt()
    return power[:, f > cutoff].sum(1) / power.sum(dim=(1, 2)).clamp(min=1e-12)


# ------------------------------------------------------------------ layer_activation


def activation_cnn_cases() -> list[Case]:
    cc, en = concept_cnn(), effnet()
    return [
        Case("concept-cnn, 4 concept images, layer features[9] (the last conv, 64×8×8)",
             dict(model=cc, layer=cc.features[9], inputs=concepts(4))),
        Case("concept-cnn, 3 concept images, layer features[4] (a ReLU, 32×32×32)",
             dict(model=cc, layer=cc.features[4], inputs=concepts(3, seed=6))),
        Case("efficientnet-lite0, the 4 photos at 64×64, layer net.blocks[2]",
             dict(model=en, layer=en.net.blocks[2], inputs=photos(64))),
    ]


reference_check("lab05.layer_activation.cnn", "layer_activation",
                "returns the layer's output on concept-cnn and EfficientNet-Lite0, as the reference",
                activation_cnn_cases, ref.layer_activation, rtol=1e-4, atol=1e-5,
                hint="Register a forward hook on `layer`, run model(inputs), keep the hook's `output`.")


def activation_text_cases() -> list[Case]:
    cases = []
    for name, path, depth in (("tiny-bert-sentiment", TINY_FFN, 1), ("minilm-sentiment", MINILM_FFN, 3)):
        m = model(name)
        cases.append(Case(f"{name}, 4 padded sentences as a dict of input_ids and attention_mask, layer "
                          f"{path.format(depth)} (the feed-forward neurons)",
                          dict(model=m, layer=m.get_submodule(path.format(depth)), inputs=text_batch(name))))
    return cases


reference_check("lab05.layer_activation.transformer", "layer_activation",
                "with a dict of keyword inputs: a transformer's feed-forward activations, as the reference",
                activation_text_cases, ref.layer_activation, rtol=1e-4, atol=1e-5,
                hint="When `inputs` is a dict, call model(**inputs).")


class Twice(nn.Module):
    """Applies the same block twice: a hook sees two calls in one forward pass."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
        with torch.no_grad():
            for p in self.block.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)).mean(dim=(2, 3)))


def _with_grad(output, kwargs, weight):
    """Runs in the notebook: the activation and d(Σ weight·activation)/d(inputs)."""
    if not isinstance(output, torch.Tensor):
        return ("not a tensor", type(output).__name__)
    if not output.requires_grad:
        return ("detached", output.detach())
    (grad,) = torch.autograd.grad((output * weight).sum(), kwargs["inputs"])
    return ("ok", output.detach(), grad)


def gradients_flow(fn, case: Case) -> None:
    kw = copy_kwargs(case.kwargs)
    out = ref.layer_activation(kw["model"], kw["layer"], kw["inputs"])
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    x = kw["inputs"].detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((ref.layer_activation(kw["model"], kw["layer"], x) * weight).sum(), x)
    reply = fn.call(dict(kw, inputs=x.detach().clone().requires_grad_(True)),
                    post=functools.partial(_with_grad, weight=weight)).output
    if reply[0] == "not a tensor":
        raise CheckFailed(f"layer_activation should return the layer's output tensor, got {reply[1]}.")
    if reply[0] == "detached":
        raise CheckFailed("layer_activation returned an activation without a gradient path to the inputs: do not "
                          "use torch.no_grad() or .detach() inside it (visualise needs the gradient).")
    assert_close(reply[2], expected, f"d(activation)/d(inputs) on {case.description}", 1e-4, 1e-6,
                 "Return the hook's output itself, connected to the graph.")


def last_call(fn, case: Case) -> None:
    kw = case.kwargs
    if not isinstance(kw["model"], Twice):
        return
    actual = as_tensor(fn(**kw), "layer_activation")
    with torch.no_grad():
        expected = kw["layer"](kw["layer"](kw["inputs"]))
    assert_close(actual, expected, f"layer_activation on {case.description}", 1e-4, 1e-6,
                 "When the layer runs several times in one forward pass, return the output of its LAST call "
                 "(the docstring's convention): let each call overwrite what the hook stored.")


def twice_case() -> list[Case]:
    m = Twice().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    return [Case("a toy model that applies the same block twice in one forward pass",
                 dict(model=m, layer=m.block, inputs=x))]


property_check("lab05.layer_activation.properties", "layer_activation",
               "hook removed (also when the model fails), model untouched; gradients flow to the inputs; a layer run "
               "twice gives its last output",
               lambda: activation_cnn_cases()[:1] + twice_case(),
               all_of(side_effect_free("layer_activation"), gradients_flow, last_call,
                      no_hooks_left_on_error("layer_activation", extra_dim)))

# ------------------------------------------------------------------ make_objective


def _applied(objective, kwargs, model, images):
    """Runs in the notebook: the returned objective's scores on `images` and their input gradient."""
    if not callable(objective):
        return ("not callable", type(objective).__name__)
    x = images.detach().clone().requires_grad_(True)
    scores = objective(model, x)
    if not isinstance(scores, torch.Tensor):
        return ("not a tensor", type(scores).__name__)
    if not scores.requires_grad:
        return ("detached", scores.detach())
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return ("ok", scores.detach(), grad)


def objective_cases() -> list[Case]:
    cc, en = concept_cnn(), effnet()
    g = torch.Generator().manual_seed(7)
    xs, xp = concepts(4, seed=8), photos(64)
    return [
        Case("concept-cnn features[9], channel 5 for all 4 images", dict(
            layer=cc.features[9], channel=5, model=cc, images=xs)),
        Case("concept-cnn features[7], channels [3, 0, 30, 12] (one per image)", dict(
            layer=cc.features[7], channel=torch.tensor([3, 0, 30, 12]), model=cc, images=xs)),
        Case("concept-cnn features[4] (32×32 map), channel 9, neuron at position (x=20, y=5)", dict(
            layer=cc.features[4], channel=9, position=(20, 5), model=cc, images=xs)),
        Case("concept-cnn features[9], a direction (64,) in channel space", dict(
            layer=cc.features[9], direction=torch.randn(64, generator=g), model=cc, images=xs)),
        Case("concept-cnn features[9], one direction per image (4, 64), at position (x=1, y=6)", dict(
            layer=cc.features[9], direction=torch.randn(4, 64, generator=g), position=(1, 6), model=cc, images=xs)),
        Case("efficientnet-lite0 net.blocks[3] on 4 photos (64×64), channels [7, 50, 2, 79]", dict(
            layer=en.net.blocks[3], channel=torch.tensor([7, 50, 2, 79]), model=en, images=xp)),
        Case("efficientnet-lite0 net.blocks[1] (16×16 map), channel 11, neuron at (x=3, y=12)", dict(
            layer=en.net.blocks[1], channel=11, position=(3, 12), model=en, images=xp)),
        Case("efficientnet-lite0 net.blocks[2], a direction (40,)", dict(
            layer=en.net.blocks[2], direction=torch.rand(40, generator=g) - 0.3, model=en, images=xp)),
    ]


def _objective_kwargs(case: Case) -> dict:
    return {k: v for k, v in case.kwargs.items() if k not in ("model", "images")}


def _key_objective(case: Case):
    kw = copy_kwargs(case.kwargs)
    return _applied(ref.make_objective(**_objective_kwargs(Case("", kw))), {}, kw["model"], kw["images"])


def same_objective(fn, case: Case, expected) -> None:
    kw = case.kwargs
    reply = fn.call(_objective_kwargs(case), post=functools.partial(_applied, model=kw["model"],
                                                                    images=kw["images"])).output
    if reply[0] == "not callable":
        raise CheckFailed(f"make_objective should return a function objective(model, images), got {reply[1]}.")
    if reply[0] == "not a tensor":
        raise CheckFailed(f"the objective should return a (B,) tensor of scores, got {reply[1]}.")
    if reply[0] == "detached":
        raise CheckFailed("the objective's scores have no gradient path to the images: no torch.no_grad() or "
                          ".detach() inside (visualise differentiates them).")
    hint = ("channel: mean over space of that channel (an int for all images, or one per image); position (x, y): "
            "only the activation at column x, row y; direction: Σ_c direction[c]·A[c], then the mean over space.")
    assert_close(reply[1], expected[1], f"objective scores on {case.description}", 1e-4, 1e-5, hint)
    assert_close(reply[2], expected[2], f"d(scores)/d(images) on {case.description}", 1e-3, 1e-6, hint)


def _split(cases, keys):
    return [c for c in cases if any(k in c.kwargs for k in keys)]


prepared_check("lab05.make_objective.channel", "make_objective",
               "channel objectives (one channel for all images, or one per image) on concept-cnn and EfficientNet",
               lambda: [c for c in objective_cases() if "channel" in c.kwargs and "position" not in c.kwargs],
               _key_objective, same_objective)

prepared_check("lab05.make_objective.neuron", "make_objective",
               "single-neuron objectives at (x, y) on concept-cnn and EfficientNet",
               lambda: _split(objective_cases(), ("position",)), _key_objective, same_objective)

prepared_check("lab05.make_objective.direction", "make_objective",
               "direction objectives (one direction, or one per image) on concept-cnn and EfficientNet",
               lambda: _split(objective_cases(), ("direction",)), _key_objective, same_objective)


def _applied_twice(objective, kwargs, model, images):
    """Runs in the notebook: scores of the full batch and of each image alone."""
    if not callable(objective):
        return ("not callable", type(objective).__name__)
    with torch.no_grad():
        return ("ok", objective(model, images), [objective(model, images[i:i + 1]) for i in range(len(images))])


def objective_properties(fn, case: Case) -> None:
    kw = case.kwargs
    layer = kw["layer"]
    for bad in (dict(layer=layer), dict(layer=layer, channel=1, direction=torch.ones(64))):
        try:
            fn(**bad)
        except Exception as err:  # noqa: BLE001 - StudentError expected
            if "ValueError" not in str(err):
                raise CheckFailed(f"make_objective({', '.join(k for k in bad if k != 'layer')}) should raise a "
                                  f"ValueError (exactly one of channel and direction), got {err}.") from None
        else:
            raise CheckFailed("make_objective should raise a ValueError unless exactly one of channel and direction "
                              f"is given (called with {sorted(k for k in bad if k != 'layer') or 'neither'}).")
    reply = fn.call(dict(layer=layer, channel=5), post=functools.partial(_applied_twice, model=kw["model"],
                                                                         images=kw["images"]), observe=True)
    check_no_side_effects("make_objective", reply.facts)
    if reply.output[0] != "ok":
        raise CheckFailed(f"make_objective should return a function objective(model, images), got {reply.output[1]}.")
    batch = as_tensor(reply.output[1], "the objective")
    if batch.shape != (len(kw["images"]),):
        raise CheckFailed(f"the objective should return one score per image, shape ({len(kw['images'])},), got "
                          f"{tuple(batch.shape)}.")
    singles = torch.cat([as_tensor(s, "the objective").reshape(-1) for s in reply.output[2]])
    assert_close(batch, singles, "objective on a batch vs each image alone", 1e-4, 1e-5,
                 "Each image's score depends on that image only: average over space, never over the batch.")


property_check("lab05.make_objective.properties", "make_objective",
               "a ValueError unless exactly one of channel / direction; one score per image; the layer left without hooks",
               lambda: objective_cases()[:1], objective_properties)

# ------------------------------------------------------------------ total_variation, l2_penalty


def penalty_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    return [
        Case("3 random RGB images 8×9", dict(images=torch.rand(3, 3, 8, 9, generator=g))),
        Case("2 random one-channel images 5×4, values in [-2, 2]", dict(images=4 * torch.rand(2, 1, 5, 4, generator=g) - 2)),
        Case("4 concept images 64×64", dict(images=concepts(4, seed=12))),
    ]


reference_check("lab05.total_variation.reference", "total_variation",
                "matches the reference total variation (L1, both directions, per image, divided by C·H·W)",
                penalty_cases, ref.total_variation, rtol=1e-4, atol=1e-6,
                hint="TV(x) = (Σ|x[c,i+1,j] − x[c,i,j]| + Σ|x[c,i,j+1] − x[c,i,j]|) / (C·H·W), one value per image.")


def hand_images() -> dict[str, tuple[torch.Tensor, float, float]]:
    """name → (images (1,C,H,W), total variation, l2 penalty with centre 0.5)."""
    checker = ((torch.arange(4)[:, None] + torch.arange(6)[None, :]) % 2).float()[None, None]   # 1×1×4×6
    edge = torch.zeros(1, 2, 3, 5)
    edge[..., 2:] = 0.5                                                      # a vertical edge of height 0.5
    flat = torch.full((1, 3, 4, 4), 0.8)
    return {
        "a 4×6 one-channel checkerboard of 0 and 1": (checker, (3 * 6 + 4 * 5) / 24, 0.25),
        "a 2-channel 3×5 image, 0 left of column 2 and 0.5 from there": (edge, (2 * 3 * 0.5) / 30, (0.25 * 4 + 0) / 10),
        "a constant 0.8 RGB image": (flat, 0.0, 0.09),
    }


def exact_values(task: str, which: int):
    hint = ("TV(x) = (Σ|vertical differences| + Σ|horizontal differences|) / (C·H·W), absolute differences, one "
            "value per image." if task == "total_variation" else
            "L2(x) = mean over C, H, W of (x − centre)², centre = 0.5 by default.")

    def prop(fn, case: Case) -> None:
        for name, values in hand_images().items():
            actual = as_tensor(fn(values[0]), task)
            assert_close(actual, torch.tensor([values[which]]), f"{task} of {name}", 1e-5, 1e-6, hint)
    return prop


def per_image(task: str):
    def prop(fn, case: Case) -> None:
        images = case.kwargs["images"]
        batched = as_tensor(fn(**case.kwargs), task)
        if batched.shape != (len(images),):
            raise CheckFailed(f"{task}: expected one value per image, shape ({len(images)},), got {tuple(batched.shape)}.")
        for i in range(len(images)):
            alone = as_tensor(fn(**dict(case.kwargs, images=images[i:i + 1])), task)
            assert_close(batched[i:i + 1], alone, f"{task}: image {i} in the batch vs alone", 1e-5, 1e-7,
                         "Differences run along H and W only, never across the batch axis.")
    return prop


property_check("lab05.total_variation.properties", "total_variation",
               "exact values on hand-made images; one value per image, independent of the rest of the batch; inputs untouched",
               lambda: penalty_cases()[:2],
               all_of(exact_values("total_variation", 1), per_image("total_variation"),
                      side_effect_free("total_variation")))

reference_check("lab05.l2_penalty.reference", "l2_penalty",
                "matches the reference L2 penalty (mean squared distance from the centre, per image)",
                lambda: penalty_cases() + [Case("3 random RGB images 8×9, centre 0.2",
                                                dict(penalty_cases()[0].kwargs, centre=0.2)),
                                           Case("2 one-channel images, centre -1", dict(penalty_cases()[1].kwargs,
                                                                                        centre=-1.0))],
                ref.l2_penalty, rtol=1e-4, atol=1e-6,
                hint="L2(x) = mean over C, H, W of (x − centre)², one value per image; centre = 0.5 by default.")

property_check("lab05.l2_penalty.properties", "l2_penalty",
               "exact values on hand-made images; one value per image; inputs untouched",
               lambda: penalty_cases()[:2],
               all_of(exact_values("l2_penalty", 2), per_image("l2_penalty"), side_effect_free("l2_penalty")))

# ------------------------------------------------------------------ random_transform


def _transform_images(b=3, size=12, seed=13):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def identity_cases() -> list[Case]:
    x = _transform_images()
    return [
        Case("3 random 12×12 images, default arguments (no jitter, scale 1, angle 0, no padding)",
             dict(images=x, generator=torch.Generator().manual_seed(0))),
        Case("2 concept images 64×64, generator=None and default arguments", dict(images=concepts(2))),
        Case("3 random 12×12 images, pad=3 only", dict(images=x, generator=torch.Generator().manual_seed(0), pad=3)),
        Case("3 random 12×12 images, pad=2, pad_value=0.1, scales=(1, 1), angles=(0, 0)",
             dict(images=x, generator=torch.Generator().manual_seed(0), pad=2, pad_value=0.1, scales=(1.0, 1.0),
                  angles=(0.0, 0.0))),
    ]


def is_identity(fn, case: Case) -> None:
    kw = case.kwargs
    p, value = kw.get("pad", 0), kw.get("pad_value", 0.5)
    expected = F.pad(kw["images"], [p] * 4, value=value)
    assert_close(fn(**kw), expected, f"random_transform on {case.description}", 1e-5, 1e-5,
                 "With no jitter, scale 1 and angle 0 the transform only pads (the default pad is 0): the affine "
                 "grid must then sample every pixel at its own centre (align_corners=False).")


property_check("lab05.random_transform.identity", "random_transform",
               "zero jitter, scale 1 and angle 0 is the identity (after the padding)",
               identity_cases, is_identity)


def _seeded(kw: dict) -> dict:
    kw = dict(kw)
    kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
    return kw


def transform_cases() -> list[Case]:
    x = _transform_images(4, 16)
    return [
        Case("4 random 16×16 images, jitter=3 only, generator seeded 1", dict(images=x, jitter=3, seed=1)),
        Case("4 random 16×16 images, scales=(0.7, 1.3) only, generator seeded 2",
             dict(images=x, scales=(0.7, 1.3), seed=2)),
        Case("4 random 16×16 images, angles=(-40, 40) only, generator seeded 3",
             dict(images=x, angles=(-40.0, 40.0), seed=3)),
        Case("4 random 16×16 images, pad=4, pad_value=0.2, jitter=2, scales=(0.9, 1.1), angles=(-10, 10), seed 4",
             dict(images=x, pad=4, pad_value=0.2, jitter=2, scales=(0.9, 1.1), angles=(-10.0, 10.0), seed=4)),
        Case("2 concept images 64×64, pad=6, jitter=4, scales=(1.05, 1.2), angles=(5, 25), seed 5",
             dict(images=concepts(2), pad=6, jitter=4, scales=(1.05, 1.2), angles=(5.0, 25.0), seed=5)),
    ]


def _transform_and_next(output, kwargs):
    """Runs in the notebook: the output, and the generator's next draws (how much was drawn?)."""
    return output, torch.rand(4, generator=kwargs["generator"])


def _key_transform(case: Case):
    kw = _seeded(copy_kwargs(case.kwargs))
    return _transform_and_next(ref.random_transform(**kw), kw)


def same_transform(fn, case: Case, expected) -> None:
    out, after = fn.call(_seeded(case.kwargs), post=_transform_and_next).output
    assert_close(out, expected[0], f"random_transform on {case.description}", 1e-4, 1e-4,
                 "Pad, then roll image i by (dy, dx) = (shifts[i, 1], shifts[i, 0]), then sample the affine grid "
                 "θ_i = R(a_i)/s_i (bilinear, zeros outside, align_corners=False); draw shifts, scales, angles from "
                 "the generator in that order, one call each, as the docstring shows.")
    if not torch.equal(as_tensor(after, "the generator"), expected[1]):
        raise CheckFailed("random_transform drew a different amount of random numbers from the generator than the "
                          "docstring says: exactly three draws per call (shifts (B, 2), scales (B,), angles (B,)), "
                          "even when a range is empty.")


prepared_check("lab05.random_transform.seeded", "random_transform",
               "with a seeded generator: jitter, scale, rotation and the whole stack as the reference",
               transform_cases, _key_transform, same_transform)


def _grad_of(output, kwargs, weight):
    """Runs in the notebook: d(Σ weight·output)/d(images)."""
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return None
    return torch.autograd.grad((output * weight).sum(), kwargs["images"])[0]


def transform_properties(fn, case: Case) -> None:
    kw = _seeded(case.kwargs)
    same = kw["images"][:1].expand(4, -1, -1, -1).clone()
    out = as_tensor(fn(**dict(_seeded(case.kwargs), images=same)), "random_transform")
    if any(torch.allclose(out[i], out[j]) for i in range(4) for j in range(i)):
        raise CheckFailed("random_transform gave two copies of the same image the same transform: draw the jitter, "
                          "scale and angle once PER IMAGE (shape (B, …)), not once for the batch.")
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(14))
    x = kw["images"].detach().clone().requires_grad_(True)
    expected = torch.autograd.grad((ref.random_transform(**dict(_seeded(case.kwargs), images=x)) * weight).sum(), x)[0]
    reply = fn.call(dict(_seeded(case.kwargs), images=kw["images"].detach().clone().requires_grad_(True)),
                    post=functools.partial(_grad_of, weight=weight)).output
    if reply is None:
        raise CheckFailed("random_transform's output has no gradient path to the images: visualise differentiates "
                          "through it (no torch.no_grad(), .detach() or numpy inside).")
    assert_close(reply, expected, f"d(transform)/d(images) on {case.description}", 1e-4, 1e-5,
                 "The gradient of the transformed image must flow back through grid_sample, roll and pad.")
    side_effect_free("random_transform", rtol=0, atol=0)(fn, Case(case.description, _seeded(case.kwargs)))


property_check("lab05.random_transform.properties", "random_transform",
               "one draw per image; differentiable; inputs untouched; reproducible with the same seed",
               lambda: transform_cases()[3:4], transform_properties)

# ------------------------------------------------------------------ fourier_image


def spectrum(b, h, w, seed, scale=1.0):
    return scale * torch.randn(b, 3, h, w // 2 + 1, 2, generator=torch.Generator().manual_seed(seed))


def fourier_cases() -> list[Case]:
    return [
        Case("a (2, 3, 8, 5, 2) spectrum, size 8, decay 1", dict(spectrum=spectrum(2, 8, 8, 20), size=8)),
        Case("a (1, 3, 6, 6, 2) spectrum, size (6, 10), decay 0.5",
             dict(spectrum=spectrum(1, 6, 10, 21), size=(6, 10), decay=0.5)),
        Case("a (2, 3, 7, 5, 2) spectrum, size (7, 9) (odd), decay 2",
             dict(spectrum=spectrum(2, 7, 9, 22), size=(7, 9), decay=2.0)),
        Case("a (1, 3, 16, 9, 2) spectrum, size 16, decay 0 (no scaling)",
             dict(spectrum=spectrum(1, 16, 16, 23), size=16, decay=0.0)),
        Case("a (1, 3, 64, 33, 2) spectrum, size 64, decay 1", dict(spectrum=spectrum(1, 64, 64, 24, 0.01), size=64)),
        Case("a (2, 3, 10, 4, 2) spectrum, size (10, 6) (taller than wide), decay 1",
             dict(spectrum=spectrum(2, 10, 6, 25), size=(10, 6))),
        Case("a (1, 3, 8, 5, 2) spectrum that is a non-contiguous view (real and imaginary parts stored apart), "
             "size 8, decay 1", dict(spectrum=spectrum(1, 8, 8, 26).permute(4, 0, 1, 2, 3).contiguous()
                                     .permute(1, 2, 3, 4, 0), size=8)),
    ]


reference_check("lab05.fourier_image.reference", "fourier_image",
                "matches the reference image for given spectra (square, rectangular and odd sizes; decay 0, ½, 1, 2)",
                fourier_cases, ref.fourier_image, rtol=1e-4, atol=1e-6,
                hint="scale = 1 / max(f, 1/max(H, W))^decay with f = √(fy² + fx²), fy = fftfreq(H), fx = rfftfreq(W); "
                     "image = irfft2(scale · (real + i·imag), s=(H, W), norm='ortho') / 4.")


def known_spectra() -> list[tuple[str, torch.Tensor, tuple, float, torch.Tensor]]:
    """(description, spectrum, size, decay, expected image)."""
    h, w = 4, 6
    dc = torch.zeros(1, 3, h, w // 2 + 1, 2)
    dc[0, :, 0, 0, 0] = torch.tensor([1.0, -2.0, 0.5])
    # DC: irfft2 ortho of c at (0, 0) is c / √(HW); its scale is max(H, W)^decay
    expected_dc = (torch.tensor([1.0, -2.0, 0.5]) * 6 ** 1.5 / math.sqrt(h * w) / 4)[None, :, None, None].expand(1, 3, h, w)
    wave = torch.zeros(1, 3, h, w // 2 + 1, 2)
    wave[0, :, 0, 1, 0] = 1.0                                                 # fx = 1/6 cycles per pixel
    cols = torch.arange(w, dtype=torch.float32)
    expected_wave = (2 * torch.cos(2 * math.pi * cols / w) / math.sqrt(h * w) * 6 / 4).expand(1, 3, h, w)
    return [("a DC-only spectrum (1, −2, ½ per channel), size (4, 6), decay 1.5", dc, (h, w), 1.5, expected_dc),
            ("one horizontal frequency (fx = 1/6), size (4, 6), decay 1", wave, (h, w), 1.0, expected_wave)]


def known_fourier(fn, case: Case) -> None:
    for description, spec, size, decay, expected in known_spectra():
        assert_close(fn(spectrum=spec, size=size, decay=decay), expected, f"fourier_image of {description}", 1e-4, 1e-6,
                     "The DC term's scale is max(H, W)^decay (frequencies are floored at 1/max(H, W)); irfft2 with "
                     "norm='ortho' divides by √(H·W); then divide by 4.")


def fourier_grad(fn, case: Case) -> None:
    kw = case.kwargs
    weight = torch.randn(1, 3, 6, 10, generator=torch.Generator().manual_seed(25))
    s = kw["spectrum"].detach().clone().requires_grad_(True)
    expected = torch.autograd.grad((ref.fourier_image(s, kw["size"], kw["decay"]) * weight).sum(), s)[0]
    reply = fn.call(dict(kw, spectrum=kw["spectrum"].detach().clone().requires_grad_(True)),
                    post=functools.partial(_grad_of_spectrum, weight=weight)).output
    if reply is None:
        raise CheckFailed("fourier_image's output has no gradient path to the spectrum (visualise optimises it).")
    assert_close(reply, expected, "d(image)/d(spectrum)", 1e-4, 1e-6, "")


def _grad_of_spectrum(output, kwargs, weight):
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return None
    return torch.autograd.grad((output * weight).sum(), kwargs["spectrum"])[0]


property_check("lab05.fourier_image.properties", "fourier_image",
               "exact images of a DC-only and a single-frequency spectrum; differentiable; the spectrum untouched",
               lambda: fourier_cases()[1:2],
               all_of(known_fourier, fourier_grad, side_effect_free("fourier_image")))

# ------------------------------------------------------------------ decorrelate_colours


def colour_cases() -> list[Case]:
    g = torch.Generator().manual_seed(30)
    return [
        Case("2 random (3, 5, 7) images, values N(0, 1)", dict(image=torch.randn(2, 3, 5, 7, generator=g))),
        Case("1 image of large values (N(0, 5²))", dict(image=5 * torch.randn(1, 3, 4, 4, generator=g))),
    ]


reference_check("lab05.decorrelate_colours.reference", "decorrelate_colours",
                "matches the reference (normalised colour matrix, then a sigmoid)",
                colour_cases, ref.decorrelate_colours, rtol=1e-4, atol=1e-6,
                hint="M = COLOUR_CORRELATION_SQRT / (largest column norm); out[:, i] = sigmoid(Σ_j M[i, j] · image[:, j]).")


def known_colours(fn, case: Case) -> None:
    m = ref.COLOUR_CORRELATION_SQRT / ref.COLOUR_CORRELATION_SQRT.norm(dim=0).max()
    basis = torch.eye(3)[:, :, None, None]                                   # 3 one-pixel images: pure R, G, B
    expected = torch.sigmoid(m.T[:, :, None, None])                          # image j → sigmoid(M[:, j])
    assert_close(fn(image=basis), expected, "decorrelate_colours of unit red, green and blue pixels", 1e-5, 1e-6,
                 "A unit colour vector e_j becomes sigmoid(M[:, j]): M's columns have largest norm 1 (divide the "
                 "given matrix by its largest COLUMN norm) and multiply the colour vector from the left.")
    grey = fn(image=torch.zeros(1, 3, 2, 2))
    assert_close(grey, torch.full((1, 3, 2, 2), 0.5), "decorrelate_colours of zeros", 0, 1e-6,
                 "A zero image gives 0.5 everywhere (the sigmoid of 0).")


property_check("lab05.decorrelate_colours.properties", "decorrelate_colours",
               "unit colours map to the sigmoid of the normalised matrix's columns; zero maps to grey; input untouched",
               colour_cases, all_of(known_colours, side_effect_free("decorrelate_colours")))

# ------------------------------------------------------------------ visualise


def _visualised(images, kwargs):
    """Runs in the notebook: the images and how the objective was called."""
    objective = kwargs["objective"]
    return images, objective.calls, objective.shapes[:3], objective.ranges


def _run_visualise(f, kw: dict):
    kw = dict(kw)
    kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
    kw["objective"] = Objective(kw["objective"].kind, kw["objective"].index, kw["objective"].depth)
    return _visualised(f(**kw), kw)


def _student_visualise(fn, case: Case):
    kw = dict(case.kwargs)
    kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
    kw["objective"] = Objective(kw["objective"].kind, kw["objective"].index, kw["objective"].depth)
    images, calls, shapes, ranges = fn.call(kw, post=_visualised).output
    images = as_tensor(images, "visualise")
    b, size = len(kw["objective"].index), kw.get("size", 64)
    if images.shape != (b, 3, size, size):
        raise CheckFailed(f"visualise on {case.description}: expected images of shape {(b, 3, size, size)}, got "
                          f"{tuple(images.shape)}.")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise CheckFailed(f"visualise on {case.description}: the images must lie in [0, 1] (got values from "
                          f"{images.min().item():.3g} to {images.max().item():.3g}): a sigmoid turns the parameters "
                          "into pixels.")
    return images, int(calls), shapes, ranges


def start_cases() -> list[Case]:
    cc = concept_cnn()
    return [
        Case("concept-cnn, class logits [0, 1, 2], 32×32 pixel images, steps=0, seed 40",
             dict(model=cc, objective=Objective("class", [0, 1, 2]), batch=3, size=32, steps=0,
                  parameterisation="pixel", seed=40)),
        Case("concept-cnn, class logits [3, 1], 24×24 Fourier images, steps=0, decay 1.5, seed 41",
             dict(model=cc, objective=Objective("class", [3, 1]), batch=2, size=24, steps=0, decay=1.5, seed=41)),
    ]


def _key_images(case: Case):
    return _run_visualise(ref.visualise, copy_kwargs(case.kwargs))[0]


def same_start(fn, case: Case, expected) -> None:
    images, calls, _, _ = _student_visualise(fn, case)
    if calls:
        raise CheckFailed(f"visualise with steps=0 called the objective {calls} times: it should make no step.")
    assert_close(images, expected, f"visualise's starting image on {case.description}", 1e-4, 1e-5,
                 "Start from 0.01·torch.randn(shape, generator=generator) — shape (B, 3, H, W) for 'pixel' (image = "
                 "sigmoid), (B, 3, H, W//2+1, 2) for 'fft' (image = decorrelate_colours(fourier_image(·, size, decay)))"
                 " — as the first draw from the generator.")


prepared_check("lab05.visualise.start", "visualise",
               "with steps=0 returns the starting image of both parameterisations, drawn from the generator",
               start_cases, _key_images, same_start)


def few_step_cases() -> list[Case]:
    cc, en = concept_cnn(), effnet()
    return [
        Case("concept-cnn, class logits [0, 2], 32×32 pixel images, 3 steps, lr 0.1, tv_weight 2, seed 42",
             dict(model=cc, objective=Objective("class", [0, 2]), batch=2, size=32, steps=3, lr=0.1,
                  parameterisation="pixel", tv_weight=2.0, seed=42)),
        Case("concept-cnn, channels [5, 9, 33] of features[:10], 32×32 Fourier images, 4 steps, l2_weight 3, seed 43",
             dict(model=cc, objective=Objective("concept", [5, 9, 33], 10), batch=3, size=32, steps=4,
                  l2_weight=3.0, seed=43)),
        Case("efficientnet-lite0, channels [4, 17] of blocks[:2], 32×32 Fourier images, 3 steps, lr 0.08, decay 0.5, "
             "seed 44", dict(model=en, objective=Objective("effnet", [4, 17], 2), batch=2, size=32, steps=3, lr=0.08,
                             decay=0.5, seed=44)),
    ]


def _value_of(case: Case, images) -> float:
    kw = case.kwargs
    return evaluate(kw["objective"], kw["model"], images, kw.get("tv_weight", 0.0), kw.get("l2_weight", 0.0))


def _key_few_steps(case: Case):
    start = _run_visualise(ref.visualise, dict(copy_kwargs(case.kwargs), steps=0))[0]
    images = _run_visualise(ref.visualise, copy_kwargs(case.kwargs))[0]
    return _value_of(case, start), _value_of(case, images)


def same_few_steps(fn, case: Case, expected) -> None:
    images, calls, _, _ = _student_visualise(fn, case)
    steps = case.kwargs["steps"]
    if calls != steps:
        raise CheckFailed(f"visualise with steps={steps} called the objective {calls} times: one batched call per "
                          "step (all images at once).")
    start, key = expected
    value = _value_of(case, images)
    if abs(value - key) > 0.02 * abs(key - start) + 1e-4:
        raise CheckFailed(
            f"visualise on {case.description}: the objective (score − tv_weight·TV − l2_weight·L2, mean over the "
            f"images) went from {start:.4g} to {value:.4g} in {steps} steps; the reference reaches {key:.4g} from the same "
            "start. Maximise it (loss = −objective), one Adam step per iteration with the given lr, penalties on the "
            "untransformed image, weighted as given.")


prepared_check("lab05.visualise.few_steps", "visualise",
               "a few Adam steps without transforms reach the reference's objective value (pixel and Fourier, penalties)",
               few_step_cases, _key_few_steps, same_few_steps)

SMALL_TRANSFORMS = dict(pad=4, jitter=3, scales=(0.9, 1.1), angles=(-10.0, 10.0))


def outcome_cases() -> list[Case]:
    cc, en = concept_cnn(), effnet()
    return [
        Case("concept-cnn, the 4 class logits, 48×48 Fourier images with transforms, 64 steps, lr 0.1, seed 50",
             dict(model=cc, objective=Objective("class", [0, 1, 2, 3]), batch=4, size=48, steps=64, lr=0.1,
                  transforms=SMALL_TRANSFORMS, seed=50)),
        Case("efficientnet-lite0, channels [6, 30] of blocks[:3], 40×40 Fourier images with transforms, 16 steps, seed 52",
             dict(model=en, objective=Objective("effnet", [6, 30], 3), batch=2, size=40, steps=16,
                  transforms=dict(pad=3, jitter=2, scales=(0.95, 1.05), angles=(-5.0, 5.0)), seed=52)),
    ]


REFERENCE_SEEDS = 3  # the reference gain is the median over this many seeds (random transforms make it vary)


def _key_outcome(case: Case):
    """(start value, median reference gain): the start with the case's seed, the gain's median over seeds."""
    kw = copy_kwargs(case.kwargs)
    start = _value_of(case, _run_visualise(ref.visualise, dict(kw, steps=0))[0])
    gains = []
    for seed in range(kw["seed"], kw["seed"] + REFERENCE_SEEDS):
        begin = _value_of(case, _run_visualise(ref.visualise, dict(kw, seed=seed, steps=0))[0])
        gains.append(_value_of(case, _run_visualise(ref.visualise, dict(kw, seed=seed))[0]) - begin)
    return start, float(torch.tensor(gains).median())


def reaches_objective(fn, case: Case, expected) -> None:
    images, calls, shapes, ranges = _student_visualise(fn, case)
    kw = case.kwargs
    pad = kw["transforms"]["pad"]
    want = (len(kw["objective"].index), 3, kw["size"] + 2 * pad, kw["size"] + 2 * pad)
    if shapes and tuple(shapes[0]) != want:
        raise CheckFailed(f"visualise with transforms (pad={pad}) gave the objective images of shape "
                          f"{tuple(shapes[0])}; expected {want}: apply random_transform(image, generator, **transforms) "
                          "before the objective at every step.")
    start, gain = expected
    value = _value_of(case, images)
    if not value - start >= 0.8 * gain:
        raise CheckFailed(
            f"visualise on {case.description}: the objective rose from {start:.4g} to {value:.4g}, a gain of "
            f"{value - start:.4g}; the reference gains {gain:.4g} in the same number of steps (median over "
            f"{REFERENCE_SEEDS} seeds) and at least 80 % of that is required. Check the sign (maximise the objective), "
            "the learning rate, and that every step updates the parameters.")


prepared_check("lab05.visualise.concept_cnn", "visualise",
               "reaches ≥ 80 % of the reference's gain on concept-cnn's class logits, with transforms",
               lambda: outcome_cases()[:1], _key_outcome, reaches_objective)

prepared_check("lab05.visualise.efficientnet", "visualise",
               "reaches ≥ 80 % of the reference's gain on an EfficientNet-Lite0 channel objective at 40×40",
               lambda: outcome_cases()[1:], _key_outcome, reaches_objective)


def frequency_cases() -> list[Case]:
    base = dict(model=concept_cnn(), objective=Objective("class", [0, 1, 2, 3]), batch=4, size=48, steps=32, lr=0.1,
                seed=53)
    return [Case("concept-cnn, the 4 class logits, 48×48, 32 steps, lr 0.1: pixel without transforms vs Fourier with "
                 "transforms", base)]


def _key_frequencies(case: Case):
    kw = copy_kwargs(case.kwargs)
    out = {}
    for name, extra in (("pixel", dict(parameterisation="pixel")),
                        ("fft", dict(parameterisation="fft", transforms=SMALL_TRANSFORMS))):
        start = _run_visualise(ref.visualise, dict(kw, steps=0, **extra))[0]
        images = _run_visualise(ref.visualise, dict(kw, **extra))[0]
        out[name] = (_value_of(case, start), _value_of(case, images) - _value_of(case, start),
                     float(high_frequency_ratio(images).mean()))
    return out


def fewer_high_frequencies(fn, case: Case, expected) -> None:
    kw = case.kwargs
    got = {}
    for name, extra in (("pixel", dict(parameterisation="pixel")),
                        ("fft", dict(parameterisation="fft", transforms=SMALL_TRANSFORMS))):
        images = _student_visualise(fn, Case(case.description, dict(kw, **extra)))[0]
        start, gain, _ = expected[name]
        got[name] = (_value_of(case, images) - start, float(high_frequency_ratio(images).mean()))
        need = 0.8 if name == "pixel" else 0.5   # the transformed Fourier runs vary more from path to path
        if not got[name][0] >= need * gain:
            raise CheckFailed(f"visualise ({name}) on {case.description}: the objective gained {got[name][0]:.4g}; the "
                              f"reference gains {gain:.4g} (at least {need:.0%} of that is required).")
    if not got["fft"][1] <= 0.5 * got["pixel"][1]:
        raise CheckFailed(
            f"visualise on {case.description}: the share of spectral energy above 0.25 cycles/pixel is "
            f"{got['fft'][1]:.3f} for the Fourier images and {got['pixel'][1]:.3f} for the pixel images (reference: "
            f"{expected['fft'][2]:.3f} vs {expected['pixel'][2]:.3f}); Fourier images with 1/f scaling should have at "
            "most half. Build the 'fft' image as decorrelate_colours(fourier_image(spectrum, size, decay)).")


prepared_check("lab05.visualise.frequencies", "visualise",
               "Fourier + decorrelated + transformed images have far less high-frequency energy than pixel images",
               frequency_cases, _key_frequencies, fewer_high_frequencies)


def visualise_properties(fn, case: Case) -> None:
    kw = dict(case.kwargs)
    kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
    kw["objective"] = Objective(kw["objective"].kind, kw["objective"].index, kw["objective"].depth)
    reply = fn.call(kw, post=_visualised, observe=True)
    check_no_side_effects("visualise", reply.facts)
    _, calls, shapes, ranges = reply.output
    if calls != kw["steps"]:
        raise CheckFailed(f"visualise with steps={kw['steps']} called the objective {calls} times: one batched call "
                          "per step (all images at once).")
    want = (len(kw["objective"].index), 3, kw["size"] + 2 * kw["transforms"]["pad"], kw["size"] + 2 * kw["transforms"]["pad"])
    if tuple(shapes[0]) != want:
        raise CheckFailed(f"visualise gave the objective images of shape {tuple(shapes[0])}; expected {want} (the "
                          "transformed, padded image).")
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if low < 0 or high > 1:
        raise CheckFailed(f"the objective saw values from {low:.3g} to {high:.3g}: images must be in [0, 1] "
                          "(sigmoid) before the transforms.")


property_check("lab05.visualise.properties", "visualise",
               "model untouched (no .grad, no hooks, eval mode); one batched objective call per step on transformed images",
               lambda: [Case("concept-cnn, class logits [1, 3], 24×24, 5 steps with transforms, pixel",
                             dict(model=concept_cnn(), objective=Objective("class", [1, 3]), batch=2, size=24, steps=5,
                                  parameterisation="pixel", transforms=dict(pad=2, jitter=1, scales=(0.9, 1.1),
                                                                            angles=(-5.0, 5.0)), seed=54))],
               visualise_properties)

# ------------------------------------------------------------------ top_activating_examples


def examples_cases() -> list[Case]:
    cc = concept_cnn()
    data = concepts(150, seed=60)
    return [
        Case("concept-cnn features[9], channel 7, 150 concept images, k=8, batch_size=64",
             dict(model=cc, layer=cc.features[9], channel=7, images=data, k=8, batch_size=64)),
        Case("concept-cnn features[4], channel 21, 150 concept images, k=5, batch_size=40",
             dict(model=cc, layer=cc.features[4], channel=21, images=data, k=5, batch_size=40)),
    ]


def effnet_examples_cases() -> list[Case]:
    en = effnet()
    data = crops()
    return [Case(f"efficientnet-lite0 net.blocks[3], channel {c}, {len(data)} photo crops (48×48), k=6, batch_size=16",
                 dict(model=en, layer=en.net.blocks[3], channel=c, images=data, k=6, batch_size=16)) for c in (12, 55)]


def same_top(fn, case: Case, expected) -> None:
    out = fn(**case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed("top_activating_examples should return a tuple (values, indices).")
    values, indices = as_tensor(out[0], "values"), as_tensor(out[1], "indices")
    k = case.kwargs["k"]
    if values.shape != (k,) or indices.shape != (k,):
        raise CheckFailed(f"top_activating_examples should return values and indices of shape ({k},), got "
                          f"{tuple(values.shape)} and {tuple(indices.shape)}.")
    if not torch.equal(indices.long(), expected[1]):
        raise CheckFailed(f"top_activating_examples on {case.description}: indices {indices.tolist()}, expected "
                          f"{expected[1].tolist()}. Score each image by the mean over space of the channel's map, over "
                          "ALL images (every batch), sorted in decreasing order.")
    assert_close(values, expected[0], f"top-k values on {case.description}", 1e-4, 1e-5,
                 "The value is the mean over space of the channel's activation map.")


prepared_check("lab05.top_activating_examples.cnn", "top_activating_examples",
               "the exact top-k over all batches of 150 concept images, as the reference",
               examples_cases, lambda case: ref.top_activating_examples(**copy_kwargs(case.kwargs)), same_top)

prepared_check("lab05.top_activating_examples.efficientnet", "top_activating_examples",
               "the exact top-k over photo crops on EfficientNet-Lite0, as the reference",
               effnet_examples_cases, lambda case: ref.top_activating_examples(**copy_kwargs(case.kwargs)), same_top)


def tie_case() -> list[Case]:
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])[:, :, None, None])
        conv.bias.zero_()
    toy = nn.Sequential(conv, nn.Flatten()).eval()
    levels = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1, 0.9, 0.5, 0.3, 0.9, 0.0, 0.5])
    images = levels[:, None, None, None].expand(-1, 3, 4, 4).clone()
    return [Case("a 1×1-conv toy model, 11 flat images, four tied at the top and three tied next, k=6, batch_size=4",
                 dict(model=toy, layer=conv, channel=0, images=images, k=6, batch_size=4))]


def ties_and_batches(fn, case: Case) -> None:
    kw = case.kwargs
    reply = fn.call(dict(kw), observe=True)
    check_no_side_effects("top_activating_examples", reply.facts)
    out = reply.output
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed("top_activating_examples should return a tuple (values, indices).")
    indices = as_tensor(out[1], "indices").long()
    if indices.tolist() != [1, 3, 5, 8, 2, 6]:
        raise CheckFailed(f"top_activating_examples with tied scores returned indices {indices.tolist()}; expected "
                          "[1, 3, 5, 8, 2, 6]: equal scores keep the lower index first (a stable sort, "
                          "torch.sort(..., descending=True, stable=True)).")
    _, calls, rows = (lambda r: (r[0], int(r[1]), int(r[2])))(fn.call(
        dict(kw, model=ForwardCounter(kw["model"]).eval()), post=_counted_examples).output)
    if calls != 3 or rows > 4:
        raise CheckFailed(f"top_activating_examples made {calls} forward passes of up to {rows} images for 11 images "
                          "with batch_size=4: expected 3 passes of at most 4 images.")


def _counted_examples(output, kwargs):
    return output, kwargs["model"].calls, kwargs["model"].rows


property_check("lab05.top_activating_examples.properties", "top_activating_examples",
               "ties broken by the lower index; batches of batch_size images; no gradients; model and images untouched",
               tie_case, all_of(ties_and_batches, no_graph("top_activating_examples")))

# ------------------------------------------------------------------ top_activating_tokens

TOKEN_SENTENCES = list(SENTENCES) + ["great", "i hated every minute of this awful boring film and its ending"]


def token_cases(name: str) -> list[Case]:
    m = model(name)
    path, depth, neurons = (TINY_FFN, 1, (54, 79)) if name == "tiny-bert-sentiment" else (MINILM_FFN, 2, (39, 72))
    layer = m.get_submodule(path.format(depth))
    return [
        Case(f"{name} {path.format(depth)}, neuron {neurons[0]}, 6 sentences of different lengths, k=5",
             dict(model=m, layer=layer, neuron=neurons[0], sentences=TOKEN_SENTENCES, k=5)),
        Case(f"{name} {path.format(depth)}, neuron {neurons[1]}, 6 sentences, k=7, exclude_special=False",
             dict(model=m, layer=layer, neuron=neurons[1], sentences=TOKEN_SENTENCES, k=7, exclude_special=False)),
    ]


def same_tokens(fn, case: Case, expected) -> None:
    out = fn(**case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CheckFailed("top_activating_tokens should return a tuple (values, sentence_index, position).")
    values, sent, pos = (as_tensor(o, what) for o, what in zip(out, ("values", "sentence_index", "position")))
    k = case.kwargs["k"]
    if not values.shape == sent.shape == pos.shape == (k,):
        raise CheckFailed(f"top_activating_tokens should return three tensors of shape ({k},), got "
                          f"{tuple(values.shape)}, {tuple(sent.shape)}, {tuple(pos.shape)}.")
    if ((sent - sent.round()).abs() > 0).any() or ((pos - pos.round()).abs() > 0).any():
        raise CheckFailed(f"top_activating_tokens on {case.description}: sentence_index and position must be whole "
                          f"numbers (indices), got {sent.tolist()} and {pos.tolist()}. Integer division: order // T.")
    got = list(zip(sent.long().tolist(), pos.long().tolist()))
    want = list(zip(expected[1].tolist(), expected[2].tolist()))
    if got != want:
        raise CheckFailed(
            f"top_activating_tokens on {case.description}: (sentence, position) pairs {got}, expected {want}. "
            "Encode all sentences with model.encode, never pick padding (attention_mask 0), leave out [CLS] and [SEP] "
            "when exclude_special=True, and sort all remaining tokens by activation (stable, decreasing).")
    assert_close(values, expected[0], f"top-k activations on {case.description}", 1e-4, 1e-5,
                 "The value is the layer's output at that token for that neuron.")


prepared_check("lab05.top_activating_tokens.tiny_bert", "top_activating_tokens",
               "the top tokens of two feed-forward neurons of tiny-bert-sentiment (padding and specials excluded)",
               lambda: token_cases("tiny-bert-sentiment"),
               lambda case: ref.top_activating_tokens(**copy_kwargs(case.kwargs)), same_tokens)

prepared_check("lab05.top_activating_tokens.minilm", "top_activating_tokens",
               "the top tokens of two feed-forward neurons of minilm-sentiment",
               lambda: token_cases("minilm-sentiment"),
               lambda case: ref.top_activating_tokens(**copy_kwargs(case.kwargs)), same_tokens)


def tokens_properties(fn, case: Case) -> None:
    kw = case.kwargs
    reply = fn.call(dict(kw), observe=True)
    check_no_side_effects("top_activating_tokens", reply.facts)
    m = kw["model"]
    batch = m.encode(kw["sentences"])
    values, sent, pos = (as_tensor(o, "top_activating_tokens") for o in reply.output)
    ids = batch["input_ids"][sent.long(), pos.long()]
    if (batch["attention_mask"][sent.long(), pos.long()] == 0).any():
        raise CheckFailed("top_activating_tokens picked a padding position: exclude attention_mask == 0.")
    if ((ids == m.tokenizer.cls_token_id) | (ids == m.tokenizer.sep_token_id)).any():
        raise CheckFailed("top_activating_tokens picked [CLS] or [SEP] although exclude_special=True (the default).")
    if not (values[1:] <= values[:-1]).all():
        raise CheckFailed("top_activating_tokens: the values must be in decreasing order.")


property_check("lab05.top_activating_tokens.properties", "top_activating_tokens",
               "never padding, no [CLS]/[SEP] by default, decreasing values; no gradients; the model untouched",
               lambda: [Case(c.description.replace("k=5", "k=20"), dict(c.kwargs, k=20))
                        for c in token_cases("tiny-bert-sentiment")[:1] + token_cases("minilm-sentiment")[:1]],
               all_of(tokens_properties, no_graph("top_activating_tokens")))
