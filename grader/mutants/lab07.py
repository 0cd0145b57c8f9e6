"""Typical mistakes in Lab 7 (TCAV), one function each."""
import math

import torch
import torch.nn.functional as F

from grader.answers import lab07 as ref


def _dot(g, cav):
    """(B, D) · (D,) → (B,); (B, D) · (K, D) → (B, K)."""
    return torch.tensordot(g, cav, dims=([1], [-1]))


def _index(target, n):
    return torch.as_tensor(target).reshape(-1).expand(n)


def _hooked_output(layer, run, use_input=False):
    stored = []

    def hook(m, i, out):
        stored.append(i[0] if use_input else ref._first(out))

    handle = layer.register_forward_hook(hook)
    try:
        result = run()
    finally:
        handle.remove()
    return stored, result


# --- layer activations
def acts_layer_input(model, layer, inputs, batch_size=64):
    out = []
    for s in range(0, len(inputs), batch_size):
        with torch.no_grad():
            stored, _ = _hooked_output(layer, lambda: model(inputs[s:s + batch_size]), use_input=True)
        out.append(stored[-1])
    return torch.cat(out)


def acts_flattened(model, layer, inputs, batch_size=64):
    return ref.layer_activations(model, layer, inputs, batch_size).flatten(1)


def acts_last_batch_only(model, layer, inputs, batch_size=64):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(ref._first(out).detach()))
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            model(inputs[s:s + batch_size])
    handle.remove()
    return stored[-1]


def acts_hook_left(model, layer, inputs, batch_size=64):
    stored = []
    layer.register_forward_hook(lambda m, i, out: stored.append(ref._first(out).detach()))
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            model(inputs[s:s + batch_size])
    return torch.cat(stored)


def acts_one_pass(model, layer, inputs, batch_size=64):
    return ref.layer_activations(model, layer, inputs, batch_size=len(inputs))


def acts_one_example_at_a_time(model, layer, inputs, batch_size=64):
    return ref.layer_activations(model, layer, inputs, batch_size=1)


def acts_train_mode(model, layer, inputs, batch_size=64):
    model.train()
    return ref.layer_activations(model, layer, inputs, batch_size)


# --- train_cav
def _logistic(concept_acts, random_acts, l2, *, reg_bias=False, bias=True, mean=True, subset=None, balanced=False):
    """The answer key's Newton solver (w = Xᵀα) with switches for the usual mistakes."""
    xc, xr = concept_acts.flatten(1).double(), random_acts.flatten(1).double()
    x = torch.cat([xc, xr])
    y = torch.cat([torch.ones(len(xc)), -torch.ones(len(xr))]).double()
    c = torch.ones(len(x), dtype=torch.float64)
    if balanced:
        c = torch.cat([torch.full((len(xc),), len(x) / (2 * len(xc))),
                       torch.full((len(xr),), len(x) / (2 * len(xr)))]).double()
    if subset is not None:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:subset(len(x))]
        x, y, c = x[keep], y[keep], c[keep]
    if mean:
        c = c / len(x)
    if reg_bias:  # the bias becomes a penalised weight on a constant feature
        x, bias = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), False
    k = x @ x.T
    n, free = len(x), int(bias)
    theta = torch.zeros(n + free, dtype=torch.float64)

    def margins(t):
        return k @ t[:n] + (t[n] if free else 0.0)

    def objective(t):
        return (c * F.softplus(-y * margins(t))).sum() + 0.5 * l2 * t[:n] @ (k @ t[:n])

    value = objective(theta)
    for _ in range(100):
        p = torch.sigmoid(-y * margins(theta))
        g, s = -y * p * c, p * (1 - p) * c
        m = s[:, None] * k + l2 * torch.eye(n, dtype=torch.float64)
        r = g + l2 * theta[:n]
        if free:
            m = torch.cat([torch.cat([m, s[:, None]], 1), torch.cat([s @ k, s.sum()[None]])[None]])
            r = torch.cat([r, g.sum()[None]])
        step = torch.linalg.solve(m, r)
        dec = (k @ r[:n]) @ step[:n] + (r[n] * step[n] if free else 0.0)
        if dec <= 1e-15 * value:
            break
        t = 1.0
        while t > 1e-12 and objective(theta - t * step) > value - 1e-4 * t * dec:
            t *= 0.5
        theta = theta - t * step
        value = objective(theta)
    w = x.T @ theta[:n]
    w = w[:-1] if reg_bias else w
    return (w / w.norm()).float()


