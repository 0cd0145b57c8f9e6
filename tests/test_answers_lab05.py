"""The Lab 5 answer key against torch-lucent 0.1.8 (and captum) and against slow, explicit re-implementations.

Lucent's gotchas: its transforms draw from numpy's global generator (seed numpy as well as torch),
its render_vis normalises inputs for torchvision models unless preprocess=False (the course models
normalise inside), upsamples images smaller than 224 unless fixed_image_size is set, and opens an
image viewer unless show_image=False.
"""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lucent.optvis import objectives, param, render, transform
from lucent.optvis.param import color, spatial

from grader.answers import lab05 as ref
from grader.fixtures import model, text_batch


@pytest.fixture(scope="module")
def concept():
    from xailab.datasets.concepts import make_concept_dataset

    return model("concept-cnn"), make_concept_dataset(40, seed=9)["images"]


# ------------------------------------------------------------------ Fourier parameterisation and colours


@pytest.mark.parametrize("h,w,decay", [(8, 8, 1.0), (7, 9, 1.0), (16, 11, 0.5), (32, 32, 2.0), (12, 6, 1.5)])
def test_fourier_image_matches_lucent_fft_image(h, w, decay):
    torch.manual_seed(0)
    params, image_f = spatial.fft_image((2, 3, h, w), sd=0.3, decay_power=decay)
    spectrum = params[0].detach()
    # lucent keeps one extra column for odd widths, which irfftn(s=(h, w)) ignores
    ours = ref.fourier_image(spectrum[..., :w // 2 + 1, :], (h, w), decay)
    torch.testing.assert_close(ours, image_f().detach(), rtol=1e-4, atol=1e-5)


def test_lucent_frequencies_are_ours():
    for h, w in [(8, 8), (7, 10), (9, 9)]:
        ours = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2).sqrt()
        theirs = torch.tensor(spatial.rfft2d_freqs(h, w), dtype=torch.float32)[:, :w // 2 + 1]
        torch.testing.assert_close(ours, theirs)


def test_fourier_image_is_an_explicit_inverse_dft():
    """Away from the DC column, irfft2 adds each coefficient and its conjugate partner:
    image[y, x] = Σ 2·scale·Re(X[ky, kx]·e^{2πi(ky·y/H + kx·x/W)}) / √(HW) / 4 (odd W: no Nyquist column);
    the DC term alone is X[0, 0]·max(H, W)^decay / √(HW) / 4."""
    h, w, decay = 5, 7, 1.3
    spectrum = torch.randn(1, 1, h, w // 2 + 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spectrum[..., 0, :] = 0                                                  # no DC column
    slow = torch.zeros(h, w, dtype=torch.float64)
    for ky, kx in itertools.product(range(h), range(1, w // 2 + 1)):
        fy, fx = (ky if ky <= h // 2 else ky - h) / h, kx / w
        scale = 1.0 / max(math.hypot(fy, fx), 1.0 / max(h, w)) ** decay
        re, im = spectrum[0, 0, ky, kx].tolist()
        for y, x in itertools.product(range(h), range(w)):
            phase = 2 * math.pi * (ky * y / h + kx * x / w)
            slow[y, x] += 2 * scale * (re * math.cos(phase) - im * math.sin(phase))
    # (the answer key computes the frequencies and scales in float32)
    torch.testing.assert_close(ref.fourier_image(spectrum, (h, w), decay)[0, 0], slow / math.sqrt(h * w) / 4,
                               rtol=1e-5, atol=1e-6)
    dc = torch.zeros(1, 1, h, w // 2 + 1, 2, dtype=torch.float64)
    dc[0, 0, 0, 0, 0] = 2.5
    torch.testing.assert_close(ref.fourier_image(dc, (h, w), decay),
                               torch.full((1, 1, h, w), 2.5 * 7 ** decay / math.sqrt(h * w) / 4, dtype=torch.float64))


def test_colour_matrix_is_lucents():
    normalised = ref.COLOUR_CORRELATION_SQRT / ref.COLOUR_CORRELATION_SQRT.norm(dim=0).max()
    torch.testing.assert_close(normalised, torch.tensor(color.color_correlation_normalized))
    torch.testing.assert_close(ref.COLOUR_CORRELATION_SQRT, torch.tensor(color.color_correlation_svd_sqrt))


def test_decorrelate_colours_matches_lucent_to_valid_rgb():
    image = torch.randn(3, 3, 7, 5, generator=torch.Generator().manual_seed(2)) * 3
    theirs = color.to_valid_rgb(lambda: image, decorrelate=True)()
    torch.testing.assert_close(ref.decorrelate_colours(image), theirs, rtol=1e-5, atol=1e-7)


def test_fft_parameterisation_matches_lucent_param_image():
    """lucent's param.image(fft=True, decorrelate=True) is decorrelate_colours(fourier_image(·))."""
    torch.manual_seed(3)
    params, image_f = param.image(16, batch=2, fft=True, decorrelate=True)
    ours = ref.decorrelate_colours(ref.fourier_image(params[0].detach()[..., :9, :], 16, 1.0))
    torch.testing.assert_close(ours, image_f().detach(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ transforms


def test_pad_matches_lucents_first_standard_transform():
    x = torch.rand(2, 3, 10, 10)
    pad = transform.standard_transforms[0]
    torch.testing.assert_close(ref.random_transform(x, torch.Generator().manual_seed(0), pad=12), pad(x))


def _framed(b=3, size=14, frame=4, seed=4):
    """Random images with a zero frame: rolling by at most `frame` pixels then equals translating with zero fill."""
    x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return F.pad(x, [frame] * 4)


def test_jitter_matches_lucents_translation():
    """lucent's jitter(d) translates by (dx, dy) ∈ [0, d) with kornia's translate and zero fill; ours rolls by the
    drawn (dx, dy). (kornia 0.4.1's translate is an exact pixel shift only with align_corners=True; lucent calls it
    with the default False, which also stretches the image by W/(W − 1).)"""
    x = _framed()
    for seed in range(4):
        ours = ref.random_transform(x, torch.Generator().manual_seed(seed), jitter=3)
        shifts = torch.randint(-3, 4, (3, 2), generator=torch.Generator().manual_seed(seed))
        for i in range(3):
            from kornia.geometry.transform import translate

            theirs = translate(x[i:i + 1], shifts[i:i + 1].float(), align_corners=True)
            torch.testing.assert_close(ours[i:i + 1], theirs, rtol=1e-5, atol=1e-5)


def test_rotation_matches_lucents_random_rotate():
    """lucent's random_rotate (kornia warp_affine about the centre) with the angle numpy draws."""
    rotate = transform.standard_transforms[3]
    angles = list(range(-10, 11)) + 5 * [0]
    x = _framed(2, 16, 5)
    for seed in range(5):
        np.random.seed(seed)
        angle = float(np.random.choice(angles))
        np.random.seed(seed)
        theirs = rotate(x)
        ours = ref.random_transform(x, torch.Generator().manual_seed(seed), angles=(angle, angle))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("angle,scale", [(12.0, 1.0), (-25.0, 1.15), (5.0, 0.85)])
def test_scale_and_rotation_match_kornia_and_torchvision(angle, scale):
    import kornia
    import torchvision.transforms.functional as TF

    x = _framed(2, 16, 6)
    b, _, h, w = x.shape
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).expand(b, 2)
    matrix = kornia.get_rotation_matrix2d(centre, torch.full((b,), angle), torch.full((b, 2), scale))
    theirs = kornia.warp_affine(x, matrix, dsize=(h, w))
    ours = ref.random_transform(x, None, scales=(scale, scale), angles=(angle, angle))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # torchvision's affine measures its angle clockwise
    tv = TF.affine(x, angle=-angle, translate=[0, 0], scale=scale, shear=[0.0],
                   interpolation=TF.InterpolationMode.BILINEAR)
    torch.testing.assert_close(ours, tv, rtol=1e-4, atol=1e-5)


def test_scale_agrees_with_lucents_random_scale_at_the_centre():
    """lucent rescales the canvas (bilinear, align_corners=True); ours zooms in place: same zoom at the centre."""
    x = F.interpolate(torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(5)), size=48, mode="bilinear",
                      align_corners=False)                         # a smooth image
    s = 1.1
    theirs = transform.random_scale([s])(x)                        # 53 × 53
    ours = ref.random_transform(x, None, scales=(s, s))
    off = (theirs.shape[-1] - 48) // 2
    centre = theirs[..., off:off + 48, off:off + 48][..., 12:36, 12:36]
    assert torch.corrcoef(torch.stack([centre.flatten(), ours[..., 12:36, 12:36].flatten()]))[0, 1] > 0.98


def test_random_transform_matches_an_explicit_per_pixel_loop():
    """Pad, roll and bilinear sampling at c + R(a)(p − c)/s, pixel by pixel."""
    b, size, pad = 2, 7, 2
    x = torch.rand(b, 2, size, size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kw = dict(jitter=2, scales=(0.8, 1.25), angles=(-35.0, 35.0), pad=pad, pad_value=0.3)
    ours = ref.random_transform(x, torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    shifts = torch.randint(-2, 3, (b, 2), generator=g)
    scales = 0.8 + 0.45 * torch.rand(b, generator=g)
    angles = -35.0 + 70.0 * torch.rand(b, generator=g)
    n = size + 2 * pad
    slow = torch.zeros(b, 2, n, n, dtype=torch.float64)
    for i in range(b):
        padded = torch.full((2, n, n), 0.3, dtype=torch.float64)
        padded[:, pad:pad + size, pad:pad + size] = x[i]
        rolled = torch.zeros_like(padded)
        for yy, xx in itertools.product(range(n), range(n)):
            rolled[:, (yy + int(shifts[i, 1])) % n, (xx + int(shifts[i, 0])) % n] = padded[:, yy, xx]
        a, s, c = math.radians(float(angles[i])), float(scales[i]), (n - 1) / 2
        for yy, xx in itertools.product(range(n), range(n)):
            u = c + (math.cos(a) * (xx - c) - math.sin(a) * (yy - c)) / s     # source column
            v = c + (math.sin(a) * (xx - c) + math.cos(a) * (yy - c)) / s     # source row
            x0, y0 = math.floor(u), math.floor(v)
            for dy, dx in itertools.product((0, 1), (0, 1)):
                weight = (1 - abs(u - (x0 + dx))) * (1 - abs(v - (y0 + dy)))
                if 0 <= x0 + dx < n and 0 <= y0 + dy < n:
                    slow[i, :, yy, xx] += weight * rolled[:, y0 + dy, x0 + dx]
    torch.testing.assert_close(ours, slow, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ activations and objectives


def test_layer_activation_matches_captum(concept):
    from captum.attr import LayerActivation

    m, x = concept
    for layer in (m.features[4], m.features[9]):
        torch.testing.assert_close(ref.layer_activation(m, layer, x), LayerActivation(m, layer).attribute(x))
    bert = model("tiny-bert-sentiment")
    batch = text_batch("tiny-bert-sentiment")
    ffn = bert.model.bert.encoder.layer[1].intermediate
    theirs = LayerActivation(bert, ffn).attribute(batch["input_ids"], additional_forward_args=(batch["attention_mask"],))
    torch.testing.assert_close(ref.layer_activation(bert, ffn, batch), theirs)


def test_layer_activation_is_a_truncated_forward(concept):
    m, x = concept
    torch.testing.assert_close(ref.layer_activation(m, m.features[7], x), m.features[:8](x))


def _lucent_value(m, x, objective):
    """Evaluate a lucent objective on the model's activations for images x (lucent returns −score).
    lucent never removes its hooks: it hooks a copy, so the shared model stays clean."""
    m = copy.deepcopy(m)
    hook = render.hook_model(m, lambda: x)
    m(x)
    return -objective(hook)


def test_objectives_match_lucents(concept):
    m, x = concept
    x = x[:6]
    with torch.no_grad():
        ours = ref.make_objective(m.features[9], channel=11)(m, x)
        torch.testing.assert_close(ours.mean(), _lucent_value(m, x, objectives.channel("features_9", 11)))
        ours = ref.make_objective(m.features[6], channel=3, position=(5, 2))(m, x)
        torch.testing.assert_close(ours.mean(), _lucent_value(m, x, objectives.neuron("features_6", 3, x=5, y=2)))
        d = torch.randn(64, generator=torch.Generator().manual_seed(8))
        ours = ref.make_objective(m.features[9], direction=d)(m, x)
        # lucent's channel_weight averages over the channels too
        torch.testing.assert_close(ours.mean() / 64, _lucent_value(m, x, objectives.channel_weight("features_9", d)),
                                   rtol=1e-4, atol=1e-5)


def test_objective_per_image_channels_match_lucents_batch_objectives(concept):
    m, x = concept
    channels = torch.tensor([4, 9, 17])
    with torch.no_grad():
        ours = ref.make_objective(m.features[9], channel=channels)(m, x[:3])
        theirs = torch.stack([_lucent_value(m, x[:3], objectives.channel("features_9", int(c), batch=i))
                              for i, c in enumerate(channels)])
    torch.testing.assert_close(ours, theirs)


def test_penalties_match_explicit_loops():
    x = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for i in range(2):
        tv = sum(abs(x[i, c, y + 1, w] - x[i, c, y, w]) for c in range(3) for y in range(4) for w in range(4))
        tv += sum(abs(x[i, c, y, w + 1] - x[i, c, y, w]) for c in range(3) for y in range(5) for w in range(3))
        assert math.isclose(ref.total_variation(x)[i].item(), tv / 60, rel_tol=1e-12)
        l2 = sum((x[i, c, y, w] - 0.2) ** 2 for c in range(3) for y in range(5) for w in range(4)) / 60
        assert math.isclose(ref.l2_penalty(x, 0.2)[i].item(), l2, rel_tol=1e-12)


# ------------------------------------------------------------------ dataset examples


def test_top_activating_examples_matches_a_slow_loop(concept):
    m, x = concept
    with torch.no_grad():
        scores = [m.features[:10](x[i:i + 1])[0, 13].mean().item() for i in range(len(x))]
    expected = sorted(range(len(x)), key=lambda i: (-scores[i], i))[:7]
    values, indices = ref.top_activating_examples(m, m.features[9], 13, x, k=7, batch_size=9)
    assert indices.tolist() == expected
    torch.testing.assert_close(values, torch.tensor([scores[i] for i in expected]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,path", [("tiny-bert-sentiment", "model.bert.encoder.layer.0.intermediate"),
                                       ("minilm-sentiment", "model.encoder.encoder.layer.4.intermediate")])
def test_top_activating_tokens_matches_a_slow_loop(name, path):
    m = model(name)
    layer = m.get_submodule(path)
    sentences = ["a wonderful and moving film", "dull", "the staff seemed rude and the food was cold ."]
    found = []
    for s, sentence in enumerate(sentences):                       # each sentence alone: no padding at all
        enc = m.encode([sentence])
        with torch.no_grad():
            acts = ref.layer_activation(m, layer, enc)[0, :, 40]
        for p in range(1, enc["input_ids"].shape[1] - 1):          # without [CLS] and [SEP]
            found.append((acts[p].item(), s, p))
    expected = sorted(found, key=lambda t: (-t[0], t[1], t[2]))[:6]
    values, sent, pos = ref.top_activating_tokens(m, layer, 40, sentences, k=6)
    assert list(zip(sent.tolist(), pos.tolist())) == [(s, p) for _, s, p in expected]
    torch.testing.assert_close(values, torch.tensor([v for v, _, _ in expected]), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the optimisation loop


def test_visualise_is_reproducible_and_leaves_the_model_alone(concept):
    m, _ = concept
    objective = ref.make_objective(m.features[9], channel=torch.tensor([1, 2]))
    kw = dict(batch=2, size=24, steps=4, transforms=dict(pad=2, jitter=2, scales=(0.9, 1.1), angles=(-5.0, 5.0)))
    a = ref.visualise(m, objective, generator=torch.Generator().manual_seed(0), **kw)
    b = ref.visualise(m, objective, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in m.parameters()) and not any(mod._forward_hooks for mod in m.modules())


def test_visualise_reaches_lucents_objective(concept):
    """lucent's render_vis (fft + decorrelated colours, its standard transforms) and our visualise with the same
    settings reach objective values of the same size on concept-cnn channels."""
    m, _ = concept
    channels, size, steps = [5, 20, 41], 48, 48
    objective = ref.make_objective(m.features[9], channel=torch.tensor(channels))
    ours = ref.visualise(m, objective, batch=3, size=size, steps=steps, lr=0.05,
                         transforms=dict(pad=12, jitter=8, scales=(0.9, 1.1), angles=(-10.0, 10.0)),
                         generator=torch.Generator().manual_seed(0))
    np.random.seed(0)
    torch.manual_seed(0)
    lucent_objective = sum(objectives.channel("features_9", c, batch=i) for i, c in enumerate(channels))
    # a copy of the model: lucent leaves its hooks behind
    images = render.render_vis(copy.deepcopy(m), lucent_objective, lambda: param.image(size, batch=3), thresholds=(steps,),
                               preprocess=False, show_image=False, progress=False, fixed_image_size=size + 24)
    theirs = torch.tensor(images[-1]).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours_value, theirs_value = objective(m, ours).mean().item(), objective(m, theirs).mean().item()
    start = objective(m, ref.visualise(m, objective, batch=3, size=size, steps=0,
                                       generator=torch.Generator().manual_seed(0))).mean().item()
    assert ours_value - start > 0.7 * (theirs_value - start), (ours_value, theirs_value, start)
    assert theirs_value - start > 0.7 * (ours_value - start), (ours_value, theirs_value, start)


def test_fourier_images_have_less_high_frequency_energy(concept):
    from grader.checks.lab05 import high_frequency_ratio

    m, _ = concept
    objective = ref.make_objective(m.features[9], channel=torch.tensor([3, 20, 41, 60]))
    kw = dict(batch=4, size=48, steps=32, generator=None)
    pixel = ref.visualise(m, objective, parameterisation="pixel", **dict(kw, generator=torch.Generator().manual_seed(1)))
    fourier = ref.visualise(m, objective, transforms=dict(pad=4, jitter=3, scales=(0.9, 1.1), angles=(-10.0, 10.0)),
                            **dict(kw, generator=torch.Generator().manual_seed(1)))
    assert high_frequency_ratio(fourier).mean() < 0.3 * high_frequency_ratio(pixel).mean()
