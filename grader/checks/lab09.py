"""Hidden-test checks of Lab 9 (training-data influence).

Models: float64 linear heads fitted here (fit_lbfgs, then exact Newton steps with the closed-form Hessian of
softmax cross-entropy, so they sit at the optimum of J to rounding) on small slices of the frozen MNIST
features (Linear(64, 10)) and review embeddings (Linear(384, 2)), and the float32 SGD checkpoints of
mnist-feature-mlp (64→16 tanh→10). References come from the answer key; properties are verified here with
trusted code: per-example gradients by a loop of autograd calls, the Hessian by finite differences of the
gradient and its l2·I term, LiSSA against the exact damped inverse, TracIn against lr·(dot product), the
representer decomposition (Yeh et al.) with the fitted model, leave-one-out against fresh fits without the
point, mislabel recall on hand-made rankings. Every function must leave its models and inputs unchanged
(also inside lists and (X, y) pairs) and return values without an autograd graph.
"""
from __future__ import annotations

import functools
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from grader.answers import lab09 as ref
from grader.checks import (Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, prepared_check,
                           property_check)
from grader.checks.properties import batch_equals_single, count_forward, observed_call
from xailab.zoo.influence import fit_lbfgs, flat_params, unflatten

L2 = 0.01
SMOOTHED = functools.partial(F.cross_entropy, label_smoothing=0.1)  # travels by reference (a torch function)


# ------------------------------------------------------------------ data, fitted heads, trusted helpers


@lru_cache(maxsize=None)
def _features(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from xailab.datasets.features import mnist_features, review_features

    return (mnist_features if name == "mnist" else review_features)(split)


def data(name: str, split: str, start: int, stop: int, double: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows start:stop of a feature split (fresh copies; float64 unless double=False)."""
    x, y = _features(name, split)
    x = x[start:stop].clone()
    return (x.double() if double else x), y[start:stop].clone()


def head_hessian(head: nn.Module, x: torch.Tensor, l2: float) -> torch.Tensor:
    """Closed-form Hessian of mean softmax cross-entropy + l2/2‖θ‖² of a linear head, θ = (W row-major, b):
    mean_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i + l2·I (the same for hard and soft labels)."""
    n, d = x.shape
    with torch.no_grad():
        p = head(x).softmax(1)
    c = p.shape[1]
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    full = torch.einsum("iab,ij,ik->ajbk", a, xa, xa) / n                     # (C, d+1, C, d+1)
    hw, hwb, hb = full[:, :d, :, :d].reshape(c * d, c * d), full[:, :d, :, d].reshape(c * d, c), full[:, d, :, d]
    h = torch.cat([torch.cat([hw, hwb], 1), torch.cat([hwb.T, hb], 1)], 0)
    return h + l2 * torch.eye(len(h), dtype=x.dtype)


def objective_grad(model: nn.Module, loss_fn, x, y, l2: float, theta: torch.Tensor | None = None) -> torch.Tensor:
    """∇J(θ) by autograd (θ = the model's parameters unless given)."""
    th = (flat_params(model) if theta is None else theta).detach().clone().requires_grad_(True)
    value = loss_fn(torch.func.functional_call(model, unflatten(model, th), (x,)), y) + 0.5 * l2 * th.pow(2).sum()
    return torch.autograd.grad(value, th)[0]


def set_params(model: nn.Module, theta: torch.Tensor) -> nn.Module:
    torch.nn.utils.vector_to_parameters(theta.detach().clone(), model.parameters())
    return model


def fit_head(x, y, classes: int, l2: float, seed: int = 0) -> nn.Linear:
    """A float64 head at the optimum of J: L-BFGS, then exact Newton steps (‖∇J‖ ≤ 1e-12)."""
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], classes).double()
    fit_lbfgs(head, F.cross_entropy, x, y, l2, tol=1e-5, max_rounds=3)
    for _ in range(12):
        g = objective_grad(head, F.cross_entropy, x, y, l2)
        if g.norm() <= 1e-12:
            break
        set_params(head, flat_params(head) - torch.linalg.solve(head_hessian(head, x, l2), g))
    assert objective_grad(head, F.cross_entropy, x, y, l2).norm() <= 1e-10, "the check's head did not converge"
    for p in head.parameters():
        p.grad = None
    return head.eval()


@lru_cache(maxsize=None)
def _head(name: str, n: int, l2: float, seed: int = 0) -> nn.Linear:
    x, y = data(name, "train", 0, n)
    return fit_head(x, y, 10 if name == "mnist" else 2, l2, seed)


def head(name: str = "mnist", n: int = 120, l2: float = L2) -> nn.Linear:
    """A fitted head on the first n training rows (cached; cases get it pickled, so never changed)."""
    return _head(name, n, l2)


@lru_cache(maxsize=1)
def _checkpoints():
    from xailab.zoo.influence import load_checkpoints

    return load_checkpoints("mnist-feature-mlp")


def checkpoints(picked=None) -> tuple[list[nn.Module], list[float]]:
    models, rates = _checkpoints()
    picked = range(len(models)) if picked is None else picked
    return [models[k] for k in picked], [rates[k] for k in picked]


def loop_grads(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    """Trusted per-example gradients: one autograd call per example."""
    params = list(model.parameters())
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).detach()


def tensor_result(output, what: str) -> torch.Tensor:
    return as_tensor(output, what)


def matches(actual: torch.Tensor, candidate: torch.Tensor, rtol: float = 1e-4, scale: float = 1e-6) -> bool:
    """Whether `actual` has `candidate`'s shape and values (for naming a typical mistake in a message)."""
    if tuple(actual.shape) != tuple(candidate.shape):
        return False
    actual, candidate = actual.to(candidate.dtype), candidate
    bound = scale * candidate.abs().max() + rtol * candidate.abs() + 1e-12
    return bool(((actual - candidate).abs() <= bound).all())


def compare_explained(actual, expected: torch.Tensor, what: str, rtol: float, atol: float, hint: str,
                      mistakes=(), scale_atol: float = 0.0) -> None:
    """assert_close, but when the result equals a known wrong variant of the expected value, say which.
    `mistakes`: (wrong value, explanation) pairs."""
    actual = as_tensor(actual, what)
    try:
        assert_close(actual, expected, what, rtol, atol, hint, scale_atol)
    except CheckFailed as err:
        for wrong, why in mistakes:
            if wrong is not None and matches(actual, wrong):
                raise CheckFailed(f"{what}: {why} {hint}".strip()) from None
        if (actual.dim() == 2 and expected.dim() == 2 and expected.shape[0] != expected.shape[1]
                and tuple(actual.shape) == tuple(expected.shape[::-1])):
            raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)} — the result "
                              f"is transposed. {hint}".strip()) from None
        raise err


def detached(task: str, graph: bool, description: str) -> None:
    if graph:
        raise CheckFailed(f"{task} on {description} returned a tensor that requires grad: return plain numbers "
                          "(.detach() the result, or compute it from detached gradients) — an influence score "
                          "needs no autograd graph, and keeping one costs memory.")


def clean_call(task: str):
    """Property: no side effects (also on checkpoints and (X, y) pairs) and a result without autograd graph."""

    def prop(fn, case: Case) -> None:
        _, graph = observed_call(fn, task, case.kwargs)
        detached(task, graph, case.description)

    return prop


# ------------------------------------------------------------------ per_example_grads

