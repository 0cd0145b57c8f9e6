"""The Lab 4 answer key against zennit and against slow, explicit per-neuron re-implementations.

zennit conventions matched here: every rule's float stabiliser is added with the sign of the
denominator (sign(0) = +1) — we pass `stabilizer=STABILIZER` (zennit's default is 1e-6); ReLU is
`Pass`, average pooling is `Norm` (proportional), max pooling is left to the gradient (winner takes
all). zennit's Gamma is the generalised rule (it boosts the negative parts where z < 0); it coincides
with the classic rule whenever neurons with z < 0 carry no relevance, which holds in a ReLU network
whose conv layers all feed a ReLU — the comparisons below use such models or relevance R = relu(z)·u.
"""
import warnings

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlus, LayerMapComposite
from zennit.rules import AlphaBeta, Epsilon, Gamma, Norm, ZBox, ZPlus

from grader.answers import lab04 as ref
from grader.fixtures import mnist_batch, model
from grader.checks.lab04 import bn_cnn

S = ref.STABILIZER


def zennit_relevance(m, x, composite, attr_output):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=m, composite=composite) as attributor:
            _, relevance = attributor(x.clone(), attr_output=attr_output)
    return relevance


def one_hot_logit(target):
    def fn(output):
        index = torch.as_tensor(target).reshape(-1).expand(output.shape[0])
        return torch.zeros_like(output).scatter(1, index[:, None], output.gather(1, index[:, None]))
    return fn


LAYERS = {
    "linear": lambda: nn.Linear(12, 5),
    "conv": lambda: nn.Conv2d(3, 4, 3, padding=1),
    "strided conv": lambda: nn.Conv2d(2, 3, 4, stride=2),
}


def layer_inputs(kind, seed=0):
    torch.manual_seed(seed)
    layer = LAYERS[kind]().eval()
    with torch.no_grad():
        layer.bias.normal_(0, 0.5)
    shape = (4, 12) if kind == "linear" else (2, 3, 6, 6) if kind == "conv" else (2, 2, 8, 8)
    a = torch.rand(shape)
    with torch.no_grad():
        z = layer(a)
    return layer, a, z


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("rule,zennit_rule,kwargs", [
    ("zero", Epsilon(epsilon=S), {}),
    ("epsilon", Epsilon(epsilon=0.25), dict(eps=0.25)),
    ("epsilon", Epsilon(epsilon=2.0), dict(eps=2.0)),
    ("gamma", Gamma(gamma=0.25, stabilizer=S), dict(gamma=0.25)),
    ("gamma", Gamma(gamma=3.0, stabilizer=S), dict(gamma=3.0)),
    ("zplus", ZPlus(stabilizer=S), {}),
    ("zplus", AlphaBeta(alpha=1, beta=0, stabilizer=S), {}),
    ("zbox", ZBox(low=0.0, high=1.0, stabilizer=S), dict(low=0.0, high=1.0)),
    ("zbox", ZBox(low=-0.5, high=2.0, stabilizer=S), dict(low=-0.5, high=2.0)),
])
def test_layer_rules_match_zennit(kind, rule, zennit_rule, kwargs):
    layer, a, z = layer_inputs(kind)
    u = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    R = z.clamp(min=0) * u if rule == "gamma" else z * u  # gamma: see the module docstring
    net = nn.Sequential(layer)
    expected = zennit_relevance(net, a, LayerMapComposite([((nn.Linear, nn.Conv2d), zennit_rule)]), R)
    torch.testing.assert_close(ref.lrp_layer(layer, a, R, rule, **kwargs), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2)])
