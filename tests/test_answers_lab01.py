"""The Lab 1 answer key against captum and against slow, explicit re-implementations."""
import pytest
import torch
from captum.attr import GuidedBackprop, InputXGradient, LayerGradientXActivation, Occlusion, Saliency

from grader.answers import lab01 as ref
from grader.fixtures import mnist_batch, model, text_batch
from xailab.metrics import spearman


@pytest.fixture(scope="module")
def cnn():
    x, y = mnist_batch(4)
    return model("mnist-cnn"), x, y


def test_gradient_matches_captum_saliency(cnn):
    m, x, y = cnn
    for absolute in (False, True):
        expected = Saliency(m).attribute(x.clone(), target=y, abs=absolute)
        torch.testing.assert_close(ref.vanilla_gradient(m, x, y, absolute=absolute), expected)


def test_gradient_x_input_matches_captum(cnn):
    m, x, y = cnn
    torch.testing.assert_close(ref.gradient_x_input(m, x, y), InputXGradient(m).attribute(x.clone(), target=y))


def test_guided_backprop_matches_captum(cnn):
    m, x, y = cnn
    torch.testing.assert_close(ref.guided_backprop(m, x, y), GuidedBackprop(m).attribute(x.clone(), target=y),
                               rtol=1e-4, atol=1e-6)


def test_guided_backprop_differs_from_gradient(cnn):
    m, x, y = cnn
    assert spearman(ref.guided_backprop(m, x, y), ref.vanilla_gradient(m, x, y)).mean() < 0.95


@pytest.mark.parametrize("patch,stride,baseline", [(4, 4, 0.0), (6, 2, 0.5), (7, 7, 0.0)])
def test_occlusion_matches_captum(cnn, patch, stride, baseline):
    """Where the windows tile the image exactly (captum places the last window differently otherwise)."""
    m, x, y = cnn
    expected = Occlusion(m).attribute(x.clone(), sliding_window_shapes=(1, patch, patch),
                                      strides=(1, stride, stride), baselines=baseline, target=y)[:, 0]
    torch.testing.assert_close(ref.occlusion(m, x, y, patch, stride, baseline), expected, rtol=1e-4, atol=1e-5)


def test_occlusion_matches_a_slow_loop(cnn):
    m, x, y = cnn
    patch, stride = 6, 4
    total, count = torch.zeros(4, 28, 28), torch.zeros(28, 28)
    with torch.no_grad():
        base = m(x).gather(1, y[:, None])[:, 0]
        for top in range(0, 28 - patch + 1, stride):
            for left in range(0, 28 - patch + 1, stride):
                occluded = x.clone()
                occluded[:, :, top:top + patch, left:left + patch] = 0
                drop = base - m(occluded).gather(1, y[:, None])[:, 0]
                total[:, top:top + patch, left:left + patch] += drop[:, None, None]
                count[top:top + patch, left:left + patch] += 1
    expected = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    torch.testing.assert_close(ref.occlusion(m, x, y, patch, stride), expected, rtol=1e-4, atol=1e-5)


def test_smoothgrad_matches_a_slow_loop(cnn):
    m, x, y = cnn
    n, level = 5, 0.2
    fast = ref.smoothgrad(m, x, y, n_samples=n, noise_level=level, batch_size=3,
                          generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = torch.randn((n, *x.shape), generator=g)
    slow = torch.zeros_like(x)
    for b in range(len(x)):
        sigma = level * (x[b].max() - x[b].min())
        for s in range(n):
            slow[b] += ref.vanilla_gradient(m, x[b:b + 1] + sigma * noise[s, b:b + 1], y[b:b + 1])[0] / n
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-bert-sentiment", "minilm-sentiment"])
def test_token_saliency_matches_captum_layer_attribution(name):
    m = model(name)
    batch = text_batch(name)
    layer = LayerGradientXActivation(m, m.get_input_embeddings())
    args = dict(inputs=batch["input_ids"], target=1, additional_forward_args=(batch["attention_mask"],))
    gxa = layer.attribute(**args).sum(-1) * batch["attention_mask"]
    torch.testing.assert_close(ref.token_saliency(m, **batch, target=1, reduction="grad_x_input"), gxa,
                               rtol=1e-4, atol=1e-6)
    grad = LayerGradientXActivation(m, m.get_input_embeddings(), multiply_by_inputs=False).attribute(**args)
    torch.testing.assert_close(ref.token_saliency(m, **batch, target=1), grad.norm(dim=-1) * batch["attention_mask"],
                               rtol=1e-4, atol=1e-6)
