"""Hidden-test checks of Lab 4 (layer-wise relevance propagation).

Each rule is compared with the answer key on Linear and Conv2d layers (random and trained ones),
the full backward pass on the MNIST CNNs and on small models with other layer types, and the
properties theory promises: conservation where no bias or ε absorbs relevance, LRP-0 = gradient ×
input on a bias-free ReLU network, γ = 0 is LRP-0, batch = per example, nothing modified.
Layer-level relevance is R = z·u (u random): it has the structure of real relevance and keeps
the ratios R/z bounded, while still giving neurons with z < 0 relevance (as a target logit can).

A task is graded with the student's own helpers (lrp calls their lrp_layer, conservation their
lrp, canonize their merge_batchnorm): while grading, the student's code runs in a sandbox that
never receives answer-key code. Composites reach `lrp` as fixed rule lists (`Rules`), computed here.
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from grader.answers import lab04 as ref
from grader.checks import Case, CheckFailed, all_of, as_tensor, assert_close, property_check, reference_check
from grader.checks.properties import batch_equals_single, check_no_side_effects, side_effect_free
from grader.fixtures import mnist_batch, model


# ------------------------------------------------------------------ composites as data


class Rules:
    """A composite given as its result: the rule of each layer, computed by the answer key here."""

    def __init__(self, rules: list[dict]):
        self.rules = rules

    def __call__(self, layers):
        return [dict(r) for r in self.rules]


def rules_for(m: nn.Module, **params) -> Rules:
    return Rules(ref.make_composite(**params)(ref.leaf_layers(m)))


# ------------------------------------------------------------------ inputs

def _randomise(layer: nn.Module, g: torch.Generator, scale=0.3, bias=0.5) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * bias)
    return layer.eval()


def _relevance(layer, a, g, positive=False):
    """Relevance with the structure R = z·u (or relu(z)·|u|)."""
    with torch.no_grad():
        z = layer(a)
    u = torch.randn(z.shape, generator=g)
    return z.clamp(min=0) * u.abs() if positive else z * u


def weighted_cases() -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """(description, layer, a ≥ 0, R) on random and trained Linear / Conv2d layers."""
    g = torch.Generator().manual_seed(10)
    cases = []
    lin = _randomise(nn.Linear(20, 7), g)
    a = torch.rand(5, 20, generator=g)
    cases.append(("a random Linear(20, 7), 5 inputs", lin, a, _relevance(lin, a, g)))
    conv = _randomise(nn.Conv2d(3, 5, 3, padding=1), g)
    a = torch.rand(2, 3, 6, 6, generator=g)
    cases.append(("a random Conv2d(3, 5, 3, padding=1)", conv, a, _relevance(conv, a, g)))
    sconv = _randomise(nn.Conv2d(4, 6, 4, stride=2), g)
    a = torch.rand(2, 4, 9, 9, generator=g)
    cases.append(("a random Conv2d(4, 6, 4, stride=2)", sconv, a, _relevance(sconv, a, g)))
    cnn = model("mnist-cnn")
    x = mnist_batch(4)[0][:2]
    with torch.no_grad():
        a = cnn.features[:2](x)
    cases.append(("mnist-cnn's second conv on real activations", cnn.features[2], a, _relevance(cnn.features[2], a, g)))
    with torch.no_grad():
        a = cnn.flatten(cnn.pool(cnn.features(x)))
        logits = cnn.classifier(a)
    target = logits.argmin(1)  # the least likely class: a negative logit
    R = torch.zeros_like(logits).scatter(1, target[:, None], logits.gather(1, target[:, None]))
    cases.append(("mnist-cnn's classifier, relevance = a negative target logit", cnn.classifier, a, R))
    return cases


def zero_preactivation_case() -> Case:
    """A Linear(2, 1) whose pre-activation is exactly 0: the stabiliser's sign(0) = +1 decides the signs."""
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
        lin.bias.zero_()
    return Case("a Linear(2, 1) whose pre-activation is exactly 0 (sign(0) = +1), rule='epsilon' eps=0.25",
                dict(layer=lin, a=torch.ones(1, 2), R=torch.ones(1, 1), rule="epsilon", eps=0.25))


