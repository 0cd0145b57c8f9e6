"""Typical mistakes in Lab 9, one function each."""
import torch
from torch.func import functional_call, grad, hessian as func_hessian, jacrev, jvp, vmap

from grader.answers import lab09 as ref
from xailab.zoo.influence import flat_params, unflatten


# --- per_example_grads
def pe_mean_gradient(model, loss_fn, inputs, target):
    """The gradient of the batch's mean loss, repeated for every example."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(inputs), target), params)
    return torch.cat([g.reshape(-1) for g in grads]).expand(len(inputs), -1).clone()


def pe_divided_by_n(model, loss_fn, inputs, target):
    """Each example's share of the mean loss, ℓ_i/n, differentiated."""
    return ref.per_example_grads(model, loss_fn, inputs, target) / len(inputs)


def pe_weights_only(model, loss_fn, inputs, target):
    """Only the weight matrices (biases forgotten)."""
    params = {k: v.detach() for k, v in model.named_parameters() if "weight" in k}

    def loss(p, x, t):
        return loss_fn(functional_call(model, p, (x[None],), strict=False), t[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, target)
    return torch.cat([g.reshape(len(inputs), -1) for g in grads.values()], dim=1)


def pe_sorted_names(model, loss_fn, inputs, target):
    """Parameters concatenated in sorted name order (bias before weight), not model.parameters() order."""
    params = dict(sorted((k, v.detach()) for k, v in model.named_parameters()))

    def loss(p, x, t):
        return loss_fn(functional_call(model, p, (x[None],)), t[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, target)
    return torch.cat([g.reshape(len(inputs), -1) for g in grads.values()], dim=1)


def pe_python_loop(model, loss_fn, inputs, target):
    """Right values, but one backward pass per example (the docstring asks for torch.func, no loop)."""
    params = list(model.parameters())
    rows = []
    for i in range(len(inputs)):
        grads = torch.autograd.grad(loss_fn(model(inputs[i:i + 1]), target[i:i + 1]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


# --- hessian
def _J(model, loss_fn, inputs, target, l2, mask=None, factor=1.0):
    def J(theta):
        loss = loss_fn(functional_call(model, unflatten(model, theta), (inputs,)), target)
        reg = theta.pow(2) if mask is None else theta.pow(2) * mask
        return factor * loss + 0.5 * l2 * reg.sum()
    return J


def h_no_l2(model, loss_fn, inputs, target, l2=0.0):
    return func_hessian(_J(model, loss_fn, inputs, target, 0.0))(flat_params(model))


def h_half_l2(model, loss_fn, inputs, target, l2=0.0):
    """l2/2·I: the 1/2 of the regulariser kept after differentiating."""
    return func_hessian(_J(model, loss_fn, inputs, target, l2 / 2))(flat_params(model))


def h_l2_weights_only(model, loss_fn, inputs, target, l2=0.0):
    """Weight decay on the weights only (biases left out)."""
    mask = torch.cat([torch.full((p.numel(),), 1.0 if "weight" in k else 0.0, dtype=p.dtype)
                      for k, p in model.named_parameters()])
    return func_hessian(_J(model, loss_fn, inputs, target, l2, mask=mask))(flat_params(model))


def h_sum_loss(model, loss_fn, inputs, target, l2=0.0):
    """The loss summed over the batch (n × the mean)."""
    return func_hessian(_J(model, loss_fn, inputs, target, l2, factor=len(inputs)))(flat_params(model))


def h_gauss_newton(model, loss_fn, inputs, target, l2=0.0):
    """The generalised Gauss-Newton matrix JᵀH_ℓJ + l2·I instead of the Hessian (exact for a linear head only)."""
    theta = flat_params(model)

    def outputs(th):
        return functional_call(model, unflatten(model, th), (inputs,))

    out = outputs(theta)
    jac = jacrev(outputs)(theta).reshape(out.numel(), -1)
    h_out = func_hessian(lambda o: loss_fn(o, target))(out).reshape(out.numel(), out.numel())
    return jac.T @ h_out @ jac + l2 * torch.eye(len(theta), dtype=theta.dtype)


# --- influence
def inf_sign_flipped(train_grads, test_grads, hessian):
    return test_grads @ torch.linalg.solve(hessian, train_grads.T)


def inf_hessian_not_inverted(train_grads, test_grads, hessian):
    return -test_grads @ hessian @ train_grads.T


def inf_divided_by_n(train_grads, test_grads, hessian):
    """The predicted change of the test loss on removal (−I/n) instead of I."""
    return ref.influence(train_grads, test_grads, hessian) / len(train_grads)


def inf_transposed(train_grads, test_grads, hessian):
    """(n_train, n_test): the training gradients solved first."""
    return -torch.linalg.solve(hessian, train_grads.T).T @ test_grads.T


# --- lissa_inverse_hvp
def _lissa(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100, repeats=1,
           batch_size=None, generator=None, divide=True, use_damping=True, average=True, draw="step",
           use_generator=True, hvp_l2=True):
    theta = flat_params(model)
    n = len(inputs)

    def hvp(x, t, v):
        g = grad(ref._objective(model, loss_fn, x, t, l2 if hvp_l2 else 0.0))
        return jvp(g, (theta,), (v,))[1]

    batched = vmap(hvp, in_dims=(None, None, 0))
    gen = generator if use_generator else None

    def minibatch():
        if draw == "perm":
            return torch.randperm(n, generator=gen)[:batch_size]
        return torch.randint(n, (batch_size,), generator=gen)

    total = torch.zeros_like(vectors)
    for _ in range(repeats):
        h = vectors.clone()
        idx = minibatch() if batch_size is not None and draw == "repeat" else None
        for _ in range(depth):
            if batch_size is None:
                x, t = inputs, target
            else:
                if draw != "repeat":
                    idx = minibatch()
                x, t = inputs[idx], target[idx]
            h = vectors + (1 - (damping if use_damping else 0.0)) * h - batched(x, t, h) / scale
        total = total + (h / scale if divide else h)
    return total / repeats if average else total


def lissa_no_final_division(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                            repeats=1, batch_size=None, generator=None):
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  divide=False)


def lissa_no_damping(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                     repeats=1, batch_size=None, generator=None):
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  use_damping=False)


def lissa_summed_repeats(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                         repeats=1, batch_size=None, generator=None):
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  average=False)


def lissa_batch_once_per_repeat(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                                repeats=1, batch_size=None, generator=None):
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  draw="repeat")


