"""Hidden-test checks of Lab 3 (Integrated Gradients).

Integrated Gradients is compared with the answer key on the MNIST CNN and on two transformers
(through their input embeddings), and tested against the axioms on models whose path integral is
known in closed form: a linear model (IG = (x − x′) ⊙ w for every rule), a quadratic one (the
completeness gap of each rule is exact), a symmetric one (equal features, equal attribution).
"""
from __future__ import annotations

import torch
from torch import nn

from grader.answers import lab03 as ref
from grader.checks import (Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, prepared_check,
                           property_check, reference_check)
from grader.checks.properties import batch_equals_single, count_forward, side_effect_free
from grader.fixtures import EQUAL_LENGTH, EmbeddingInput, mnist_batch, model, text_batch
from xailab.datasets.photos import load_photo

RULES = ref.RULES


# ------------------------------------------------------------------ models with known integrals

class QuadraticLinear(nn.Module):
    """f_k(x) = Σ_j a_kj x_j² + c_kj x_j: along a straight path the integrand is linear in α."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.a, self.c, self.scale = nn.Parameter(a), nn.Parameter(c), scale

    def forward(self, x):
        x = x.flatten(1)
        return self.scale * ((x ** 2) @ self.a.T + x @ self.c.T)


class Symmetric(nn.Module):
    """f(x) = σ(2(x0 + x1) − 1) + x2·x3 + 0·x4: x0 ↔ x1 and x2 ↔ x3 are symmetric, x4 is a dummy."""

    def forward(self, x):
        return (torch.sigmoid(2 * (x[:, 0] + x[:, 1]) - 1) + x[:, 2] * x[:, 3] + 0 * x[:, 4])[:, None]


# ------------------------------------------------------------------ inputs

def cnn_cases() -> list[Case]:
    x, y = (t.clone() for t in mnist_batch(8))
    m = model("mnist-cnn")
    return [
        Case("mnist-cnn, 4 digits, their labels", dict(model=m, inputs=x[:4], target=y[:4])),
        Case("mnist-cnn, 4 digits, class 3 for all", dict(model=m, inputs=x[:4], target=3)),
        Case("mnist-cnn, 3 other digits, their labels", dict(model=m, inputs=x[5:], target=y[5:])),
    ]


def linear_model(seed=1, d=12):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 3).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, d, generator=g))
        lin.bias.copy_(torch.randn(3, generator=g))
    return lin, g


def linear_cases() -> list[Case]:
    lin, g = linear_model()
    x, base = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    return [Case(f"a linear model f(x) = Wx + b, 5 inputs, class 2, {rule} rule, 7 steps"
                 + (", a baseline per example" if i % 2 else ", zero baseline"),
                 dict(model=lin, inputs=x, target=2, n_steps=7, rule=rule, baseline=base if i % 2 else None))
            for i, rule in enumerate(RULES)]


def ig_cnn_cases() -> list[Case]:
    c = cnn_cases()
    noise = torch.rand(c[2].kwargs["inputs"].shape, generator=torch.Generator().manual_seed(3))
    return [
        Case(c[0].description + ", midpoint, 16 steps", dict(c[0].kwargs, n_steps=16)),
        Case(c[1].description + ", left, 8 steps, grey baseline 0.5",
             dict(c[1].kwargs, n_steps=8, rule="left", baseline=0.5)),
        Case(c[2].description + ", trapezoid, 8 steps, a noise baseline per example",
             dict(c[2].kwargs, n_steps=8, rule="trapezoid", baseline=noise, batch_size=12)),
        Case(c[0].description + ", right, 8 steps, one (1, 1, 28, 28) baseline for all",
             dict(c[0].kwargs, n_steps=8, rule="right", baseline=noise[:1])),
    ]


def embedding_cases(sizes=(("tiny-bert-sentiment", 4, 8), ("minilm-sentiment", 2, 4))) -> list[Case]:
    """Sentences of equal length (no padding), attributed through the input embeddings."""
    cases = []
    for name, n, steps in sizes:
        m = model(name)
        batch = text_batch(name, EQUAL_LENGTH[:n])
        with torch.no_grad():
            embed = m.get_input_embeddings()
            x, pad = embed(batch["input_ids"]), embed.weight[m.tokenizer.pad_token_id].clone()
        cases.append(Case(f"{name} via its input embeddings, {n} sentences, {steps} steps, the [PAD] "
                          "embedding (shape (D,)) as baseline",
                          dict(model=EmbeddingInput(m).eval(), inputs=x,
                               target=torch.tensor([1, 0, 1, 0])[:n], baseline=pad, n_steps=steps)))
    return cases


def quadratic_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    quad = QuadraticLinear(torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)).eval()
    x, base = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    return [Case(f"f(x) = Σ a x² + c x, 3 inputs, a baseline per example, {rule} rule, {n} steps",
                 dict(model=quad, inputs=x, target=1, baseline=base, n_steps=n, rule=rule))
            for rule, n in zip(RULES, (5, 8, 3, 6))]


# ------------------------------------------------------------------ riemann_rule

def rule_values(fn, case: Case) -> None:
    n, rule = case.kwargs["n_steps"], case.kwargs["rule"]
    result = fn(n, rule)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CheckFailed(f"riemann_rule should return a pair (alphas, weights), got {type(result).__name__}.")
    expected = ref.riemann_rule(n, rule)
    for what, actual, exp in zip(("alphas", "weights"), result, expected):
        actual = as_tensor(actual, "riemann_rule").to(torch.float64)
        assert_close(actual, exp, f"riemann_rule({n}, {rule!r}) {what}", 1e-6, 1e-7,
                     "Intervals of width 1/n on [0, 1]; the trapezoid rule has n + 1 points with half "
                     "weight at both ends.")


property_check("lab03.riemann_rule.values", "riemann_rule",
               "alphas and weights of the four rules for n = 1, 3, 8; any other rule is a ValueError",
               lambda: [Case(f"{rule}, n = {n}", dict(n_steps=n, rule=rule)) for rule in RULES for n in (1, 3, 8)]
               + [Case("an unknown rule, 'simpson'", dict(n_steps=4, rule="simpson"), raises="ValueError")],
               rule_values)

# ------------------------------------------------------------------ integrated_gradients


def linear_is_exact(fn, case: Case) -> None:
    kw = case.kwargs
    lin, x = kw["model"], kw["inputs"]
    base = ref.as_baseline(x, kw["baseline"])
    expected = (x - base) * lin.weight[kw["target"]].detach()
    assert_close(fn(**kw), expected, f"integrated_gradients on {case.description}", 1e-4, 1e-5,
                 "For f(x) = Wx + b every rule gives exactly (x − x′) ⊙ W[target]: are the weights summing "
                 "to 1 (a sum over steps, not a mean of weighted terms), and do you multiply by x − x′?")


property_check("lab03.integrated_gradients.linear", "integrated_gradients",
               "equals (x − x′) ⊙ w on a linear model for every rule", linear_cases, linear_is_exact)

reference_check("lab03.integrated_gradients.cnn", "integrated_gradients",
                "matches the reference on the MNIST CNN (four rules, scalar, shared and per-example baselines)",
                ig_cnn_cases, ref.integrated_gradients, rtol=1e-3, atol=1e-5,
                hint="Check the alphas of the rule, the baseline (a number, or a tensor broadcast to the "
                     "inputs), and that each example uses its own target's pre-softmax score.")

reference_check("lab03.integrated_gradients.transformer", "integrated_gradients",
                "matches the reference through the input embeddings of two transformers",
                embedding_cases, ref.integrated_gradients, rtol=1e-3, atol=1e-4)


def exact_completeness(fn, case: Case) -> None:
    kw = case.kwargs
    quad, x, base, n, rule = kw["model"], kw["inputs"], kw["baseline"], kw["n_steps"], kw["rule"]
    a, d = quad.a.detach()[1], x - base
    with torch.no_grad():
        change = quad(x)[:, 1] - quad(base)[:, 1]
    q = 2 * (a * d ** 2).sum(1)  # the integrand's slope in α
    expected_gap = {"left": -q / (2 * n), "right": q / (2 * n)}.get(rule, torch.zeros_like(q))
    attr = as_tensor(fn(**kw), "integrated_gradients")
    if attr.shape != x.shape:
        raise CheckFailed(f"integrated_gradients: expected shape {tuple(x.shape)}, got {tuple(attr.shape)}.")
    assert_close(attr.flatten(1).sum(1) - change, expected_gap,
                 f"completeness gap Σ attributions − (f(x) − f(x′)) on {case.description}", 1e-4, 1e-4,
                 "The integrand is linear in α here, so the midpoint and trapezoid rules are exact and the "
                 "left/right rules miss by ∓ slope/(2n): check your alphas and weights.")


property_check("lab03.integrated_gradients.completeness", "integrated_gradients",
               "completeness gap of each rule exactly as predicted on a quadratic model",
               quadratic_cases, exact_completeness)


def symmetry_cases() -> list[Case]:
    x = torch.tensor([[0.3, 0.3, 1.5, 1.5, 2.0], [-1.0, -1.0, 0.5, 0.5, -3.0], [2.0, 2.0, -1.0, -1.0, 1.0]])
    return [Case(f"f(x) = σ(2(x0 + x1) − 1) + x2·x3, x0 = x1 and x2 = x3, {rule} rule",
                 dict(model=Symmetric(), inputs=x, target=0, n_steps=32, rule=rule)) for rule in ("midpoint", "left")]


def symmetric(fn, case: Case) -> None:
    attr = as_tensor(fn(**case.kwargs), "integrated_gradients")
    if attr.shape != case.kwargs["inputs"].shape:
        raise CheckFailed(f"integrated_gradients: expected shape {tuple(case.kwargs['inputs'].shape)}, "
                          f"got {tuple(attr.shape)}.")
    what = f"integrated_gradients on {case.description}"
    hint = "Symmetric features with equal values must get equal attribution; a feature the model ignores gets 0."
    assert_close(attr[:, 1], attr[:, 0], what + ": x1 vs x0", 1e-4, 1e-6, hint)
    assert_close(attr[:, 3], attr[:, 2], what + ": x3 vs x2", 1e-4, 1e-6, hint)
    assert_close(attr[:, 4], torch.zeros(len(attr)), what + ": the dummy feature x4", 0, 1e-7, hint)
    if (attr[:, :4].abs() < 1e-3).all():
        raise CheckFailed(f"{what}: all attributions are zero, but the input differs from the baseline.")


property_check("lab03.integrated_gradients.symmetry", "integrated_gradients",
               "symmetric features get equal attribution, a dummy feature none", symmetry_cases, symmetric)


def baseline_is_input(fn, case: Case) -> None:
    kw = case.kwargs
    attr = fn(**dict(kw, baseline=kw["inputs"].clone()))
    assert_close(attr, torch.zeros_like(kw["inputs"]), f"integrated_gradients on {case.description} with "
                 "baseline = the input itself", 0, 1e-7, "The path has length 0: every attribution is 0.")


property_check("lab03.integrated_gradients.baseline_is_input", "integrated_gradients",
               "baseline = input gives zero attribution",
               lambda: [Case(c.description, dict(c.kwargs, n_steps=8)) for c in cnn_cases()[:1]], baseline_is_input)


def batched_and_chunked(fn, case: Case) -> None:
    kw = case.kwargs
    _, calls, rows = count_forward(fn, dict(kw, n_steps=8, batch_size=16))
    if rows > 16:
        raise CheckFailed(f"integrated_gradients fed {rows} rows to the model at once with batch_size=16: "
                          "process the steps in chunks of batch_size // B steps so memory stays bounded.")
    if calls > 3:
        raise CheckFailed(f"integrated_gradients made {calls} forward passes for 8 steps of 4 inputs "
                          "with batch_size=16: put several steps into each pass instead of looping over steps.")
    b = len(kw["inputs"])
    _, calls, rows = count_forward(fn, dict(kw, n_steps=3, batch_size=b // 2))
    if rows > b:
        raise CheckFailed(f"integrated_gradients fed {rows} rows to the model at once with batch_size={b // 2} "
                          f"for {b} inputs: when batch_size < B, each pass takes max(1, batch_size // B) = 1 step, "
                          f"i.e. {b} rows.")
    one = fn(**dict(kw, n_steps=6, batch_size=4))
    many = fn(**dict(kw, n_steps=6, batch_size=1000))
    assert_close(one, many, f"integrated_gradients with batch_size=4 vs 1000 on {case.description}", 1e-4, 1e-6,
                 "The chunk size must not change the result.")


property_check("lab03.integrated_gradients.properties", "integrated_gradients",
               "chunked by batch_size (same result for any chunk size); batch = per example; model and "
               "inputs untouched",
               lambda: [Case(c.description, dict(c.kwargs, n_steps=4)) for c in cnn_cases()[:1]],
               all_of(batched_and_chunked, batch_equals_single("integrated_gradients", 1e-3, 1e-5),
                      side_effect_free("integrated_gradients")))

# ------------------------------------------------------------------ completeness_gap


def gap_cases() -> list[Case]:
    c = cnn_cases()
    g = torch.Generator().manual_seed(4)
    e = embedding_cases((("tiny-bert-sentiment", 4, 8),))[0]
    return [
        Case(c[0].description + ", random attributions, zero baseline",
             dict(c[0].kwargs, attributions=torch.randn(4, 1, 28, 28, generator=g) * 0.05)),
        Case(c[2].description + ", random attributions, baseline 0.5",
             dict(c[2].kwargs, attributions=torch.randn(3, 1, 28, 28, generator=g) * 0.05, baseline=0.5)),
        Case(e.description.split(", 8 steps")[0] + ", random attributions",
             dict(model=e.kwargs["model"], inputs=e.kwargs["inputs"], target=e.kwargs["target"],
                  baseline=e.kwargs["baseline"], attributions=torch.randn(e.kwargs["inputs"].shape, generator=g))),
    ]


reference_check("lab03.completeness_gap.reference", "completeness_gap",
                "Σ attributions − (f(x) − f(x′)) per example, on a CNN and a transformer",
                gap_cases, ref.completeness_gap, rtol=1e-4, atol=1e-4,
                hint="One number per example: sum the attributions of each example over all its features, "
                     "and subtract the change of its target's logit from the baseline to the input.")

# ------------------------------------------------------------------ steps_until_converged


def steps_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    a, c = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    x = torch.randn(3, 4, generator=g)
    quad, big = QuadraticLinear(a, c).eval(), QuadraticLinear(a, c, scale=50.0).eval()
    digits = cnn_cases()[0].kwargs
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(100)) * 1.5  # f(x′) far from 0
    return [
        Case("f(x) = Σ a x² + c x, 3 inputs, a baseline per example with f(x′) far from 0, left rule, tol 0.1",
             dict(model=quad, inputs=x, target=1, baseline=base, rule="left", tol=0.1)),
        Case("the same with the right rule, tol 0.1, start 5, max_steps 40 (n = 40 is the first that converges)",
             dict(model=quad, inputs=x, target=1, baseline=base, rule="right", tol=0.1, start=5, max_steps=40)),
        Case("f(x) = Σ a x² + c x, 3 inputs, left rule, tol 0.1", dict(model=quad, inputs=x, target=1, rule="left", tol=0.1)),
        Case("the same model × 50, left rule, tol 0.1", dict(model=big, inputs=x, target=1, rule="left", tol=0.1)),
        Case("f(x) = Σ a x² + c x, one input, right rule, tol 0.05",
             dict(model=quad, inputs=x[:1], target=1, rule="right", tol=0.05)),
        Case("f(x) = Σ a x² + c x, midpoint rule (exact here), tol 0.01, start 2",
             dict(model=quad, inputs=x, target=0, tol=0.01, start=2)),
        Case("f(x) = Σ a x² + c x, left rule, tol 0.001, max_steps 64 (never converges)",
             dict(model=quad, inputs=x, target=1, rule="left", tol=0.001, max_steps=64)),
        Case("mnist-cnn, one digit, midpoint rule, tol 0.05, max_steps 32",
             dict(model=digits["model"], inputs=digits["inputs"][:1], target=digits["target"][:1], tol=0.05,
                  max_steps=32)),
    ]


def same_steps(fn, case: Case, expected) -> None:
    actual = fn(**case.kwargs)
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        actual = actual.item()
    if actual != expected:
        raise CheckFailed(f"steps_until_converged on {case.description}: expected {expected}, got {actual!r}. "
                          "Double n from `start` while n ≤ max_steps; converged means |gap| < tol·|f(x) − f(x′)| "
                          "(relative) for EVERY example; return None when no n qualifies.")


prepared_check("lab03.steps_until_converged.reference", "steps_until_converged",
               "the same n as the reference (relative tolerance, worst example, doubling, None)",
               steps_cases, lambda case: ref.steps_until_converged(**copy_kwargs(case.kwargs)), same_steps)

# ------------------------------------------------------------------ make_baseline


def blur_cases() -> list[Case]:
    x = cnn_cases()[0].kwargs["inputs"]
    photo = load_photo("chelsea")[None]
    return [
        Case("4 MNIST digits, black", dict(inputs=x, kind="black")),
        Case("4 MNIST digits, blur σ = 1.5", dict(inputs=x, kind="blur", sigma=1.5)),
        Case("the chelsea photo, blur σ = 10", dict(inputs=photo, kind="blur", sigma=10.0)),
        Case("the chelsea photo, blur σ = 4", dict(inputs=photo, kind="blur", sigma=4.0)),
    ]


reference_check("lab03.make_baseline.black_blur", "make_baseline",
                "black and Gaussian-blurred baselines match the reference",
                blur_cases, ref.make_baseline, rtol=1e-4, atol=1e-5,
                hint="Blur with torchvision's gaussian_blur, kernel size 2·ceil(3σ) + 1 in both directions.")


def uniform_reproducible(fn, case: Case) -> None:
    x = case.kwargs["inputs"]
    original = x.clone()
    draws = []
    for seed in (0, 1):
        actual = fn(x, "uniform", generator=torch.Generator().manual_seed(seed))
        expected = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
        assert_close(actual, expected, f"make_baseline(inputs, 'uniform') with a generator seeded {seed} on "
                     f"{case.description}", 0, 1e-7,
                     "Draw U[0, 1) noise with torch.rand(inputs.shape, generator=generator): one call, so a "
                     "seeded generator reproduces it.")
        draws.append(actual)
    if torch.equal(draws[0], draws[1]):
        raise CheckFailed("make_baseline: two different seeds gave the same noise.")
    if not torch.equal(x, original):
        raise CheckFailed("make_baseline changed its inputs.")


property_check("lab03.make_baseline.uniform", "make_baseline",
               "uniform noise reproducible from a seeded generator; any other kind is a ValueError",
               lambda: [Case("4 MNIST digits", dict(inputs=cnn_cases()[0].kwargs["inputs"])),
                        Case("a (2, 3, 8, 8) batch", dict(inputs=torch.zeros(2, 3, 8, 8))),
                        Case("an unknown kind, 'checkerboard'", dict(inputs=torch.zeros(2, 3, 8, 8),
                                                                     kind="checkerboard"), raises="ValueError")],
               uniform_reproducible)

# ------------------------------------------------------------------ expected_integrated_gradients


def expected_ig_cases() -> list[Case]:
    c = cnn_cases()
    lin, g = linear_model(2, 10)
    return [
        Case(c[0].description + ", 3 baselines, 8 steps", dict(c[0].kwargs, n_baselines=3, n_steps=8, seed=0)),
        Case(c[2].description + ", 2 baselines, 6 steps, trapezoid",
             dict(c[2].kwargs, n_baselines=2, n_steps=6, rule="trapezoid", seed=1)),
        Case("a linear model, 3 inputs, 5 baselines, 4 steps, left rule",
             dict(model=lin, inputs=torch.randn(3, 10, generator=g), target=0, n_baselines=5, n_steps=4,
                  rule="left", seed=2)),
    ]


def seeded_call(f, case: Case):
    kw = copy_kwargs(case.kwargs)  # the reference runs in this process
    generator = torch.Generator().manual_seed(kw.pop("seed"))
    return f(**kw, generator=generator)


def expected_ig_matches(fn, case: Case, expected) -> None:
    assert_close(seeded_call(fn, case), expected, f"expected_integrated_gradients on {case.description}", 1e-3, 1e-5,
                 "Average IG over n_baselines uniform baselines, each drawn with "
                 "make_baseline(inputs, 'uniform', generator=generator), one after the other.")


prepared_check("lab03.expected_integrated_gradients.reference", "expected_integrated_gradients",
               "the mean of IG over seeded uniform baselines, as the reference",
               expected_ig_cases, lambda case: seeded_call(ref.expected_integrated_gradients, case),
               expected_ig_matches)

# ------------------------------------------------------------------ token_baseline


def token_baseline_cases() -> list[Case]:
    cases = []
    for sentences in (None, ("great", "an utterly forgettable and tedious two hours", "fine")):
        batch = text_batch("tiny-bert-sentiment", *(() if sentences is None else (sentences,)))
        cases.append(Case(f"{batch['input_ids'].shape[0]} padded sentences",
                          dict(**batch, tokenizer=model("tiny-bert-sentiment").tokenizer)))
    masked = dict(cases[0].kwargs, attention_mask=cases[0].kwargs["attention_mask"].clone())
    masked["attention_mask"][0, 2] = 0
    cases.append(Case("padded sentences where the attention mask also hides a real token (it stays, like padding)",
                      masked))
    return cases


reference_check("lab03.token_baseline.reference", "token_baseline",
                "[CLS] [PAD]… [SEP] with padding kept, on padded batches",
                token_baseline_cases, ref.token_baseline, rtol=0, atol=0,
                hint="Replace only real tokens by tokenizer.pad_token_id; keep [CLS], [SEP] and padding (every position "
                     "where attention_mask is 0) where they are (the [SEP] of a short sentence is not in the last column).")

# ------------------------------------------------------------------ token_integrated_gradients


def token_cases(name: str, sentences=None) -> list[Case]:
    batch = text_batch(name, *(() if sentences is None else (sentences,)))
    n = batch["input_ids"].shape[0]
    return [
        Case(f"{name}, {n} padded sentences, positive class, midpoint, 8 steps",
             dict(model=model(name), **batch, target=1, n_steps=8)),
        Case(f"{name}, {n} padded sentences, per-example targets, trapezoid, 8 steps",
             dict(model=model(name), **batch, target=torch.tensor([1, 0, 0, 1])[:n], n_steps=8, rule="trapezoid")),
    ]


reference_check("lab03.token_integrated_gradients.tiny_bert", "token_integrated_gradients",
                "matches reference token IG on tiny-bert-sentiment",
                lambda: token_cases("tiny-bert-sentiment"), ref.token_integrated_gradients, rtol=1e-3, atol=1e-4,
                hint="Interpolate between the embeddings of the [CLS] [PAD]… [SEP] baseline and of the input, "
                     "pass the attention mask, sum over the hidden size.")

reference_check("lab03.token_integrated_gradients.minilm", "token_integrated_gradients",
                "matches reference token IG on minilm-sentiment",
                lambda: [Case(c.description.replace("8 steps", "4 steps"), dict(c.kwargs, n_steps=4))
                         for c in token_cases("minilm-sentiment", ("a wonderful and moving film", "not bad"))[:1]],
                ref.token_integrated_gradients, rtol=1e-3, atol=1e-4)


def token_complete_and_padded(fn, case: Case) -> None:
    kw = case.kwargs
    m, ids, mask = kw["model"], kw["input_ids"], kw["attention_mask"]
    attr = as_tensor(fn(**dict(kw, n_steps=16)), "token_integrated_gradients")
    if attr.shape != ids.shape:
        raise CheckFailed(f"token_integrated_gradients: expected shape {tuple(ids.shape)} (batch, tokens), "
                          f"got {tuple(attr.shape)}.")
    if (attr[mask == 0] != 0).any():
        raise CheckFailed("token_integrated_gradients: padding positions must be exactly 0.")
    with torch.no_grad():
        base = ref.token_baseline(ids, mask, m.tokenizer)
        change = m(input_ids=ids, attention_mask=mask)[:, 1] - m(input_ids=base, attention_mask=mask)[:, 1]
    gap = attr.sum(1) - change
    if (gap.abs() > 0.1 * change.abs() + 0.05).any():
        raise CheckFailed(f"token_integrated_gradients is not complete on {case.description}: Σ_t attributions − "
                          f"(f(x) − f(x′)) = {[round(v, 3) for v in gap.tolist()]} for f(x) − f(x′) = "
                          f"{[round(v, 3) for v in change.tolist()]}, with x′ = [CLS] [PAD]… [SEP] (16 steps).")
    attr = as_tensor(fn(**kw), "token_integrated_gradients")
    for i in range(len(ids)):
        n = int(mask[i].sum())
        single = dict(kw, input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n],
                      target=kw["target"] if isinstance(kw["target"], int) else kw["target"][i:i + 1])
        assert_close(attr[i:i + 1, :n], as_tensor(fn(**single), "token_integrated_gradients"),
                     f"token_integrated_gradients: sentence {i} in a padded batch vs alone", 1e-3, 1e-4,
                     "Pass the attention_mask (repeated for every step) so padding changes nothing.")


property_check("lab03.token_integrated_gradients.properties", "token_integrated_gradients",
               "complete w.r.t. the [CLS] [PAD]… [SEP] baseline; padding is zero and changes nothing; "
               "model and inputs untouched",
               lambda: [Case(c.description.replace("8 steps", "4 steps"), dict(c.kwargs, n_steps=4))
                        for c in token_cases("tiny-bert-sentiment")[:1]],
               all_of(token_complete_and_padded, side_effect_free("token_integrated_gradients", dict(n_steps=4))))
