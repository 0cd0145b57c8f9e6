"""Hidden-test checks of Lab 2 (class activation maps: CAM, Grad-CAM, Guided Grad-CAM, localisation).

The map methods are compared with the answer key on MNIST CNNs, the concept CNN and
EfficientNet-Lite0, and tested for properties any correct version has: non-negative maps of the
input's spatial size, CAM = Grad-CAM up to the positive scale h·w on a GAP network, different
classes give different maps, batch = per example, no side effects. The localisation scores are
compared with the answer key and with values known in closed form.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import torch
from torch import nn

from grader.answers import lab02 as ref
from grader.checks import Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, property_check, reference_check
from grader.checks.properties import batch_equals_single, check_no_side_effects, no_hooks_left_on_error, side_effect_free
from grader.fixtures import mnist_batch, model
from xailab.datasets.photos import load_photo

# ------------------------------------------------------------------ inputs


def fresh(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Detached copies: a function that edits its inputs in place cannot spoil a cached batch."""
    return tuple(t.detach().clone() for t in tensors)


@lru_cache(maxsize=None)
def _concept_batch(n: int, seed: int):
    from xailab.datasets.concepts import make_concept_dataset

    data = make_concept_dataset(n, seed=seed)
    return data["images"], data["labels"], data["masks"]["target"]


def concept_batch(n: int = 4, seed: int = 5):
    """Concept images, labels and target masks."""
    return fresh(*_concept_batch(n, seed))


def _gap_case(description: str, name: str, inputs, target) -> Case:
    m = model(name)
    features, classifier = ref.gap_layers(m)
    return Case(description, dict(model=m, inputs=inputs, target=target, features=features,
                                  classifier=classifier))


def cam_cnn_cases() -> list[Case]:
    x, y = fresh(*mnist_batch(4))
    xd, yd = fresh(*mnist_batch(3, decoy=True))
    xc, yc, _ = concept_batch(4)
    return [
        _gap_case("mnist-cnn, 4 digits, their labels", "mnist-cnn", x, y),
        _gap_case("mnist-cnn, 4 digits, class 3 for all", "mnist-cnn", x, 3),
        _gap_case("decoy-mnist-cnn, 3 decoy digits", "decoy-mnist-cnn", xd, yd),
        _gap_case("concept-cnn, 4 concept images (64×64 RGB), their labels", "concept-cnn", xc, yc),
    ]


@lru_cache(maxsize=None)
def _photos(size: int) -> torch.Tensor:
    return torch.stack([load_photo("chelsea", size=size), load_photo("coffee", size=size)])


def photos(size: int = 160) -> torch.Tensor:
    """The chelsea and coffee photos, (2, 3, size, size)."""
    return _photos(size).clone()


def cam_photo_cases() -> list[Case]:
    return [_gap_case("efficientnet-lite0 on the chelsea and coffee photos (160×160), "
                      "each for the other photo's class (967 espresso, 285 Egyptian cat)",
                      "efficientnet-lite0", photos(), torch.tensor([967, 285]))]


class SharedBlockCNN(nn.Module):
    """stem → `block` → the same `block` again (shared weights, as a reused ReLU in a ResNet) → global
    average pooling → `classifier`. A hook on `block` fires twice per forward pass; the feature map
    the classifier sees is its second (last) output."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU())
        self.pool, self.flatten, self.classifier = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.block(self.block(torch.relu(self.stem(x)))))))


class FailingCNN(SharedBlockCNN):
    """SharedBlockCNN whose forward pass raises after the hooked block has run (an error mid-way)."""

    def forward(self, x):
        self.block(self.block(torch.relu(self.stem(x))))
        raise RuntimeError("this model fails after its feature block")


def failing_kwargs(case: Case) -> dict:
    """The case's arguments with a model whose forward pass raises after the hooked layer ran."""
    m = FailingCNN().eval()
    kw = dict(case.kwargs, model=m, inputs=fresh(*mnist_batch(2))[0], target=1)
    for name in ("features", "layer"):
        if name in kw:
            kw[name] = m.block
    if "classifier" in kw:
        kw["classifier"] = m.classifier
    return kw