def cav_points_to_random(concept_acts, random_acts, l2=0.01):
    return -ref.train_cav(concept_acts, random_acts, l2)


def cav_difference_of_means(concept_acts, random_acts, l2=0.01):
    return ref.mean_cav(concept_acts, random_acts)


def cav_sum_of_losses(concept_acts, random_acts, l2=0.01):
    return ref.train_cav(concept_acts, random_acts, l2 / (len(concept_acts) + len(random_acts)))


def cav_penalty_l2_not_half(concept_acts, random_acts, l2=0.01):
    return ref.train_cav(concept_acts, random_acts, 2 * l2)


def cav_bias_penalised(concept_acts, random_acts, l2=0.01):
    return _logistic(concept_acts, random_acts, l2, reg_bias=True)


def cav_no_bias(concept_acts, random_acts, l2=0.01):
    return _logistic(concept_acts, random_acts, l2, bias=False)


def cav_not_normalised(concept_acts, random_acts, l2=0.01):
    return ref.train_cav(concept_acts, random_acts, l2) * 3.0


def cav_spatially_pooled(concept_acts, random_acts, l2=0.01):
    pool = (lambda a: a.flatten(2).mean(2)) if concept_acts.dim() > 2 else (lambda a: a)
    return ref.train_cav(pool(concept_acts), pool(random_acts), l2)


def cav_l2_ignored(concept_acts, random_acts, l2=0.01):
    return ref.train_cav(concept_acts, random_acts, 1.0)


def cav_random_split(concept_acts, random_acts, l2=0.01):
    """captum's default classifier: fit on a random 2/3 of the examples."""
    return _logistic(concept_acts, random_acts, l2, subset=lambda n: math.ceil(2 * n / 3))


