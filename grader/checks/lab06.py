"""Hidden-test checks of Lab 6 (network dissection).

Every function is compared with the answer key on the concept CNN (several layers), the MNIST
CNNs (Decoy MNIST with its patch masks as a concept) and, for FFN neurons, tiny-bert-sentiment and
MiniLM; and tested for the properties any correct version has: the batch size changes nothing,
streaming equals all-at-once, a threshold leaves the stated number of active positions, the IoU of
a mask with itself is 1 and with its complement 0, hooks are gone and the model restored afterwards.
Inputs of one task are never the answers of another: they come from other images, other layers,
other thresholds, or are drawn at random.
"""
from __future__ import annotations

import functools
import math
import re
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from grader.answers import lab06 as ref
from grader.checks import (Case, CheckFailed, StudentError, all_of, as_tensor, assert_close, copy_kwargs,
                           prepared_check, property_check, reference_check)
from grader.checks.properties import check_no_side_effects
from grader.fixtures import mnist_batch, model

# ------------------------------------------------------------------ data


@lru_cache(maxsize=None)
def _concept_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    from xailab.datasets.concepts import concept_names, make_concept_dataset

    data = make_concept_dataset(n, seed=seed)
    names = tuple(concept_names())
    return data["images"], torch.stack([data["masks"][name] for name in names], 1), names


def concept_images(n: int, seed: int) -> torch.Tensor:
    """n concept images (n, 3, 64, 64), a fresh copy."""
    return _concept_data(n, seed)[0].clone()


def concept_masks(n: int, seed: int) -> torch.Tensor:
    """Their 15 concept masks (n, 15, 64, 64), bool."""
    return _concept_data(n, seed)[1].clone()


@torch.no_grad()
def layer_output(net, layer, x: torch.Tensor) -> torch.Tensor:
    """What `layer` outputs when `net` runs on x (inputs for other tasks; never sent as an answer)."""
    stored = []
    handle = layer.register_forward_hook(lambda module, inputs, output: stored.append(output))
    try:
        net(x)
    finally:
        handle.remove()
    return stored[-1].detach().clone()


def decoy_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n Decoy MNIST test digits (random patch shade) and their patch masks."""
    from xailab.datasets.mnist import load_decoy_mnist

    x, _, patch = load_decoy_mnist("test")
    return x[:n].clone(), patch[:n].clone()


# ------------------------------------------------------------------ watching the model from inside


def _hooks(net) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


class PlannedFailure(RuntimeError):
    """Raised by a Recorder on purpose. Its text is made when the error is reported, i.e. after the
    function under test has cleaned up: it says how many hooks were left on the model then."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def __str__(self):
        return f"the model failed on purpose (hooks left: {_hooks(self.net)})"


class Recorder(nn.Module):
    """Wraps a model: counts forward passes, the largest batch, whether autograd was on; can fail on
    purpose at forward pass `fail_at`. Attributes of the model (`encode`, `tokens`, ...) stay reachable."""

    def __init__(self, inner: nn.Module, fail_at: int = 0):
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0
        self.rows = 0
        self.grad = False

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise PlannedFailure(self)
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            self.rows = max(self.rows, first.shape[0])
        self.grad = self.grad or torch.is_grad_enabled()
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def _recorded(output, kwargs):
    """Runs in the notebook: what the Recorder saw."""
    net = kwargs["model"]
    return net.calls, net.rows, net.grad


def recorded(fn, kwargs: dict) -> tuple[int, int, bool]:
    """(forward passes, largest batch, autograd on in any pass) of one call."""
    calls, rows, grad = fn.call(dict(kwargs, model=Recorder(kwargs["model"]).eval()), post=_recorded).output
    return int(calls), int(rows), bool(grad)


def hooks_removed_on_error(task: str, fail_at: int = 2):
    """The model fails in its `fail_at`-th forward pass: the error reaches the caller, and no hook is left."""

    def prop(fn, case: Case) -> None:
        kwargs = dict(case.kwargs, model=Recorder(case.kwargs["model"], fail_at=fail_at).eval())
        try:
            fn(**kwargs)
        except StudentError as err:
            left = re.search(r"hooks left: (\d+)", str(err))
            if left and int(left.group(1)):
                raise CheckFailed(f"{task}: when the model raised an error in forward pass {fail_at} "
                                  f"({case.description}), {left.group(1)} hook(s) stayed on the model. Remove the "
                                  "hook in a `finally:` block so that it goes even when something fails.") from None
            return
        raise CheckFailed(f"{task}: the model raised an error in forward pass {fail_at} ({case.description}), but "
                          f"{task} returned normally: let the model's errors reach the caller.")

    return prop


def no_autograd(task: str):
    """Every forward pass runs under torch.no_grad()."""

    def prop(fn, case: Case) -> None:
        _, _, grad = recorded(fn, case.kwargs)
        if grad:
            raise CheckFailed(f"{task} ran the model with autograd on ({case.description}): wrap the forward "
                              "passes in `with torch.no_grad():` so that no graph is kept for the stored outputs.")

    return prop


# ------------------------------------------------------------------ collect_activations