def lissa_randperm(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                   repeats=1, batch_size=None, generator=None):
    """Minibatches without replacement (randperm) instead of torch.randint."""
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  draw="perm")


def lissa_global_rng(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                     repeats=1, batch_size=None, generator=None):
    """The generator is ignored: minibatches from the global random state."""
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  use_generator=False)


def lissa_no_l2(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                repeats=1, batch_size=None, generator=None):
    """Hessian-vector products of the loss only (the l2·I of the regulariser forgotten)."""
    return _lissa(model, loss_fn, inputs, target, vectors, l2, damping, scale, depth, repeats, batch_size, generator,
                  hvp_l2=False)


# --- tracin
def _tracin(checkpoints, learning_rates, loss_fn, train, test, rates=True, last=False, average=False, sign=1.0):
    (x, y), (xt, yt) = train, test
    pairs = list(zip(checkpoints, learning_rates))
    if last:
        pairs = pairs[-1:]
    scores = 0
    for model, lr in pairs:
        dots = ref.per_example_grads(model, loss_fn, xt, yt) @ ref.per_example_grads(model, loss_fn, x, y).T
        scores = scores + (lr if rates else 1.0) * dots
    return sign * (scores / len(pairs) if average else scores)


def tr_no_learning_rates(checkpoints, learning_rates, loss_fn, train, test):
    return _tracin(checkpoints, learning_rates, loss_fn, train, test, rates=False)


def tr_last_checkpoint_only(checkpoints, learning_rates, loss_fn, train, test):
    return _tracin(checkpoints, learning_rates, loss_fn, train, test, last=True)


def tr_averaged_checkpoints(checkpoints, learning_rates, loss_fn, train, test):
    return _tracin(checkpoints, learning_rates, loss_fn, train, test, average=True)


def tr_sign_flipped(checkpoints, learning_rates, loss_fn, train, test):
    """The influence-function convention (negative = proponent) carried over."""
    return _tracin(checkpoints, learning_rates, loss_fn, train, test, sign=-1.0)


def tr_transposed(checkpoints, learning_rates, loss_fn, train, test):
    return _tracin(checkpoints, learning_rates, loss_fn, train, test).T


