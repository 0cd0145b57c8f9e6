"""Hidden-test checks of Lab 1 (gradients and saliency maps).

Every function is compared with the answer key on a CNN and on a transformer (through its
input embeddings) and tested for the properties any correct version has: batch = per example,
no side effects on the model or the inputs, and the method's own identities.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from grader.answers import lab01 as ref
from grader.checks import Case, CheckFailed, all_of, as_tensor, assert_close, property_check, reference_check
from grader.checks.properties import batch_equals_single, count_forward, no_hooks_left_on_error, side_effect_free
from grader.fixtures import EQUAL_LENGTH, EmbeddingInput, mnist_batch, model, text_batch, unmasked_text_model
from xailab.datasets.photos import load_photo


# ------------------------------------------------------------------ inputs

def cnn_cases() -> list[Case]:
    x, y = mnist_batch(4)
    xd, yd = mnist_batch(3, decoy=True)
    return [
        Case("mnist-cnn, 4 digits, their labels", dict(model=model("mnist-cnn"), inputs=x, target=y)),
        Case("mnist-cnn, 4 digits, class 3 for all", dict(model=model("mnist-cnn"), inputs=x, target=3)),
        Case("decoy-mnist-cnn, 3 decoy digits", dict(model=model("decoy-mnist-cnn"), inputs=xd, target=yd)),
    ]


def transformer_cases() -> list[Case]:
    cases = []
    for name in ("tiny-bert-sentiment", "minilm-sentiment"):
        batch = text_batch(name, EQUAL_LENGTH)
        m = model(name)
        with torch.no_grad():
            embeds = m.get_input_embeddings()(batch["input_ids"])
        wrapped = EmbeddingInput(m).eval()
        cases.append(Case(f"{name} via its input embeddings, 4 sentences",
                          dict(model=wrapped, inputs=embeds, target=torch.tensor([1, 0, 1, 0]))))
    return cases


def photo_cases() -> list[Case]:
    return [Case("efficientnet-lite0 on the chelsea photo, class 285 (Egyptian cat)",
                 dict(model=model("efficientnet-lite0"), inputs=load_photo("chelsea")[None], target=285))]


def token_cases() -> list[Case]:
    cases = []
    for name in ("tiny-bert-sentiment", "minilm-sentiment"):
        batch = text_batch(name)
        cases.append(Case(f"{name}, 4 padded sentences, positive class",
                          dict(model=model(name), **batch, target=1)))
        cases.append(Case(f"{name}, 4 padded sentences, per-example targets, grad×input",
                          dict(model=model(name), **batch, target=torch.tensor([1, 0, 0, 1]),
                               reduction="grad_x_input")))
    batch = text_batch("tiny-bert-sentiment")
    for reduction in ("l2", "grad_x_input"):
        cases.append(Case(f"a text model that does NOT mask padding (mean over all positions), 4 padded sentences, "
                          f"reduction={reduction!r}",
                          dict(model=unmasked_text_model(), **batch, target=torch.tensor([1, 0, 0, 1]),
                               reduction=reduction)))
    return cases


# ------------------------------------------------------------------ vanilla gradient

reference_check("lab01.vanilla_gradient.cnn", "vanilla_gradient",
                "matches the reference gradient on the MNIST CNNs (signed and absolute)",
                lambda: cnn_cases() + [Case("mnist-cnn, absolute=True", dict(cnn_cases()[0].kwargs, absolute=True))],
                ref.vanilla_gradient,
                hint="Differentiate the pre-softmax score of the target class of each example.")

reference_check("lab01.vanilla_gradient.transformer", "vanilla_gradient",
                "matches the reference gradient w.r.t. a transformer's input embeddings",
                transformer_cases, ref.vanilla_gradient, rtol=1e-3, atol=1e-5)

def gradient_of_linear_is_w(fn, case: Case) -> None:
    """A property only a real gradient has (a constant map would pass the others): for f(x) = Wx + b
    the gradient of class 1 is W[1], for every example."""
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(6, 3).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6, generator=g))
    x = torch.randn(3, 6, generator=g)
    assert_close(fn(model=lin, inputs=x, target=1), lin.weight[1].detach().expand(3, 6),
                 "vanilla_gradient on a linear model, class 1", 1e-5, 1e-6,
                 "For f(x) = Wx + b the gradient of class 1 is exactly W[1], whatever x.")


property_check("lab01.vanilla_gradient.properties", "vanilla_gradient",
               "batch = per example; model and inputs untouched; repeatable; exact on a linear model",
               lambda: cnn_cases()[:1] + transformer_cases()[:1],
               all_of(gradient_of_linear_is_w, side_effect_free("vanilla_gradient"),
                      batch_equals_single("vanilla_gradient", 1e-3, 1e-5)))

# ------------------------------------------------------------------ gradient × input

reference_check("lab01.gradient_x_input.reference", "gradient_x_input",
                "matches the reference on the MNIST CNNs and a transformer",
                lambda: cnn_cases() + transformer_cases()[:1], ref.gradient_x_input, rtol=1e-3, atol=1e-5)


def linear_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(12, 3).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 12, generator=g))
    x = torch.randn(5, 12, generator=g)
    return [Case("a linear model f(x) = Wx + b, 5 inputs, class 2", dict(model=lin, inputs=x, target=2))]


def linear_is_w_times_x(fn, case: Case) -> None:
    lin, x = case.kwargs["model"], case.kwargs["inputs"]
    expected = lin.weight[2].detach() * x
    assert_close(fn(**case.kwargs), expected, "gradient_x_input on a linear model", 1e-5, 1e-6,
                 "For f(x) = Wx + b the answer is exactly W[target] ⊙ x (the bias plays no part).")


property_check("lab01.gradient_x_input.linear", "gradient_x_input",
               "equals w ⊙ x on a linear model; model and inputs untouched",
               linear_cases, all_of(linear_is_w_times_x, side_effect_free("gradient_x_input")))

# ------------------------------------------------------------------ SmoothGrad


def sigma_zero_cases() -> list[Case]:
    c = cnn_cases()
    return [Case(case.description + ", noise_level=0", dict(case.kwargs, noise_level=0.0, n_samples=3))
            for case in c[:1] + c[2:] + transformer_cases()[:1]] + [
        Case(c[0].description + ", noise_level=0, 3 samples in chunks of batch_size=5 (12 noisy copies)",
             dict(c[0].kwargs, noise_level=0.0, n_samples=3, batch_size=5)),
        Case(c[2].description + ", noise_level=0, 2 samples, batch_size=1",
             dict(c[2].kwargs, noise_level=0.0, n_samples=2, batch_size=1))]


reference_check("lab01.smoothgrad.sigma_zero", "smoothgrad",
                "with noise_level = 0 it equals the plain gradient (CNN and transformer)",
                sigma_zero_cases, lambda **kw: ref.vanilla_gradient(kw["model"], kw["inputs"], kw["target"]),
                rtol=1e-3, atol=1e-5, hint="With no noise, every sample is the input itself.")


class Quadratic(nn.Module):
    """f_k(x) = Σ_j a_kj x_j²: its gradient 2·a_k·x makes SmoothGrad's expectation exact."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x):
        return (x.flatten(1) ** 2) @ self.a.T