def collect_cases() -> list[Case]:
    cnn, mnist, decoy = model("concept-cnn"), model("mnist-cnn"), model("decoy-mnist-cnn")
    x = concept_images(12, seed=21)
    digits, _ = mnist_batch(10)
    decoyed, _ = decoy_digits(9)
    return [
        Case("concept-cnn, 12 concept images, layer features[1] (ReLU, 16×64×64), batch_size=5",
             dict(model=cnn, layer=cnn.features[1], images=x, batch_size=5)),
        Case("concept-cnn, 12 concept images, layer features[7] (ReLU, 64×16×16), batch_size=8",
             dict(model=cnn, layer=cnn.features[7], images=x, batch_size=8)),
        Case("mnist-cnn, 10 digits, layer features[2] (a conv: negative values too, 32×28×28), batch_size=4",
             dict(model=mnist, layer=mnist.features[2], images=digits, batch_size=4)),
        Case("decoy-mnist-cnn, 9 decoy digits, layer features[8] (conv, 64×7×7), default batch_size",
             dict(model=decoy, layer=decoy.features[8], images=decoyed)),
    ]


reference_check("lab06.collect_activations.reference", "collect_activations",
                "matches the reference activations on the concept CNN (two layers) and the MNIST CNNs",
                collect_cases, ref.collect_activations, rtol=1e-4, atol=1e-5,
                hint="Register a forward hook on `layer`, store its OUTPUT for every batch, concatenate the "
                     "batches in order along dimension 0, and remove the hook.")


def same_for_every_batch_size(fn, case: Case) -> None:
    kw = case.kwargs
    whole = as_tensor(fn(**dict(kw, batch_size=len(kw["images"]))), "collect_activations")
    for size in (7, 20):
        assert_close(fn(**dict(kw, batch_size=size)), whole,
                     f"collect_activations with batch_size={size} vs all images in one batch ({case.description})",
                     1e-4, 1e-5, "The batch size may change the speed, never the result: keep the batches in order "
                                 "and keep every batch's output (not only the last one).")


def batched_as_asked(fn, case: Case) -> None:
    n = len(case.kwargs["images"])
    for batch_size in (None, 16):
        kwargs = {k: v for k, v in case.kwargs.items() if k != "batch_size"}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        size = batch_size or 64
        calls, rows, _ = recorded(fn, kwargs)
        want_calls, want_rows = math.ceil(n / size), min(size, n)
        if (calls, rows) != (want_calls, want_rows):
            said = "the default batch_size (64)" if batch_size is None else f"batch_size={batch_size}"
            raise CheckFailed(f"collect_activations on {n} images with {said} made {calls} forward passes, the "
                              f"largest with {rows} images; expected {want_calls} passes of at most {want_rows} "
                              "images: run the model on images[i:i + batch_size] for i = 0, batch_size, ….")


def untouched(task: str, extra: dict | None = None):
    """Model (mode, parameters, hooks) and tensor arguments unchanged after one call."""

    def prop(fn, case: Case) -> None:
        check_no_side_effects(task, fn.call(dict(case.kwargs, **(extra or {})), observe=True).facts)

    return prop


def toy_cnn(seed: int) -> nn.Module:
    """A small random CNN: properties need no trained weights."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


def collect_property_cases() -> list[Case]:
    net = toy_cnn(seed=69)
    images = torch.rand(70, 3, 16, 16, generator=torch.Generator().manual_seed(70))
    return [Case("a small CNN, 70 images of 16×16, layer [1] (ReLU, 6×16×16)",
                 dict(model=net, layer=net[1], images=images))]


property_check("lab06.collect_activations.properties", "collect_activations",
               "batched as asked (default 64) under torch.no_grad(); the batch size changes nothing; hooks removed "
               "(also when the model fails), model and images untouched",
               collect_property_cases,
               all_of(untouched("collect_activations"), batched_as_asked, no_autograd("collect_activations"),
                      hooks_removed_on_error("collect_activations"), same_for_every_batch_size))

# ------------------------------------------------------------------ unit_thresholds

LIMIT = 2 ** 24  # the longest row torch.quantile accepted in many PyTorch versions


class QuantileLimited(torch.Tensor):
    """A tensor on which torch.quantile refuses rows longer than 2^24 values, as many PyTorch versions do."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.quantile, torch.Tensor.quantile, torch.nanquantile, torch.Tensor.nanquantile):
            data = args[0]
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
            length = data.numel() if dim is None else data.shape[dim]
            if length > 2 ** 24:
                raise RuntimeError("quantile() input tensor is too large")
        return super().__torch_function__(func, types, args, kwargs)


def threshold_cases() -> list[Case]:
    cnn, mnist = model("concept-cnn"), model("mnist-cnn")
    x = concept_images(30, seed=22)
    digits, _ = mnist_batch(20, split="train")
    g = torch.Generator().manual_seed(61)
    mid = layer_output(cnn, cnn.features[4], x)
    return [
        Case("concept-cnn features[4] on 30 images (32 units × 30,720 positions), default quantile",
             dict(activations=mid)),
        Case("the same activations, quantile=0.9", dict(activations=mid, quantile=0.9)),
        Case("concept-cnn features[10] on 30 images (64 units, 8×8 maps), quantile=0.99",
             dict(activations=layer_output(cnn, cnn.features[10], x), quantile=0.99)),
        Case("mnist-cnn features[5] (a conv, negative values) on 20 digits, quantile=0.5",
             dict(activations=layer_output(mnist, mnist.features[5], digits), quantile=0.5)),
        Case("a 2-D tensor (1,000 examples × 7 units, no spatial axes), quantile=0.75",
             dict(activations=torch.randn(1000, 7, generator=g) * torch.arange(1, 8), quantile=0.75)),
        Case("a 3-D tensor (40 sentences × 5 units × 13 tokens), default quantile",
             dict(activations=torch.randn(40, 5, 13, generator=g).exp())),
    ]