GRADS_HINT = ("Row i is ∇θ loss_fn(model(x_i[None]), y_i[None]) — the gradient of example i's loss ALONE — with all "
              "parameters flattened and concatenated in model.parameters() order (weight before bias).")


def grads_cases() -> list[Case]:
    x, y = data("mnist", "train", 0, 10)
    xr, yr = data("reviews", "train", 0, 6)
    xm, ym = data("mnist", "train", 200, 208, double=False)
    models, _ = checkpoints([4])
    return [
        Case("the MNIST head (Linear(64, 10), float64, fitted), 10 training digits, cross-entropy",
             dict(model=head(), loss_fn=F.cross_entropy, inputs=x, target=y)),
        Case("the review head (Linear(384, 2), float64), 6 reviews, cross-entropy with label_smoothing=0.1",
             dict(model=head("reviews", 80), loss_fn=SMOOTHED, inputs=xr, target=yr)),
        Case("mnist-feature-mlp checkpoint 4 (64→16 tanh→10, float32), 8 digits, cross-entropy",
             dict(model=models[0], loss_fn=F.cross_entropy, inputs=xm, target=ym)),
    ]


def grads_mistakes(expected: torch.Tensor, kw: dict) -> list:
    n = len(expected)
    weights_only = torch.cat([torch.ones(p.numel(), dtype=torch.bool) if "weight" in name else
                              torch.zeros(p.numel(), dtype=torch.bool) for name, p in kw["model"].named_parameters()])
    return [(expected.mean(0, keepdim=True).expand(n, -1), "every row is the gradient of the batch's MEAN loss — "
             "compute one gradient per example (torch.func.vmap over grad of a one-example loss)."),
            (expected / n, "the rows are divided by n: each row is the gradient of one example's loss on its own "
             "(a batch of one, so the mean is that example's loss)."),
            (expected * n, "the rows are n times too large."),
            (expected[:, weights_only], "the biases are missing: include every parameter.")]


def grads_compare(fn, case: Case, expected: torch.Tensor) -> None:
    what = f"per_example_grads on {case.description}"
    compare_explained(fn(**case.kwargs), expected, what, 1e-4, 1e-9, GRADS_HINT,
                      grads_mistakes(expected, case.kwargs), scale_atol=1e-5)


prepared_check("lab09.per_example_grads.reference", "per_example_grads",
               "matches the reference per-example gradients (MNIST head, review head with label smoothing, MLP "
               "checkpoint)", grads_cases, lambda case: ref.per_example_grads(**copy_kwargs(case.kwargs)).detach(),
               grads_compare)


def grads_loop(fn, case: Case) -> None:
    kw = case.kwargs
    expected = loop_grads(kw["model"], kw["loss_fn"], kw["inputs"], kw["target"])
    compare_explained(fn(**kw), expected, f"per_example_grads on {case.description} vs a loop of autograd calls, "
                      "one example at a time", 1e-6, 1e-12, GRADS_HINT, grads_mistakes(expected, kw), scale_atol=1e-9)


def grads_vectorised(fn, case: Case) -> None:
    _, calls, _ = count_forward(fn, case.kwargs)
    n = len(case.kwargs["inputs"])
    if calls > 2:
        raise CheckFailed(f"per_example_grads ran the model {calls} times for {n} examples: a Python loop over the "
                          "examples. Vectorise: torch.func.vmap(torch.func.grad(loss of ONE example)) over the batch, "
                          "with torch.func.functional_call(model, params, (x[None],)).")


property_check("lab09.per_example_grads.properties", "per_example_grads",
               "equal a loop of autograd calls; batch = each example alone; vectorised (no loop); model and inputs "
               "untouched; no autograd graph",
               lambda: [Case("the MNIST head (float64, fitted), 8 training digits",
                             dict(model=head(), loss_fn=F.cross_entropy, **dict(zip(("inputs", "target"),
                                                                                  data("mnist", "train", 20, 28)))))],
               all_of(grads_loop, batch_equals_single("per_example_grads", 1e-6, 1e-12, scale_atol=1e-9),
                      grads_vectorised, clean_call("per_example_grads")))


# ------------------------------------------------------------------ hessian

HESSIAN_HINT = ("H = ∇²J at the model's parameters, J(θ) = loss_fn(model(inputs), target) + l2/2·‖θ‖²: the MEAN loss "
                "of the batch, and l2 added to the diagonal for EVERY parameter (biases too); parameters flattened in "
                "model.parameters() order. E.g. torch.func.hessian of J(θ) with functional_call.")


def hessian_cases() -> list[Case]:
    xr, yr = data("reviews", "train", 0, 30)
    xm, ym = data("mnist", "train", 300, 320, double=False)
    models, _ = checkpoints([9])
    return [
        Case("the review head (Linear(384, 2), float64), 30 reviews, l2=0.01",
             dict(model=head("reviews", 80), loss_fn=F.cross_entropy, inputs=xr, target=yr, l2=0.01)),
        Case("mnist-feature-mlp checkpoint 9 (64→16 tanh→10, float32, non-convex), 20 digits, l2=0.001",
             dict(model=models[0], loss_fn=F.cross_entropy, inputs=xm, target=ym, l2=1e-3)),
    ]


def hessian_mistakes(expected: torch.Tensor, kw: dict) -> list:
    l2, p = kw.get("l2", 0.0), len(expected)
    eye = torch.eye(p, dtype=expected.dtype)
    bias = torch.cat([torch.zeros(q.numel()) if "weight" in name else torch.ones(q.numel())
                      for name, q in kw["model"].named_parameters()]).to(expected.dtype)
    n = len(kw["inputs"])
    return [(expected - l2 * eye, "the l2·I term of l2/2·‖θ‖² is missing."),
            (expected - 0.5 * l2 * eye, "the regulariser l2/2·‖θ‖² adds l2·I to the Hessian, not l2/2·I."),
            (expected - l2 * torch.diag(bias), "l2 must apply to the biases too (‖θ‖² over ALL parameters)."),
            (n * (expected - l2 * eye) + l2 * eye, "the loss is summed over the batch: loss_fn already returns the "
             "MEAN — do not multiply by n.")]


def hessian_compare(fn, case: Case, expected: torch.Tensor) -> None:
    compare_explained(fn(**case.kwargs), expected, f"hessian on {case.description}", 1e-4, 1e-9, HESSIAN_HINT,
                      hessian_mistakes(expected, case.kwargs), scale_atol=1e-4)


prepared_check("lab09.hessian.reference", "hessian",
               "matches the reference Hessian (review head; a non-convex MLP checkpoint in float32)",
               hessian_cases, lambda case: ref.hessian(**copy_kwargs(case.kwargs)).detach(), hessian_compare)