def folded_normal_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E|mu + sigma·N(0,1)|."""
    z = mu / sigma
    phi = torch.exp(-0.5 * z ** 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return sigma * 2 * phi + mu * (2 * cdf - 1)


def quadratic_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 16, generator=g)
    x = torch.stack([torch.linspace(-2, 2, 16), torch.linspace(0, 1, 16)]).reshape(2, 1, 4, 4)
    quad = Quadratic(a).eval()
    return [Case(f"a quadratic model, 2 inputs with ranges 4 and 1, absolute={absolute}",
                 dict(model=quad, inputs=x, target=1, n_samples=4000, noise_level=0.3, absolute=absolute,
                      batch_size=8000))
            for absolute in (False, True)]


def smoothgrad_expectation(fn, case: Case) -> None:
    kw = case.kwargs
    x, a = kw["inputs"], kw["model"].a.detach()[1].reshape(1, 1, 4, 4)
    sigma = 0.3 * (x.flatten(1).max(1).values - x.flatten(1).min(1).values).reshape(-1, 1, 1, 1)
    if kw["absolute"]:
        expected = 2 * a.abs() * folded_normal_mean(x, sigma)
    else:
        expected = 2 * a * x
    tol = 6 * 2 * a.abs() * sigma / math.sqrt(kw["n_samples"])  # 6 standard errors
    actual = as_tensor(fn(**kw), "smoothgrad")
    if actual.shape != x.shape:
        raise CheckFailed(f"smoothgrad: expected shape {tuple(x.shape)}, got {tuple(actual.shape)}.")
    off = (actual - expected).abs() > tol + 1e-6
    if off.any():
        raise CheckFailed(
            f"smoothgrad on {case.description}: the average over noisy samples is not the expected "
            f"SmoothGrad value ({off.float().mean():.0%} of entries beyond 6 standard errors). Check that "
            "σ = noise_level × (max − min) of EACH example, that σ is a standard deviation, and that "
            "absolute values are taken per sample only when absolute=True.")


property_check("lab01.smoothgrad.expectation", "smoothgrad",
               "its average equals the exact SmoothGrad expectation (σ relative to each input's range)",
               quadratic_cases, smoothgrad_expectation)


def smoothgrad_batched(fn, case: Case) -> None:
    _, calls, _ = count_forward(fn, dict(case.kwargs, n_samples=16, batch_size=64))
    if calls > 2:
        raise CheckFailed(f"smoothgrad made {calls} forward passes for 16 samples of 4 inputs with "
                          "batch_size=64: stack the noisy copies into one batch instead of looping.")
    _, calls, rows = count_forward(fn, dict(case.kwargs, n_samples=16, batch_size=24))
    if rows > 24:
        raise CheckFailed(f"smoothgrad fed {rows} noisy copies to the model at once with batch_size=24 "
                          "(16 samples of 4 inputs): at most batch_size copies may go through the model at once.")
    if calls > 4:
        raise CheckFailed(f"smoothgrad made {calls} forward passes for 64 noisy copies with batch_size=24: "
                          "expected 3 (chunks of batch_size copies).")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smoothgrad_uses_generator(fn, case: Case) -> None:
    """The same seeded generator gives the same result whatever the global seed; another seed another one."""
    kw = dict(case.kwargs, n_samples=4)
    first = as_tensor(fn.call(dict(kw, generator=seeded(1)), seed=0).output, "smoothgrad")
    again = as_tensor(fn.call(dict(kw, generator=seeded(1)), seed=5).output, "smoothgrad")
    assert_close(again, first, f"smoothgrad twice with a generator seeded 1 ({case.description}), the global "
                 "random state differing between the calls", 1e-5, 1e-7,
                 "Draw every random number from `generator` (torch.randn(..., generator=generator)), so a "
                 "seeded generator makes the result reproducible.")
    other = as_tensor(fn(**dict(kw, generator=seeded(2))), "smoothgrad")
    if torch.allclose(other, first, rtol=1e-5, atol=1e-7):
        raise CheckFailed("smoothgrad gave the same result for generators seeded 1 and 2: the noise must come "
                          "from `generator`.")


property_check("lab01.smoothgrad.properties", "smoothgrad",
               "batched over samples in chunks of batch_size; noise from the generator; model and inputs untouched",
               lambda: cnn_cases()[:1],
               all_of(side_effect_free("smoothgrad", dict(n_samples=4)), smoothgrad_batched, smoothgrad_uses_generator))

# ------------------------------------------------------------------ guided backpropagation

reference_check("lab01.guided_backprop.cnn", "guided_backprop",
                "matches reference guided backpropagation on the MNIST CNNs",
                cnn_cases, ref.guided_backprop, rtol=1e-3, atol=1e-6,
                hint="Override the backward pass of every ReLU: pass only positive gradients, where the input was positive.")

reference_check("lab01.guided_backprop.efficientnet", "guided_backprop",
                "matches the reference on EfficientNet-Lite0, whose activations are ReLU6",
                photo_cases, ref.guided_backprop, rtol=1e-2, atol=1e-5,
                hint="EfficientNet-Lite0 uses nn.ReLU6: it needs the same treatment as nn.ReLU.")

property_check("lab01.guided_backprop.properties", "guided_backprop",
               "hooks removed (also after an error) and model untouched; batch = per example",
               lambda: cnn_cases()[:1],
               all_of(side_effect_free("guided_backprop"), batch_equals_single("guided_backprop", 1e-3, 1e-6),
                      no_hooks_left_on_error("guided_backprop", lambda case: dict(case.kwargs, target=99))))

# ------------------------------------------------------------------ occlusion


def occlusion_cases() -> list[Case]:
    c = cnn_cases()
    return [
        Case(c[0].description + ", 4×4 patches, stride 4", dict(c[0].kwargs, patch=4)),
        Case(c[2].description + ", 6×6 patches, stride 2, grey baseline", dict(c[2].kwargs, patch=6, stride=2, baseline=0.5)),
        Case(c[1].description + ", 14×14 patches, stride 14, batch_size=3 (smaller than the batch)",
             dict(c[1].kwargs, patch=14, stride=14, batch_size=3)),
        Case("mnist-cnn, 4 digits cropped to 28×22 (not square), their labels, 5×5 patches, stride 3 (across "
             "the 22 columns the last window ends at the border; no window covers the last 2 rows: they get 0), "
             "batch_size=24 (chunks of 6 windows)",
             dict(c[0].kwargs, inputs=c[0].kwargs["inputs"][..., 3:25].clone(), patch=5, stride=3, batch_size=24)),
    ]


reference_check("lab01.occlusion.cnn", "occlusion",
                "matches reference occlusion on the MNIST CNNs (overlapping windows averaged)",
                occlusion_cases, ref.occlusion, rtol=1e-3, atol=1e-4,
                hint="Score drop f(x) − f(x occluded), averaged over the windows that cover each pixel.")

reference_check("lab01.occlusion.efficientnet", "occlusion",
                "matches the reference on EfficientNet-Lite0 with a real photo",
                lambda: [Case(photo_cases()[0].description + ", 56×56 patches, stride 56",
                              dict(photo_cases()[0].kwargs, patch=56))],
                ref.occlusion, rtol=1e-3, atol=1e-3)


def occlusion_batched(fn, case: Case) -> None:
    _, calls, _ = count_forward(fn, dict(case.kwargs, patch=4, stride=4, batch_size=256))
    if calls > 4:
        raise CheckFailed(f"occlusion made {calls} forward passes for 49 windows with batch_size=256: "
                          "stack the occluded copies into batches instead of one pass per window.")
    b = case.kwargs["inputs"].shape[0]
    for patch, batch_size in ((4, 20), (14, 2)):
        _, _, rows = count_forward(fn, dict(case.kwargs, patch=patch, stride=patch, batch_size=batch_size))
        if rows > max(batch_size, b):
            raise CheckFailed(f"occlusion fed {rows} images to the model at once with batch_size={batch_size} and "
                              f"{b} inputs: put max(1, batch_size // B) windows of the B inputs (at most batch_size "
                              "occluded images, or one window when B > batch_size) into each forward pass.")


property_check("lab01.occlusion.properties", "occlusion",
               "batched over windows in chunks of batch_size; batch = per example; model and inputs untouched",
               lambda: [Case(c.description, dict(c.kwargs, patch=7)) for c in cnn_cases()[:1]],
               all_of(side_effect_free("occlusion"), occlusion_batched,
                      batch_equals_single("occlusion", 1e-3, 1e-4)))

# ------------------------------------------------------------------ token saliency

reference_check("lab01.token_saliency.reference", "token_saliency",
                "matches reference token saliency on two transformers and a model that does not mask padding (L2 and grad×input)",
                token_cases, ref.token_saliency, rtol=1e-3, atol=1e-5,
                hint="Differentiate w.r.t. the input embeddings (not the ids), reduce over the hidden size, "
                     "and set padding positions (attention_mask == 0) to exactly 0, whatever the model does with them.")


def per_sentence(fn, case: Case) -> None:
    """Each sentence alone (no padding) gives its row of the padded batch."""
    kw = case.kwargs
    batched = as_tensor(fn(**kw), "token_saliency")
    mask = kw["attention_mask"]
    if batched.shape != mask.shape:
        raise CheckFailed(f"token_saliency: expected shape {tuple(mask.shape)} (batch, tokens), got {tuple(batched.shape)}.")
    if (batched[mask == 0] != 0).any():
        raise CheckFailed("token_saliency: padding positions must be exactly 0.")
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        single = dict(kw, input_ids=kw["input_ids"][i:i + 1, :n], attention_mask=mask[i:i + 1, :n])
        assert_close(batched[i:i + 1, :n], as_tensor(fn(**single), "token_saliency"),
                     f"token_saliency: sentence {i} in a padded batch vs alone", 1e-3, 1e-4,
                     "Pass the attention_mask to the model so padding does not change the explanation.")


property_check("lab01.token_saliency.properties", "token_saliency",
               "padding is zero and changes nothing; model and inputs untouched",
               lambda: token_cases()[:1],
               all_of(side_effect_free("token_saliency"), per_sentence))