reference_check("lab06.unit_thresholds.reference", "unit_thresholds",
                "matches the reference thresholds on real activations (3 layers, 2 networks) and on 2-D and 3-D "
                "tensors", threshold_cases, ref.unit_thresholds, rtol=1e-5, atol=1e-6,
                hint="One threshold per unit (axis 1) over ALL its values (every image, every position): the "
                     "quantile with linear interpolation at position q·(M − 1) of the sorted values.")


def exact_examples() -> list[tuple[str, dict, torch.Tensor]]:
    """(what, kwargs, expected thresholds) computed by hand."""
    g = torch.Generator().manual_seed(62)
    ramp = torch.arange(12.0)[torch.randperm(12, generator=g)]            # the values 0..11, shuffled
    two = torch.stack([ramp, 10 * ramp - 3]).T.reshape(3, 4, 2).transpose(1, 2)  # (3 images, 2 units, 4)
    ties = torch.tensor([[0.0, 0, 0, 1], [1, 1, 2, 2]]).reshape(2, 1, 4)  # one unit: 0,0,0,1,1,1,2,2
    ramp41 = torch.arange(41.0).reshape(41, 1, 1, 1)                      # 41 images, 1 unit, 1×1 maps
    return [
        ("values 0..11 and 10·v − 3 in 3 images × 4 positions, quantile=0.5 (p = 5.5)",
         dict(activations=two, quantile=0.5), torch.tensor([5.5, 52.0])),
        ("the same, quantile=0.995 (p = 10.945)", dict(activations=two, quantile=0.995),
         torch.tensor([10.945, 106.45])),
        ("the same, quantile=0.0 (the minimum)", dict(activations=two, quantile=0.0), torch.tensor([0.0, -3.0])),
        ("the same, quantile=1.0 (the maximum)", dict(activations=two, quantile=1.0), torch.tensor([11.0, 107.0])),
        ("values 0,0,0,1,1,1,2,2 (ties), quantile=0.5 (p = 3.5)", dict(activations=ties, quantile=0.5),
         torch.tensor([1.0])),
        ("values 0,0,0,1,1,1,2,2 (ties), quantile=0.3 (p = 2.1)", dict(activations=ties, quantile=0.3),
         torch.tensor([0.1])),
        ("values 0..40, one per image, default quantile (p = 39.8)", dict(activations=ramp41),
         torch.tensor([39.8])),
    ]


def exact_values(fn, case: Case) -> None:
    for what, kwargs, expected in exact_examples():
        assert_close(fn(**kwargs), expected, f"unit_thresholds on {what}", 1e-5, 1e-5,
                     "Sort each unit's M values v_0 ≤ … ≤ v_{M−1}; p = q·(M − 1); "
                     "threshold = v_⌊p⌋ + (p − ⌊p⌋)·(v_⌊p⌋+1 − v_⌊p⌋) (torch.quantile's 'linear', numpy's default).")


property_check("lab06.unit_thresholds.exact", "unit_thresholds",
               "exact thresholds on hand-made values (interpolation, ties, quantile 0 and 1)",
               lambda: [Case("hand-made values", {})], exact_values)


def fraction_cases() -> list[Case]:
    g = torch.Generator().manual_seed(63)
    acts = torch.randn(50, 6, 7, 9, generator=g) * torch.tensor([1.0, 0.1, 5, 2, 0.5, 30]).reshape(1, 6, 1, 1)
    return [Case(f"6 units with different scales, 50 × 7 × 9 continuous values each, quantile={q}",
                 dict(activations=acts, quantile=q)) for q in (0.995, 0.9, 0.5)]


def stated_fraction(fn, case: Case) -> None:
    acts, q = case.kwargs["activations"], case.kwargs["quantile"]
    thresholds = as_tensor(fn(**case.kwargs), "unit_thresholds")
    units = acts.shape[1]
    if tuple(thresholds.shape) != (units,):
        raise CheckFailed(f"unit_thresholds: expected shape ({units},), one threshold per unit, got "
                          f"{tuple(thresholds.shape)}.")
    m = acts.numel() // units
    above = (acts > thresholds.reshape(1, -1, 1, 1)).sum((0, 2, 3))
    want = m - 1 - math.floor(q * (m - 1))
    if (above != want).any():
        raise CheckFailed(f"unit_thresholds on {case.description}: each unit should have exactly {want} of its {m} "
                          f"values above its threshold (top {1 - q:.1%}); got {sorted(set(above.tolist()))}. One "
                          "quantile per unit, over all images and positions.")


property_check("lab06.unit_thresholds.properties", "unit_thresholds",
               "leaves the stated number of values above each unit's threshold; activations untouched",
               fraction_cases, all_of(stated_fraction, untouched("unit_thresholds")))


def large_cases() -> list[Case]:
    g = torch.Generator().manual_seed(64)
    acts = torch.randn(257, 1, 256, 256, generator=g)                    # 16,842,752 values > 2^24
    acts[:, :, :8] *= 3.0                                                 # a heavier tail along the top rows
    return [Case("a unit with 257 × 256 × 256 = 16,842,752 values (more than 2^24), default quantile; "
                 "torch.quantile refuses rows longer than 2^24 here, as in many PyTorch versions",
                 dict(activations=acts.as_subclass(QuantileLimited)))]


