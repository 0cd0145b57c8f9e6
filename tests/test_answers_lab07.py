"""The Lab 7 answer key against captum (LayerActivation, layer gradients, captum.concept.TCAV), scikit-learn's
logistic regression, scipy, and slow explicit re-implementations (finite differences, per-example loops)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grader.answers import lab07 as ref
from grader.checks import lab07 as checks
from grader.checks import run_check
from grader.fixtures import model


@pytest.fixture(scope="module")
def cnn():
    return model("concept-cnn")


@pytest.fixture(scope="module")
def sets():
    """Activations of concept-cnn's features[8]: one concept set, three random sets."""
    return (checks.concept_acts("shape:circle", 20, 11, 8),
            [checks.concept_acts("random", 20, 12 + i, 8) for i in range(3)])


# ------------------------------------------------------------------ activations


def test_layer_activations_match_captum(cnn):
    from captum.attr import LayerActivation

    x = checks.concept_images("random", 9, 5)
    for index in (4, 8, 10):
        expected = LayerActivation(cnn, cnn.features[index]).attribute(x)
        torch.testing.assert_close(ref.layer_activations(cnn, cnn.features[index], x, batch_size=4), expected)


# ------------------------------------------------------------------ CAVs


def _sklearn_cav(concept, rand, l2):
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([concept.flatten(1), rand.flatten(1)]).double().numpy()
    y = np.r_[np.ones(len(concept)), np.zeros(len(rand))]
    # scikit-learn minimises C·Σ loss + ½‖w‖² (bias unpenalised): C = 1 / (N·l2) is our objective × C·N
    clf = LogisticRegression(C=1 / (len(x) * l2), tol=1e-12, max_iter=100_000).fit(x, y)
    w = torch.from_numpy(clf.coef_[0])
    return w / w.norm()


def _objective_and_gradient_by_loops(w, b, concept, rand, l2):
    """The stated objective and its gradient, one example at a time."""
    examples = [(x, 1.0) for x in concept.flatten(1).double()] + [(x, -1.0) for x in rand.flatten(1).double()]
    value, grad_w, grad_b = 0.0, torch.zeros_like(w), 0.0
    for x, y in examples:
        margin = y * (float(w @ x) + b)
        value += math.log1p(math.exp(-margin)) / len(examples)
        coef = -y / (1 + math.exp(margin)) / len(examples)
        grad_w += coef * x
        grad_b += coef
    return value + 0.5 * l2 * float(w @ w), grad_w + l2 * w, grad_b


@pytest.mark.parametrize("index", range(6))
def test_train_cav_matches_sklearn_on_small_problems(index):
    case = checks.objective_cases()[index]
    kw = case.kwargs
    cav = ref.train_cav(**kw).double()
    assert float(cav @ _sklearn_cav(kw["concept_acts"], kw["random_acts"], kw["l2"])) > 1 - 1e-6


@pytest.mark.parametrize("index", [3, 4])
def test_train_cav_matches_sklearn_on_transformer_states(index):
    kw = checks.cav_cases()[index].kwargs
    cav = ref.train_cav(**kw).double()
    assert float(cav @ _sklearn_cav(kw["concept_acts"], kw["random_acts"], kw["l2"])) > 1 - 1e-6


def test_train_cav_is_the_minimiser_of_the_stated_objective():
    """Recover the scale and bias along the CAV, then check the full gradient (per-example loops) vanishes."""
    from scipy.optimize import minimize

    kw = checks.objective_cases()[1].kwargs
    concept, rand, l2 = kw["concept_acts"], kw["random_acts"], kw["l2"]
    cav = ref.train_cav(concept, rand, l2).double()

    def along(params):
        return _objective_and_gradient_by_loops(params[0] * cav, params[1], concept, rand, l2)[0]

    scale, bias = minimize(along, x0=[1.0, 0.0], method="Nelder-Mead",
                           options=dict(xatol=1e-10, fatol=1e-14, maxiter=20_000)).x
    _, grad_w, grad_b = _objective_and_gradient_by_loops(scale * cav, bias, concept, rand, l2)
    assert grad_w.norm() < 1e-6 and abs(grad_b) < 1e-6