def test_pooling_matches_zennit(pool):
    a = torch.rand(2, 3, 7, 7)
    with torch.no_grad():
        R = torch.randn(pool(a).shape) * pool(a)
    composite = LayerMapComposite([((nn.AvgPool2d, nn.AdaptiveAvgPool2d), Norm(stabilizer=S))])
    expected = zennit_relevance(nn.Sequential(pool), a, composite, R)
    torch.testing.assert_close(ref.lrp_layer(pool, a, R), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mnist-cnn", "decoy-mnist-cnn"])
@pytest.mark.parametrize("target", ["labels", 3])
def test_epsilon_gamma_box_matches_zennit(name, target):
    m = model(name)
    x, y = mnist_batch(4, decoy=name.startswith("decoy"))
    t = y if target == "labels" else target
    composite = EpsilonGammaBox(low=0.0, high=1.0, epsilon=0.25, gamma=0.25, stabilizer=S)
    expected = zennit_relevance(m, x, composite, one_hot_logit(t))
    actual = ref.lrp(m, x, t, ref.make_composite("zbox", "gamma", "epsilon", eps=0.25, gamma=0.25))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def test_epsilon_plus_matches_zennit():
    m = model("mnist-cnn")
    x, y = mnist_batch(4)
    expected = zennit_relevance(m, x, EpsilonPlus(epsilon=0.5, stabilizer=S), one_hot_logit(y))
    actual = ref.lrp(m, x, y, ref.make_composite(None, "zplus", "epsilon", eps=0.5))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def test_batchnorm_merge_matches_zennit_canonizer():
    # zennit's canonizer turns the BatchNorm into running_var = 1 but keeps its eps, so the "identity" left
    # behind scales by 1/sqrt(1 + eps): exact only for eps = 0.
    bn_model = bn_cnn(eps=0.0)
    x, y = mnist_batch(4)
    composite = EpsilonPlus(epsilon=0.25, stabilizer=S, canonizers=[SequentialMergeBatchNorm()])
    expected = zennit_relevance(bn_model, x, composite, one_hot_logit(y))
    actual = ref.lrp(ref.canonize(bn_model), x, y, ref.make_composite(None, "zplus", "epsilon"))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ref.canonize(bn_model)(x), bn_model(x), rtol=1e-5, atol=1e-5)
        eps_model = bn_cnn(eps=0.05)
        torch.testing.assert_close(ref.canonize(eps_model)(x), eps_model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ slow, explicit per-neuron versions

def slow_linear(layer, a, R, rule, eps=0.25, gamma=0.25, low=0.0, high=1.0):
    """R_j = Σ_k num_jk / den_k · R_k, one neuron at a time (loops over examples, k and j)."""
    W, b = layer.weight.detach().double(), layer.bias.detach().double()
    a, R = a.double(), R.double()
    out = torch.zeros_like(a)
    for n in range(a.shape[0]):
        for k in range(W.shape[0]):
            num = []
            for j in range(W.shape[1]):
                z = a[n, j] * W[k, j]
                if rule in ("zero", "epsilon"):
                    num.append(z)
                elif rule == "gamma":
                    num.append(z + gamma * max(z, 0.0))
                elif rule == "zplus":
                    num.append(max(z, 0.0))
                elif rule == "zbox":
                    num.append(z - low * max(W[k, j], 0.0) - high * min(W[k, j], 0.0))
            bias = {"zero": b[k], "epsilon": b[k], "gamma": b[k] + gamma * max(b[k], 0.0),
                    "zplus": max(b[k], 0.0), "zbox": 0.0}[rule]
            den = sum(num) + bias
            delta = eps if rule == "epsilon" else S
            den = den + delta * (1.0 if den >= 0 else -1.0)
            for j in range(W.shape[1]):
                out[n, j] += num[j] / den * R[n, k]
    return out


@pytest.mark.parametrize("rule,kwargs", [("zero", {}), ("epsilon", dict(eps=0.5)), ("gamma", dict(gamma=0.5)),
                                         ("zplus", {}), ("zbox", dict(low=0.0, high=1.0))])
def test_rules_match_a_slow_explicit_loop(rule, kwargs):
    torch.manual_seed(3)
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.bias.normal_(0, 0.5)
    a = torch.rand(3, 6)
    R = torch.randn(3, 4)
    expected = slow_linear(layer, a, R, rule, **kwargs).float()
    torch.testing.assert_close(ref.lrp_layer(layer, a, R, rule, **kwargs), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("biases", [False, True])
def test_lrp0_equals_gradient_times_input(biases):
    """Exact on a bias-free ReLU net; with biases too (R/z is the gradient either way), up to the stabiliser."""
    m = model("mnist-cnn") if biases else ref.bias_free(model("mnist-cnn"))
    x, y = mnist_batch(4)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xg).gather(1, y[:, None]).sum(), xg)
    torch.testing.assert_close(ref.lrp(m, x, y), g * x, rtol=1e-4, atol=1e-5 if biases else 1e-6)


def test_conservation_on_a_bias_free_net():
    m = ref.bias_free(model("mnist-cnn"))
    x, y = mnist_batch(4)
    totals = ref.conservation(m, x, y)
    torch.testing.assert_close(totals, totals[-1:].expand_as(totals), rtol=1e-4, atol=1e-5)