def large_expected(case: Case) -> torch.Tensor:
    return ref.unit_thresholds(case.kwargs["activations"].as_subclass(torch.Tensor)).as_subclass(torch.Tensor)


def large_compare(fn, case: Case, expected: torch.Tensor) -> None:
    assert_close(fn(**case.kwargs), expected, f"unit_thresholds on {case.description}", 1e-6, 1e-5,
                 "Rows longer than 2^24 values are too long for one torch.quantile call in many PyTorch versions: "
                 "use torch.kthvalue (or torch.topk, or torch.sort) per unit, which have no such limit.")


prepared_check("lab06.unit_thresholds.large", "unit_thresholds",
               "works on a unit with more than 2^24 values (too long for torch.quantile in many PyTorch versions)",
               large_cases, large_expected, large_compare)

# ------------------------------------------------------------------ unit_masks


def mask_cases() -> list[Case]:
    cnn, mnist = model("concept-cnn"), model("mnist-cnn")
    x = concept_images(6, seed=23)
    g = torch.Generator().manual_seed(65)

    def mean_plus_std(acts, k=2.0):  # thresholds of an arbitrary rule (not the lab's quantile)
        flat = acts.transpose(0, 1).reshape(acts.shape[1], -1)
        return flat.mean(1) + k * flat.std(1)

    a7 = layer_output(cnn, cnn.features[7], x)
    a10 = layer_output(cnn, cnn.features[10], x)
    digits, _ = mnist_batch(5, split="train")
    a6 = layer_output(mnist, mnist.features[6], digits)
    rand = torch.randn(2, 3, 5, 7, generator=g)
    return [
        Case("concept-cnn features[7] (16×16) on 6 images, thresholds mean + 2·std, size=(64, 64)",
             dict(activations=a7, thresholds=mean_plus_std(a7), size=(64, 64))),
        Case("concept-cnn features[10] (8×8) on 6 images, thresholds mean + 1·std, size=64 (an int)",
             dict(activations=a10, thresholds=mean_plus_std(a10, 1.0), size=64)),
        Case("mnist-cnn features[6] (ReLU, 14×14, many exact zeros) on 5 digits, thresholds 0, size=(28, 28)",
             dict(activations=a6, thresholds=torch.zeros(a6.shape[1]), size=(28, 28))),
        Case("random 5×7 maps of 3 units, thresholds (−0.5, 0, 0.8), size=(40, 56) (not square)",
             dict(activations=rand, thresholds=torch.tensor([-0.5, 0.0, 0.8]), size=(40, 56))),
    ]