def shared_block_case(kind: str) -> Case:
    """On SharedBlockCNN: a CAM case (features, classifier) or a Grad-CAM case (layer)."""
    x, y = fresh(*mnist_batch(3))
    m = SharedBlockCNN().eval()
    layers = dict(features=m.block, classifier=m.classifier) if kind == "cam" else dict(layer=m.block)
    return Case("a CNN whose hooked block runs twice per forward pass (shared weights; the last output is the "
                "feature map), 3 digits", dict(model=m, inputs=x, target=y, **layers))


def frozen(m: nn.Module) -> nn.Module:
    """A copy of `m` whose parameters do not require grad (a frozen backbone)."""
    m = copy.deepcopy(m)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def frozen_case() -> Case:
    x, y = fresh(*mnist_batch(4))
    m = frozen(model("mnist-cnn"))
    return Case("mnist-cnn with frozen parameters (requires_grad=False), 4 digits, layer = the last feature map",
                dict(model=m, inputs=x, target=y, layer=m.features))


def as_layer_case(case: Case, layer=None, what: str = "the last feature map") -> Case:
    kw = {k: v for k, v in case.kwargs.items() if k not in ("features", "classifier")}
    return Case(f"{case.description}, layer = {what}", dict(kw, layer=layer or case.kwargs["features"]))


def grad_cam_cnn_cases() -> list[Case]:
    c = cam_cnn_cases()
    mnist_mid = c[0].kwargs["model"].features[6]
    concept_mid = c[3].kwargs["model"].features[5]
    return [as_layer_case(c[0]), as_layer_case(c[1]), as_layer_case(c[2]), as_layer_case(c[3]),
            as_layer_case(c[0], mnist_mid, "features[6] (14×14)"),
            as_layer_case(c[3], concept_mid, "features[5] (16×16)")]


def grad_cam_photo_cases() -> list[Case]:
    effnet = model("efficientnet-lite0")
    chelsea = photos()[:1]
    return [
        Case("efficientnet-lite0 on the chelsea photo (160×160), class 967 (espresso), layer = net.bn2 (5×5)",
             dict(model=effnet, inputs=chelsea, target=967, layer=effnet.net.bn2)),
        Case("efficientnet-lite0 on the chelsea photo (160×160), class 285, layer = net.blocks[3] (10×10)",
             dict(model=effnet, inputs=chelsea, target=285, layer=effnet.net.blocks[3])),
    ]


# ------------------------------------------------------------------ shared properties of maps


def map_shape_and_sign(task: str, channels: bool = False):
    """(B,H,W) — or (B,C,H,W) with `channels` — with the input's spatial size; non-negative, finite."""

    def prop(fn, case: Case) -> None:
        x = case.kwargs["inputs"]
        out = as_tensor(fn(**case.kwargs), task)
        expected = tuple(x.shape) if channels else (x.shape[0], *x.shape[2:])
        if tuple(out.shape) != expected:
            raise CheckFailed(f"{task} on {case.description}: expected shape {expected}, got "
                              f"{tuple(out.shape)}. Upsample the map to the input's height and width "
                              "(bilinear, align_corners=False).")
        if not torch.isfinite(out).all():
            raise CheckFailed(f"{task} on {case.description}: the map contains NaN or inf.")
        if not channels and (out < 0).any():
            raise CheckFailed(f"{task} on {case.description}: the map has negative values "
                              f"(min {out.min().item():.3g}); apply the ReLU to Σ_k w_k A_k.")
        if out.abs().max() == 0:
            raise CheckFailed(f"{task} on {case.description}: the map is zero everywhere.")

    return prop


def class_matters(task: str):
    """Maps for the case's target and for the next class differ (the method is class-discriminative)."""

    def prop(fn, case: Case) -> None:
        kw = case.kwargs
        with torch.no_grad():
            n_classes = kw["model"](kw["inputs"][:1]).shape[1]
        other = (torch.as_tensor(kw["target"]) + 1) % n_classes
        first = as_tensor(fn(**kw), task)
        second = as_tensor(fn(**dict(kw, target=other)), task)
        scale = first.abs().max().clamp(min=1e-12)
        if first.shape == second.shape and ((first - second).abs().max() / scale) < 1e-3:
            raise CheckFailed(f"{task} on {case.description}: the maps for target + 1 equal the maps for the "
                              "target. The weights must come from the target class's score.")

    return prop


