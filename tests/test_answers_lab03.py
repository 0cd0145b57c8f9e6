"""The Lab 3 answer key against captum and against slow, explicit re-implementations."""

import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from grader.answers import lab03 as ref
from grader.fixtures import mnist_batch, model, text_batch

CAPTUM = {"left": "riemann_left", "right": "riemann_right", "midpoint": "riemann_middle"}


@pytest.fixture(scope="module")
def cnn():
    x, y = mnist_batch(4)
    return model("mnist-cnn"), x, y


def captum_ig(m, x, y, rule, n, baseline=None, batch_size=None):
    """captum's IG in our convention: our trapezoid with n intervals is captum's with n + 1 points,
    whose weights sum to n/(n + 1) instead of 1."""
    ig = IntegratedGradients(m)
    if rule == "trapezoid":
        return ig.attribute(x.clone(), baselines=baseline, target=y, n_steps=n + 1, method="riemann_trapezoid",
                            internal_batch_size=batch_size) * (n + 1) / n
    return ig.attribute(x.clone(), baselines=baseline, target=y, n_steps=n, method=CAPTUM[rule],
                        internal_batch_size=batch_size)


@pytest.mark.parametrize("rule", ["left", "right", "midpoint"])
def test_rule_matches_captum(rule):
    for n in (2, 5, 16):
        step_sizes, alphas = approximation_parameters(CAPTUM[rule])
        a, w = ref.riemann_rule(n, rule)
        torch.testing.assert_close(a, torch.tensor(alphas(n), dtype=torch.float64))
        torch.testing.assert_close(w, torch.tensor(step_sizes(n), dtype=torch.float64))


def test_trapezoid_is_captums_with_one_more_point_rescaled():
    step_sizes, alphas = approximation_parameters("riemann_trapezoid")
    a, w = ref.riemann_rule(7, "trapezoid")
    torch.testing.assert_close(a, torch.tensor(alphas(8), dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor(step_sizes(8), dtype=torch.float64) * 8 / 7)
    assert w.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ref.RULES)
@pytest.mark.parametrize("baseline", [None, 0.5, "noise"])
def test_ig_matches_captum(cnn, rule, baseline):
    m, x, y = cnn
    if baseline == "noise":
        baseline = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    ours = ref.integrated_gradients(m, x, y, baseline, n_steps=12, rule=rule, batch_size=20)
    torch.testing.assert_close(ours, captum_ig(m, x, y, rule, 12, baseline, batch_size=20), rtol=1e-4, atol=1e-6)


def test_captum_worked_example():
    """captum's test model f = ReLU(ReLU(x1) − 1 − ReLU(x2)) at (3, 1), zero baseline: (1.5, −0.5)."""
    f = lambda x: torch.relu(torch.relu(x[:, :1]) - 1 - torch.relu(x[:, 1:]))
    attr = ref.integrated_gradients(f, torch.tensor([[3.0, 1.0]]), 0, n_steps=50)
    torch.testing.assert_close(attr, torch.tensor([[1.5, -0.5]]))


def test_ig_matches_a_slow_loop(cnn):
    m, x, y = cnn
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    slow = torch.zeros_like(x)
    for b in range(len(x)):
        for k in range(9):  # trapezoid, 8 intervals
            point = (base[b:b + 1] + k / 8 * (x[b:b + 1] - base[b:b + 1])).requires_grad_(True)
            (g,) = torch.autograd.grad(m(point)[0, y[b]], point)
            slow[b] += g[0] * (0.5 if k in (0, 8) else 1.0) / 8
    slow *= x - base
    torch.testing.assert_close(ref.integrated_gradients(m, x, y, base, 8, "trapezoid", batch_size=7), slow,
                               rtol=1e-4, atol=1e-6)


def test_completeness_converges(cnn):
    m, x, y = cnn
    gaps = [ref.completeness_gap(m, x, y, ref.integrated_gradients(m, x, y, n_steps=n)).abs().max().item()
            for n in (4, 64)]
    assert gaps[1] < gaps[0] / 4


def test_linear_model_is_exact_for_every_rule():
    lin = nn.Linear(6, 2)
    x, base = torch.randn(3, 6), torch.randn(3, 6)
    for rule in ref.RULES:
        torch.testing.assert_close(ref.integrated_gradients(lin, x, 1, base, 3, rule),
                                   (x - base) * lin.weight[1].detach())


def test_expected_ig_is_the_mean_over_drawn_baselines(cnn):
    m, x, y = cnn
    fast = ref.expected_integrated_gradients(m, x, y, 3, 6, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    bases = [torch.rand(x.shape, generator=g) for _ in range(3)]
    slow = sum(captum_ig(m, x, y, "midpoint", 6, b) for b in bases) / 3
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_blur_baseline_is_separable_gaussian():
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    sigma = 2.0
    k = torch.arange(-6, 7, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel /= kernel.sum()
    padded = nn.functional.pad(x, [6] * 4, mode="reflect")
    slow = nn.functional.conv2d(nn.functional.conv2d(padded, kernel.reshape(1, 1, 1, -1)), kernel.reshape(1, 1, -1, 1))
    torch.testing.assert_close(ref.make_baseline(x, "blur", sigma), slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-bert-sentiment", "minilm-sentiment"])
@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_token_ig_matches_captum_layer_ig(name, rule):
    m = model(name)
    batch = text_batch(name)
    base = ref.token_baseline(batch["input_ids"], batch["attention_mask"], m.tokenizer)
    assert (base[:, 0] == m.tokenizer.cls_token_id).all()
    assert ((base == m.tokenizer.sep_token_id).sum(1) == 1).all()
    n = 6
    method, points, scale = ("riemann_trapezoid", n + 1, (n + 1) / n) if rule == "trapezoid" else ("riemann_middle", n, 1)
    lig = LayerIntegratedGradients(m, m.get_input_embeddings())
    expected = lig.attribute(batch["input_ids"], baselines=base, target=torch.tensor([1, 0, 1, 0]),
                             additional_forward_args=(batch["attention_mask"],), n_steps=points, method=method,
                             internal_batch_size=16)
    expected = expected.sum(-1) * batch["attention_mask"] * scale
    ours = ref.token_integrated_gradients(m, **batch, target=torch.tensor([1, 0, 1, 0]), n_steps=n, rule=rule,
                                          batch_size=16)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
