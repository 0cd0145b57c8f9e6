"""The Lab 9 answer key against slow, obviously correct re-implementations and against captum.influence:
per-example gradients by a loop of autograd calls, the Hessian by central differences and by the closed form
of multinomial logistic regression, influence by an explicit inverse and by captum's NaiveInfluenceFunction,
LiSSA by a one-vector-at-a-time recursion, TracIn by captum's TracInCP, representer points by Yeh et al.'s
stationarity identity, leave-one-out by L-BFGS refits from scratch, and retrain_without by a plain SGD loop.
All in float64 on small slices of the MNIST features."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from grader.answers import lab09 as ref
from xailab.datasets.features import mnist_features
from xailab.zoo.influence import FeatureMLP, fit_lbfgs, load_checkpoints, retrain_without

N, D, C, L2 = 80, 12, 10, 0.05   # 80 training rows, their first 12 features, 10 classes: p = 130 for a head


pytestmark = pytest.mark.usefixtures("one_thread")  # the slow versions are fastest on one thread


@pytest.fixture(scope="module")
def data():
    x, y = mnist_features("train")
    xt, yt = mnist_features("test")
    return (x[:N, :D].double(), y[:N]), (xt[:6, :D].double(), yt[:6])


# ------------------------------------------------------------------ independent helpers


def theta_of(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def params_from(m, theta):
    out, i = {}, 0
    for name, p in m.named_parameters():
        out[name] = theta[i:i + p.numel()].view_as(p)
        i += p.numel()
    assert i == len(theta)
    return out


def J_fn(m, x, y, l2):
    """θ ↦ mean cross-entropy + l2/2 ‖θ‖², written out again."""
    return lambda th: F.cross_entropy(functional_call(m, params_from(m, th), (x,)), y) + 0.5 * l2 * (th * th).sum()


def grad_J(m, x, y, l2, theta):
    theta = theta.clone().requires_grad_(True)
    return torch.autograd.grad(J_fn(m, x, y, l2)(theta), theta)[0]


def newton_polish(m, x, y, l2, steps=3):
    """A few exact Newton steps: L-BFGS stalls near ‖∇J‖ ~ 1e-9 (J's changes fall below rounding there)."""
    th = theta_of(m)
    for _ in range(steps):
        H = torch.autograd.functional.hessian(J_fn(m, x, y, l2), th)
        th = th - torch.linalg.solve(H, grad_J(m, x, y, l2, th))
    torch.nn.utils.vector_to_parameters(th, m.parameters())
    assert grad_J(m, x, y, l2, th).norm() < 1e-12
    return m


def fitted_head(x, y, l2, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], C).double()
    fit_lbfgs(head, F.cross_entropy, x, y, l2, tol=1e-6)
    return newton_polish(head, x, y, l2).eval()


def logit_jacobians(x):
    """(n, C, p): ∂z_c/∂θ of a linear head, θ = (W row-major, b): ∂z_c/∂W_{c'j} = δ_cc' x_j, ∂z_c/∂b_c' = δ_cc'."""
    n, d = x.shape
    jac = torch.zeros(n, C, C * d + C, dtype=x.dtype)
    for c in range(C):
        jac[:, c, c * d:(c + 1) * d] = x
        jac[:, c, C * d + c] = 1.0
    return jac


def per_example_hessians(head, x):
    """∇²ℓ_i = J_iᵀ (diag p_i − p_i p_iᵀ) J_i for softmax cross-entropy (independent of the label)."""
    with torch.no_grad():
        prob = head(x).softmax(1)
    curvature = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    jac = logit_jacobians(x)
    return jac.transpose(1, 2) @ curvature @ jac


def closed_form_hessian(head, x, l2):
    hs = per_example_hessians(head, x)
    return hs.mean(0) + l2 * torch.eye(hs.shape[1], dtype=x.dtype)


