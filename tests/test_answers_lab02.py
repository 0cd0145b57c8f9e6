"""The Lab 2 answer key against captum and against slow, explicit re-implementations."""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

from grader.answers import lab02 as ref
from grader.fixtures import mnist_batch, model
from xailab.datasets.photos import load_photo


@pytest.fixture(scope="module")
def cnn():
    x, y = mnist_batch(4)
    return model("mnist-cnn"), x, y


@pytest.fixture(scope="module")
def effnet():
    return model("efficientnet-lite0"), torch.stack([load_photo("chelsea", 160), load_photo("coffee", 160)]), \
        torch.tensor([285, 967])


def captum_grad_cam(m, layer, x, y):
    """captum's LayerGradCam with the paper's ReLU, upsampled as the lab specifies (captum's default is nearest)."""
    attr = LayerGradCam(m, layer).attribute(x.clone(), target=y, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]


@pytest.mark.parametrize("layer", ["features", "features.6"])
def test_grad_cam_matches_captum_on_mnist(cnn, layer):
    m, x, y = cnn
    module = m.get_submodule(layer)
    torch.testing.assert_close(ref.grad_cam(m, x, y, module), captum_grad_cam(m, module, x, y),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["net.bn2", "net.blocks.3"])
def test_grad_cam_matches_captum_on_efficientnet(effnet, layer):
    m, x, y = effnet
    module = m.get_submodule(layer)
    torch.testing.assert_close(ref.grad_cam(m, x, y, module), captum_grad_cam(m, module, x, y),
                               rtol=1e-4, atol=1e-6)


def test_captum_interpolate_is_bilinear_without_align_corners():
    a = torch.rand(2, 1, 5, 7)
    torch.testing.assert_close(LayerAttribution.interpolate(a, (20, 28), interpolate_mode="bilinear"),
                               F.interpolate(a, size=(20, 28), mode="bilinear", align_corners=False))


def test_guided_grad_cam_matches_captum(cnn):
    m, x, y = cnn
    expected = GuidedGradCam(m, m.features).attribute(x.clone(), target=y, interpolate_mode="bilinear")
    torch.testing.assert_close(ref.guided_grad_cam(m, x, y, m.features), expected, rtol=1e-4, atol=1e-7)


def slow_cam(m, x, y, features, classifier):
    """CAM with an explicit loop over examples and channels."""
    acts = {}
    handle = features.register_forward_hook(lambda mod, i, out: acts.setdefault("a", out.detach()))
    with torch.no_grad():
        m(x)
    handle.remove()
    a = acts["a"]
    maps = torch.zeros(a.shape[0], *a.shape[2:])
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            maps[b] += classifier.weight[int(y[b]), k].item() * a[b, k]
    maps = maps.clamp(min=0)
    return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("name", ["mnist-cnn", "concept-cnn", "efficientnet-lite0"])
def test_cam_matches_a_slow_loop_and_grad_cam(name, cnn, effnet):
    if name == "efficientnet-lite0":
        m, x, y = effnet
    elif name == "mnist-cnn":
        m, x, y = cnn
    else:
        from grader.checks.lab02 import concept_batch
        m, (x, y, _) = model(name), concept_batch(4)
    features, classifier = ref.gap_layers(m)
    cam = ref.cam(m, x, y, features, classifier)
    torch.testing.assert_close(cam, slow_cam(m, x, y, features, classifier), rtol=1e-4, atol=1e-4)
    hw = {"mnist-cnn": 49, "concept-cnn": 64, "efficientnet-lite0": 25}[name]
    torch.testing.assert_close(ref.grad_cam(m, x, y, features) * hw, cam, rtol=1e-3, atol=1e-4)


def test_localisation_scores_match_slow_loops():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 9, 13, generator=g)
    masks = torch.rand(6, 9, 13, generator=g) < 0.3
    hits, energy = torch.zeros(6), torch.zeros(6)
    for b in range(6):
        best, where = -float("inf"), None
        for i in range(9):
            for j in range(13):
                if maps[b, i, j] > best:
                    best, where = maps[b, i, j].item(), (i, j)
        hits[b] = float(masks[b][where])
        pos = [max(v, 0.0) for v in maps[b].flatten().tolist()]
        inside = sum(p for p, m in zip(pos, masks[b].flatten().tolist()) if m)
        energy[b] = inside / sum(pos)
    torch.testing.assert_close(ref.pointing_game(maps, masks), hits)
    torch.testing.assert_close(ref.energy_pointing_game(maps, masks), energy)
    assert ref.energy_pointing_game(-maps.abs(), masks).eq(0).all()
