"""`concept-cnn`: a small CNN (GAP → linear head, CAM applies) naming the target shape of concept images."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from xailab.datasets.concepts import SHAPES, make_concept_dataset
from xailab.utils import seed_everything
from xailab.zoo import load_state, register, save_checkpoint
from xailab.zoo.gap_cnn import GapCNN, conv_relu
from xailab.zoo.training import accuracy, fit


class ConceptCNN(GapCNN):
    """conv(16)-pool-conv(32)-pool-conv(64)-pool-conv(64) → global average pool → linear(4).

    Input (N, 3, 64, 64) in [0, 1]; the last feature map is 64×8×8."""

    def __init__(self, num_classes: int = len(SHAPES)):
        super().__init__(nn.Sequential(*conv_relu(3, 16), nn.MaxPool2d(2), *conv_relu(16, 32), nn.MaxPool2d(2),
                                       *conv_relu(32, 64), nn.MaxPool2d(2), *conv_relu(64, 64)), 64, num_classes)


TRAIN = {"n": 4000, "seed": 1}
TEST = {"n": 1000, "seed": 2}
HYPER = {"optimizer": "Adam+OneCycle", "lr": 3e-3, "epochs": 6, "batch": 32, "seed": 0}
DATA = (f"make_concept_dataset({TRAIN['n']}, seed={TRAIN['seed']}) for training, "
        f"make_concept_dataset({TEST['n']}, seed={TEST['seed']}) for testing (64×64 RGB)")


def train_concept_cnn(folder: Path) -> dict:
    """Train ConceptCNN deterministically on the concept images and save it into `folder`."""
    seed_everything(HYPER["seed"], threads=2)
    train, test = make_concept_dataset(**TRAIN), make_concept_dataset(**TEST)
    model = ConceptCNN()
    fit(model, train["images"], train["labels"], epochs=HYPER["epochs"], lr=HYPER["lr"],
        batch=HYPER["batch"], seed=HYPER["seed"])
    metrics = {"train_accuracy": round(accuracy(model, train["images"], train["labels"]), 4),
               "test_accuracy": round(accuracy(model, test["images"], test["labels"]), 4)}
    save_checkpoint(model, folder, {
        "architecture": "ConceptCNN", "kwargs": {"num_classes": len(SHAPES)},
        "classes": list(SHAPES), "data": DATA, "training": HYPER, "metrics": metrics,
    })
    return {"metrics": metrics, "licence": "MIT (course-generated)",
            "provenance": f"trained by xailab.zoo.concepts.train_concept_cnn on {DATA} "
                          "(python -m xailab.zoo build concept-cnn)"}


@register("concept-cnn", kind="image", recipe=train_concept_cnn,
          summary="small CNN (GAP→linear head) naming the target shape of 64×64 concept images")
def load_concept_cnn(folder: Path) -> nn.Module:
    return load_state(ConceptCNN(), folder)