def grads_by_loop(m, x, y):
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(m(x[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def head(data):
    (x, y), _ = data
    return fitted_head(x, y, L2)


@pytest.fixture(scope="module")
def mlp64():
    """A trained checkpoint of mnist-feature-mlp (64→16→10), in float64."""
    checkpoints, _ = load_checkpoints("mnist-feature-mlp")
    return copy.deepcopy(checkpoints[-1]).double().eval()


# ------------------------------------------------------------------ per_example_grads


def test_per_example_grads_of_a_head_equal_a_loop_of_autograd_calls(head, data):
    (x, y), _ = data
    fast = ref.per_example_grads(head, F.cross_entropy, x, y)
    assert fast.shape == (N, C * D + C)
    torch.testing.assert_close(fast, grads_by_loop(head, x, y), rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in head.parameters())


def test_per_example_grads_of_the_mlp_equal_a_loop_of_autograd_calls(mlp64):
    x, y = mnist_features("train")
    x, y = x[:40].double(), y[:40]
    fast = ref.per_example_grads(mlp64, F.cross_entropy, x, y)
    assert fast.shape == (40, sum(p.numel() for p in mlp64.parameters()))
    torch.testing.assert_close(fast, grads_by_loop(mlp64, x, y), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ hessian


def hessian_by_central_differences(m, x, y, l2, eps=1e-5):
    th = theta_of(m)
    cols = []
    for k in range(len(th)):
        step = torch.zeros_like(th)
        step[k] = eps
        cols.append((grad_J(m, x, y, l2, th + step) - grad_J(m, x, y, l2, th - step)) / (2 * eps))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("kind", ["head", "mlp"])
def test_hessian_by_central_differences_of_the_gradient(kind, head, data):
    (x, y), _ = data
    torch.manual_seed(1)
    m = head if kind == "head" else FeatureMLP(D, 6, C).double().eval()   # p = 148, non-convex
    fast = ref.hessian(m, F.cross_entropy, x, y, l2=0.3)
    slow = hessian_by_central_differences(m, x, y, 0.3)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(fast, fast.T, rtol=0, atol=1e-14)


def test_hessian_equals_the_closed_form_of_logistic_regression_plus_l2_identity(head, data):
    (x, y), _ = data
    torch.testing.assert_close(ref.hessian(head, F.cross_entropy, x, y, L2), closed_form_hessian(head, x, L2),
                               rtol=1e-10, atol=1e-13)
    plain = ref.hessian(head, F.cross_entropy, x, y)   # l2 defaults to 0
    torch.testing.assert_close(ref.hessian(head, F.cross_entropy, x, y, 2.5) - plain,
                               2.5 * torch.eye(len(plain), dtype=plain.dtype), rtol=0, atol=1e-13)


# ------------------------------------------------------------------ influence


@pytest.fixture(scope="module")
def exact_influence(head, data):
    """I_up,loss = −∇ℓ_testᵀ H⁻¹ ∇ℓ_train with an explicit inverse of the closed-form Hessian."""
    (x, y), (xt, yt) = data
    H_inv = torch.linalg.inv(closed_form_hessian(head, x, L2))
    g_train, g_test = grads_by_loop(head, x, y), grads_by_loop(head, xt, yt)
    return -g_test @ H_inv @ g_train.T


def test_influence_equals_the_explicit_inverse_formula(head, data, exact_influence):
    (x, y), (xt, yt) = data
    fast = ref.influence(ref.per_example_grads(head, F.cross_entropy, x, y),
                         ref.per_example_grads(head, F.cross_entropy, xt, yt),
                         ref.hessian(head, F.cross_entropy, x, y, L2))
    assert fast.shape == (len(xt), N)
    torch.testing.assert_close(fast, exact_influence, rtol=1e-9, atol=1e-12)
    # self-influence on the training loss is −gᵀH⁻¹g ≤ 0: up-weighting a point lowers its own loss
    g = ref.per_example_grads(head, F.cross_entropy, x, y)
    assert (ref.influence(g, g, ref.hessian(head, F.cross_entropy, x, y, L2)).diagonal() <= 0).all()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("reduction,sample_wise", [("none", False), ("sum", True), ("mean", True)])
def test_influence_equals_captum_naive_influence_function(reduction, sample_wise, head, data, exact_influence,
                                                          tmp_path):
    """captum sums the per-example losses (no regulariser; a "mean" loss is multiplied back by the batch size)
    and adds hessian_reg·I, so with hessian_reg = l2·n its Hessian is n·H; with projection_dim = p the
    eigen-truncation keeps everything, and it reports +∇ℓ_testᵀ(nH)⁻¹∇ℓ_train = −I_up,loss / n."""
    from captum.influence import NaiveInfluenceFunction

    (x, y), (xt, yt) = data
    path = tmp_path / "head.pt"
    torch.save(head.state_dict(), path)

    def load(model, file):
        model.load_state_dict(torch.load(file))
        return 1.0

    p = sum(q.numel() for q in head.parameters())
    naive = NaiveInfluenceFunction(copy.deepcopy(head), TensorDataset(x, y), str(path), load,
                                   loss_fn=nn.CrossEntropyLoss(reduction=reduction), batch_size=N,
                                   sample_wise_grads_per_batch=sample_wise, projection_dim=p, hessian_reg=L2 * N)
    captum_scores = naive.influence((xt, yt))
    torch.testing.assert_close(captum_scores, -exact_influence / N, rtol=1e-9, atol=1e-13)


# ------------------------------------------------------------------ leave_one_out


def test_leave_one_out_equals_lbfgs_refits_from_scratch(head, data):
    """The spec removes ℓ_i/n and keeps 1/n on the rest: J_{−i} = (1/n)Σ_{j≠i} ℓ_j + l2/2‖θ‖². Times n/(n−1)
    that is the mean over the n−1 points + (l2·n/(n−1))/2 ‖θ‖²: same minimiser, so refit with l2·n/(n−1)."""
    (x, y), (xt, yt) = data
    indices = [0, 13, 79]
    fast = ref.leave_one_out(head, F.cross_entropy, (x, y), (xt, yt), indices, L2)
    assert fast.shape == (len(xt), len(indices))
    with torch.no_grad():
        before = F.cross_entropy(head(xt), yt, reduction="none")
    for j, i in enumerate(indices):
        keep = torch.arange(N) != i
        refit = fitted_head(x[keep], y[keep], L2 * N / (N - 1), seed=10 + j)   # fresh init, not a warm start
        with torch.no_grad():
            after = F.cross_entropy(refit(xt), yt, reduction="none")
        torch.testing.assert_close(fast[:, j], after - before, rtol=1e-7, atol=1e-10)
    assert fast.abs().max() > 1e-3


def test_leave_one_out_is_close_to_minus_influence_over_n_at_large_l2(data):
    """At l2 = 2 the objective is nearly quadratic over a removal: LOO ≈ −I/n (slope ≈ 1)."""
    (x, y), (xt, yt) = data
    l2 = 2.0
    head = fitted_head(x, y, l2)
    loo = ref.leave_one_out(head, F.cross_entropy, (x, y), (xt, yt), list(range(N)), l2).reshape(-1)
    influence = -grads_by_loop(head, xt, yt) @ torch.linalg.inv(closed_form_hessian(head, x, l2)) \
        @ grads_by_loop(head, x, y).T
    approx = (-influence / N).reshape(-1)
    slope = float((approx * loo).sum() / (approx * approx).sum())
    assert 0.97 < slope < 1.06, slope
    assert float(torch.corrcoef(torch.stack([approx, loo]))[0, 1]) > 0.999
    assert float((approx - loo).abs().max() / loo.abs().max()) < 0.1


# ------------------------------------------------------------------ lissa_inverse_hvp


def lissa_by_a_loop(hessians, l2, v, damping, scale, depth, repeats, batch_size, seed):
    """One vector: h₀ = v, h_j = v + (1 − damping) h_{j−1} − H̃_j h_{j−1}/scale, estimate h/scale, averaged;
    H̃_j = mean of the per-example Hessians of the minibatch (or of all) + l2·I."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    n = len(hessians)
    total = torch.zeros_like(v)
    for _ in range(repeats):
        h = v.clone()
        for _ in range(depth):
            idx = torch.arange(n) if batch_size is None else torch.randint(n, (batch_size,), generator=g)
            H = hessians[idx].mean(0) + l2 * torch.eye(len(v), dtype=v.dtype)
            h = v + (1 - damping) * h - H @ h / scale
        total = total + h / scale
    return total / repeats


@pytest.mark.parametrize("batch_size,repeats", [(None, 1), (16, 3), (1, 2)])
def test_lissa_equals_the_recursion_one_vector_at_a_time(batch_size, repeats, head, data):
    (x, y), _ = data
    hessians = per_example_hessians(head, x)
    vectors = torch.randn(3, hessians.shape[1], generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    kw = dict(l2=L2, damping=0.01, scale=10.0, depth=25, repeats=repeats, batch_size=batch_size)
    fast = ref.lissa_inverse_hvp(head, F.cross_entropy, x, y, vectors,
                                 generator=torch.Generator().manual_seed(7) if batch_size else None, **kw)
    for k, v in enumerate(vectors):   # the same seed for every vector: each sees the key's minibatch sequence
        slow = lissa_by_a_loop(hessians, v=v, seed=7 if batch_size else None, **kw)
        torch.testing.assert_close(fast[k], slow, rtol=1e-10, atol=1e-12)


def test_lissa_converges_to_the_damped_inverse_hvp(head, data):
    """Full batch, scale above the largest eigenvalue: the error contracts by 1 − (λ_min + damping·scale)/scale
    per step (≈ 0.5 here), so 80 steps reach rounding."""
    (x, y), _ = data
    l2, damping = 1.0, 0.05
    H = closed_form_hessian(head, x, l2)
    scale = 1.2 * float(torch.linalg.eigvalsh(H)[-1])
    vectors = torch.randn(2, len(H), generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    fast = ref.lissa_inverse_hvp(head, F.cross_entropy, x, y, vectors, l2=l2, damping=damping, scale=scale,
                                 depth=80)
    eye = torch.eye(len(H), dtype=H.dtype)
    exact = torch.linalg.solve(H + damping * scale * eye, vectors.T).T
    torch.testing.assert_close(fast, exact, rtol=1e-9, atol=1e-11)
    undamped = torch.linalg.solve(H, vectors.T).T
    assert (fast - undamped).norm() > 0.05 * undamped.norm()   # the damping term is visible


# ------------------------------------------------------------------ tracin / self_influence


@pytest.fixture(scope="module")
def checkpoints():
    models, rates = load_checkpoints("mnist-feature-mlp")
    picked = [0, 4, 9]
    return [copy.deepcopy(models[k]).double().eval() for k in picked], [rates[k] for k in picked]


@pytest.fixture(scope="module")
def mlp_data():
    x, y = mnist_features("train")
    xt, yt = mnist_features("test")
    return (x[:40].double(), y[:40]), (xt[:5].double(), yt[:5])


def tracin_by_loops(models, rates, train, test):
    (x, y), (xt, yt) = train, test
    out = torch.zeros(len(xt), len(x), dtype=x.dtype)
    for m, lr in zip(models, rates):
        g_train, g_test = grads_by_loop(m, x, y), grads_by_loop(m, xt, yt)
        for t in range(len(xt)):
            for i in range(len(x)):
                out[t, i] += lr * float(g_test[t] @ g_train[i])
    return out


def test_tracin_and_self_influence_equal_loops(checkpoints, mlp_data):
    models, rates = checkpoints
    train, test = mlp_data
    fast = ref.tracin(models, rates, F.cross_entropy, train, test)
    torch.testing.assert_close(fast, tracin_by_loops(models, rates, train, test), rtol=1e-10, atol=1e-12)
    self_slow = tracin_by_loops(models, rates, train, train).diagonal()
    torch.testing.assert_close(ref.self_influence(models, rates, F.cross_entropy, train), self_slow,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore")
def test_tracin_and_self_influence_equal_captum_tracincp(checkpoints, mlp_data, tmp_path):
    """TracInCP(loss_fn=CrossEntropyLoss(reduction="none"), sample_wise_grads_per_batch=False), the learning
    rate of each checkpoint returned by checkpoints_load_func. (Not TracInCPFast: it uses the last layer's
    weight only.)"""
    from captum.influence import TracInCP

    models, rates = checkpoints
    (x, y), test = mlp_data
    paths = []
    for k, (m, lr) in enumerate(zip(models, rates)):
        paths.append(str(tmp_path / f"checkpoint-{k:02d}.pt"))
        torch.save({"state": m.state_dict(), "lr": lr}, paths[-1])

    def load(model, file):
        saved = torch.load(file)
        model.load_state_dict(saved["state"])
        return saved["lr"]

    tracincp = TracInCP(FeatureMLP().double().eval(), TensorDataset(x, y), paths, load,
                        loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=len(x),
                        sample_wise_grads_per_batch=False)
    torch.testing.assert_close(ref.tracin(models, rates, F.cross_entropy, (x, y), test), tracincp.influence(test),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref.self_influence(models, rates, F.cross_entropy, (x, y)),
                               tracincp.self_influence((x, y)), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ representer points


def test_representer_alphas_equal_the_softmax_residual_over_n_l2(head, data):
    (x, y), _ = data
    alphas = ref.representer_alphas(head, F.cross_entropy, x, y, L2)
    with torch.no_grad():
        residual = head(x).softmax(1) - F.one_hot(y, C).double()   # ∂ℓ_i/∂Φ_i of the cross-entropy
    torch.testing.assert_close(alphas, -residual / (N * L2), rtol=1e-12, atol=1e-15)


def test_representer_decomposition_at_the_optimum(head, data):
    """Stationarity of J: W = Σ_i α_i f_iᵀ and b = Σ_i α_i, so Φ(f_t)[c] = Σ_i α_i[c](f_i·f_t + 1)."""
    (x, y), (xt, yt) = data
    alphas = ref.representer_alphas(head, F.cross_entropy, x, y, L2)
    torch.testing.assert_close(alphas.T @ x, head.weight.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(alphas.sum(0), head.bias.detach(), rtol=1e-9, atol=1e-11)
    with torch.no_grad():
        logits = head(xt)
    for target in (yt, torch.tensor([3, 3, 1, 0, 9, 2]), 4):
        values = ref.representer_values(x, alphas, xt, target)
        assert values.shape == (len(xt), N)
        chosen = logits[torch.arange(len(xt)), torch.as_tensor(target).expand(len(xt))]
        torch.testing.assert_close(values.sum(1), chosen, rtol=1e-9, atol=1e-11)


def test_representer_values_equal_a_double_loop(data):
    (x, _), (xt, _) = data
    g = torch.Generator().manual_seed(2)
    alphas = torch.randn(N, C, generator=g, dtype=x.dtype)
    for target in (torch.randint(C, (len(xt),), generator=g), 7):
        fast = ref.representer_values(x, alphas, xt, target)
        for t in range(len(xt)):
            c = int(target) if isinstance(target, int) else int(target[t])
            for i in range(N):
                slow = float(alphas[i, c]) * (float(x[i] @ xt[t]) + 1.0)
                assert float(fast[t, i]) == pytest.approx(slow, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ mislabel_recall


def test_mislabel_recall_by_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randrange(2, 30)
        scores = [float(rng.randrange(5)) for _ in range(n)]   # many ties: the sort must be stable
        flipped = [rng.random() < 0.3 for _ in range(n)]
        if not any(flipped):
            flipped[rng.randrange(n)] = True
        fraction = rng.choice([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
        k = round(fraction * n)
        order = sorted(range(n), key=lambda i: -scores[i])   # Python's sort is stable
        slow = sum(flipped[i] for i in order[:k]) / sum(flipped)
        fast = ref.mislabel_recall(torch.tensor(scores, dtype=torch.float64), torch.tensor(flipped), fraction)
        assert fast == pytest.approx(slow, abs=1e-15), (scores, flipped, fraction)


# ------------------------------------------------------------------ retrain_without (xailab.zoo.influence)


def sgd_without_by_a_loop(initial, x, y, removed, learning_rates, batch_size, l2, seed):
    """train_sgd's loop with point `removed` dropped from its minibatch (the mean over the rest)."""
    m = copy.deepcopy(initial)
    params = list(m.parameters())
    g = torch.Generator().manual_seed(seed)
    for lr in learning_rates:
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            idx = idx[idx != removed]
            value = F.cross_entropy(m(x[idx]), y[idx]) + 0.5 * l2 * sum((p * p).sum() for p in params)
            grads = torch.autograd.grad(value, params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p -= lr * gr
    return theta_of(m)


@pytest.mark.parametrize("loss_fn", [None, F.cross_entropy])
def test_retrain_without_equals_a_plain_sgd_loop(loss_fn, data):
    (x, y), _ = data
    x, y = x[:30], y[:30]   # minibatches of 8, 8, 8, 6: never only the removed point
    torch.manual_seed(3)
    initial = FeatureMLP(D, 5, C).double().eval()
    start = theta_of(initial)
    kw = dict(learning_rates=[0.5, 0.3, 0.2], batch_size=8, l2=1e-3, seed=4)
    removed = [4, 29, 4, 0]   # a repeated index gives the same row twice
    fast = retrain_without(initial, loss_fn, x, y, removed, **kw)
    assert fast.shape == (len(removed), len(start))
    assert torch.equal(theta_of(initial), start)
    for j, r in enumerate(removed):
        torch.testing.assert_close(fast[j], sgd_without_by_a_loop(initial, x, y, r, **kw), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[0], fast[2], rtol=0, atol=0)
    assert (fast[0] - fast[1]).abs().max() > 1e-4


# ------------------------------------------------------------------ nothing changes the model or its inputs


def test_no_function_changes_the_model_or_its_inputs(data):
    (x, y), (xt, yt) = data
    torch.manual_seed(8)
    m = nn.Linear(D, C).double().train()
    before = copy.deepcopy(m.state_dict())
    copies = [t.clone() for t in (x, y, xt, yt)]
    g = ref.per_example_grads(m, F.cross_entropy, x, y)
    H = ref.hessian(m, F.cross_entropy, x, y, 0.1)
    ref.influence(g, ref.per_example_grads(m, F.cross_entropy, xt, yt), H)
    ref.lissa_inverse_hvp(m, F.cross_entropy, x, y, g[:2], l2=0.1, depth=3, batch_size=5,
                          generator=torch.Generator().manual_seed(0))
    ref.tracin([m], [0.1], F.cross_entropy, (x, y), (xt, yt))
    ref.self_influence([m], [0.1], F.cross_entropy, (x, y))
    ref.representer_values(x, ref.representer_alphas(m, F.cross_entropy, x, y, 0.1), xt, yt)
    ref.leave_one_out(m, F.cross_entropy, (x, y), (xt, yt), [1, 2], 0.1, max_steps=3)
    assert m.training
    assert all(p.grad is None for p in m.parameters())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip((x, y, xt, yt), copies):
        assert torch.equal(a, b)