def _size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def mask_expected(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference mask and, per pixel, how far the upsampled value is from the threshold."""
    kw = case.kwargs
    up = F.interpolate(kw["activations"], size=_size(kw["size"]), mode="bilinear", align_corners=False)
    margin = (up - kw["thresholds"].reshape(1, -1, 1, 1)).abs()
    return ref.unit_masks(**copy_kwargs(kw)), margin


def compare_masks(actual, expected: torch.Tensor, margin: torch.Tensor, what: str) -> None:
    actual = as_tensor(actual, "unit_masks")
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"unit_masks on {what}: expected shape {tuple(expected.shape)} (images, units, height, "
                          f"width at the mask resolution), got {tuple(actual.shape)}.")
    if actual.dtype != torch.bool:
        raise CheckFailed(f"unit_masks on {what}: expected a bool tensor, got {actual.dtype}.")
    # float rounding may flip a pixel whose upsampled value is within 1e-6 (relative) of the threshold;
    # a value exactly equal to it (e.g. a ReLU zero with threshold 0) is never above it
    near = (margin > 0) & (margin <= 1e-6 * (1 + margin.amax((0, 2, 3), keepdim=True)))
    off = (actual != expected) & ~near
    if off.any():
        raise CheckFailed(f"unit_masks on {what}: {off.float().mean().item():.2%} of the pixels differ from the "
                          "reference. Upsample the activations bilinearly (align_corners=False) to `size` FIRST, "
                          "then keep the pixels strictly above the unit's threshold (> thresholds[k]).")


prepared_check("lab06.unit_masks.reference", "unit_masks",
               "matches the reference masks (bilinear upsampling, then the threshold) on two networks",
               mask_cases, mask_expected,
               lambda fn, case, exp: compare_masks(fn(**case.kwargs), *exp, case.description))


def handmade_masks() -> list[tuple[str, dict, torch.Tensor]]:
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    # bilinear 2×2 → 4×4 (align_corners=False): rows and columns sample at 0, 0.25, 0.75, 1 of the way
    expected_grid = torch.tensor([[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5],
                                  [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]]) > 1.25
    flat = torch.tensor([1.0, 1.0, 1.0]).reshape(1, 3, 1, 1)
    square = torch.arange(4.0).reshape(1, 4, 1, 1).expand(2, 4, 1, 1).clone()
    return [
        ("a 2×2 map [[0, 1], [2, 3]] upsampled to 4×4, threshold 1.25 (values equal to it stay off)",
         dict(activations=grid, thresholds=torch.tensor([1.25]), size=(4, 4)), expected_grid[None, None]),
        ("constant maps of value 1 with thresholds 0.5, 1 and 1.5",
         dict(activations=flat, thresholds=torch.tensor([0.5, 1.0, 1.5]), size=(3, 3)),
         torch.tensor([True, False, False]).reshape(1, 3, 1, 1).expand(1, 3, 3, 3)),
        ("4 units with constant maps 0, 1, 2, 3 and thresholds 2.5, 0.5, 1.5, −1 on 4×4 masks (4 units = width 4)",
         dict(activations=square, thresholds=torch.tensor([2.5, 0.5, 1.5, -1.0]), size=4),
         torch.tensor([False, True, True, True]).reshape(1, 4, 1, 1).expand(2, 4, 4, 4)),
    ]


def exact_masks(fn, case: Case) -> None:
    for what, kwargs, expected in handmade_masks():
        compare_masks(fn(**kwargs), expected, torch.ones(expected.shape), what)


def per_image(fn, case: Case) -> None:
    kw = case.kwargs
    whole = as_tensor(fn(**kw), "unit_masks")
    for i in (0, len(kw["activations"]) - 1):
        single = as_tensor(fn(**dict(kw, activations=kw["activations"][i:i + 1])), "unit_masks")
        if tuple(single.shape) != (1, *whole.shape[1:]) or not torch.equal(single, whole[i:i + 1]):
            raise CheckFailed(f"unit_masks: image {i} alone gives a different mask than in the batch "
                              f"({case.description}); every image is upsampled and thresholded on its own.")


property_check("lab06.unit_masks.properties", "unit_masks",
               "exact masks on hand-made maps; each image on its own; inputs untouched",
               lambda: mask_cases()[:1], all_of(exact_masks, per_image, untouched("unit_masks")))

# ------------------------------------------------------------------ dataset_iou


class Stream:
    """Batches that can be read only once, like a generator (no len, no indexing)."""

    def __init__(self, batches):
        self._batches = list(batches)
        self._read = False

    def __iter__(self):
        if self._read:
            raise RuntimeError("this stream of batches was already read: like a generator, it can be read once")
        self._read = True
        return iter(self._batches)


def top_fraction_masks(acts: torch.Tensor, size: int, fraction: float) -> torch.Tensor:
    """Unit masks by a rule that is not the lab's: nearest upsampling of the top `fraction` of each unit."""
    flat = acts.transpose(0, 1).reshape(acts.shape[1], -1)
    cut = flat.sort(1).values[:, int((1 - fraction) * (flat.shape[1] - 1))]
    return F.interpolate(acts, size=(size, size), mode="nearest") > cut.reshape(1, -1, 1, 1)


def iou_cases() -> list[Case]:
    decoy, cnn = model("decoy-mnist-cnn"), model("concept-cnn")
    digits, patch = decoy_digits(40)
    decoy_concepts = torch.stack([patch, digits[:, 0] > 0.5, digits[:, 0] < 0.05], 1)
    x = concept_images(12, seed=24)
    g = torch.Generator().manual_seed(66)
    density = torch.tensor([0.05, 0.3, 0.6, 0.0])
    rand_units = torch.rand(5, 4, 6, 6, generator=g) < density.reshape(1, 4, 1, 1)
    rand_concepts = torch.rand(5, 3, 6, 6, generator=g) < torch.tensor([0.1, 0.5, 0.0]).reshape(1, 3, 1, 1)
    rand_concepts[:, 0, :3] = rand_units[:, 1, :3]                        # overlap that varies per image
    tokens_u = torch.rand(6, 5, 11, generator=g) < 0.2
    tokens_c = torch.rand(6, 3, 11, generator=g) < 0.3
    tokens_c[:, 2] = tokens_u[:, 4] | (torch.rand(6, 11, generator=g) < 0.1)
    return [
        Case("decoy-mnist-cnn features[6] units (top 5%, 40 decoy digits) vs the concepts patch, ink, background",
             dict(unit_masks=top_fraction_masks(layer_output(decoy, decoy.features[6], digits), 28, 0.05),
                  concept_masks=decoy_concepts)),
        Case("concept-cnn features[10] units (top 2%, 12 concept images) vs the 15 concept masks",
             dict(unit_masks=top_fraction_masks(layer_output(cnn, cnn.features[10], x), 64, 0.02),
                  concept_masks=concept_masks(12, seed=24))),
        Case("random masks: 4 units (one never active) vs 3 concepts (one never present), 5 images of 6×6",
             dict(unit_masks=rand_units, concept_masks=rand_concepts)),
        Case("token masks with one trailing axis: 6 sentences × 5 units × 11 tokens vs 3 concepts",
             dict(unit_masks=tokens_u, concept_masks=tokens_c)),
    ]


reference_check("lab06.dataset_iou.reference", "dataset_iou",
                "matches the reference dataset-level IoU (Decoy MNIST patch masks, concept masks, random masks)",
                iou_cases, ref.dataset_iou, rtol=1e-5, atol=1e-6,
                hint="Sum the intersections and the unions of each (unit, concept) pair over ALL images first, "
                     "then divide (not a mean of per-image IoUs); IoU = 0 where the union is empty.")


def self_and_complement(fn, case: Case) -> None:
    masks = case.kwargs["concept_masks"]
    for what, units, want in (("the masks themselves", masks, 1.0), ("their complements", ~masks, 0.0)):
        iou = as_tensor(fn(unit_masks=units, concept_masks=masks), "dataset_iou")
        c = masks.shape[1]
        if tuple(iou.shape) != (c, c):
            raise CheckFailed(f"dataset_iou: {c} unit masks vs {c} concept masks should give a ({c}, {c}) table "
                              f"(units × concepts), got {tuple(iou.shape)}.")
        diagonal = iou.diagonal().to(torch.float64)
        if not torch.isfinite(diagonal).all() or ((diagonal - want).abs() > 1e-6).any():
            raise CheckFailed(f"dataset_iou of {what} as units vs the concept masks ({case.description}): the "
                              f"diagonal should be {want:g} everywhere, got {diagonal.tolist()}.")


def iou_identity_cases() -> list[Case]:
    single = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    single[1, 0, 2, 3] = single[2, 1, 0, 0] = True                      # one pixel per concept in the whole dataset
    return [Case("the 15 concept masks of 10 concept images", dict(concept_masks=concept_masks(10, seed=27))),
            Case("2 concepts of one pixel each in 3 images of 4×4 (a union of exactly 1 pixel)",
                 dict(concept_masks=single))]


property_check("lab06.dataset_iou.identities", "dataset_iou",
               "a mask has IoU 1 with itself and 0 with its complement",
               iou_identity_cases, self_and_complement)


def split(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(t, sizes))


def stream_cases() -> list[Case]:
    c = iou_cases()
    u, m = c[0].kwargs["unit_masks"], c[0].kwargs["concept_masks"]
    sizes = [16, 9, 15]
    return [
        Case(c[0].description + ", as a list of 3 batches (16, 9, 15 images)",
             dict(unit_masks=split(u, sizes), concept_masks=split(m, sizes))),
        Case(c[0].description + ", as read-once streams of 3 batches (like generators)",
             dict(unit_masks=Stream(split(u, sizes)), concept_masks=Stream(split(m, sizes)))),
        Case(c[1].description + ", as a read-once stream of 12 single-image batches",
             dict(unit_masks=Stream(split(c[1].kwargs["unit_masks"], [1] * 12)),
                  concept_masks=Stream(split(c[1].kwargs["concept_masks"], [1] * 12)))),
    ]


def stream_expected(case: Case) -> torch.Tensor:
    kw = case.kwargs
    units = torch.cat(list(kw["unit_masks"]._batches if isinstance(kw["unit_masks"], Stream) else kw["unit_masks"]))
    concepts = torch.cat(list(kw["concept_masks"]._batches if isinstance(kw["concept_masks"], Stream)
                              else kw["concept_masks"]))
    return ref.dataset_iou(units, concepts)


def stream_compare(fn, case: Case, expected: torch.Tensor) -> None:
    assert_close(fn(**case.kwargs), expected, f"dataset_iou on {case.description} vs all images at once",
                 1e-5, 1e-6, "Iterate once over the pairs of batches (zip), adding up intersections and areas; "
                             "divide only after the last batch. A tensor is one batch; anything else is an iterable "
                             "of batches that may be read only once.")


prepared_check("lab06.dataset_iou.streaming", "dataset_iou",
               "streaming over batches (lists and read-once streams) equals all images at once",
               stream_cases, stream_expected, stream_compare)

# ------------------------------------------------------------------ label_units

NAMES = ("shape:circle", "shape:square", "colour:red", "texture:dots", "target")


def label_cases() -> list[Case]:
    g = torch.Generator().manual_seed(67)
    table = torch.rand(12, 5, generator=g) * 0.08                          # some units above 0.04, some below
    wide = torch.rand(9, 5, generator=g, dtype=torch.float64) * 0.5
    ties = torch.tensor([[0.10, 0.30, 0.30, 0.0, 0.2],                       # a tie for the best concept
                         [0.30, 0.10, 0.00, 0.0, 0.0],                       # the same best IoU as unit 0
                         [0.25, 0.25, 0.00, 0.0, 0.0],                       # best = min_iou exactly: no detector
                         [0.00, 0.00, 0.00, 0.0, 0.0],
                         [0.05, 0.00, 0.00, 0.0, 0.9]])
    return [
        Case("a random 12 × 5 IoU table with values in [0, 0.08], default min_iou",
             dict(iou=table, concept_names=list(NAMES))),
        Case("a random float64 9 × 5 table with values in [0, 0.5], min_iou=0.2",
             dict(iou=wide, concept_names=list(NAMES), min_iou=0.2)),
        Case("a hand-made 5 × 5 table with ties and a best IoU equal to min_iou=0.25",
             dict(iou=ties, concept_names=list(NAMES), min_iou=0.25)),
    ]


def label_expected(case: Case):
    return ref.label_units(**copy_kwargs(case.kwargs))


def compare_labels(fn, case: Case, expected) -> None:
    out = fn(**case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed("label_units should return a pair (labels, table).")
    labels, table = out
    want_labels, want_table = expected
    if not isinstance(labels, (list, tuple)) or list(labels) != want_labels:
        raise CheckFailed(f"label_units on {case.description}: labels should be {want_labels} (the best concept of "
                          f"each unit, None where its IoU is not above min_iou), got {labels}. Ties go to the first "
                          "concept in concept_names.")
    try:
        rows = [tuple(row) for row in table]
    except TypeError:
        raise CheckFailed("label_units: the table should be a list of (unit, concept, iou) rows.") from None
    if not all(len(r) == 3 and type(r[0]) is int and type(r[1]) is str and type(r[2]) is float for r in rows):
        raise CheckFailed(f"label_units on {case.description}: every row should be (unit, concept, iou) as plain Python "
                          f"(int, str, float) values, e.g. from .tolist() or .item(); got {rows[:3]}.")
    if [(u, c) for u, c, _ in rows] != [(u, c) for u, c, _ in want_table] or any(
            abs(v - w) > 1e-6 for (_, _, v), (_, _, w) in zip(rows, want_table)):
        raise CheckFailed(f"label_units on {case.description}: the table should be {want_table}, got {rows}: one "
                          "row per detector unit, sorted by IoU from high to low (ties by unit index).")


prepared_check("lab06.label_units.reference", "label_units",
               "best concept per unit, detectors above min_iou, table sorted by IoU (ties handled as documented)",
               label_cases, label_expected, compare_labels)

# ------------------------------------------------------------------ ablate_units


class _Planned(Exception):
    """Raised inside the with-block on purpose."""


def _ablated_run(context, kwargs, inputs, fail):
    """Runs in the notebook: enter the returned context, run the model, leave, run again."""
    net = kwargs["model"]
    if not (hasattr(context, "__enter__") and hasattr(context, "__exit__")):
        return {"kind": type(context).__name__}
    with torch.no_grad():
        if fail:
            try:
                with context:
                    raise _Planned()
            except _Planned:
                pass
            return {"kind": "context", "after": net(inputs), "hooks": _hooks(net)}
        with context:
            inside = net(inputs)
        return {"kind": "context", "inside": inside, "after": net(inputs), "hooks": _hooks(net)}


def ablation_cases() -> list[Case]:
    cnn, mnist = model("concept-cnn"), model("mnist-cnn")
    digits, _ = mnist_batch(3)
    x = concept_images(4, seed=25)
    return [
        Case("concept-cnn, layer features[9] (the last conv, before its ReLU), units [3, 17, 40], 4 images",
             dict(model=cnn, layer=cnn.features[9], units=[3, 17, 40], inputs=x)),
        Case("concept-cnn, layer features[4] (ReLU, 32×32×32), units tensor([0, 31]), 4 images",
             dict(model=cnn, layer=cnn.features[4], units=torch.tensor([0, 31]), inputs=x)),
        Case("mnist-cnn, layer features[6] (ReLU, 64×14×14), unit [5], 3 digits",
             dict(model=mnist, layer=mnist.features[6], units=[5], inputs=digits)),
        Case("concept-cnn, layer features[7], no units (an empty list): nothing changes",
             dict(model=cnn, layer=cnn.features[7], units=[], inputs=x)),
    ]


def ablation_expected(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    kw = case.kwargs
    with torch.no_grad():
        plain = kw["model"](kw["inputs"])
        with ref.ablate_units(kw["model"], kw["layer"], kw["units"]):
            ablated = kw["model"](kw["inputs"])
    return ablated, plain


def _run(fn, case: Case, fail: bool):
    kw = {k: v for k, v in case.kwargs.items() if k != "inputs"}
    reply = fn.call(kw, post=functools.partial(_ablated_run, inputs=case.kwargs["inputs"], fail=fail), observe=True)
    out = reply.output
    if out.get("kind") != "context":
        raise CheckFailed(f"ablate_units should return a context manager (use @contextlib.contextmanager and "
                          f"`yield`), got {out.get('kind')}.")
    return out, reply.facts


def ablation_outputs(fn, case: Case, expected) -> None:
    ablated, plain = expected
    out, _ = _run(fn, case, fail=False)
    assert_close(out["inside"], ablated, f"the model's outputs inside `with ablate_units(...)` ({case.description})",
                 1e-4, 1e-5, "Zero the listed channels (axis 1) of the layer's OUTPUT with a forward hook that "
                             "returns the changed output; leave every other unit as it is.")
    assert_close(out["after"], plain, f"the model's outputs after the with-block ({case.description})", 1e-4, 1e-5,
                 "Leaving the with-block must restore the model: remove the hook (and change no weights).")


prepared_check("lab06.ablate_units.outputs", "ablate_units",
               "zeroes exactly the listed units inside the with-block; the model is itself again afterwards",
               ablation_cases, ablation_expected, ablation_outputs)


def restores(fn, case: Case) -> None:
    for fail in (False, True):
        out, facts = _run(fn, case, fail)
        how = "after an exception inside the with-block" if fail else "after the with-block"
        if out["hooks"]:
            raise CheckFailed(f"ablate_units left {out['hooks']} hook(s) on the model {how}: remove the hook in a "
                              "`finally:` around the `yield`.")
        try:
            check_no_side_effects("ablate_units", facts)
        except CheckFailed as err:
            raise CheckFailed(f"{err} ({how})") from None


property_check("lab06.ablate_units.restores", "ablate_units",
               "no hook left and the model unchanged on exit, even when the with-block raises",
               lambda: ablation_cases()[:1] + ablation_cases()[2:3], restores)

# ------------------------------------------------------------------ token_concept_iou

TOKEN_CONCEPTS = ("positive word", "negative word", "negator", "contrast", "noun", "special token")


def negate_last(words: list[str], evidence: list[int]) -> tuple[list[str], list[int]]:
    """Insert "not" after the verb of the last evidence word ("was not awful", "was not really good")."""
    from xailab.datasets.text import ADVERBS, VERBS

    e = evidence[-1]
    at = e if words[e - 1] in VERBS else e - 1 if words[e - 1] in ADVERBS else None
    if at is None:                                       # e.g. "this is a superb movie": left as it is
        return words, evidence
    return words[:at] + ["not"] + words[at:], evidence[:-1] + [e + 1]


@lru_cache(maxsize=None)
def _probe(n: int, seed: int) -> tuple[tuple[str, ...], tuple, tuple]:
    """Lexicon test sentences; every third one negates its last evidence word."""
    from xailab.datasets.text import make_lexicon_sentences

    data = make_lexicon_sentences(n, seed=seed, split="test")
    texts, evidence, polarity = [], [], []
    for i, (text, ev, pol) in enumerate(zip(data.texts, data.evidence, data.polarity)):
        words = text.split()
        if i % 3 == 2:
            words, ev = negate_last(words, ev)
        texts.append(" ".join(words))
        evidence.append(tuple(ev))
        polarity.append(tuple(pol))
    return tuple(texts), tuple(evidence), tuple(polarity)


def token_masks(net, texts, evidence, polarity) -> torch.Tensor:
    """(N, 6, T) bool masks of TOKEN_CONCEPTS over the padded tokens of net.encode(texts)."""
    from xailab.datasets.text import NOUNS

    ids = net.encode(list(texts))["input_ids"]
    masks = torch.zeros(len(texts), len(TOKEN_CONCEPTS), ids.shape[1], dtype=torch.bool)
    for i, row in enumerate(ids):
        for word, sign in zip(evidence[i], polarity[i]):
            masks[i, 0 if sign > 0 else 1, word + 1] = True                 # word p is token p + 1 ([CLS] first)
        for t, token in enumerate(net.tokens(row)):
            masks[i, 2, t] = token in ("not", "never", "no")
            masks[i, 3, t] = token in ("but", "although")
            masks[i, 4, t] = token in NOUNS
            masks[i, 5, t] = token in ("[CLS]", "[SEP]")
    return masks


def probe(net, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    texts, evidence, polarity = _probe(n, seed)
    return list(texts), token_masks(net, texts, evidence, polarity)


def odd_probe(net, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """A probe whose number of real tokens M is odd: with quantile=0.5 the threshold is a token's own value."""
    texts, masks = probe(net, n, seed)
    if int(net.encode(texts)["attention_mask"].sum()) % 2 == 0:
        texts, masks = probe(net, n + 1, seed)
        assert int(net.encode(texts)["attention_mask"].sum()) % 2 == 1, "no odd probe"
    return texts, masks


def token_cases() -> list[Case]:
    bert, minilm = model("tiny-bert-sentiment"), model("minilm-sentiment")
    texts, masks = probe(bert, 40, seed=7)
    odd, odd_masks = odd_probe(bert, 30, seed=9)
    short, short_masks = probe(minilm, 16, seed=8)
    layers = bert.model.bert.encoder.layer
    return [
        Case("tiny-bert-sentiment, FFN of layer 0 (256 neurons), 40 lexicon sentences, batch_size=24",
             dict(model=bert, layer=layers[0].intermediate, sentences=texts, concept_masks=masks, batch_size=24)),
        Case(f"tiny-bert-sentiment, FFN of layer 1, {len(odd)} sentences with an odd number of real tokens, "
             "quantile=0.5 (the threshold is one token's own value, which is not above it), default batch_size",
             dict(model=bert, layer=layers[1].intermediate, sentences=odd, concept_masks=odd_masks, quantile=0.5)),
        Case("minilm-sentiment, FFN of layer 2 (1,536 neurons), 16 sentences, quantile=0.99, batch_size=10",
             dict(model=minilm, layer=minilm.model.encoder.encoder.layer[2].intermediate, sentences=short,
                  concept_masks=short_masks, quantile=0.99, batch_size=10)),
    ]


reference_check("lab06.token_concept_iou.reference", "token_concept_iou",
                "matches the reference IoU of FFN neurons with token concepts on two transformers",
                token_cases, ref.token_concept_iou, rtol=1e-4, atol=1e-4,
                hint="Tokenise all sentences with model.encode (one padded batch), hook the layer's output "
                     "(N, T, K), keep the real tokens only (attention_mask == 1) for the thresholds AND the IoU, "
                     "one threshold per neuron over all real tokens, IoU summed over all tokens.")


def token_invariances(fn, case: Case) -> None:
    kw = case.kwargs
    base = as_tensor(fn(**kw), "token_concept_iou")
    other = dict(kw, batch_size=15)
    assert_close(fn(**other), base, f"token_concept_iou with batch_size=15 vs 24 ({case.description})", 1e-4, 1e-4,
                 "The batch size must not change the result: tokenise all sentences at once (the padding, and so "
                 "the token positions, must match concept_masks) and run the model in batches of batch_size.")
    order = torch.randperm(len(kw["sentences"]), generator=torch.Generator().manual_seed(68))
    shuffled = dict(kw, sentences=[kw["sentences"][i] for i in order], concept_masks=kw["concept_masks"][order])
    assert_close(fn(**shuffled), base, f"token_concept_iou on the same sentences in another order "
                 f"({case.description})", 1e-4, 1e-4,
                 "The IoU is a dataset statistic: the order of the sentences must not matter.")


property_check("lab06.token_concept_iou.properties", "token_concept_iou",
               "batch size and sentence order change nothing; no autograd; hooks removed (also when the model "
               "fails), model and masks untouched",
               lambda: token_cases()[:1],
               all_of(untouched("token_concept_iou"), no_autograd("token_concept_iou"),
                      hooks_removed_on_error("token_concept_iou"), token_invariances))