def invalid_cases() -> list[Case]:
    lin = _randomise(nn.Linear(6, 3), torch.Generator().manual_seed(13))
    a, R = torch.rand(2, 6), torch.rand(2, 3)
    return [Case("an unknown rule, 'alpha2beta1', on a Linear layer", dict(layer=lin, a=a, R=R, rule="alpha2beta1"),
                 raises="ValueError"),
            Case("nn.Sigmoid, a layer without an LRP rule", dict(layer=nn.Sigmoid(), a=a, R=a.clone()),
                 raises="TypeError")]


def rule_cases(rule: str, **params) -> list[Case]:
    return [Case(f"{d}, rule={rule!r} {params or ''}".strip(), dict(layer=layer, a=a, R=R, rule=rule, **params))
            for d, layer, a, R in weighted_cases()]


def zbox_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    cnn = model("mnist-cnn")
    x = mnist_batch(4)[0][:3]
    first = cnn.features[0]
    lin = _randomise(nn.Linear(10, 4), g)
    a = torch.rand(4, 10, generator=g) * 3 - 1
    return [Case("mnist-cnn's first conv on digits, bounds [0, 1]",
                 dict(layer=first, a=x, R=_relevance(first, x, g), rule="zbox", low=0.0, high=1.0)),
            Case("a random Linear(10, 4), inputs in [-1, 2], bounds [-1, 2]",
                 dict(layer=lin, a=a, R=_relevance(lin, a, g), rule="zbox", low=-1.0, high=2.0))]


def other_layer_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    cnn = model("mnist-cnn")
    x = mnist_batch(4)[0][:2]
    with torch.no_grad():
        a = cnn.features[:4](x)  # (2, 32, 28, 28), after a ReLU
        pre = cnn.features[:3](x)
    cases = [Case("nn.ReLU (relevance passes through)",
                  dict(layer=nn.ReLU(), a=pre, R=torch.randn(pre.shape, generator=g))),
             Case("nn.Flatten", dict(layer=nn.Flatten(), a=a[:, :4, :3, :3], R=torch.randn(2, 36, generator=g)))]
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1)):
        cases.append(Case(f"{pool} on real activations", dict(layer=pool, a=a, R=_relevance(pool, a, g))))
    return cases