def tr_mean_test_gradient(checkpoints, learning_rates, loss_fn, train, test):
    """The gradient of the test batch's mean loss, the same row for every test point."""
    (x, y), (xt, yt) = train, test
    scores = 0
    for model, lr in zip(checkpoints, learning_rates):
        g_test = ref.per_example_grads(model, loss_fn, xt, yt).mean(0, keepdim=True)
        scores = scores + lr * g_test @ ref.per_example_grads(model, loss_fn, x, y).T
    return scores.expand(len(xt), -1).clone()


# --- self_influence
def _self(checkpoints, learning_rates, loss_fn, train, norm=lambda g: g.pow(2).sum(1), rates=True, last=False):
    x, y = train
    pairs = list(zip(checkpoints, learning_rates))[-1:] if last else zip(checkpoints, learning_rates)
    scores = 0
    for model, lr in pairs:
        scores = scores + (lr if rates else 1.0) * norm(ref.per_example_grads(model, loss_fn, x, y))
    return scores


def si_norm_not_squared(checkpoints, learning_rates, loss_fn, train):
    return _self(checkpoints, learning_rates, loss_fn, train, norm=lambda g: g.norm(dim=1))


def si_no_learning_rates(checkpoints, learning_rates, loss_fn, train):
    return _self(checkpoints, learning_rates, loss_fn, train, rates=False)


def si_last_checkpoint_only(checkpoints, learning_rates, loss_fn, train):
    return _self(checkpoints, learning_rates, loss_fn, train, last=True)


def si_mean_over_parameters(checkpoints, learning_rates, loss_fn, train):
    return _self(checkpoints, learning_rates, loss_fn, train, norm=lambda g: g.pow(2).mean(1))


def si_batch_gradient(checkpoints, learning_rates, loss_fn, train):
    """‖gradient of the batch's mean loss‖², the same for every point."""
    x, y = train
    scores = 0
    for model, lr in zip(checkpoints, learning_rates):
        grads = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
        scores = scores + lr * sum(g.pow(2).sum() for g in grads)
    return scores.detach().expand(len(x)).clone()


# --- representer_alphas
def _alphas(model, loss_fn, features, target, l2, reduction="mean", sign=-1.0, l2_power=-1):
    logits = model(features).detach().requires_grad_(True)
    loss = loss_fn(logits, target) * (len(features) if reduction == "sum" else 1)
    (g,) = torch.autograd.grad(loss, logits)
    return sign * g * l2 ** l2_power


def ra_no_one_over_n(model, loss_fn, features, target, l2):
    """∂ℓ_i/∂Φ_i without the 1/n of the mean loss."""
    return _alphas(model, loss_fn, features, target, l2, reduction="sum")


def ra_sign_flipped(model, loss_fn, features, target, l2):
    return _alphas(model, loss_fn, features, target, l2, sign=1.0)


def ra_times_l2(model, loss_fn, features, target, l2):
    return _alphas(model, loss_fn, features, target, l2, l2_power=1)


def ra_probabilities_only(model, loss_fn, features, target, l2):
    """−softmax(Φ)/(n·l2): the one-hot part of the cross-entropy gradient forgotten."""
    with torch.no_grad():
        return -model(features).softmax(1) / (len(features) * l2)


# --- representer_values
def _index(target, n):
    return torch.as_tensor(target).reshape(-1).expand(n)


def rv_no_bias_term(features, alphas, test_features, target):
    return (test_features @ features.T) * alphas[:, _index(target, len(test_features))].T


def rv_all_classes_summed(features, alphas, test_features, target):
    return (test_features @ features.T + 1) * alphas.sum(1)[None, :]


def rv_first_target_only(features, alphas, test_features, target):
    first = int(_index(target, len(test_features))[0])
    return (test_features @ features.T + 1) * alphas[:, first][None, :]


def rv_transposed(features, alphas, test_features, target):
    return ref.representer_values(features, alphas, test_features, target).T


def rv_cosine_kernel(features, alphas, test_features, target):
    """Cosine similarity instead of the dot product (the features normalised)."""
    f = torch.nn.functional.normalize(features, dim=1)
    ft = torch.nn.functional.normalize(test_features, dim=1)
    return (ft @ f.T + 1) * alphas[:, _index(target, len(test_features))].T