def hessian_properties(fn, case: Case) -> None:
    kw = case.kwargs
    model, x, y, l2 = kw["model"], kw["inputs"], kw["target"], kw["l2"]
    what = f"hessian on {case.description}"
    h, graph = observed_call(fn, "hessian", kw)
    detached("hessian", graph, case.description)
    h = tensor_result(h, "hessian")
    p = sum(q.numel() for q in model.parameters())
    if tuple(h.shape) != (p, p):
        raise CheckFailed(f"{what}: expected shape ({p}, {p}) (one row and column per parameter), got {tuple(h.shape)}.")
    h = h.double()
    if not torch.allclose(h, h.T, rtol=0, atol=1e-10 * h.abs().max().item()):
        raise CheckFailed(f"{what}: not symmetric (max |H − Hᵀ| {(h - h.T).abs().max():.3g}): a Hessian of a smooth "
                          "function is symmetric.")
    plain = tensor_result(fn(**{k: v for k, v in kw.items() if k != "l2"}), "hessian").double()
    eye = torch.eye(p, dtype=h.dtype)
    assert_close(h - plain, l2 * eye, f"{what}: H(l2={l2}) − H(l2 left at its default 0)", 0, 1e-10,
                 "The regulariser l2/2·‖θ‖² adds exactly l2·I — to every parameter, biases included — and l2 "
                 "defaults to 0.")
    g = torch.Generator().manual_seed(11)
    theta, eps = flat_params(model), 1e-4
    for k in range(3):
        v = torch.randn(p, generator=g, dtype=theta.dtype)
        fd = (objective_grad(model, kw["loss_fn"], x, y, l2, theta + eps * v)
              - objective_grad(model, kw["loss_fn"], x, y, l2, theta - eps * v)) / (2 * eps)
        hv = h @ v
        if not torch.allclose(hv, fd, rtol=1e-5, atol=1e-7 * fd.abs().max().item()):
            ratio = float((hv @ fd) / (fd @ fd))
            extra = (f" H·v is about {ratio:.3g}× the finite difference: the loss is the MEAN over the batch "
                     "(loss_fn already averages)." if abs(ratio - 1) > 0.05 else "")
            raise CheckFailed(f"{what}: H·v differs from the central finite difference (∇J(θ + εv) − ∇J(θ − εv))/2ε "
                              f"along a random direction v (max difference {(hv - fd).abs().max():.3g}, magnitude "
                              f"{fd.abs().max():.3g}).{extra} {HESSIAN_HINT}")


property_check("lab09.hessian.properties", "hessian",
               "symmetric; equal to finite differences of the gradient; l2 adds exactly l2·I; model and inputs "
               "untouched; no autograd graph",
               lambda: [Case("the MNIST head (Linear(64, 10), float64), 30 digits, l2=0.02",
                             dict(model=head(), loss_fn=F.cross_entropy,
                                  **dict(zip(("inputs", "target"), data("mnist", "train", 0, 30))), l2=0.02))],
               hessian_properties)


# ------------------------------------------------------------------ influence

INFLUENCE_HINT = ("I[t, i] = −∇ℓ(z_test_t)ᵀ H⁻¹ ∇ℓ(z_i), shape (n_test, n_train): solve with H "
                  "(torch.linalg.solve(hessian, test_grads.T)), then multiply by the training gradients; the minus "
                  "sign makes a positive value an opponent (up-weighting the point increases the test loss).")


@lru_cache(maxsize=None)
def _influence_inputs(name: str, n: int, n_test: int):
    m = head(name, n)
    x, y = data(name, "train", 0, n)
    xt, yt = data(name, "test", 0, n_test)
    return loop_grads(m, F.cross_entropy, x, y), loop_grads(m, F.cross_entropy, xt, yt), head_hessian(m, x, L2)


def influence_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cases = []
    for name, n, k in (("mnist", 120, 6), ("reviews", 80, 4)):
        train, test, h = _influence_inputs(name, n, k)
        cases.append(Case(f"the fitted {name} head: gradients of its {n} training and {k} test points, its Hessian "
                          f"(l2={L2})", dict(train_grads=train.clone(), test_grads=test.clone(), hessian=h.clone())))
    cases.append(Case("random gradients (7 train, 3 test, p = 5) and a random symmetric positive definite 5×5 Hessian",
                      dict(train_grads=torch.randn(7, 5, generator=g, dtype=torch.float64),
                           test_grads=torch.randn(3, 5, generator=g, dtype=torch.float64),
                           hessian=a @ a.T + 0.5 * torch.eye(5, dtype=torch.float64))))
    return cases


def influence_mistakes(expected: torch.Tensor, kw: dict) -> list:
    train, test, h = kw["train_grads"], kw["test_grads"], kw["hessian"]
    return [(-expected, "the sign is flipped: I = −∇ℓ_testᵀ H⁻¹ ∇ℓ_train (positive = an opponent)."),
            (-test @ h @ train.T, "H is multiplied, not inverted: use H⁻¹ (torch.linalg.solve)."),
            (expected / len(train), "the result is divided by n: that is the predicted change of the test loss when "
             "the point is REMOVED (−I/n); the influence itself has no 1/n."),
            (-test @ train.T, "the Hessian is missing.")]


def influence_compare(fn, case: Case, expected: torch.Tensor) -> None:
    compare_explained(fn(**case.kwargs), expected, f"influence on {case.description}", 1e-6, 1e-12, INFLUENCE_HINT,
                      influence_mistakes(expected, case.kwargs), scale_atol=1e-9)


prepared_check("lab09.influence.reference", "influence",
               "matches the reference influence on the MNIST and review heads and a random positive definite case",
               influence_cases, lambda case: ref.influence(**copy_kwargs(case.kwargs)).detach(), influence_compare)


def influence_properties(fn, case: Case) -> None:
    kw = case.kwargs
    train, test, h = kw["train_grads"], kw["test_grads"], kw["hessian"]
    what = f"influence on {case.description}"
    out, graph = observed_call(fn, "influence", kw)
    detached("influence", graph, case.description)
    scaled = tensor_result(fn(train_grads=train, test_grads=test, hessian=2.0 * torch.eye(len(h), dtype=h.dtype)),
                           "influence")
    compare_explained(scaled, -test @ train.T / 2, f"{what} but with H = 2·I (so I = −g_test·g_train / 2)", 1e-9, 1e-12,
                      INFLUENCE_HINT, [(test @ train.T / 2, "the sign is flipped (with H = 2·I the influence is "
                                        "−g_test·g_train / 2)."),
                                       (-2 * test @ train.T, "H is multiplied, not inverted.")])
    full = tensor_result(out, "influence")
    mixed = tensor_result(fn(train_grads=train, test_grads=2 * test[:1] - 3 * test[1:2], hessian=h), "influence")
    assert_close(mixed, 2 * full[:1] - 3 * full[1:2], f"{what}: the influence for the test gradient 2·g₀ − 3·g₁ vs "
                 "2·(row 0) − 3·(row 1)", 1e-7, 1e-12, "The influence is linear in the test gradient, and row t "
                 "belongs to test point t alone. " + INFLUENCE_HINT, scale_atol=1e-9)
    own = tensor_result(fn(train_grads=train[:10], test_grads=train[:10], hessian=h), "influence")
    if own.shape == (10, 10) and (own.diagonal() > 1e-12).any():
        raise CheckFailed(f"{what}: with the training gradients as test gradients the diagonal −gᵢᵀH⁻¹gᵢ must be ≤ 0 "
                          "(up-weighting a point lowers its own loss; H is positive definite), yours has positive "
                          "entries: check the sign. " + INFLUENCE_HINT)


property_check("lab09.influence.properties", "influence",
               "exact with H = 2·I; linear in the test gradient; self-influence ≤ 0; inputs untouched; "
               "no autograd graph",
               lambda: influence_cases()[:1], influence_properties)


# ------------------------------------------------------------------ lissa_inverse_hvp