def cam_is_scaled_grad_cam(fn, case: Case) -> None:
    """On a GAP → linear net at the last feature map, Grad-CAM = CAM / (h·w)."""
    kw = case.kwargs
    stored = []
    handle = kw["features"].register_forward_hook(lambda m, i, out: stored.append(out.shape))
    with torch.no_grad():
        kw["model"](kw["inputs"])
    handle.remove()
    h, w = stored[-1][-2:]
    actual = as_tensor(fn(model=kw["model"], inputs=kw["inputs"].clone(), target=kw["target"],
                          layer=kw["features"]), "grad_cam")
    expected = ref.cam(**copy_kwargs(kw)) / (h * w)
    assert_close(actual, expected, f"grad_cam at the last feature map vs CAM / {h * w} on {case.description}",
                 1e-3, 1e-4 * expected.abs().max().item(),
                 "On a GAP → linear network the Grad-CAM weights are the classifier weights divided by h·w; "
                 "average the gradients over the spatial axes (2, 3) only, and use the pre-softmax score.")


# ------------------------------------------------------------------ CAM

reference_check("lab02.cam.cnn", "cam",
                "matches reference CAM on the MNIST CNNs, the concept CNN and a CNN whose feature block runs twice",
                lambda: cam_cnn_cases() + [shared_block_case("cam")], ref.cam, rtol=1e-4, atol=1e-4,
                hint="CAM = ReLU(Σ_k w_ck A_k) with w_c the classifier row of the target class (no bias), "
                     "upsampled bilinearly (align_corners=False) to the input size, not normalised; A = the last "
                     "output of `features` in the forward pass.")

reference_check("lab02.cam.efficientnet", "cam",
                "matches reference CAM on EfficientNet-Lite0 (two real photos, per-example classes)",
                cam_photo_cases, ref.cam, rtol=1e-3, atol=1e-3,
                hint="The feature map is the output of `features` (model.net.bn2), the weights the rows of "
                     "`classifier` (model.net.classifier).")

property_check("lab02.cam.properties", "cam",
               "non-negative maps of the input's size; class-discriminative; batch = per example; "
               "model and inputs untouched, no hook left even when the model raises",
               lambda: cam_cnn_cases()[:1] + cam_cnn_cases()[3:],
               all_of(map_shape_and_sign("cam"), class_matters("cam"),
                      batch_equals_single("cam", 1e-4, 1e-4), side_effect_free("cam"),
                      no_hooks_left_on_error("cam", failing_kwargs)))

# ------------------------------------------------------------------ Grad-CAM

reference_check("lab02.grad_cam.cnn", "grad_cam",
                "matches reference Grad-CAM on the MNIST CNNs and the concept CNN (last and middle layers), "
                "a model with frozen parameters and a CNN whose hooked block runs twice",
                lambda: grad_cam_cnn_cases() + [frozen_case(), shared_block_case("grad_cam")], ref.grad_cam,
                rtol=1e-3, atol=1e-5,
                hint="Weights = spatial mean of ∂(pre-softmax target score)/∂A; map = ReLU(Σ_k w_k A_k), "
                     "upsampled bilinearly (align_corners=False) to the input size. A = the layer's last output "
                     "in the forward pass; differentiate with torch.autograd.grad, which also works when the "
                     "model's parameters do not require grad.")

reference_check("lab02.grad_cam.efficientnet", "grad_cam",
                "matches reference Grad-CAM on EfficientNet-Lite0 at two layers",
                grad_cam_photo_cases, ref.grad_cam, rtol=1e-3, atol=1e-6,
                hint="Take the gradient with respect to the layer's OUTPUT feature map (a forward hook), "
                     "not with respect to the input.")

property_check("lab02.grad_cam.properties", "grad_cam",
               "non-negative maps of the input's size; class-discriminative; batch = per example; "
               "hooks removed (also when the model raises), model and inputs untouched",
               lambda: [as_layer_case(c) for c in cam_cnn_cases()[:1] + cam_cnn_cases()[3:]],
               all_of(map_shape_and_sign("grad_cam"), class_matters("grad_cam"),
                      batch_equals_single("grad_cam", 1e-3, 1e-6), side_effect_free("grad_cam"),
                      no_hooks_left_on_error("grad_cam", failing_kwargs)))