def test_train_cav_on_wide_activations_is_converged(sets):
    """At 4096 dimensions the answer key's Newton steps in the span of the examples agree with LBFGS on w."""
    concept, rands = sets
    x = torch.cat([concept.flatten(1), rands[0].flatten(1)]).double()
    y = torch.cat([torch.ones(len(concept)), -torch.ones(len(rands[0]))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=5000, tolerance_grad=1e-12, tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-y * (x @ w + b)).mean() + 0.005 * w @ w
        loss.backward()
        return loss

    opt.step(closure)
    cav = ref.train_cav(concept, rands[0], 0.01).double()
    assert float(cav @ (w.detach() / w.detach().norm())) > 1 - 1e-6


def test_swapping_the_sets_reverses_the_cav(sets):
    concept, rands = sets
    torch.testing.assert_close(ref.train_cav(rands[0], concept), -ref.train_cav(concept, rands[0]),
                               rtol=1e-4, atol=1e-6)


def test_logistic_cav_tends_to_the_mean_cav_as_l2_grows(sets):
    """With a huge penalty the optimum is ∝ the gradient at 0 ∝ Σ y_i (x_i − x̄): the difference of means
    for equal set sizes."""
    concept, rands = sets
    mean = ref.mean_cav(concept, rands[0]).double()
    cosines = [float(ref.train_cav(concept, rands[0], l2).double() @ mean) for l2 in (1e-3, 1e-1, 1e1, 1e4)]
    assert cosines == sorted(cosines) and cosines[-1] > 0.9999 and cosines[0] < 0.95


def test_mean_cav_by_loops(sets):
    concept, rands = sets
    total_c = sum(a.flatten() for a in concept) / len(concept)
    total_r = sum(a.flatten() for a in rands[1]) / len(rands[1])
    expected = (total_c - total_r) / (total_c - total_r).norm()
    torch.testing.assert_close(ref.mean_cav(concept, rands[1]), expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ directional derivatives


def test_directional_derivatives_match_captum_layer_gradients(cnn):
    from captum.attr import LayerGradientXActivation

    x = checks.concept_images("random", 6, 8)
    target = torch.tensor([0, 1, 2, 3, 2, 1])
    for index in (5, 8, 10):
        grads = LayerGradientXActivation(cnn, cnn.features[index], multiply_by_inputs=False).attribute(x, target=target)
        cav = checks.unit_rows(3, grads[0].numel(), index)
        torch.testing.assert_close(ref.directional_derivatives(cnn, cnn.features[index], x, target, cav),
                                   grads.flatten(1) @ cav.T, rtol=1e-4, atol=1e-6)


def test_directional_derivatives_by_finite_differences(cnn):
    """Per example: (S(h + εv) − S(h − εv)) / 2ε with h the layer's output, in float64."""
    net = cnn.double()
    try:
        x = checks.concept_images("random", 3, 9).double()
        layer = net.features[8]
        cav = checks.unit_rows(1, 64 * 8 * 8, 1)[0].double()
        eps = 1e-4
        slow = []
        for i in range(len(x)):
            scores = []
            for sign in (1, -1):
                handle = layer.register_forward_hook(lambda m, inp, out, s=sign: out + s * eps * cav.view_as(out[0]))
                with torch.no_grad():
                    scores.append(net(x[i:i + 1])[0, 2].item())
                handle.remove()
            slow.append((scores[0] - scores[1]) / (2 * eps))
        fast = ref.directional_derivatives(net, layer, x, 2, cav)
        torch.testing.assert_close(fast, torch.tensor(slow, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    finally:
        cnn.float()


@pytest.mark.parametrize("name,index,pooling", [("tiny-bert-sentiment", 1, "cls"), ("tiny-bert-sentiment", 0, "mean"),
                                                ("minilm-sentiment", 3, "mean")])
def test_text_directional_derivatives_by_finite_differences(name, index, pooling):
    """Move the [CLS] state (or every real token's state) by ±εv and difference the logits, sentence by sentence."""
    m = model(name)
    layer = checks.encoder_layer(name, index)
    batch = checks.text_batch(name, checks.SENTENCES[:3])
    cav = checks.unit_rows(1, m.get_input_embeddings().embedding_dim, 2)[0]
    eps = 1e-2
    slow = []
    for i in range(3):
        n = int(batch["attention_mask"][i].sum())
        ids, mask = batch["input_ids"][i:i + 1, :n], batch["attention_mask"][i:i + 1, :n]
        shift = torch.zeros(1, n, cav.numel())
        if pooling == "cls":
            shift[0, 0] = cav
        else:
            shift[0, :] = cav
        scores = []
        for sign in (1, -1):
            handle = layer.register_forward_hook(
                lambda mod, inp, out, s=sign: (out[0] + s * eps * shift, *out[1:]) if isinstance(out, tuple)
                else out + s * eps * shift)
            with torch.no_grad():
                scores.append(m(input_ids=ids, attention_mask=mask)[0, 1].double().item())
            handle.remove()
        slow.append((scores[0] - scores[1]) / (2 * eps))
    fast = ref.text_directional_derivatives(m, layer, **batch, target=1, cav=cav, pooling=pooling)
    torch.testing.assert_close(fast.double(), torch.tensor(slow, dtype=torch.float64), rtol=2e-3, atol=2e-4)


def test_text_activations_by_loops():
    m = model("minilm-sentiment")
    layer = checks.encoder_layer("minilm-sentiment", 2)
    batch = checks.text_batch("minilm-sentiment", checks.SENTENCES)
    fast = {p: ref.text_activations(m, layer, **batch, pooling=p) for p in ("cls", "mean")}
    for i in range(len(checks.SENTENCES)):
        n = int(batch["attention_mask"][i].sum())
        alone = checks.hooked(layer, lambda: m(input_ids=batch["input_ids"][i:i + 1, :n],
                                               attention_mask=batch["attention_mask"][i:i + 1, :n]))[0]
        torch.testing.assert_close(fast["cls"][i], alone[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast["mean"][i], sum(alone[t] for t in range(n)) / n, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ scores and the test


def test_tcav_score_by_loops():
    d = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    d[::5] = 0
    expected = torch.tensor([sum(1 for b in range(30) if d[b, k] > 0) / 30 for k in range(4)])
    torch.testing.assert_close(ref.tcav_score(d), expected)


def test_significance_by_the_formula():
    """Student's two-sample t-test written out: pooled variance, t, two tails of the t distribution."""
    from scipy.stats import t as student_t

    for case in checks.significance_cases()[:4]:
        kw = case.kwargs
        a, b = kw["concept_scores"].double(), kw["random_scores"].double()
        na, nb = len(a), len(b)
        pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (na + nb - 2)
        t = (a.mean() - b.mean()) / torch.sqrt(pooled * (1 / na + 1 / nb))
        p = 2 * student_t.sf(abs(float(t)), na + nb - 2)
        got_p, significant = ref.significance(**kw)
        assert got_p == pytest.approx(p, rel=1e-9, abs=1e-15)
        assert significant == (p < kw["alpha"] / kw["n_tests"])
    assert ref.significance(torch.ones(4), torch.ones(5)) == (1.0, False)


# ------------------------------------------------------------------ TCAV against captum


class FixedLogistic:
    """A captum concept classifier: our L2-regularised logistic regression (scikit-learn, C = 1/(N·l2))."""

    def __init__(self, l2):
        from sklearn.linear_model import LogisticRegression

        self.l2, self.lm, self.LogisticRegression = l2, None, LogisticRegression

    def train_and_eval(self, dataloader, **kwargs):
        xs, ys = zip(*dataloader)
        x, y = torch.cat(xs).flatten(1).double().numpy(), torch.cat(ys).numpy()
        self.lm = self.LogisticRegression(C=1 / (len(x) * self.l2), tol=1e-12, max_iter=100_000).fit(x, y)
        return {"accs": float((self.lm.predict(x) == y).mean())}

    def weights(self):
        coef = torch.tensor(self.lm.coef_[0], dtype=torch.float32)
        return torch.stack([-coef, coef])  # two classes: the first one's CAV points away from the second

    def classes(self):
        return self.lm.classes_.tolist()


def test_tcav_matches_captum(cnn, tmp_path):
    """captum.concept.TCAV with the same classifier gives the same sign counts, run by run."""
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier

    Classifier.register(FixedLogistic)
    images = {"circle": [checks.concept_images("shape:circle", 16, 60 + i) for i in range(3)],
              "random": [checks.concept_images("random", 16, 70 + i) for i in range(3)]}

    def loader(x):
        return torch.utils.data.DataLoader(x, batch_size=8)

    concepts = [Concept(i, f"circle{i}", loader(x)) for i, x in enumerate(images["circle"])]
    randoms = [Concept(10 + i, f"random{i}", loader(x)) for i, x in enumerate(images["random"])]
    experimental_sets = [[concepts[i], randoms[i]] for i in range(3)] + \
                        [[randoms[i], randoms[(i + 1) % 3]] for i in range(3)]
    tcav = TCAV(cnn, layers=["features.8"], classifier=FixedLogistic(0.01), save_path=str(tmp_path / "cav"))
    x = checks.concept_images("shape:circle", 20, 80)
    scores = tcav.interpret(x, experimental_sets=experimental_sets, target=0)
    captum_scores = torch.stack([scores[f"{s[0].id}-{s[1].id}"]["features.8"]["sign_count"][0]
                                 for s in experimental_sets])

    layer = cnn.features[8]
    concept_sets = [ref.layer_activations(cnn, layer, a) for a in images["circle"]]
    random_sets = [ref.layer_activations(cnn, layer, a) for a in images["random"]]
    ours = torch.cat(ref.tcav(cnn, layer, x, 0, concept_sets, random_sets, l2=0.01))
    torch.testing.assert_close(ours, captum_scores)


# ------------------------------------------------------------------ fairness of the train_cav checks


def plain_lbfgs_cav(concept_acts, random_acts, l2=0.01):
    """How a student might write it: LBFGS on (w, b) in float32, straight from the docstring."""
    x = torch.cat([concept_acts.flatten(1), random_acts.flatten(1)]).float()
    y = torch.cat([torch.ones(len(concept_acts)), -torch.ones(len(random_acts))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-y * (x @ w + b)).mean() + l2 / 2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    return w / w.norm()


def test_a_plain_lbfgs_solver_passes_the_train_cav_checks():
    for name in ("lab07.train_cav.reference", "lab07.train_cav.objective", "lab07.train_cav.properties"):
        passed, message = run_check(name, plain_lbfgs_cav)
        assert passed, message


def plain_lbfgs_tcav(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [plain_lbfgs_cav(concept_sets[i], random_sets[i], l2) for i in range(r)]
    cavs += [plain_lbfgs_cav(random_sets[i], random_sets[(i + 1) % r], l2) for i in range(r)]
    scores = ref.tcav_score(ref.directional_derivatives(model, layer, class_inputs, target, torch.stack(cavs)))
    return scores[:r], scores[r:]


def test_tcav_built_on_a_plain_lbfgs_solver_passes():
    passed, message = run_check("lab07.tcav.reference", plain_lbfgs_tcav)
    assert passed, message
