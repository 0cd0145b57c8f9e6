"""The Lab 6 answer key against numpy and against slow, explicit re-implementations (loops per unit,
per image, per pixel). No network-dissection package installs offline; the formulas are Bau et al.'s."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grader.answers import lab06 as ref
from grader.checks.lab06 import TOKEN_CONCEPTS, probe
from grader.fixtures import mnist_batch, model
from xailab.datasets.concepts import concept_names, make_concept_dataset


@pytest.fixture(scope="module")
def concepts():
    data = make_concept_dataset(16, seed=40)
    masks = torch.stack([data["masks"][n] for n in concept_names()], 1)
    return data["images"], masks


# ------------------------------------------------------------------ slow references


def slow_threshold(values: list[float], q: float) -> float:
    """The q-quantile of a list with linear interpolation at position q·(M − 1), by hand."""
    v = sorted(values)
    p = q * (len(v) - 1)
    lo = math.floor(p)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (p - lo) * (v[hi] - v[lo])


def slow_bilinear(a: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear upsampling of one (h, w) map with align_corners=False, pixel by pixel (float64)."""
    h, w = a.shape
    a = a.double()
    out = torch.zeros(out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        y = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(y)), h - 1)
        y1, ly = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(x)), w - 1)
            x1, lx = min(x0 + 1, w - 1), x - x0
            out[i, j] = ((1 - ly) * (1 - lx) * a[y0, x0] + (1 - ly) * lx * a[y0, x1]
                         + ly * (1 - lx) * a[y1, x0] + ly * lx * a[y1, x1])
    return out