property_check("lab02.grad_cam.cam_equivalence", "grad_cam",
               "equals CAM / (h·w) at the last feature map of GAP → linear networks",
               lambda: cam_cnn_cases()[1:] + cam_photo_cases(), cam_is_scaled_grad_cam)

# ------------------------------------------------------------------ Guided Grad-CAM


def guided_cases() -> list[Case]:
    c = grad_cam_cnn_cases()
    return [c[0], c[1], c[3], c[4]]


reference_check("lab02.guided_grad_cam.cnn", "guided_grad_cam",
                "matches reference Guided Grad-CAM on the MNIST CNN and the concept CNN",
                guided_cases, ref.guided_grad_cam, rtol=1e-3, atol=1e-7,
                hint="Guided Grad-CAM = guided backpropagation (B,C,H,W) × the upsampled Grad-CAM map "
                     "(B,1,H,W), elementwise.")

property_check("lab02.guided_grad_cam.properties", "guided_grad_cam",
               "the input's shape; batch = per example; hooks removed, model and inputs untouched",
               lambda: guided_cases()[:1],
               all_of(map_shape_and_sign("guided_grad_cam", channels=True),
                      batch_equals_single("guided_grad_cam", 1e-3, 1e-7),
                      side_effect_free("guided_grad_cam")))

# ------------------------------------------------------------------ localisation scores


