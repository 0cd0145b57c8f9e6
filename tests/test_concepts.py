"""The concept images and their ground-truth masks, and the concept-cnn checkpoint."""
import itertools

import pytest
import torch

from xailab.datasets.concepts import (COLOURS, DISTRACTORS, SHAPES, TEXTURES, concept_examples,
                                      concept_names, make_concept_dataset)


@pytest.fixture(scope="module")
def data():
    return make_concept_dataset(300, seed=3)


def test_shapes_and_types(data):
    assert data["images"].shape == (300, 3, 64, 64) and data["images"].dtype == torch.float32
    assert 0 <= data["images"].min() and data["images"].max() <= 1
    assert data["labels"].dtype == torch.int64 and set(data["labels"].tolist()) == set(range(len(SHAPES)))
    assert list(data["masks"]) == concept_names()
    assert all(m.shape == (300, 64, 64) and m.dtype == torch.bool for m in data["masks"].values())
    assert len(data["meta"]) == 300


def test_deterministic(data):
    again, other = make_concept_dataset(300, seed=3), make_concept_dataset(300, seed=4)
    assert torch.equal(again["images"], data["images"]) and torch.equal(again["labels"], data["labels"])
    assert all(torch.equal(again["masks"][k], data["masks"][k]) for k in data["masks"])
    assert again["meta"] == data["meta"]
    assert not torch.equal(other["images"], data["images"])


def test_objects_present_and_disjoint(data):
    target, distractor = data["masks"]["target"], data["masks"]["distractor"]
    assert not (target & distractor).any()
    assert (target.flatten(1).sum(1) >= 40).all() and (distractor.flatten(1).sum(1) >= 15).all()


def test_masks_agree_with_meta(data):
    masks = data["masks"]
    for k, m in enumerate(data["meta"]):
        assert m["label"] == data["labels"][k] == SHAPES.index(m["target"]["shape"])
        for role in ("target", "distractor"):
            obj, mask = m[role], masks[role][k]
            assert torch.equal(masks[f"shape:{obj['shape']}"][k], mask)
            assert (masks[f"colour:{obj['colour']}"][k] & mask).sum() == mask.sum()
            assert (masks[f"texture:{obj['texture']}"][k] & mask).sum() == mask.sum()
            x0, y0, x1, y1 = obj["bbox"]
            assert mask[y0:y1, x0:x1].sum() == mask.sum()
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
    objects = masks["target"] | masks["distractor"]
    for family in ("shape", "colour", "texture"):
        union = torch.zeros_like(objects)
        for name in concept_names(family):
            assert not (union & masks[name]).any()  # one value per pixel within a family
            union |= masks[name]
        assert torch.equal(union, objects)


def test_pixels_follow_the_masks(data):
    images, masks = data["images"], data["masks"]
    background = torch.tensor([m["background"] for m in data["meta"]])[:, None, None]
    grey = ~(masks["target"] | masks["distractor"])
    assert ((images[:, 0] - background).abs()[grey].max() <= 0.06)
    red = masks["colour:red"] & masks["texture:solid"]
    assert (images[:, 0][red].mean() > 0.8) and (images[:, 2][red].mean() < 0.25)


def test_nuisance_concepts_independent_of_label(data):
    seen = {(m["label"], m["target"]["colour"], m["target"]["texture"]) for m in data["meta"]}
    assert seen == set(itertools.product(range(len(SHAPES)), COLOURS, TEXTURES))
    assert {m["distractor"]["shape"] for m in data["meta"]} == set(DISTRACTORS)
    counts = torch.bincount(data["labels"], minlength=len(SHAPES)).float()
    assert counts.min() > 0.7 * counts.mean()


@pytest.mark.parametrize("concept", ["shape:triangle", "shape:ring", "colour:yellow", "texture:dots"])
def test_concept_examples(concept):
    from xailab.datasets.concepts import _forcing, _generate

    images = concept_examples(concept, 20, seed=5)
    assert images.shape == (20, 3, 64, 64)
    forced = _generate(20, 5, 64, _forcing(concept))  # the same draw, with its masks
    assert torch.equal(forced["images"], images)
    assert forced["masks"][concept].flatten(1).any(1).all()


def test_rejects_unknown_concepts_and_small_canvases():
    with pytest.raises(ValueError):
        concept_examples("shape:hexagon", 2, seed=0)
    with pytest.raises(ValueError):
        make_concept_dataset(2, size=48)
    big = make_concept_dataset(20, seed=0, size=96)
    assert big["images"].shape == (20, 3, 96, 96)
    assert not (big["masks"]["target"] & big["masks"]["distractor"]).any()


def test_model_structure():
    from xailab.zoo.concepts import ConceptCNN

    model = ConceptCNN()
    assert model.features(torch.zeros(2, 3, 64, 64)).shape == (2, 64, 8, 8)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, len(SHAPES))
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_checkpoint_uses_the_target():
    from xailab.zoo import load_model

    model = load_model("concept-cnn")
    data = make_concept_dataset(300, seed=7)
    background = torch.tensor([m["background"] for m in data["meta"]])[:, None, None, None]

    def acc(images):
        with torch.no_grad():
            return (model(images).argmax(1) == data["labels"]).float().mean().item()

    def paint(mask):
        return torch.where(mask[:, None], background, data["images"])

    assert acc(data["images"]) >= 0.95
    assert acc(paint(data["masks"]["distractor"])) >= 0.95
    assert acc(paint(data["masks"]["target"])) <= 0.5