LISSA_HINT = ("Per repeat: h₀ = v; for j = 1..depth: h_j = v + (1 − damping)·h_{j−1} − H̃_j h_{j−1} / scale, with "
              "H̃_j the "
              "Hessian of J (l2 included) on all the data (batch_size None) or on the minibatch "
              "idx = torch.randint(n, (batch_size,), generator=generator) drawn once per step (repeats outer loop, "
              "depth inner loop); the estimate is h_depth / scale, averaged over the repeats.")


def lissa_case(description: str, seed: int | None = None, **kwargs) -> Case:
    case = Case(description, kwargs)
    case.seed = seed
    return case


def lissa_kwargs(case: Case, seed: int | None = None) -> dict:
    """Fresh arguments: a new generator seeded as the case says (each call must see the same random stream)."""
    kw = dict(case.kwargs)
    seed = case.seed if seed is None else seed
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    return kw


def lissa_cases() -> list[Case]:
    x, y = data("mnist", "train", 0, 120)
    xr, yr = data("reviews", "train", 0, 80)
    vm = _influence_inputs("mnist", 120, 6)[1][:3].clone()
    vr = _influence_inputs("reviews", 80, 4)[1][:2].clone()
    common = dict(model=head(), loss_fn=F.cross_entropy, inputs=x, target=y, vectors=vm, l2=L2)
    return [
        lissa_case("the MNIST head, 120 digits, 3 test gradients, l2=0.01, damping=0.01, scale=10, depth=6, full batch",
                   **common, damping=0.01, scale=10.0, depth=6),
        lissa_case("the MNIST head, 120 digits, 3 test gradients, l2=0.01, damping=0.05, scale=5, depth=4, repeats=2, "
                   "batch_size=16, a generator seeded 5", seed=5,
                   **common, damping=0.05, scale=5.0, depth=4, repeats=2, batch_size=16),
        lissa_case("the review head, 80 reviews, 2 test gradients, l2=0.01, damping=0, scale=3, depth=4, repeats=3, "
                   "batch_size=1, a generator seeded 8", seed=8,
                   model=head("reviews", 80), loss_fn=F.cross_entropy, inputs=xr, target=yr, vectors=vr, l2=L2,
                   scale=3.0, depth=4, repeats=3, batch_size=1),
    ]


def lissa_expected(case: Case) -> torch.Tensor:
    return ref.lissa_inverse_hvp(**copy_kwargs(lissa_kwargs(case))).detach()


def lissa_mistakes(expected: torch.Tensor, case: Case) -> list:
    kw = case.kwargs
    out = [(expected * kw.get("scale", 10.0), "the final division by scale is missing: the estimate is "
            "h_depth / scale.")]
    if kw.get("repeats", 1) > 1:
        out.append((expected * kw["repeats"], "the repeats are summed: average them (divide by repeats)."))
    return out


def lissa_compare(fn, case: Case, expected: torch.Tensor) -> None:
    kw = lissa_kwargs(case)
    compare_explained(fn(**kw), expected, f"lissa_inverse_hvp on {case.description}", 1e-6, 1e-12, LISSA_HINT,
                      lissa_mistakes(expected, case), scale_atol=1e-9)


prepared_check("lab09.lissa_inverse_hvp.reference", "lissa_inverse_hvp",
               "matches the reference recursion: full batch, and minibatches drawn from the generator as documented",
               lissa_cases, lissa_expected, lissa_compare)


def lissa_converges(fn, case: Case) -> None:
    """A well-conditioned case (J with l2 = 1: eigenvalues in [1, 2]), scale 2, damping 0.2: the error contracts
    by ≤ 0.3 per step, so 20 steps reach (H + damping·scale·I)⁻¹v to ~1e-10."""
    kw = case.kwargs
    m, x = kw["model"], kw["inputs"]
    h = head_hessian(m, x, 1.0)
    eye = torch.eye(len(h), dtype=h.dtype)
    v = kw["vectors"]
    args = dict(kw, l2=1.0, damping=0.2, scale=2.0, depth=20)
    got = tensor_result(fn(**args), "lissa_inverse_hvp")
    exact = torch.linalg.solve(h + 0.4 * eye, v.T).T
    what = (f"lissa_inverse_hvp on {case.description} with l2=1, damping=0.2, scale=2, depth=20 (eigenvalues of H in "
            "[1, 2]: converged) vs the exact (H + damping·scale·I)⁻¹v")
    compare_explained(got, exact, what, 1e-6, 1e-12, LISSA_HINT, [
        (torch.linalg.solve(h, v.T).T, "it converged to H⁻¹v without the damping: the recursion keeps (1 − damping) "
         "of h_{j−1}, which makes it converge to (H + damping·scale·I)⁻¹v."),
        (2.0 * exact, "the final division by scale is missing."),
        (torch.linalg.solve(h - eye + 0.4 * eye, v.T).T, "H̃ lacks the l2·I term: J includes l2/2·‖θ‖².")],
        scale_atol=1e-8)


def lissa_generator(fn, case: Case) -> None:
    kw = dict(case.kwargs, damping=0.05, scale=5.0, depth=2, repeats=2, batch_size=8)
    what = f"lissa_inverse_hvp on {case.description}, depth=2, repeats=2, batch_size=8"
    first, graph = observed_call(fn, "lissa_inverse_hvp", dict(kw, generator=torch.Generator().manual_seed(1)))
    detached("lissa_inverse_hvp", graph, case.description)
    first = tensor_result(first, "lissa_inverse_hvp")
    again = tensor_result(fn.call(dict(kw, generator=torch.Generator().manual_seed(1)), seed=7).output,
                          "lissa_inverse_hvp")
    assert_close(again, first, f"{what}: twice with a generator seeded 1 (the global random state differing)", 1e-9,
                 1e-12, "Draw every minibatch from `generator`: torch.randint(n, (batch_size,), generator=generator).",
                 scale_atol=1e-9)
    other = tensor_result(fn(**dict(kw, generator=torch.Generator().manual_seed(2))), "lissa_inverse_hvp")
    if torch.allclose(other, first, rtol=1e-9, atol=1e-12):
        raise CheckFailed(f"{what}: the same result for generators seeded 1 and 2: with batch_size set, each step "
                          "uses the Hessian of a random minibatch drawn from `generator`.")


property_check("lab09.lissa_inverse_hvp.properties", "lissa_inverse_hvp",
               "converges to the exact (H + damping·scale·I)⁻¹v on a well-conditioned case; minibatches from the "
               "generator (repeatable, seed-dependent); model and inputs untouched; no autograd graph",
               lambda: [Case("the MNIST head, 40 digits, 2 test gradients",
                             dict(model=head(), loss_fn=F.cross_entropy,
                                  **dict(zip(("inputs", "target"), data("mnist", "train", 0, 40))),
                                  vectors=_influence_inputs("mnist", 120, 6)[1][3:5].clone()))],
               all_of(lissa_converges, lissa_generator))


# ------------------------------------------------------------------ tracin

TRACIN_HINT = ("T[t, i] = Σ_k lr_k · ∇ℓ(θ_k, z_test_t)·∇ℓ(θ_k, z_i) over ALL checkpoints k, each with its own learning "
               "rate, per-example gradients (not the batch mean); shape (n_test, n_train); positive = a proponent.")


