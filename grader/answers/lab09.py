"""Lab 9 answer key: per-example gradients, Hessian, influence functions, LiSSA, TracIn, representer
points, leave-one-out retraining, mislabel recall.

Conventions (the docstrings of the notebook state them): `loss_fn(outputs, target)` returns the MEAN loss
of a batch; the training objective is J(θ) = loss_fn(model(X), y) + l2/2 · ‖θ‖² over all parameters;
parameters are flattened in `model.parameters()` order.
"""
from __future__ import annotations

import torch
from torch.func import functional_call, grad, hessian as func_hessian, jvp, vmap

from xailab.zoo.influence import flat_params, unflatten


def per_example_grads(model, loss_fn, inputs, target):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return loss_fn(functional_call(model, p, (x[None],)), t[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, target)
    return torch.cat([g.reshape(len(inputs), -1) for g in grads.values()], dim=1)


def _objective(model, loss_fn, inputs, target, l2):
    def J(theta):
        return loss_fn(functional_call(model, unflatten(model, theta), (inputs,)), target) + 0.5 * l2 * theta.pow(2).sum()
    return J


def hessian(model, loss_fn, inputs, target, l2=0.0):
    return func_hessian(_objective(model, loss_fn, inputs, target, l2))(flat_params(model))


def influence(train_grads, test_grads, hessian):
    s_test = torch.linalg.solve(hessian, test_grads.T).T  # H⁻¹ ∇ℓ(z_test), (n_test, p)
    return -s_test @ train_grads.T


def lissa_inverse_hvp(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                      repeats=1, batch_size=None, generator=None):
    theta = flat_params(model)
    n = len(inputs)

    def hvp(x, t, v):
        g = grad(_objective(model, loss_fn, x, t, l2))
        return jvp(g, (theta,), (v,))[1]

    batched = vmap(hvp, in_dims=(None, None, 0))
    total = torch.zeros_like(vectors)
    for _ in range(repeats):
        h = vectors.clone()
        for _ in range(depth):
            if batch_size is None:
                x, t = inputs, target
            else:
                idx = torch.randint(n, (batch_size,), generator=generator)
                x, t = inputs[idx], target[idx]
            h = vectors + (1 - damping) * h - batched(x, t, h) / scale
        total = total + h / scale
    return total / repeats


def tracin(checkpoints, learning_rates, loss_fn, train, test):
    (x, y), (xt, yt) = train, test
    scores = 0
    for model, lr in zip(checkpoints, learning_rates):
        scores = scores + lr * per_example_grads(model, loss_fn, xt, yt) @ per_example_grads(model, loss_fn, x, y).T
    return scores


def self_influence(checkpoints, learning_rates, loss_fn, train):
    x, y = train
    scores = 0
    for model, lr in zip(checkpoints, learning_rates):
        scores = scores + lr * per_example_grads(model, loss_fn, x, y).pow(2).sum(1)
    return scores


def representer_alphas(model, loss_fn, features, target, l2):
    logits = model(features).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(logits, target), logits)  # = ∂ℓ_i/∂Φ_i / n for a mean loss
    return -g / l2


def representer_values(features, alphas, test_features, target):
    k = test_features @ features.T + 1  # (n_test, n_train); the +1 is the bias, a weight on a constant feature
    index = torch.as_tensor(target, device=alphas.device).reshape(-1).expand(len(test_features))
    return k * alphas[:, index].T


def leave_one_out(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    (x, y), (xt, yt) = train, test
    n = len(x)
    theta = flat_params(model)
    J = _objective(model, loss_fn, x, y, l2)

    def without(th, xi, yi):  # J minus point i's share 1/n: the other points keep their weights
        return J(th) - loss_fn(functional_call(model, unflatten(model, th), (xi[None],)), yi[None]) / n

    def test_losses(th):
        out = functional_call(model, unflatten(model, th), (xt,))
        return vmap(lambda o, t: loss_fn(o[None], t[None]))(out, yt)

    H = func_hessian(J)(theta)
    idx = torch.as_tensor(indices).reshape(-1)
    thetas = theta.expand(len(idx), -1).clone()
    gradient = vmap(grad(without))
    for _ in range(max_steps):  # Newton steps with the full Hessian at θ̂, every removal at once
        g = gradient(thetas, x[idx], y[idx])
        if g.norm(dim=1).max() <= tol:
            break
        thetas = thetas - torch.linalg.solve(H, g.T).T
    return (vmap(test_losses)(thetas) - test_losses(theta)).T


def mislabel_recall(scores, flipped, fraction):
    k = round(fraction * len(scores))
    order = torch.argsort(scores, descending=True, stable=True)
    return int(flipped[order[:k]].sum()) / int(flipped.sum())