# --- leave_one_out
def _loo(model, loss_fn, train, test, indices, l2, steps, renormalise=False, method="newton", lr=1.0, sign=1.0):
    (x, y), (xt, yt) = train, test
    n = len(x)
    theta = flat_params(model)
    J = ref._objective(model, loss_fn, x, y, l2)

    def without(th, xi, yi):
        loss_i = loss_fn(functional_call(model, unflatten(model, th), (xi[None],)), yi[None])
        if renormalise:   # the mean over the n − 1 other points
            return (n * (J(th) - 0.5 * l2 * th.pow(2).sum()) - loss_i) / (n - 1) + 0.5 * l2 * th.pow(2).sum()
        return J(th) - loss_i / n

    def losses(th):
        out = functional_call(model, unflatten(model, th), (xt,))
        return vmap(lambda o, t: loss_fn(o[None], t[None]))(out, yt)

    H = func_hessian(J)(theta)
    idx = torch.as_tensor(indices).reshape(-1)
    thetas = theta.expand(len(idx), -1).clone()
    gradient = vmap(grad(without))
    for _ in range(steps):
        g = gradient(thetas, x[idx], y[idx])
        if g.norm(dim=1).max() <= 1e-10:
            break
        thetas = thetas - (torch.linalg.solve(H, g.T).T if method == "newton" else lr * g)
    return sign * (vmap(losses)(thetas) - losses(theta)).T