def tracin_cases() -> list[Case]:
    models, rates = checkpoints()
    few, few_rates = checkpoints([0, 4, 9])
    heads = [head(), _head("mnist", 120, 0.1)]
    return [
        Case("all 10 mnist-feature-mlp checkpoints (float32) with their learning rates, 12 training digits, 4 test "
             "digits", dict(checkpoints=models, learning_rates=rates, loss_fn=F.cross_entropy,
                           train=data("mnist", "train", 0, 12, double=False),
                           test=data("mnist", "test", 0, 4, double=False))),
        Case(f"mnist-feature-mlp checkpoints 0, 4, 9 with rates {few_rates}, 10 training digits, 3 test digits",
             dict(checkpoints=few, learning_rates=few_rates, loss_fn=F.cross_entropy,
                  train=data("mnist", "train", 50, 60, double=False), test=data("mnist", "test", 10, 13, double=False))),
        Case("two float64 MNIST heads as checkpoints, rates [0.5, 0.05], 15 training digits, 2 test digits",
             dict(checkpoints=heads, learning_rates=[0.5, 0.05], loss_fn=F.cross_entropy,
                  train=data("mnist", "train", 0, 15), test=data("mnist", "test", 6, 8))),
    ]


def tracin_terms(kw: dict, test_key: str = "test") -> list[torch.Tensor]:
    """Trusted: one (n_test, n_train) matrix of gradient dot products per checkpoint (no learning rate)."""
    (x, y), (xt, yt) = kw["train"], kw[test_key]
    return [loop_grads(m, kw["loss_fn"], xt, yt) @ loop_grads(m, kw["loss_fn"], x, y).T for m in kw["checkpoints"]]


def tracin_mistakes(expected: torch.Tensor, kw: dict, terms: list[torch.Tensor]) -> list:
    rates = kw["learning_rates"]
    return [(-expected, "the sign is flipped: TracIn adds lr·(test gradient · training gradient), positive = a "
             "proponent."),
            (sum(terms), "the learning rates are missing: weight checkpoint k by learning_rates[k]."),
            (rates[-1] * terms[-1], "only the last checkpoint is used: sum over all checkpoints."),
            (expected / len(rates), "the checkpoints are averaged: TracInCP sums them (each weighted by its rate).")]


def tracin_expected(case: Case):
    return ref.tracin(**copy_kwargs(case.kwargs)).detach(), tracin_terms(case.kwargs)


def tracin_compare(fn, case: Case, expected) -> None:
    value, terms = expected
    compare_explained(fn(**case.kwargs), value, f"tracin on {case.description}", 1e-4, 1e-9, TRACIN_HINT,
                      tracin_mistakes(value, case.kwargs, terms), scale_atol=1e-5)


prepared_check("lab09.tracin.reference", "tracin",
               "matches the reference TracInCP scores (all and some MLP checkpoints, two float64 heads)",
               tracin_cases, tracin_expected, tracin_compare)


def tracin_properties(fn, case: Case) -> None:
    kw = case.kwargs
    models, rates = kw["checkpoints"], kw["learning_rates"]
    what = f"tracin on {case.description}"
    out, graph = observed_call(fn, "tracin", kw)
    detached("tracin", graph, case.description)
    out = tensor_result(out, "tracin")
    terms = tracin_terms(kw)
    single = tensor_result(fn(**dict(kw, checkpoints=models[1:2], learning_rates=rates[1:2])), "tracin")
    compare_explained(single, rates[1] * terms[1], f"{what}, one checkpoint (the second) with lr={rates[1]} vs lr × "
                      "the dot products of per-example gradients computed here", 1e-4, 1e-9, TRACIN_HINT,
                      [(terms[1], "the learning rate is missing."), (-rates[1] * terms[1], "the sign is flipped.")],
                      scale_atol=1e-5)
    picked = [0.0] * len(rates)
    picked[0] = rates[0]
    first = tensor_result(fn(**dict(kw, learning_rates=picked)), "tracin")
    compare_explained(first, rates[0] * terms[0], f"{what} with learning rates {picked} (only the first checkpoint "
                      "counts)", 1e-4, 1e-9, "A checkpoint with learning rate 0 contributes nothing: weight each "
                      "checkpoint's dot products by its own rate and sum over all checkpoints.", scale_atol=1e-5)
    doubled = tensor_result(fn(**dict(kw, learning_rates=[2 * r for r in rates])), "tracin")
    assert_close(doubled, 2 * out, f"{what} with every learning rate doubled vs 2× the scores", 1e-5, 1e-9,
                 "TracIn is linear in the learning rates.", scale_atol=1e-6)
    own = tensor_result(fn(**dict(kw, test=kw["train"])), "tracin")
    if own.dim() == 2 and own.shape[0] == own.shape[1] and (own.diagonal() < 0).any():
        raise CheckFailed(f"{what} with test = train: the diagonal Σ_k lr_k‖∇ℓ(θ_k, z_i)‖² must be ≥ 0 (every point "
                          "is its own proponent), yours has negative entries: check the sign. " + TRACIN_HINT)


property_check("lab09.tracin.properties", "tracin",
               "one checkpoint = lr × gradient dot products; linear in the learning rates; self-scores ≥ 0; "
               "checkpoints and data untouched; no autograd graph",
               lambda: [Case("mnist-feature-mlp checkpoints 2, 5, 8, 6 training digits, 2 test digits",
                             dict(checkpoints=checkpoints([2, 5, 8])[0], learning_rates=checkpoints([2, 5, 8])[1],
                                  loss_fn=F.cross_entropy, train=data("mnist", "train", 30, 36, double=False),
                                  test=data("mnist", "test", 20, 22, double=False)))],
               tracin_properties)


# ------------------------------------------------------------------ self_influence

SELF_HINT = ("S[i] = Σ_k lr_k · ‖∇ℓ(θ_k, z_i)‖² (the SQUARED norm of example i's own gradient at each checkpoint, "
             "weighted by that checkpoint's learning rate, summed over all checkpoints): shape (n_train,).")


def self_cases() -> list[Case]:
    models, rates = checkpoints()
    return [
        Case("all 10 mnist-feature-mlp checkpoints (float32) with their learning rates, 16 training digits",
             dict(checkpoints=models, learning_rates=rates, loss_fn=F.cross_entropy,
                  train=data("mnist", "train", 100, 116, double=False))),
        Case("two float64 MNIST heads as checkpoints, rates [0.5, 0.05], 20 training digits",
             dict(checkpoints=[head(), _head("mnist", 120, 0.1)], learning_rates=[0.5, 0.05], loss_fn=F.cross_entropy,
                  train=data("mnist", "train", 0, 20))),
    ]


def self_terms(kw: dict) -> list[torch.Tensor]:
    x, y = kw["train"]
    return [loop_grads(m, kw["loss_fn"], x, y) for m in kw["checkpoints"]]


def self_mistakes(expected: torch.Tensor, kw: dict, grads: list[torch.Tensor]) -> list:
    rates = kw["learning_rates"]
    return [(sum(lr * g.norm(dim=1) for lr, g in zip(rates, grads)), "the norm is not squared: use ‖g‖² (the TracIn "
             "score of a point with itself)."),
            (sum(g.pow(2).sum(1) for g in grads), "the learning rates are missing."),
            (rates[-1] * grads[-1].pow(2).sum(1), "only the last checkpoint is used: sum over all checkpoints."),
            (sum(lr * g.pow(2).mean(1) for lr, g in zip(rates, grads)), "the squares are averaged over the parameters: "
             "sum them (‖g‖² = Σ_j g_j²)."),
            (-expected, "the sign is flipped: self-influence is ≥ 0.")]


def self_expected(case: Case):
    return ref.self_influence(**copy_kwargs(case.kwargs)).detach(), self_terms(case.kwargs)