def _sequential(seed: int, *layers: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for layer in layers:
        if isinstance(layer, ref.WEIGHTED):
            _randomise(layer, g, scale=0.4, bias=0.1)
    return nn.Sequential(*layers).eval()


def mlp() -> nn.Module:
    """Flatten first: the first layer with weights is not layer 0."""
    return _sequential(20, nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def avgpool_cnn() -> nn.Module:
    return _sequential(21, nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                       nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def bn_cnn(eps: float = 1e-2) -> nn.Module:
    """mnist-cnn's layers with a BatchNorm (random statistics, eval mode) after every conv and the classifier."""
    g = torch.Generator().manual_seed(4)
    layers = []
    for layer in ref.leaf_layers(model("mnist-cnn")):
        layers.append(copy.deepcopy(layer))
        if isinstance(layer, ref.WEIGHTED):
            c = layer.weight.shape[0]
            bn = nn.BatchNorm2d(c, eps=eps) if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d(c, eps=eps)
            _random_stats(bn, g, var=(0.5, 1.5))
            layers.append(bn)
    return nn.Sequential(*layers).eval()


def _random_stats(bn, g, var=(0.02, 0.5)):
    """Random running statistics and affine parameters (eval mode); running_var uniform in `var`."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(c, generator=g) * (var[1] - var[0]) + var[0])
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return bn.eval()


EPSILON_ONLY = dict(first=None, conv="epsilon", dense="epsilon", eps=0.25)
BOX_GAMMA_EPSILON = dict(first="zbox", conv="gamma", dense="epsilon", eps=0.25, gamma=0.25)


def lrp_cases() -> list[Case]:
    x, y = mnist_batch(4)
    xd, yd = mnist_batch(3, decoy=True)
    return [
        Case("mnist-cnn, 4 digits, their labels, LRP-0 everywhere (composite=None)",
             dict(model=model("mnist-cnn"), inputs=x, target=y)),
        Case("mnist-cnn, 4 digits, class 3 for all, ε = 0.25 everywhere",
             dict(model=model("mnist-cnn"), inputs=x, target=3, composite=rules_for(model("mnist-cnn"), **EPSILON_ONLY))),
        Case("decoy-mnist-cnn, 3 decoy digits, zB / γ / ε composite",
             dict(model=model("decoy-mnist-cnn"), inputs=xd, target=yd,
                  composite=rules_for(model("decoy-mnist-cnn"), **BOX_GAMMA_EPSILON))),
        Case("an MLP (Flatten → Linear → ReLU → …), zB / γ / ε composite",
             dict(model=mlp(), inputs=x, target=y, composite=rules_for(mlp(), **BOX_GAMMA_EPSILON))),
        Case("a CNN with AvgPool2d and AdaptiveAvgPool2d, z⁺ / ε composite",
             dict(model=avgpool_cnn(), inputs=x, target=torch.tensor([0, 5, 7, 9]),
                  composite=rules_for(avgpool_cnn(), first=None, conv="zplus", dense="epsilon", eps=0.1))),
    ]


# ------------------------------------------------------------------ lrp_layer

# Relevance divides by pre-activations, some near zero: rounding that differs with the thread count and
# the batch size reaches small entries, so the bound includes 1e-4 × the largest reference entry.
SCALE_ATOL = 1e-4

WEIGHTED_HINT = ("Gradient trick: z = layer'(a) (modified weights and bias), s = R / (z + δ·sign(z)) with "
                 "sign(0) = +1, c = ∂(z·s)/∂a, R_in = a ⊙ c.")

reference_check("lab04.lrp_layer.epsilon", "lrp_layer",
                "LRP-0 and the ε rule match the reference on Linear and Conv2d layers",
                lambda: rule_cases("zero") + rule_cases("epsilon", eps=0.25) + rule_cases("epsilon", eps=1.0)[:2]
                + [zero_preactivation_case()],
                ref.lrp_layer, rtol=1e-3, atol=1e-5, scale_atol=SCALE_ATOL,
                hint=WEIGHTED_HINT + " The ε rule adds ε with the sign of z; LRP-0 adds only 1e-9; the bias is part of z.")

reference_check("lab04.lrp_layer.gamma", "lrp_layer",
                "the γ rule matches the reference on Linear and Conv2d layers",
                lambda: rule_cases("gamma", gamma=0.25) + rule_cases("gamma", gamma=2.0)[:2],
                ref.lrp_layer, rtol=1e-3, atol=1e-5, scale_atol=30 * SCALE_ATOL,  # γ's denominators come nearest 0
                hint="γ rule: weights w + γ·w⁺ and bias b + γ·b⁺ in both z and the numerator (for a ≥ 0).")

reference_check("lab04.lrp_layer.zplus", "lrp_layer",
                "the z⁺ (α1β0) rule matches the reference on Linear and Conv2d layers",
                lambda: rule_cases("zplus"), ref.lrp_layer, rtol=1e-3, atol=1e-5, scale_atol=SCALE_ATOL,
                hint="z⁺ rule: only the positive weights w⁺ and the positive bias b⁺ (for a ≥ 0).")

reference_check("lab04.lrp_layer.zbox", "lrp_layer",
                "the zB rule matches the reference at the input layer, with bounds",
                zbox_cases, ref.lrp_layer, rtol=1e-3, atol=1e-5, scale_atol=SCALE_ATOL,
                hint="zB: z = W·a − W⁺·low − W⁻·high (no bias); R_in = a⊙(Wᵀs) − low⊙(W⁺ᵀs) − high⊙(W⁻ᵀs).")

reference_check("lab04.lrp_layer.other_layers", "lrp_layer",
                "ReLU, Flatten, max pooling and average pooling redistribute as specified; an unknown rule is a "
                "ValueError, a layer without a rule a TypeError",
                lambda: other_layer_cases() + invalid_cases(), ref.lrp_layer, rtol=1e-4, atol=1e-6,
                hint="ReLU passes R through; Flatten reshapes it to a's shape; max pooling gives each window's "
                     "relevance to its maximum; average pooling splits it in proportion to the inputs (the gradient "
                     "trick on the pool, δ = 1e-9). Pooling layers ignore `rule`.")


def _bias_free_copy(layer, drop=False):
    """A copy without bias: zeroed, or with `drop` removed altogether (bias=None)."""
    layer = copy.deepcopy(layer)
    with torch.no_grad():
        layer.bias.zero_()
    if drop:
        layer.bias = None
    return layer


def conservation_cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)
    cases = []
    for i, (d, layer, a, _) in enumerate(weighted_cases()[:4]):
        layer = _bias_free_copy(layer, drop=i % 2 == 0)
        d += " (bias=None)" if i % 2 == 0 else ""
        R = _relevance(layer, a, g, positive=True)
        for rule, params in (("zero", {}), ("gamma", dict(gamma=0.5)), ("zplus", {})):
            cases.append(Case(f"{d} without bias, rule={rule!r}", dict(layer=layer, a=a, R=R, rule=rule, **params)))
    x = mnist_batch(4)[0][:3]
    first = _bias_free_copy(model("mnist-cnn").features[0])
    cases.append(Case("mnist-cnn's first conv without bias on digits, rule='zbox', bounds [0, 1]",
                      dict(layer=first, a=x, R=_relevance(first, x, g, positive=True), rule="zbox", low=0.0, high=1.0)))
    for c in other_layer_cases()[2:]:
        cases.append(c)
    return cases


def conserves(fn, case: Case) -> None:
    kw = case.kwargs
    out = as_tensor(fn(**kw), "lrp_layer")
    if out.shape != kw["a"].shape:
        raise CheckFailed(f"lrp_layer on {case.description}: expected shape {tuple(kw['a'].shape)} (that of a), "
                          f"got {tuple(out.shape)}.")
    assert_close(out.flatten(1).sum(1), kw["R"].flatten(1).sum(1),
                 f"lrp_layer: total relevance in vs out on {case.description}", 1e-4, 1e-5,
                 "Without bias (and with a negligible stabiliser) these rules must conserve relevance.")


def gamma_zero_is_lrp0(fn, case: Case) -> None:
    kw = case.kwargs
    g0 = as_tensor(fn(**dict(kw, rule="gamma", gamma=0.0)), "lrp_layer")
    z0 = as_tensor(fn(**dict(kw, rule="zero")), "lrp_layer")
    assert_close(g0, z0, f"lrp_layer: γ rule with γ = 0 vs LRP-0 on {case.description}", 1e-4, 1e-5,
                 "With γ = 0 the γ rule is LRP-0.")


def layer_untouched(fn, case: Case) -> None:
    try:
        check_no_side_effects("lrp_layer", fn.call(case.kwargs, observe=True).facts)
    except CheckFailed as err:
        raise CheckFailed(f"{err} Build modified weights as new tensors (w.clamp(min=0), not in place) "
                          "and work on a.detach().") from None


property_check("lab04.lrp_layer.conservation", "lrp_layer",
               "conserves relevance where theory says so (no bias: LRP-0, γ, z⁺; zB; pooling)",
               conservation_cases, conserves)

property_check("lab04.lrp_layer.properties", "lrp_layer",
               "γ = 0 is LRP-0; batch = per example; layer and inputs untouched",
               lambda: rule_cases("zero")[:2] + rule_cases("epsilon", eps=0.25)[2:3] + zbox_cases()[:1],
               all_of(layer_untouched, gamma_zero_is_lrp0,
                      batch_equals_single("lrp_layer", 1e-4, 1e-6, row_kwargs=("a", "R"), scale_atol=SCALE_ATOL)))

# ------------------------------------------------------------------ lrp

reference_check("lab04.lrp.reference", "lrp",
                "matches the reference on the MNIST CNNs, an MLP and a CNN with average pooling, for several composites",
                lrp_cases, ref.lrp, rtol=1e-3, atol=1e-5, scale_atol=SCALE_ATOL,
                hint="Forward through leaf_layers(model) keeping each layer's input; start from R = the target logit "
                     "(0 elsewhere); go backwards with lrp_layer(layer, a, R, **rules[i]), rules = composite(layers).")


def bias_free_cases() -> list[Case]:
    x, y = mnist_batch(4)
    xd, yd = mnist_batch(3, decoy=True)
    return [Case("bias-free mnist-cnn, 4 digits, their labels", dict(model=ref.bias_free(model("mnist-cnn")), inputs=x, target=y)),
            Case("bias-free decoy-mnist-cnn, class 3", dict(model=ref.bias_free(model("decoy-mnist-cnn")), inputs=xd, target=3))]


def equals_gradient_x_input(fn, case: Case) -> None:
    kw = case.kwargs
    m, x, t = kw["model"], kw["inputs"], kw["target"]
    xg = x.clone().requires_grad_(True)
    index = torch.as_tensor(t).reshape(-1).expand(len(x))
    (g,) = torch.autograd.grad(m(xg).gather(1, index[:, None]).sum(), xg)
    assert_close(fn(**kw), g * x, f"lrp with LRP-0 vs gradient × input on {case.description}", 1e-3, 1e-5,
                 "On a ReLU network without biases, LRP-0 is exactly gradient × input: check LRP-0's stabiliser "
                 "(1e-9), max pooling (winner takes all) and that R starts as the target logit.")


property_check("lab04.lrp.gradient_x_input", "lrp",
               "LRP-0 equals gradient × input on bias-free ReLU networks",
               bias_free_cases, equals_gradient_x_input)


def all_layers_match(fn, case: Case) -> None:
    kw = case.kwargs
    expected = ref.lrp(**kw, all_layers=True)
    actual = fn(**kw, all_layers=True)
    if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
        raise CheckFailed(f"lrp(..., all_layers=True) should return a list of {len(expected)} tensors "
                          f"(one per layer input, then the output relevance), got "
                          f"{type(actual).__name__}{' of length ' + str(len(actual)) if isinstance(actual, (list, tuple)) else ''}.")
    for i, (r, e) in enumerate(zip(actual, expected)):
        assert_close(r, e, f"lrp(..., all_layers=True)[{i}] on {case.description}", 1e-3, 1e-5,
                     "Element i is the relevance at the input of layer i; the last is the one-hot target logit.")


property_check("lab04.lrp.all_layers", "lrp",
               "all_layers=True returns the relevance at every layer, input first",
               lambda: lrp_cases()[1:3], all_layers_match)

property_check("lab04.lrp.properties", "lrp",
               "batch = per example; model and inputs untouched; repeatable",
               lambda: lrp_cases()[2:3],
               all_of(batch_equals_single("lrp", 1e-3, 1e-5, scale_atol=SCALE_ATOL), side_effect_free("lrp")))

# ------------------------------------------------------------------ make_composite


def composite_cases(models) -> list[Case]:
    x, y = (t[:3] for t in mnist_batch(4))
    settings = [dict(), dict(first="zplus", conv="epsilon", dense="zero", eps=0.5),
                dict(first="zbox", conv="zplus", dense="epsilon", eps=0.1, low=-1.0, high=2.0),
                dict(first=None, conv="gamma", dense="epsilon", gamma=1.0, eps=1.0)]
    return [Case(f"{name} with make_composite(**{params})", dict(model=m, inputs=x, target=y, params=params))
            for name, m in models() for params in settings]


def _rules_of(composite, kwargs, layers):
    """Runs in the notebook: the student's composite applied to the model's layers."""
    return composite(layers) if callable(composite) else type(composite).__name__


def same_lrp(fn, case: Case) -> None:
    kw = case.kwargs
    layers = ref.leaf_layers(kw["model"])
    rules = fn.call(kw["params"], post=functools.partial(_rules_of, layers=layers)).output
    if isinstance(rules, str):
        raise CheckFailed(f"make_composite should return a function of the layer list, got {rules}.")
    if not isinstance(rules, (list, tuple)) or len(rules) != len(layers) or not all(isinstance(r, dict) for r in rules):
        raise CheckFailed(f"composite(layers) should return a list of {len(layers)} dicts (one per layer).")
    expected = ref.lrp(kw["model"], kw["inputs"], kw["target"], ref.make_composite(**kw["params"]))
    try:
        actual = ref.lrp(kw["model"], kw["inputs"], kw["target"], Rules(list(rules)))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckFailed(f"the rules your composite returns could not be used ({type(err).__name__}: {err}).") from None
    assert_close(actual, expected, f"LRP with your composite on {case.description}", 1e-4, 1e-6,
                 "`first` goes to the first Conv2d/Linear (none if first=None), `conv` to the other Conv2d, "
                 "`dense` to the other Linear layers; pass eps, gamma, low and high on.")


property_check("lab04.make_composite.cnn", "make_composite",
               "gives the reference LRP on mnist-cnn for four settings (LRP runs on the reference code)",
               lambda: composite_cases(lambda: [("mnist-cnn", model("mnist-cnn"))]), same_lrp)

property_check("lab04.make_composite.first_layer", "make_composite",
               "finds the first layer with weights (an MLP starting with Flatten; a CNN with average pooling)",
               lambda: composite_cases(lambda: [("an MLP (Flatten first)", mlp()),
                                                ("a CNN with average pooling", avgpool_cnn())]), same_lrp)

# ------------------------------------------------------------------ conservation

reference_check("lab04.conservation.reference", "conservation",
                "reports the same per-layer totals as the reference (including the leak of ε and biases)",
                lambda: lrp_cases()[1:3] + lrp_cases()[4:], ref.conservation, rtol=1e-3, atol=1e-4,
                hint="Return a (layers + 1, batch) tensor: row i sums the relevance at the input of layer i "
                     "over everything but the batch axis; the last row is the target logit.")


def constant_totals(fn, case: Case) -> None:
    kw = case.kwargs
    totals = as_tensor(fn(**kw), "conservation")
    n = len(ref.leaf_layers(kw["model"])) + 1
    b = kw["inputs"].shape[0]
    if totals.shape != (n, b):
        raise CheckFailed(f"conservation: expected shape ({n}, {b}) = (layers + 1, batch), got {tuple(totals.shape)}.")
    with torch.no_grad():
        logits = kw["model"](kw["inputs"])
    index = torch.as_tensor(kw["target"]).reshape(-1).expand(b)
    assert_close(totals, logits.gather(1, index[:, None]).T.expand(n, b),
                 f"conservation on {case.description}", 1e-3, 1e-4,
                 "Without biases and with LRP-0 / z⁺ / zB every layer's total equals the target logit.")


property_check("lab04.conservation.bias_free", "conservation",
               "every layer's total equals the target logit where theory says so (no bias, LRP-0 / z⁺ / zB)",
               lambda: bias_free_cases()[:1] + [Case(bias_free_cases()[1].description + ", zB / z⁺ / LRP-0",
                                                     dict(bias_free_cases()[1].kwargs, composite=rules_for(
                                                         bias_free_cases()[1].kwargs["model"],
                                                         first="zbox", conv="zplus", dense="zero")))],
               constant_totals)

# ------------------------------------------------------------------ BatchNorm


def merge_cases() -> list[Case]:
    g = torch.Generator().manual_seed(30)
    conv = _randomise(nn.Conv2d(3, 6, 3, padding=1), g)
    conv_nb = _randomise(nn.Conv2d(3, 6, 3, bias=False), g)
    lin = _randomise(nn.Linear(12, 5), g)
    return [
        Case("Conv2d(3, 6, 3) + BatchNorm2d(6, eps=0.1)", dict(layer=conv, bn=_random_stats(nn.BatchNorm2d(6, eps=0.1), g))),
        Case("Conv2d(3, 6, 3, bias=False) + BatchNorm2d(6)", dict(layer=conv_nb, bn=_random_stats(nn.BatchNorm2d(6), g))),
        Case("Linear(12, 5) + BatchNorm1d(5, eps=0.05)", dict(layer=lin, bn=_random_stats(nn.BatchNorm1d(5, eps=0.05), g))),
    ]


def _merged_on(merged, kwargs, x):
    """Runs in the notebook: the returned layer's type and its output on x."""
    if not isinstance(merged, nn.Module):
        return type(merged).__name__, None
    with torch.no_grad():
        return type(merged).__name__, merged.eval()(x)


def merged_outputs(fn, case: Case) -> None:
    layer, bn = case.kwargs["layer"], case.kwargs["bn"]
    g = torch.Generator().manual_seed(31)
    x = torch.randn((4, 12) if isinstance(layer, nn.Linear) else (2, 3, 7, 7), generator=g)
    kind, actual = fn.call({}, args=(layer, bn), post=functools.partial(_merged_on, x=x)).output
    if kind != type(layer).__name__:
        raise CheckFailed(f"merge_batchnorm should return a {type(layer).__name__}, got {kind}.")
    with torch.no_grad():
        expected = bn(layer(x))
    assert_close(actual, expected, f"merged layer vs layer then BatchNorm (eval mode) on {case.description}", 1e-4, 1e-5,
                 "y = γ·(Wx + b − running_mean)/√(running_var + eps) + β: scale W and b per output channel, "
                 "and create a bias if the layer has none.")


def merge_untouched(fn, case: Case) -> None:
    facts = fn.call({}, args=(case.kwargs["layer"], case.kwargs["bn"]), post=_kind, observe=True).facts
    try:
        check_no_side_effects("merge_batchnorm", facts)
    except CheckFailed:
        raise CheckFailed("merge_batchnorm changed the layer or the BatchNorm it was given: return a new layer "
                          "(copy.deepcopy) and leave both arguments as they were.") from None


def _kind(output, kwargs):
    return type(output).__name__


property_check("lab04.merge_batchnorm.outputs", "merge_batchnorm",
               "the merged layer computes layer-then-BatchNorm (eval mode) exactly, with and without bias",
               merge_cases, merged_outputs)

property_check("lab04.merge_batchnorm.properties", "merge_batchnorm",
               "returns a new layer; the layer and the BatchNorm it was given are untouched",
               merge_cases, all_of(merged_outputs, merge_untouched))


def nested_bn_cnn() -> nn.Module:
    """Blocks inside blocks, a BatchNorm after a ReLU (nothing to merge into) and one after a conv."""
    g = torch.Generator().manual_seed(5)
    bns = [nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(6)]
    for bn in bns:
        _random_stats(bn, g, var=(0.5, 1.5))
    block = _sequential(22, nn.Conv2d(1, 4, 5, stride=2), bns[0], nn.ReLU())
    model_ = nn.Sequential(block, bns[1], _sequential(23, nn.Conv2d(4, 6, 3, stride=2), bns[2], nn.ReLU()),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), _sequential(24, nn.Linear(6, 10)))
    return model_.eval()


def canonize_case() -> list[Case]:
    x, _ = mnist_batch(4)
    return [Case("mnist-cnn's layers with a BatchNorm after every conv and the classifier", dict(model=bn_cnn(), inputs=x)),
            Case("nested blocks, with a BatchNorm after a ReLU (it stays: there is no layer to merge it into)",
                 dict(model=nested_bn_cnn(), inputs=x))]


def _canonized_on(out, kwargs, x):
    """Runs in the notebook: BatchNorm layers left in the returned model, layers shared with the original
    (not copies), and its output on x."""
    if not isinstance(out, nn.Module):
        return type(out).__name__, 0, 0, None
    with torch.no_grad():
        left = sum(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in out.modules())
        originals = {id(m) for m in kwargs["model"].modules()}
        shared = sum(id(m) in originals for m in out.modules())
        return "Module", left, shared, out.eval()(x)


def canonized(fn, case: Case) -> None:
    m, x = case.kwargs["model"], case.kwargs["inputs"]
    reply = fn.call({"model": m}, post=functools.partial(_canonized_on, x=x), observe=True)
    kind, left, shared, actual = reply.output
    if kind != "Module":
        raise CheckFailed(f"canonize should return an nn.Module, got {kind}.")
    expected_left = sum(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in ref.canonize(m).modules())
    if left != expected_left:
        raise CheckFailed(f"canonize left {left} BatchNorm layers in the model on {case.description}; expected "
                          f"{expected_left}: merge each BatchNorm that directly follows a Conv2d or Linear (in the "
                          "order of leaf_layers(model)) into that layer, and keep the others.")
    if shared:
        raise CheckFailed(f"canonize returned {shared} of the model's own modules: the new model must hold copies, "
                          "so that changing one model never changes the other.")
    try:
        check_no_side_effects("canonize", reply.facts)
    except CheckFailed:
        raise CheckFailed("canonize changed the model it was given: merge into copies.") from None
    with torch.no_grad():
        assert_close(actual, m(x), f"canonized model vs the original on {case.description}", 1e-4, 1e-4,
                     "Merging must not change the outputs (eval mode).")


property_check("lab04.canonize.outputs", "canonize",
               "no BatchNorm left, the same outputs, the original model untouched",
               canonize_case, canonized)