def loo_one_newton_step(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    """A single Newton step from θ̂, not iterated to convergence."""
    return _loo(model, loss_fn, train, test, indices, l2, steps=1)


def loo_few_gradient_steps(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    """Twenty plain gradient steps (lr 1): far from the new optimum."""
    return _loo(model, loss_fn, train, test, indices, l2, steps=20, method="gd")


def loo_renormalised(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    """The mean over the n − 1 remaining points (weights 1/(n−1) instead of 1/n)."""
    return _loo(model, loss_fn, train, test, indices, l2, steps=max_steps, renormalise=True)


def loo_sign_flipped(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    """Loss at θ̂ minus loss after removal."""
    return _loo(model, loss_fn, train, test, indices, l2, steps=max_steps, sign=-1.0)


def loo_influence_estimate(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    """The first-order estimate −I/n instead of retraining."""
    (x, y), (xt, yt) = train, test
    idx = torch.as_tensor(indices).reshape(-1)
    H = ref.hessian(model, loss_fn, x, y, l2)
    g_train = ref.per_example_grads(model, loss_fn, x[idx], y[idx])
    return -ref.influence(g_train, ref.per_example_grads(model, loss_fn, xt, yt), H) / len(x)


# --- mislabel_recall
def mr_ascending(scores, flipped, fraction):
    k = round(fraction * len(scores))
    order = torch.argsort(scores, stable=True)
    return int(flipped[order[:k]].sum()) / int(flipped.sum())


def mr_precision(scores, flipped, fraction):
    """Found / k (precision at k) instead of found / flipped."""
    k = round(fraction * len(scores))
    order = torch.argsort(scores, descending=True, stable=True)
    return int(flipped[order[:k]].sum()) / k


def mr_truncated_k(scores, flipped, fraction):
    """k = int(fraction·n): rounded down."""
    k = int(fraction * len(scores))
    order = torch.argsort(scores, descending=True, stable=True)
    return int(flipped[order[:k]].sum()) / int(flipped.sum())


def mr_ties_last_index_first(scores, flipped, fraction):
    """A stable ascending sort reversed: among ties the LATER index comes first."""
    k = round(fraction * len(scores))
    order = torch.argsort(scores, stable=True).flip(0)
    return int(flipped[order[:k]].sum()) / int(flipped.sum())


def mr_over_n(scores, flipped, fraction):
    """Found / n."""
    k = round(fraction * len(scores))
    order = torch.argsort(scores, descending=True, stable=True)
    return int(flipped[order[:k]].sum()) / len(scores)


MUTANTS = {
    "per_example_grads": {
        "mean gradient for every row": pe_mean_gradient,
        "rows divided by n": pe_divided_by_n,
        "biases missing": pe_weights_only,
        "parameters in sorted-name order": pe_sorted_names,
        "python loop over examples": pe_python_loop,
    },
    "hessian": {
        "no l2 term": h_no_l2,
        "l2/2 instead of l2": h_half_l2,
        "l2 on weights only": h_l2_weights_only,
        "summed loss": h_sum_loss,
        "Gauss-Newton instead of Hessian": h_gauss_newton,
    },
    "influence": {
        "sign flipped": inf_sign_flipped,
        "Hessian not inverted": inf_hessian_not_inverted,
        "divided by n": inf_divided_by_n,
        "transposed": inf_transposed,
    },
    "lissa_inverse_hvp": {
        "no final division by scale": lissa_no_final_division,
        "damping ignored": lissa_no_damping,
        "repeats summed": lissa_summed_repeats,
        "one minibatch per repeat": lissa_batch_once_per_repeat,
        "randperm minibatches": lissa_randperm,
        "generator ignored": lissa_global_rng,
        "no l2 in the HVP": lissa_no_l2,
    },
    "tracin": {
        "no learning rates": tr_no_learning_rates,
        "last checkpoint only": tr_last_checkpoint_only,
        "checkpoints averaged": tr_averaged_checkpoints,
        "sign flipped": tr_sign_flipped,
        "transposed": tr_transposed,
        "mean test gradient": tr_mean_test_gradient,
    },
    "self_influence": {
        "norm not squared": si_norm_not_squared,
        "no learning rates": si_no_learning_rates,
        "last checkpoint only": si_last_checkpoint_only,
        "mean over parameters": si_mean_over_parameters,
        "batch gradient": si_batch_gradient,
    },
    "representer_alphas": {
        "no 1/n": ra_no_one_over_n,
        "sign flipped": ra_sign_flipped,
        "times l2": ra_times_l2,
        "probabilities only": ra_probabilities_only,
    },
    "representer_values": {
        "no +1 bias term": rv_no_bias_term,
        "all classes summed": rv_all_classes_summed,
        "first target only": rv_first_target_only,
        "transposed": rv_transposed,
        "cosine kernel": rv_cosine_kernel,
    },
    "leave_one_out": {
        "one Newton step": loo_one_newton_step,
        "few gradient steps": loo_few_gradient_steps,
        "1/(n-1) weights": loo_renormalised,
        "sign flipped": loo_sign_flipped,
        "influence estimate": loo_influence_estimate,
    },
    "mislabel_recall": {
        "ascending sort": mr_ascending,
        "precision (found / k)": mr_precision,
        "k truncated": mr_truncated_k,
        "ties: later index first": mr_ties_last_index_first,
        "found / n": mr_over_n,
    },
}


PARTIAL_SAMPLE = {
    # One Newton step and no convergence test: the influence estimate, not leave-one-out (reference fails).
    "leave_one_out": '''def leave_one_out(model, loss_fn, train, test, indices, l2, tol=1e-10, max_steps=100):
    (x, yy), (xt, yt_) = train, test
    n = len(x)
    theta = flat_params(model)

    def J(th):
        return loss_fn(functional_call(model, unflatten(model, th), (x,)), yy) + 0.5 * l2 * th.pow(2).sum()

    def J_without(th, xi, yi):
        return J(th) - loss_fn(functional_call(model, unflatten(model, th), (xi[None],)), yi[None]) / n

    def test_losses(th):
        out = functional_call(model, unflatten(model, th), (xt,))
        return vmap(lambda o, t: loss_fn(o[None], t[None]))(out, yt_)

    H = func_hessian(J)(theta)
    idx = torch.as_tensor(indices).reshape(-1)
    thetas = theta.expand(len(idx), -1).clone()
    g = vmap(grad(J_without))(thetas, x[idx], yy[idx])
    thetas = thetas - torch.linalg.solve(H, g.T).T
    return (vmap(test_losses)(thetas) - test_losses(theta)).T''',
    # A syntax error: the function is never defined.
    "lissa_inverse_hvp": '''def lissa_inverse_hvp(model, loss_fn, inputs, target, vectors, l2=0.0, damping=0.0, scale=10.0, depth=100,
                      repeats=1, batch_size=None, generator=None):
    h = vectors.clone(
    return h / scale''',
    # Representer values without the bias's +1 (the alphas are right): the values test fails.
    "representer": '''def representer_alphas(model, loss_fn, features, target, l2):
    logits = model(features).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(logits, target), logits)
    return -g / l2


def representer_values(features, alphas, test_features, target):
    index = torch.as_tensor(target).reshape(-1).expand(len(test_features))
    return (test_features @ features.T) * alphas[:, index].T''',
    # Raises: the recall test fails, nothing else does.
    "mislabel_recall": '''def mislabel_recall(scores, flipped, fraction):
    raise NotImplementedError("to do")''',
}