def self_compare(fn, case: Case, expected) -> None:
    value, grads = expected
    compare_explained(fn(**case.kwargs), value, f"self_influence on {case.description}", 1e-4, 1e-9, SELF_HINT,
                      self_mistakes(value, case.kwargs, grads), scale_atol=1e-5)


prepared_check("lab09.self_influence.reference", "self_influence",
               "matches the reference self-influence (all MLP checkpoints, two float64 heads)",
               self_cases, self_expected, self_compare)


def self_properties(fn, case: Case) -> None:
    kw = case.kwargs
    what = f"self_influence on {case.description}"
    out, graph = observed_call(fn, "self_influence", kw)
    detached("self_influence", graph, case.description)
    grads = self_terms(kw)
    diagonal = sum(lr * (g @ g.T).diagonal() for lr, g in zip(kw["learning_rates"], grads))
    compare_explained(out, diagonal, f"{what} vs the diagonal of TracIn(train, train) computed here", 1e-4, 1e-9,
                      SELF_HINT, self_mistakes(diagonal, kw, grads), scale_atol=1e-5)
    tripled = tensor_result(fn(**dict(kw, learning_rates=[3 * r for r in kw["learning_rates"]])), "self_influence")
    assert_close(tripled, 3 * tensor_result(out, "self_influence"), f"{what} with every learning rate tripled vs 3× "
                 "the scores", 1e-5, 1e-9, "Self-influence is linear in the learning rates.", scale_atol=1e-6)


property_check("lab09.self_influence.properties", "self_influence",
               "the diagonal of TracIn(train, train); linear in the learning rates; checkpoints and data untouched; "
               "no autograd graph",
               lambda: [Case("mnist-feature-mlp checkpoints 1, 6, 9, 8 training digits",
                             dict(checkpoints=checkpoints([1, 6, 9])[0], learning_rates=checkpoints([1, 6, 9])[1],
                                  loss_fn=F.cross_entropy, train=data("mnist", "train", 40, 48, double=False)))],
               self_properties)


# ------------------------------------------------------------------ representer_alphas

ALPHA_HINT = ("α = −(1/l2)·∂J/∂Φ with Φ = model(features) the pre-activations (detached, then requires_grad) and J "
              "the MEAN loss, so α carries the 1/n: for cross-entropy α_i = −(softmax(Φ_i) − onehot(y_i)) / (n·l2).")


def alpha_cases() -> list[Case]:
    x, y = data("mnist", "train", 0, 120)
    xr, yr = data("reviews", "train", 0, 80)
    return [
        Case("the fitted MNIST head, its 120 training digits, l2=0.01",
             dict(model=head(), loss_fn=F.cross_entropy, features=x, target=y, l2=L2)),
        Case("the fitted review head, its 80 training reviews, l2=0.01",
             dict(model=head("reviews", 80), loss_fn=F.cross_entropy, features=xr, target=yr, l2=L2)),
        Case("the MNIST head (fitted with l2=0.1), 30 of its digits, cross-entropy with label_smoothing=0.1, l2=0.1",
             dict(model=_head("mnist", 120, 0.1), loss_fn=SMOOTHED, features=x[:30].clone(), target=y[:30].clone(),
                  l2=0.1)),
    ]


def alpha_mistakes(expected: torch.Tensor, kw: dict) -> list:
    n, l2 = len(kw["features"]), kw["l2"]
    with torch.no_grad():
        probs = kw["model"](kw["features"]).softmax(1)
    return [(expected * n, "the 1/n is missing: J has the MEAN loss, so ∂J/∂Φ_i = ∂ℓ_i/∂Φ_i / n."),
            (-expected, "the sign is flipped: α = −(1/l2)·∂J/∂Φ."),
            (expected * l2 * l2, "α is multiplied by l2: divide by l2."),
            (-probs / (n * l2), "the one-hot target is missing: ∂ℓ/∂Φ of cross-entropy is softmax(Φ) − onehot(y)."),
            (-(probs - F.one_hot(kw["target"], probs.shape[1]).to(probs.dtype)) / (n * l2),
             "this is the formula of plain cross-entropy, but loss_fn here is another loss (label smoothing): "
             "differentiate loss_fn itself — autograd on the detached pre-activations.")]


def alpha_compare(fn, case: Case, expected: torch.Tensor) -> None:
    compare_explained(fn(**case.kwargs), expected, f"representer_alphas on {case.description}", 1e-6, 1e-12,
                      ALPHA_HINT, alpha_mistakes(expected, case.kwargs), scale_atol=1e-9)


prepared_check("lab09.representer_alphas.reference", "representer_alphas",
               "matches the reference α on the MNIST and review heads (also with label smoothing)",
               alpha_cases, lambda case: ref.representer_alphas(**copy_kwargs(case.kwargs)).detach(), alpha_compare)


def alpha_properties(fn, case: Case) -> None:
    kw = case.kwargs
    m, x = kw["model"], kw["features"]
    what = f"representer_alphas on {case.description}"
    alphas, graph = observed_call(fn, "representer_alphas", kw)
    detached("representer_alphas", graph, case.description)
    alphas = tensor_result(alphas, "representer_alphas")
    if tuple(alphas.shape) != (len(x), m.weight.shape[0]):
        raise CheckFailed(f"{what}: expected shape ({len(x)}, {m.weight.shape[0]}) (one α per example and class), got "
                          f"{tuple(alphas.shape)}.")
    alphas = alphas.double()
    w, b = m.weight.detach(), m.bias.detach()
    rebuilt_w, rebuilt_b = alphas.T @ x, alphas.sum(0)
    ok = torch.allclose(rebuilt_w, w, rtol=1e-6, atol=1e-9) and torch.allclose(rebuilt_b, b, rtol=1e-6, atol=1e-9)
    if not ok:
        ratio = float((rebuilt_w * w).sum() / (w * w).sum())
        cause = (": the 1/n of the mean loss is missing." if abs(ratio - len(x)) < 1
                 else ": check the sign." if abs(ratio + 1) < 0.01 else ".")
        extra = f" Σ_i α_i f_iᵀ is {ratio:.3g}× W{cause}"
        raise CheckFailed(f"{what}: at the optimum of J (this head is there) stationarity gives W = Σ_i α_i f_iᵀ and "
                          f"b = Σ_i α_i (Yeh et al. 2018); yours give max differences {(rebuilt_w - w).abs().max():.3g} "
                          f"and {(rebuilt_b - b).abs().max():.3g}.{extra} {ALPHA_HINT}")
    half = tensor_result(fn(**dict(kw, l2=2 * kw["l2"])), "representer_alphas")
    assert_close(half, alphas / 2, f"{what}, l2 doubled vs half the α", 1e-6, 1e-12, "α = −(1/l2)·∂J/∂Φ: divide by "
                 "l2.", scale_atol=1e-9)


property_check("lab09.representer_alphas.properties", "representer_alphas",
               "W = Σ α_i f_iᵀ and b = Σ α_i at the optimum (Yeh et al.); α ∝ 1/l2; model and features untouched; "
               "no autograd graph", lambda: alpha_cases()[:1], alpha_properties)


# ------------------------------------------------------------------ representer_values

VALUES_HINT = ("V[t, i] = α_i[c_t]·(f_i·f_t + 1): the α of training point i for test point t's target class c_t, times "
               "the dot product of their features plus 1 (the bias is a weight on a constant feature 1); shape "
               "(n_test, n_train); target is an int (the same class for all) or one class per test point.")