def cav_few_steps(concept_acts, random_acts, l2=0.01):
    """Twenty steps of gradient descent: far from converged."""
    x = torch.cat([concept_acts.flatten(1), random_acts.flatten(1)]).double()
    y = torch.cat([torch.ones(len(concept_acts)), -torch.ones(len(random_acts))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        (F.softplus(-y * (x @ w + b)).mean() + 0.5 * l2 * w @ w).backward()
        opt.step()
    w = w.detach()
    return (w / w.norm()).float()


def cav_class_balanced(concept_acts, random_acts, l2=0.01):
    return _logistic(concept_acts, random_acts, l2, balanced=True)


# --- mean_cav
def mean_reversed(concept_acts, random_acts):
    return -ref.mean_cav(concept_acts, random_acts)


def mean_not_normalised(concept_acts, random_acts):
    return concept_acts.flatten(1).mean(0) - random_acts.flatten(1).mean(0)


def mean_of_normalised_examples(concept_acts, random_acts):
    c = F.normalize(concept_acts.flatten(1), dim=1)
    r = F.normalize(random_acts.flatten(1), dim=1)
    return ref.mean_cav(c, r)


def mean_spatially_pooled(concept_acts, random_acts):
    pool = (lambda a: a.flatten(2).mean(2)) if concept_acts.dim() > 2 else (lambda a: a)
    return ref.mean_cav(pool(concept_acts), pool(random_acts))


def mean_median(concept_acts, random_acts):
    d = concept_acts.flatten(1).median(0).values - random_acts.flatten(1).median(0).values
    return d / d.norm()


# --- directional derivatives
def _layer_grad(model, layer, inputs, target, score_fn, use_input=False):
    x = inputs.detach().clone().requires_grad_(True)
    stored, logits = _hooked_output(layer, lambda: model(x), use_input)
    (g,) = torch.autograd.grad(score_fn(logits, _index(target, len(x))), stored[-1])
    return g.flatten(1)


def _logit(logits, index):
    return logits.gather(1, index[:, None]).sum()


def dd_softmax(model, layer, inputs, target, cav):
    g = _layer_grad(model, layer, inputs, target, lambda z, i: F.softmax(z, 1).gather(1, i[:, None]).sum())
    return _dot(g, cav)


def dd_loss_gradient(model, layer, inputs, target, cav):
    g = _layer_grad(model, layer, inputs, target, lambda z, i: F.cross_entropy(z, i, reduction="sum"))
    return _dot(g, cav)


def dd_layer_input(model, layer, inputs, target, cav):
    return _dot(_layer_grad(model, layer, inputs, target, _logit, use_input=True), cav)


def dd_normalised_gradient(model, layer, inputs, target, cav):
    return _dot(F.normalize(_layer_grad(model, layer, inputs, target, _logit), dim=1), cav)


def dd_first_target(model, layer, inputs, target, cav):
    return ref.directional_derivatives(model, layer, inputs, _index(target, len(inputs))[0].item(), cav)


def dd_hook_left(model, layer, inputs, target, cav):
    stored = []
    layer.register_forward_hook(lambda m, i, out: stored.append(ref._first(out)))
    x = inputs.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_logit(model(x), _index(target, len(x))), stored[-1])
    return _dot(g.flatten(1), cav)


def dd_single_cav_only(model, layer, inputs, target, cav):
    return _layer_grad(model, layer, inputs, target, _logit) @ cav


# --- TCAV score
def score_non_negative(derivatives):
    return (derivatives >= 0).float().mean(0)


def score_magnitude(derivatives):
    return derivatives.mean(0)


def score_fraction_negative(derivatives):
    return (derivatives < 0).float().mean(0)


def score_wrong_axis(derivatives):
    return (derivatives > 0).float().mean(-1)


def score_count(derivatives):
    return (derivatives > 0).float().sum(0)


def score_captum_magnitude(derivatives):
    return (derivatives.clamp(min=0)).sum(0) / derivatives.abs().sum(0)


# --- TCAV
def _tcav(model, layer, class_inputs, target, cavs, r, score=ref.tcav_score):
    s = score(ref.directional_derivatives(model, layer, class_inputs, target, torch.stack(cavs)))
    return s[:r], s[r:]


def tcav_same_random_set(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [ref.train_cav(concept_sets[i], random_sets[0], l2) for i in range(r)]
    cavs += [ref.train_cav(random_sets[i], random_sets[0 if i else 1], l2) for i in range(r)]
    return _tcav(model, layer, class_inputs, target, cavs, r)


def tcav_same_concept_set(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [ref.train_cav(concept_sets[0], random_sets[i], l2) for i in range(r)]
    cavs += [ref.train_cav(random_sets[i], random_sets[(i + 1) % r], l2) for i in range(r)]
    return _tcav(model, layer, class_inputs, target, cavs, r)


def tcav_cav_to_random(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [ref.train_cav(random_sets[i], concept_sets[i], l2) for i in range(r)]
    cavs += [ref.train_cav(random_sets[(i + 1) % r], random_sets[i], l2) for i in range(r)]
    return _tcav(model, layer, class_inputs, target, cavs, r)


def tcav_magnitude(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [ref.train_cav(concept_sets[i], random_sets[i], l2) for i in range(r)]
    cavs += [ref.train_cav(random_sets[i], random_sets[(i + 1) % r], l2) for i in range(r)]
    return _tcav(model, layer, class_inputs, target, cavs, r, score=lambda d: d.mean(0))


def tcav_swapped_outputs(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    concept, rand = ref.tcav(model, layer, class_inputs, target, concept_sets, random_sets, l2)
    return rand, concept


def tcav_l2_not_passed(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    return ref.tcav(model, layer, class_inputs, target, concept_sets, random_sets)


def tcav_mean_cav(model, layer, class_inputs, target, concept_sets, random_sets, l2=0.01):
    r = len(random_sets)
    cavs = [ref.mean_cav(concept_sets[i], random_sets[i]) for i in range(r)]
    cavs += [ref.mean_cav(random_sets[i], random_sets[(i + 1) % r]) for i in range(r)]
    return _tcav(model, layer, class_inputs, target, cavs, r)


# --- significance
def _p(concept_scores, random_scores, **kw):
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttest_ind(torch.as_tensor(concept_scores).double().numpy(),
                            torch.as_tensor(random_scores).double().numpy(), **kw).pvalue)
    return 1.0 if p != p else p


def sig_one_sided(concept_scores, random_scores, alpha=0.05, n_tests=1):
    p = _p(concept_scores, random_scores, alternative="greater")
    return p, p < alpha / n_tests


def sig_no_bonferroni(concept_scores, random_scores, alpha=0.05, n_tests=1):
    p = _p(concept_scores, random_scores)
    return p, p < alpha


def sig_welch(concept_scores, random_scores, alpha=0.05, n_tests=1):
    p = _p(concept_scores, random_scores, equal_var=False)
    return p, p < alpha / n_tests


def sig_nan_kept(concept_scores, random_scores, alpha=0.05, n_tests=1):
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttest_ind(torch.as_tensor(concept_scores).double().numpy(),
                            torch.as_tensor(random_scores).double().numpy()).pvalue)
    return p, p < alpha / n_tests


def sig_corrected_p_returned(concept_scores, random_scores, alpha=0.05, n_tests=1):
    p = min(1.0, _p(concept_scores, random_scores) * n_tests)
    return p, p < alpha


def sig_half_alpha(concept_scores, random_scores, alpha=0.05, n_tests=1):
    p = _p(concept_scores, random_scores)
    return p, p < alpha / (2 * n_tests)


# --- text
def _text_grad(model, layer, input_ids, attention_mask, target, score_fn=_logit, use_input=False, mask=True):
    stored, logits = _hooked_output(layer, lambda: model(input_ids=input_ids,
                                                         attention_mask=attention_mask if mask else None),
                                    use_input)
    (g,) = torch.autograd.grad(score_fn(logits, _index(target, len(logits))), stored[-1])
    return g


def text_acts_mean_with_padding(model, layer, input_ids, attention_mask, pooling="cls"):
    if pooling == "mean":
        with torch.no_grad():
            stored, _ = _hooked_output(layer, lambda: model(input_ids=input_ids, attention_mask=attention_mask))
        return stored[-1].mean(1)
    return ref.text_activations(model, layer, input_ids, attention_mask, pooling)


def text_acts_last_token(model, layer, input_ids, attention_mask, pooling="cls"):
    if pooling == "cls":
        with torch.no_grad():
            stored, _ = _hooked_output(layer, lambda: model(input_ids=input_ids, attention_mask=attention_mask))
        last = attention_mask.sum(1) - 1
        return stored[-1][torch.arange(len(last)), last]
    return ref.text_activations(model, layer, input_ids, attention_mask, pooling)


def text_acts_layer_input(model, layer, input_ids, attention_mask, pooling="cls"):
    with torch.no_grad():
        stored, _ = _hooked_output(layer, lambda: model(input_ids=input_ids, attention_mask=attention_mask), True)
    return ref._pool(stored[-1], attention_mask, pooling)


def text_acts_no_mask(model, layer, input_ids, attention_mask, pooling="cls"):
    with torch.no_grad():
        stored, _ = _hooked_output(layer, lambda: model(input_ids=input_ids))
    return ref._pool(stored[-1], attention_mask, pooling)


def text_acts_train_mode(model, layer, input_ids, attention_mask, pooling="cls"):
    model.train()
    return ref.text_activations(model, layer, input_ids, attention_mask, pooling)


def _text_pool_grad(g, attention_mask, pooling, divide=False):
    if pooling == "cls":
        return g[:, 0]
    m = attention_mask.unsqueeze(-1).to(g.dtype)
    total = (g * m).sum(1)
    return total / m.sum(1) if divide else total


def text_dd_mean_divided(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    g = _text_grad(model, layer, input_ids, attention_mask, target)
    return _dot(_text_pool_grad(g, attention_mask, pooling, divide=True), cav)


def text_dd_softmax(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    g = _text_grad(model, layer, input_ids, attention_mask, target,
                   lambda z, i: F.softmax(z, 1).gather(1, i[:, None]).sum())
    return _dot(_text_pool_grad(g, attention_mask, pooling), cav)


def text_dd_always_cls(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    return _dot(_text_grad(model, layer, input_ids, attention_mask, target)[:, 0], cav)


def text_dd_layer_input(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    g = _text_grad(model, layer, input_ids, attention_mask, target, use_input=True)
    return _dot(_text_pool_grad(g, attention_mask, pooling), cav)


def text_dd_no_mask(model, layer, input_ids, attention_mask, target, cav, pooling="cls"):
    g = _text_grad(model, layer, input_ids, attention_mask, target, mask=False)
    return _dot(_text_pool_grad(g, attention_mask, pooling), cav)


MUTANTS = {
    "layer_activations": {
        "the layer's input instead of its output": acts_layer_input,
        "activations flattened": acts_flattened,
        "only the last batch returned": acts_last_batch_only,
        "hook left registered on the layer": acts_hook_left,
        "batch_size ignored (one pass)": acts_one_pass,
        "one example per forward pass": acts_one_example_at_a_time,
        "model left in train mode": acts_train_mode,
    },
    "train_cav": {
        "CAV pointing to the random set": cav_points_to_random,
        "difference of means instead of logistic regression": cav_difference_of_means,
        "sum of the losses instead of their mean": cav_sum_of_losses,
        "penalty l2·‖w‖² instead of (l2/2)·‖w‖²": cav_penalty_l2_not_half,
        "bias penalised": cav_bias_penalised,
        "no bias": cav_no_bias,
        "not normalised": cav_not_normalised,
        "spatial activations averaged instead of flattened": cav_spatially_pooled,
        "l2 ignored": cav_l2_ignored,
        "fit on a random 2/3 split": cav_random_split,
        "20 steps of gradient descent (not converged)": cav_few_steps,
        "class-balanced weights": cav_class_balanced,
    },
    "mean_cav": {
        "random mean − concept mean": mean_reversed,
        "not normalised": mean_not_normalised,
        "examples normalised before averaging": mean_of_normalised_examples,
        "spatial activations averaged instead of flattened": mean_spatially_pooled,
        "median instead of mean": mean_median,
    },
    "directional_derivatives": {
        "softmax probability instead of logit": dd_softmax,
        "gradient of the loss (sign flipped)": dd_loss_gradient,
        "gradient at the layer's input": dd_layer_input,
        "gradient normalised per example": dd_normalised_gradient,
        "first example's target for all": dd_first_target,
        "hook left registered": dd_hook_left,
        "stack of CAVs not supported": dd_single_cav_only,
    },
    "tcav_score": {
        "≥ 0 instead of > 0": score_non_negative,
        "magnitude (mean derivative) instead of sign": score_magnitude,
        "fraction of negative derivatives": score_fraction_negative,
        "averaged over the CAV axis": score_wrong_axis,
        "count instead of fraction": score_count,
        "captum's magnitude score": score_captum_magnitude,
    },
    "tcav": {
        "the same random set reused for every run": tcav_same_random_set,
        "the same concept set reused for every run": tcav_same_concept_set,
        "CAVs pointing to the random sets": tcav_cav_to_random,
        "magnitude instead of sign": tcav_magnitude,
        "concept and random scores swapped": tcav_swapped_outputs,
        "l2 not passed on": tcav_l2_not_passed,
        "difference-of-means CAVs": tcav_mean_cav,
    },
    "significance": {
        "one-sided test": sig_one_sided,
        "no Bonferroni correction": sig_no_bonferroni,
        "Welch's test instead of Student's": sig_welch,
        "NaN p-value returned": sig_nan_kept,
        "Bonferroni-corrected p returned": sig_corrected_p_returned,
        "alpha halved again (two-sided twice)": sig_half_alpha,
    },
    "text_activations": {
        "mean over padding too": text_acts_mean_with_padding,
        "last real token instead of [CLS]": text_acts_last_token,
        "the block's input instead of its output": text_acts_layer_input,
        "attention mask not passed to the model": text_acts_no_mask,
        "model left in train mode (dropout)": text_acts_train_mode,
    },
    "text_directional_derivatives": {
        "mean pooling: average of the token gradients instead of their sum": text_dd_mean_divided,
        "softmax probability instead of logit": text_dd_softmax,
        "[CLS] gradient whatever the pooling": text_dd_always_cls,
        "gradient at the block's input": text_dd_layer_input,
        "attention mask not passed to the model": text_dd_no_mask,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # Magnitude instead of sign: loses the TCAV-score test and, through it, the tcav test.
    "tcav_score": '''def tcav_score(derivatives):
    return derivatives.mean(0)''',
    # Raises: every significance test fails, nothing else does.
    "significance": '''def significance(concept_scores, random_scores, alpha=0.05, n_tests=1):
    raise NotImplementedError("TODO: scipy t-test")''',
    # A syntax error: the function is never defined.
    "text_activations": '''def text_activations(model, layer, input_ids, attention_mask, pooling="cls"):
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(out)
    return stored[0][:, 0]''',
}