def slow_iou(units: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Σ_images |U ∩ L| / Σ_images |U ∪ L| per unit and concept, counting pixels image by image."""
    k, c = units.shape[1], concepts.shape[1]
    out = torch.zeros(k, c, dtype=torch.float64)
    for a in range(k):
        for b in range(c):
            inter = union = 0
            for n in range(units.shape[0]):
                u, l_ = units[n, a], concepts[n, b]
                inter += int((u & l_).sum())
                union += int((u | l_).sum())
            out[a, b] = inter / union if union else 0.0
    return out


# ------------------------------------------------------------------ collect_activations


@pytest.mark.parametrize("index,batch_size", [(1, 5), (7, 16), (10, 3)])
def test_collect_activations_equals_the_sequential_prefix(concepts, index, batch_size):
    images, _ = concepts
    cnn = model("concept-cnn")
    acts = ref.collect_activations(cnn, cnn.features[index], images, batch_size=batch_size)
    with torch.no_grad():
        per_image = torch.cat([cnn.features[:index + 1](images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(acts, per_image, rtol=1e-4, atol=1e-5)
    assert not acts.requires_grad
    assert sum(len(m._forward_hooks) for m in cnn.modules()) == 0


def test_collect_activations_on_mnist_conv():
    x, _ = mnist_batch(7)
    net = model("mnist-cnn")
    with torch.no_grad():
        expected = net.features[:3](x)
    torch.testing.assert_close(ref.collect_activations(net, net.features[2], x, batch_size=2), expected,
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ unit_thresholds


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9, 0.995, 1.0])
def test_thresholds_match_numpy_and_a_sort_by_hand(concepts, q):
    images, _ = concepts
    cnn = model("concept-cnn")
    acts = ref.collect_activations(cnn, cnn.features[7], images)              # (16, 64, 16, 16)
    got = ref.unit_thresholds(acts, q)
    for k in range(acts.shape[1]):
        values = acts[:, k].reshape(-1).double()
        assert got[k].item() == pytest.approx(np.quantile(values.numpy(), q), rel=1e-5, abs=1e-6)
    for k in (0, 13, 63):
        assert got[k].item() == pytest.approx(slow_threshold(acts[:, k].reshape(-1).tolist(), q), rel=1e-5, abs=1e-6)


def test_thresholds_on_2d_and_3d_tensors():
    g = torch.Generator().manual_seed(41)
    for shape in [(300, 5), (20, 4, 9)]:
        acts = torch.randn(*shape, generator=g)
        got = ref.unit_thresholds(acts, 0.8)
        for k in range(shape[1]):
            assert got[k].item() == pytest.approx(np.quantile(acts[:, k].reshape(-1).double().numpy(), 0.8), abs=1e-6)


def test_thresholds_beyond_two_to_the_24():
    acts = torch.rand(257, 1, 256, 256, generator=torch.Generator().manual_seed(42))      # 16,842,752 values
    expected = np.quantile(acts.reshape(-1).double().numpy(), 0.995)
    assert ref.unit_thresholds(acts).item() == pytest.approx(expected, abs=1e-6)


def test_thresholds_leave_the_stated_number_of_values_above():
    acts = torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(43))
    m = 40 * 36
    for q in (0.995, 0.9, 0.5):
        above = (acts > ref.unit_thresholds(acts, q).reshape(1, -1, 1, 1)).sum((0, 2, 3))
        assert (above == m - 1 - math.floor(q * (m - 1))).all()


# ------------------------------------------------------------------ unit_masks


def test_unit_masks_match_bilinear_by_hand():
    g = torch.Generator().manual_seed(44)
    acts = torch.randn(2, 3, 5, 7, generator=g)
    thresholds = torch.tensor([-0.3, 0.0, 0.6])
    got = ref.unit_masks(acts, thresholds, (12, 20))
    for n in range(2):
        for k in range(3):
            up = slow_bilinear(acts[n, k], 12, 20)
            near = (up - thresholds[k].double()).abs() < 1e-6
            assert torch.equal(got[n, k][~near], (up > thresholds[k].double())[~near])


def test_unit_masks_are_not_nearest_or_thresholded_first():
    """The slow reference distinguishes the documented method from two typical mistakes."""
    acts = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(45))
    t = torch.tensor([0.2])
    right = ref.unit_masks(acts, t, 16)
    nearest = F.interpolate(acts, size=16, mode="nearest") > 0.2
    first = F.interpolate((acts > 0.2).float(), size=16, mode="bilinear") > 0.5
    assert torch.equal(right[0, 0], slow_bilinear(acts[0, 0], 16, 16) > 0.2)
    assert not torch.equal(right, nearest) and not torch.equal(right, first)


# ------------------------------------------------------------------ dataset_iou


def test_dataset_iou_matches_pixel_counting(concepts):
    images, masks = concepts
    cnn = model("concept-cnn")
    acts = ref.collect_activations(cnn, cnn.features[10], images)
    units = ref.unit_masks(acts, ref.unit_thresholds(acts, 0.98), 64)[:, :12]
    expected = slow_iou(units, masks)
    torch.testing.assert_close(ref.dataset_iou(units, masks).double(), expected, rtol=1e-6, atol=1e-7)
    batches = [4, 7, 5]
    streamed = ref.dataset_iou(iter(torch.split(units, batches)), iter(torch.split(masks, batches)))
    torch.testing.assert_close(streamed.double(), expected, rtol=1e-6, atol=1e-7)
    per_image_mean = torch.stack([slow_iou(units[i:i + 1], masks[i:i + 1]) for i in range(len(units))]).mean(0)
    assert (per_image_mean - expected).abs().max() > 0.01          # the two definitions really differ here


def test_dataset_iou_of_empty_unions_is_zero():
    units = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    units[:, 1, :2] = True
    concepts = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    concepts[:, 1, 1:3] = True
    torch.testing.assert_close(ref.dataset_iou(units, concepts).double(), slow_iou(units, concepts))
    assert ref.dataset_iou(units, concepts)[0, 0] == 0


# ------------------------------------------------------------------ label_units


def test_label_units_by_hand():
    g = torch.Generator().manual_seed(46)
    iou = torch.rand(30, 6, generator=g) * 0.1
    iou[3, 2] = iou[3, 4] = 0.5                                       # a tie: the first concept wins
    names = [f"c{j}" for j in range(6)]
    labels, table = ref.label_units(iou, names)
    rows = []
    for unit in range(30):
        best = max(range(6), key=lambda j: (iou[unit, j].item(), -j))
        want = names[best] if iou[unit, best].item() > 0.04 else None
        assert labels[unit] == want
        if want is not None:
            rows.append((unit, want, iou[unit, best].item()))
    assert table == sorted(rows, key=lambda r: (-r[2], r[0]))
    assert labels[3] == "c2"


# ------------------------------------------------------------------ ablate_units


def test_ablation_equals_zeroing_by_hand(concepts):
    images, _ = concepts
    cnn = model("concept-cnn")
    units = [2, 9, 33]
    with torch.no_grad():
        h = cnn.features[:10](images)
        h[:, units] = 0
        expected = cnn.classifier(cnn.flatten(cnn.pool(cnn.features[10](h))))
        with ref.ablate_units(cnn, cnn.features[9], units):
            got = cnn(images)
        after = cnn(images)
        plain = cnn.classifier(cnn.flatten(cnn.pool(cnn.features(images))))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(after, plain)
    assert sum(len(m._forward_hooks) for m in cnn.modules()) == 0


# ------------------------------------------------------------------ token_concept_iou


def test_token_iou_matches_loops_over_neurons_and_tokens():
    bert = model("tiny-bert-sentiment")
    texts, masks = probe(bert, 24, seed=47)
    layer = bert.model.bert.encoder.layer[1].intermediate
    got = ref.token_concept_iou(bert, layer, texts, masks, quantile=0.9)
    assert got.shape == (256, len(TOKEN_CONCEPTS))
    for neuron in (0, 17, 200):
        values, concept_rows = [], []
        for sentence, mask in zip(texts, masks):                      # one sentence at a time, no padding
            ids = bert.encode([sentence])
            acts = ref.collect_activations(bert, layer, ids["input_ids"])[0]      # (T, 256)
            values += acts[:, neuron].tolist()
            concept_rows += mask[:, :acts.shape[0]].T.tolist()
        threshold = slow_threshold(values, 0.9)
        for c in range(len(TOKEN_CONCEPTS)):
            inter = sum(v > threshold and row[c] for v, row in zip(values, concept_rows))
            union = sum(v > threshold or row[c] for v, row in zip(values, concept_rows))
            assert got[neuron, c].item() == pytest.approx(inter / union if union else 0.0, abs=2e-3)