@lru_cache(maxsize=None)
def _alphas(name: str, n: int) -> torch.Tensor:
    """Trusted α of a fitted head: −(softmax − onehot)/(n·l2)."""
    m = head(name, n)
    x, y = data(name, "train", 0, n)
    with torch.no_grad():
        return -(m(x).softmax(1) - F.one_hot(y, m.weight.shape[0]).double()) / (n * L2)


def predicted(name: str, n: int, xt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(name, n)(xt).argmax(1)


def values_cases() -> list[Case]:
    x, _ = data("mnist", "train", 0, 120)
    xt, yt = data("mnist", "test", 0, 6)
    xr, _ = data("reviews", "train", 0, 80)
    xrt, _ = data("reviews", "test", 0, 4)
    a, ar = _alphas("mnist", 120).clone(), _alphas("reviews", 80).clone()
    return [
        Case("the MNIST head's α (120 digits), 6 test digits, their labels as targets",
             dict(features=x, alphas=a, test_features=xt, target=yt)),
        Case("the MNIST head's α (120 digits), 6 test digits, target 3 (an int) for all",
             dict(features=x.clone(), alphas=a.clone(), test_features=xt.clone(), target=3)),
        Case("the review head's α (80 reviews), 4 test reviews, the predicted classes as targets",
             dict(features=xr, alphas=ar, test_features=xrt, target=predicted("reviews", 80, xrt))),
    ]


def values_mistakes(expected: torch.Tensor, kw: dict) -> list:
    f, a, ft = kw["features"], kw["alphas"], kw["test_features"]
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(ft))
    k = ft @ f.T
    return [(k * a[:, target].T, "the +1 is missing: the bias is a weight on a constant feature 1, so the kernel is "
             "f_i·f_t + 1."),
            ((k + 1) * a.sum(1)[None, :], "the α of all classes are summed: use α_i[c_t], the column of the target "
             "class."),
            ((k + 1) * a[:, target[:1]].T, "every test point uses the first target: index α by each test point's own "
             "class.")]


def values_compare(fn, case: Case, expected: torch.Tensor) -> None:
    compare_explained(fn(**case.kwargs), expected, f"representer_values on {case.description}", 1e-6, 1e-12,
                      VALUES_HINT, values_mistakes(expected, case.kwargs), scale_atol=1e-9)


prepared_check("lab09.representer_values.reference", "representer_values",
               "matches the reference representer values (MNIST and review heads, per-point and int targets)",
               values_cases, lambda case: ref.representer_values(**copy_kwargs(case.kwargs)).detach(), values_compare)


def values_properties(fn, case: Case) -> None:
    kw = case.kwargs
    what = f"representer_values on {case.description}"
    out, graph = observed_call(fn, "representer_values", kw)
    detached("representer_values", graph, case.description)
    out = tensor_result(out, "representer_values")
    m, ft = head(), kw["test_features"]
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(ft))
    with torch.no_grad():
        logits = m(ft).gather(1, target[:, None])[:, 0]
    if out.dim() != 2 or out.shape != (len(ft), len(kw["features"])):
        raise CheckFailed(f"{what}: expected shape ({len(ft)}, {len(kw['features'])}), got {tuple(out.shape)}. "
                          + VALUES_HINT)
    sums = out.double().sum(1)
    if not torch.allclose(sums, logits, rtol=1e-6, atol=1e-8):
        gap = (logits - sums)
        extra = (" The gap is the bias b[c_t]: the +1 term (the bias as a weight on a constant feature) is missing."
                 if torch.allclose(gap, m.bias.detach()[target], rtol=1e-4, atol=1e-8) else "")
        raise CheckFailed(f"{what}: each row must sum to the test point's pre-activation of its target class at the "
                          f"optimum (Yeh et al.'s decomposition, checked with the fitted head): expected "
                          f"{[round(v, 4) for v in logits.tolist()]}, got {[round(v, 4) for v in sums.tolist()]}.{extra} "
                          + VALUES_HINT)
    for t in range(len(ft)):
        row = tensor_result(fn(**dict(kw, test_features=ft[t:t + 1], target=int(target[t]))), "representer_values")
        assert_close(row, out[t:t + 1], f"{what}: test point {t} alone (target {int(target[t])}) vs row {t} of the "
                     "batch", 1e-6, 1e-12, "Each row belongs to its own test point and its own target class.",
                     scale_atol=1e-9)


property_check("lab09.representer_values.properties", "representer_values",
               "rows sum to the fitted head's pre-activation (Yeh's decomposition); batch = each test point alone; "
               "inputs untouched; no autograd graph",
               lambda: [Case("the MNIST head's α (120 digits), 5 test digits, targets [7, 2, 1, 0, 9]",
                             dict(features=data("mnist", "train", 0, 120)[0], alphas=_alphas("mnist", 120).clone(),
                                  test_features=data("mnist", "test", 10, 15)[0],
                                  target=torch.tensor([7, 2, 1, 0, 9])))],
               values_properties)


# ------------------------------------------------------------------ leave_one_out

LOO_HINT = ("Remove point i: J_{−i}(θ) = J(θ) − ℓ_i(θ)/n (the other points KEEP their weight 1/n), minimise it to "
            "convergence (‖∇J_{−i}‖ ≤ tol, e.g. Newton steps θ ← θ − H⁻¹∇J_{−i}(θ), at most max_steps) starting from "
            "the model's θ̂, and report test loss(θ_{−i}) − test loss(θ̂) per test point: shape (n_test, len(indices)); "
            "positive = the point helped.")


def loo_cases() -> list[Case]:
    x, y = data("mnist", "train", 0, 120)
    xr, yr = data("reviews", "train", 0, 80)
    return [
        Case("the fitted MNIST head (120 digits, l2=0.01), 6 test digits, indices [0, 5, 17, 3] (a list)",
             dict(model=head(), loss_fn=F.cross_entropy, train=(x, y), test=data("mnist", "test", 0, 6),
                  indices=[0, 5, 17, 3], l2=L2)),
        Case("the fitted review head (80 reviews, l2=0.01), 4 test reviews, indices tensor([17, 60])",
             dict(model=head("reviews", 80), loss_fn=F.cross_entropy, train=(xr, yr),
                  test=data("reviews", "test", 0, 4), indices=torch.tensor([17, 60]), l2=L2)),
    ]


def losses_on(m: nn.Module, test) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(m(test[0]), test[1], reduction="none")


def loo_mistakes(expected: torch.Tensor) -> list:
    return [(-expected, "the sign is flipped: report loss after removal − loss at θ̂ (positive = the point helped).")]


def loo_compare(fn, case: Case, expected: torch.Tensor) -> None:
    compare_explained(fn(**case.kwargs), expected, f"leave_one_out on {case.description}", 1e-4, 1e-7, LOO_HINT,
                      loo_mistakes(expected), scale_atol=1e-4)


prepared_check("lab09.leave_one_out.reference", "leave_one_out",
               "matches the reference retraining without each point (MNIST and review heads)",
               loo_cases, lambda case: ref.leave_one_out(**copy_kwargs(case.kwargs)).detach(), loo_compare)