def random_maps(b: int, h: int, w: int, seed: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous maps (no ties) and blob masks of different sizes, H ≠ W."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(b, h, w, generator=g)
    maps = maps if signed else maps.abs()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy, cx = torch.randint(0, h, (b, 1, 1), generator=g), torch.randint(0, w, (b, 1, 1), generator=g)
    r = torch.randint(2, 6, (b, 1, 1), generator=g)
    masks = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    # put the peak inside the mask for every other example, so hits and misses both occur
    peak = maps.flatten(1).abs().max(1).values[:, None, None] + 1.0
    centre = (yy == cy) & (xx == cx)
    maps = torch.where(centre & (torch.arange(b)[:, None, None] % 2 == 0), peak, maps)
    return maps, masks


@lru_cache(maxsize=None)
def _concept_grad_cam(n: int):
    x, y, masks = concept_batch(n, seed=6)
    m = model("concept-cnn")
    return ref.grad_cam(m, x, y, m.features), masks


@lru_cache(maxsize=None)
def _decoy_grad_cam(n: int):
    from xailab.datasets.mnist import load_decoy_mnist

    x, y, masks = load_decoy_mnist("test")
    m = model("decoy-mnist-cnn")
    return ref.grad_cam(m, x[:n], y[:n], m.features[6]), masks[:n]


def concept_grad_cam(n: int = 12):
    """Reference Grad-CAM maps of concept-cnn on concept images, and the target masks."""
    return fresh(*_concept_grad_cam(n))


def decoy_grad_cam(n: int = 12):
    """Reference Grad-CAM maps of decoy-mnist-cnn (middle layer) on Decoy MNIST test digits, and the patch masks."""
    return fresh(*_decoy_grad_cam(n))


def localisation_cases(signed: bool) -> list[Case]:
    maps, masks = random_maps(8, 12, 20, seed=3, signed=signed)
    cmaps, cmasks = concept_grad_cam()
    dmaps, dmasks = decoy_grad_cam()
    kind = "signed" if signed else "non-negative"
    return [
        Case(f"8 random {kind} 12×20 maps with disc masks", dict(heatmap=maps, mask=masks)),
        Case("Grad-CAM maps of concept-cnn on 12 concept images, target-object masks",
             dict(heatmap=cmaps, mask=cmasks)),
        Case("Grad-CAM maps of decoy-mnist-cnn on 12 decoy digits, patch masks", dict(heatmap=dmaps, mask=dmasks)),
    ]


def inputs_unchanged(task: str):
    def prop(fn, case: Case) -> None:
        check_no_side_effects(task, fn.call(case.kwargs, observe=True).facts)

    return prop


def known_values(task: str, examples):
    """`examples()` → (heatmap, mask, expected (B,), what each row tests)."""

    def prop(fn, case: Case) -> None:
        heatmap, mask, expected, notes = examples()
        actual = as_tensor(fn(heatmap=heatmap.clone(), mask=mask.clone()), task)
        if tuple(actual.shape) != tuple(expected.shape):
            raise CheckFailed(f"{task}: expected shape {tuple(expected.shape)} (one score per example), "
                              f"got {tuple(actual.shape)}.")
        if not actual.is_floating_point():
            raise CheckFailed(f"{task}: expected a float tensor (scores such as 1.0 and 0.0), got {actual.dtype}: "
                              "convert with .to(heatmap.dtype) or .float().")
        actual = actual.to(torch.float64)
        for i, note in enumerate(notes):
            if not torch.isfinite(actual[i]) or abs(actual[i].item() - expected[i].item()) > 1e-5:
                raise CheckFailed(f"{task} on a hand-made example ({note}): expected {expected[i].item():.4g}, "
                                  f"got {actual[i].item():.4g}.")

    return prop


def pointing_examples():
    h, w = 6, 9
    maps = torch.zeros(5, h, w) - 0.1
    masks = torch.zeros(5, h, w, dtype=torch.bool)
    masks[:, 1:3, 5:8] = True                          # a box in the upper right
    maps[0, 2, 6] = 1.0                                # peak inside
    maps[1, 4, 1] = 1.0                                # peak outside
    maps[2, 2, 6], maps[2, 4, 1] = 1.0, -5.0           # signed: the largest |value| is outside, the max inside
    maps[3, 6 - 1 - 2, 6] = 1.0                        # peak at the mirrored row: outside
    maps[4, 1, 2] = 1.0                                # peak in the same row but outside the box
    masks[4, 0, 0] = True                              # ... and a mask pixel at flat index 0
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    notes = ["peak inside the mask", "peak outside the mask",
             "signed map: the maximum (not the largest |value|) is inside",
             "peak below the mask, in the mirrored row", "peak in a mask row but outside the mask"]
    return maps, masks, expected, notes


def energy_examples():
    h, w = 6, 8
    masks = torch.zeros(6, h, w, dtype=torch.bool)
    masks[:, 1:3, 2:6] = True                          # 8 of 48 pixels
    maps = torch.ones(6, h, w)                         # 0: uniform → area fraction 8/48
    maps[1] = masks[1].float() * 3.0                   # 1: all energy inside → 1
    maps[2] = -1.0                                     # 2: negative outside, 2 inside → 1
    maps[2][masks[2]] = 2.0
    maps[3] = 1.0                                      # 3: half the inside is −4 → 4 / (4 + 40)
    maps[3][1, 2:6] = -4.0
    maps[4] = -1.0                                     # 4: no positive energy at all → 0
    maps[5] = 1e-3                                     # 5: tiny total energy (0.048) is still energy → 8/48
    expected = torch.tensor([8 / 48, 1.0, 1.0, 4 / 44, 0.0, 8 / 48], dtype=torch.float64)
    notes = ["a uniform map scores the mask's area fraction", "a map that is zero outside the mask scores 1",
             "negative values outside the mask carry no energy", "negative values inside the mask carry no energy",
             "a map with no positive values scores 0", "a map whose total energy is below 1 is not special"]
    return maps, masks, expected, notes


LOCALISATION_HINT = {
    "pointing_game": "Hit (1.0) when the map's argmax over all H·W pixels of that example falls inside its mask.",
    "energy_pointing_game": "Σ max(map, 0) inside the mask / Σ max(map, 0) over the image, per example.",
}

for _task, _examples, _signed in (("pointing_game", pointing_examples, False),
                                  ("energy_pointing_game", energy_examples, True)):
    reference_check(f"lab02.{_task}.reference", _task,
                    "matches the reference on random maps and on Grad-CAM maps of two models",
                    lambda s=_signed: localisation_cases(s), getattr(ref, _task), rtol=1e-5, atol=1e-6,
                    hint=LOCALISATION_HINT[_task])
    property_check(f"lab02.{_task}.properties", _task,
                   "hand-made examples with known scores; batch = per example; inputs untouched",
                   lambda s=_signed: localisation_cases(s)[:1],
                   all_of(known_values(_task, _examples),
                          batch_equals_single(_task, 1e-5, 1e-6, row_kwargs=("heatmap", "mask")),
                          inputs_unchanged(_task)))