@lru_cache(maxsize=None)
def _refits(indices: tuple[int, ...]) -> torch.Tensor:
    """Trusted: test-loss changes after FRESH fits (another initialisation) without each point. J_{−i} times
    n/(n−1) is the mean over the n−1 points + (l2·n/(n−1))/2·‖θ‖²: the same minimiser."""
    x, y = data("mnist", "train", 0, 120)
    test = data("mnist", "test", 0, 4)
    n = len(x)
    before = losses_on(head(), test)
    cols = []
    for i in indices:
        keep = torch.arange(n) != i
        cols.append(losses_on(fit_head(x[keep], y[keep], 10, L2 * n / (n - 1), seed=7), test) - before)
    return torch.stack(cols, 1)


@lru_cache(maxsize=1)
def _zero_gradient_case():
    """60 digits with one-hot (probability) targets plus digit 60 whose soft target is the head's own prediction,
    fitted so that θ̂ is the optimum of J over all 61 points: point 60 has zero loss gradient at θ̂."""
    x, y = data("mnist", "train", 0, 61)
    n = len(x)
    soft = F.one_hot(y, 10).double()
    m = fit_head(x[:-1], soft[:-1], 10, L2 * n / (n - 1))   # then (n−1)/n·mean_{n−1} + l2/2‖θ‖² is stationary
    with torch.no_grad():
        soft[-1] = m(x[-1:]).softmax(1)[0]
    assert objective_grad(m, F.cross_entropy, x, soft, L2).norm() < 1e-10
    return m, x, soft


def loo_properties(fn, case: Case) -> None:
    kw = case.kwargs
    what = f"leave_one_out on {case.description}"
    out, graph = observed_call(fn, "leave_one_out", kw)
    detached("leave_one_out", graph, case.description)
    expected = _refits(tuple(kw["indices"]))
    compare_explained(out, expected, f"{what} vs fresh fits without each point (verified here)", 1e-4, 1e-7,
                      LOO_HINT, loo_mistakes(expected), scale_atol=1e-4)
    m, x, soft = _zero_gradient_case()
    zero = tensor_result(fn(model=m, loss_fn=F.cross_entropy, train=(x, soft), test=data("mnist", "test", 0, 4),
                            indices=[60, 10], l2=L2), "leave_one_out")
    if tuple(zero.shape) != (4, 2):
        raise CheckFailed(f"leave_one_out on 61 digits with probability targets, 4 test digits, indices [60, 10]: "
                          f"expected shape (4, 2), got {tuple(zero.shape)}.")
    if zero[:, 0].abs().max() > 1e-7 or zero[:, 1].abs().max() < 1e-5:
        raise CheckFailed("leave_one_out on 61 digits with probability targets (F.cross_entropy accepts them), where "
                          "point 60's target is the model's own prediction, so its loss gradient at θ̂ is zero: removing "
                          f"it must change nothing, yours changes the test losses by up to {zero[:, 0].abs().max():.3g}"
                          " (removing point 10 must change them). The other points keep their weight 1/n — do not "
                          "re-average over n − 1 points. " + LOO_HINT)


property_check("lab09.leave_one_out.properties", "leave_one_out",
               "agrees with fresh fits without the point (verified here); removing a zero-gradient point changes "
               "nothing; model and data untouched; no autograd graph",
               lambda: [Case("the fitted MNIST head (120 digits, l2=0.01), 4 test digits, indices [2, 33]",
                             dict(model=head(), loss_fn=F.cross_entropy, train=data("mnist", "train", 0, 120),
                                  test=data("mnist", "test", 0, 4), indices=[2, 33], l2=L2))],
               loo_properties)


# ------------------------------------------------------------------ mislabel_recall

RECALL_HINT = ("k = round(fraction·n); rank by a stable DESCENDING sort of the scores (ties: the earlier index "
               "first: torch.argsort(scores, descending=True, stable=True)); return (number of flipped examples among "
               "the first k) / (number of flipped examples), as a float.")


def number(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailed(f"{what}: expected a float, got {type(value).__name__}.")
    return float(value)


def recall_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(40, generator=g, dtype=torch.float64)
    flipped = torch.zeros(40, dtype=torch.bool)
    flipped[torch.randperm(40, generator=g)[:8]] = True
    scores[flipped] += 0.8                                            # informative, not perfect
    return [Case(f"40 random scores, 8 flipped, fraction={f} (k = {round(f * 40)})",
                 dict(scores=scores.clone(), flipped=flipped.clone(), fraction=f)) for f in (0.1, 0.3, 0.37, 0.5)]


def recall_compare(fn, case: Case, expected: float) -> None:
    what = f"mislabel_recall on {case.description}"
    got = number(fn(**case.kwargs), what)
    if abs(got - expected) > 1e-9:
        raise CheckFailed(f"{what}: expected {expected:.4g}, got {got:.4g}. {RECALL_HINT}")


prepared_check("lab09.mislabel_recall.reference", "mislabel_recall",
               "matches the reference recall on random scores (several fractions)",
               recall_cases, lambda case: float(ref.mislabel_recall(**copy_kwargs(case.kwargs))), recall_compare)

F_, T_ = False, True
RECALL_HAND = [  # (scores, flipped, fraction, expected, why)
    (list(range(10)), [F_, F_, T_, F_, F_, F_, F_, T_, T_, T_], 0.3, 0.75,
     "scores 0..9: the top 3 are indices 9, 8, 7, three of the 4 flipped (the HIGHEST scores, not the lowest)"),
    ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [T_, F_, F_, F_, F_, F_, F_, F_, F_, T_], 0.2, 0.5,
     "indices 0-3 tie at the top: k = 2 takes indices 0 and 1 (ties → the earlier index first)"),
    (list(range(10)), [F_, F_, F_, F_, F_, F_, F_, T_, F_, F_], 0.27, 1.0,
     "k = round(2.7) = 3 (not 2): indices 9, 8, 7 include the flipped index 7"),
    ([5, 4, 3, 2, 1, 0, -1, -2], [F_, F_, F_, F_, F_, F_, T_, T_], 0.5, 0.0,
     "no flipped example among the top 4"),
    ([0.3, 0.1, 0.2, 0.9], [T_, T_, T_, T_], 0.5, 0.5, "every example flipped: 2 of the 4 found"),
    ([0.3, 0.1, 0.2, 0.9, 0.5], [F_, T_, F_, F_, F_], 1.0, 1.0, "fraction 1: every flipped example is found"),
    ([0.9, 0.8, 0.1, 0.2, 0.3, 0.4], [T_, F_, F_, F_, F_, F_], 0.5, 1.0,
     "1 flipped example, k = 3: recall is found/flipped (1/1), not found/k"),
]


def recall_properties(fn, case: Case) -> None:
    out, _ = observed_call(fn, "mislabel_recall", case.kwargs)
    number(out, f"mislabel_recall on {case.description}")
    for scores, flipped, fraction, expected, why in RECALL_HAND:
        got = number(fn(scores=torch.tensor(scores, dtype=torch.float64), flipped=torch.tensor(flipped),
                        fraction=fraction), "mislabel_recall")
        if abs(got - expected) > 1e-9:
            raise CheckFailed(f"mislabel_recall on a hand-made ranking ({why}): expected {expected:g}, got {got:.4g}. "
                              + RECALL_HINT)


property_check("lab09.mislabel_recall.properties", "mislabel_recall",
               "exact on hand-made rankings (descending, ties, rounding, none/all flipped, denominator); scores and "
               "flags untouched", lambda: recall_cases()[1:2], recall_properties)
