"""Typical mistakes in Lab 3, one function each."""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from grader.answers import lab03 as ref
from grader.answers.lab01 import target_scores


def _index(target, n):
    return torch.as_tensor(target).reshape(-1).expand(n)


# --- riemann_rule
def rr_captum_trapezoid(n_steps, rule="midpoint"):
    """n points from 0 to 1 (captum's convention): spacing 1/(n−1), weights summing to (n−1)/n."""
    if rule != "trapezoid":
        return ref.riemann_rule(n_steps, rule)
    alphas = torch.linspace(0, 1, max(n_steps, 2), dtype=torch.float64)
    weights = torch.full_like(alphas, 1 / n_steps)
    weights[[0, -1]] /= 2
    return alphas, weights


def rr_trapezoid_full_ends(n_steps, rule="midpoint"):
    alphas, weights = ref.riemann_rule(n_steps, rule)
    return alphas, torch.full_like(alphas, 1 / n_steps)


def rr_midpoint_is_left(n_steps, rule="midpoint"):
    return ref.riemann_rule(n_steps, "left" if rule == "midpoint" else rule)


def rr_unit_weights(n_steps, rule="midpoint"):
    alphas, weights = ref.riemann_rule(n_steps, rule)
    return alphas, weights * n_steps


# --- integrated_gradients
def _ig(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64,
        rule_fn=ref.riemann_rule, probs=False, times_delta=True, base_fn=ref.as_baseline, per_chunk=None,
        interleave=False, reduce="sum"):
    """The reference with one switch per mistake."""
    x = inputs.detach()
    b = x.shape[0]
    base = base_fn(x, baseline)
    alphas, weights = rule_fn(n_steps, rule)
    index = _index(target, b)
    per_chunk = per_chunk or max(1, batch_size // b)
    ones = [1] * x.dim()
    terms = []
    for i in range(0, len(alphas), per_chunk):
        a = alphas[i:i + per_chunk].to(x.dtype).reshape(-1, *ones)
        w = weights[i:i + per_chunk].to(x.dtype).reshape(-1, *ones)
        k = len(a)
        if interleave:  # inputs repeated example-major, baselines step-major: misaligned
            xs = x.repeat_interleave(k, 0).reshape(k, *x.shape)
            path = (base + a * (xs - base)).reshape(-1, *x.shape[1:])
        else:
            path = (base + a * (x - base)).reshape(-1, *x.shape[1:])
        path.requires_grad_(True)
        out = model(path)
        if probs:
            out = F.softmax(out, 1)
        score = out.gather(1, index.repeat(k)[:, None]).sum()
        (grad,) = torch.autograd.grad(score, path)
        terms.append(w * grad.reshape(k, *x.shape))
    terms = torch.cat(terms)
    avg = terms.mean(0) if reduce == "mean" else terms.sum(0)
    return avg * (x - base) if times_delta else avg


def ig_mean_not_sum(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, reduce="mean")


def ig_no_weights(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, rule_fn=rr_unit_weights)


def ig_no_delta(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, times_delta=False)


def ig_times_input(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, times_delta=False) * inputs


def ig_endpoints_twice(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, rule_fn=rr_trapezoid_full_ends)


def ig_softmax(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, probs=True)


def ig_misaligned_baselines(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, interleave=True)


def ig_first_baseline_only(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    first = lambda x, b: ref.as_baseline(x, b)[:1].expand_as(x)
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, base_fn=first)


def ig_baseline_ignored(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, None, n_steps, rule, batch_size)


def ig_midpoint_is_left(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, rule_fn=rr_midpoint_is_left)


def ig_linspace_alphas(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    def rule_fn(n, r):
        return torch.linspace(0, 1, n, dtype=torch.float64), torch.full((n,), 1 / n, dtype=torch.float64)

    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, rule_fn=rule_fn)


def ig_all_steps_at_once(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, per_chunk=n_steps + 1)


def ig_one_step_per_pass(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    return _ig(model, inputs, target, baseline, n_steps, rule, batch_size, per_chunk=1)


# --- completeness_gap
@torch.no_grad()
def gap_sign_flipped(model, inputs, target, attributions, baseline=None):
    return -ref.completeness_gap(model, inputs, target, attributions, baseline)


@torch.no_grad()
def gap_softmax(model, inputs, target, attributions, baseline=None):
    p = lambda z: F.softmax(model(z), 1).gather(1, _index(target, len(z))[:, None])[:, 0]
    return attributions.flatten(1).sum(1) - (p(inputs) - p(ref.as_baseline(inputs, baseline)))


@torch.no_grad()
def gap_zero_baseline(model, inputs, target, attributions, baseline=None):
    return ref.completeness_gap(model, inputs, target, attributions, None)


@torch.no_grad()
def gap_batch_total(model, inputs, target, attributions, baseline=None):
    change = target_scores(model, inputs, target) - target_scores(model, ref.as_baseline(inputs, baseline), target)
    return (attributions.sum() - change.sum()).expand(len(inputs))


@torch.no_grad()
def gap_relative(model, inputs, target, attributions, baseline=None):
    change = target_scores(model, inputs, target) - target_scores(model, ref.as_baseline(inputs, baseline), target)
    return ref.completeness_gap(model, inputs, target, attributions, baseline) / change


# --- steps_until_converged
def _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, absolute=False,
           worst=torch.max, grow=lambda n, s: 2 * n, previous=False, none=None):
    with torch.no_grad():
        change = (target_scores(model, inputs, target)
                  - target_scores(model, ref.as_baseline(inputs, baseline), target)).abs()
    n, last = start, start
    while n <= max_steps:
        attr = ref.integrated_gradients(model, inputs, target, baseline, n, rule, batch_size)
        gap = ref.completeness_gap(model, inputs, target, attr, baseline).abs()
        if worst(gap if absolute else gap / change) < tol:
            return last if previous else n
        last, n = n, grow(n, start)
    return max_steps if none == "max" else None


def steps_absolute(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, absolute=True)


def steps_mean_over_batch(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, worst=torch.mean)


def steps_linear_schedule(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, grow=lambda n, s: n + s)


def steps_one_doubling_short(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, previous=True)


def steps_rule_ignored(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, "midpoint", tol, start, max_steps, batch_size)


def steps_max_not_none(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4, max_steps=512, batch_size=64):
    return _steps(model, inputs, target, baseline, rule, tol, start, max_steps, batch_size, none="max")


# --- make_baseline
def _blur_or(kind, inputs, sigma, generator, blur):
    return blur(inputs, sigma) if kind == "blur" else ref.make_baseline(inputs, kind, sigma, generator)


def mb_kernel_2sigma(inputs, kind="black", sigma=10.0, generator=None):
    k = 2 * math.ceil(sigma) + 1
    return _blur_or(kind, inputs, sigma, generator, lambda x, s: gaussian_blur(x, [k, k], [s, s]))


def mb_sigma_as_kernel(inputs, kind="black", sigma=10.0, generator=None):
    k = int(sigma) | 1
    return _blur_or(kind, inputs, sigma, generator, lambda x, s: gaussian_blur(x, [k, k]))


def mb_box_blur(inputs, kind="black", sigma=10.0, generator=None):
    k = 2 * math.ceil(3 * sigma) + 1
    box = lambda x, s: F.avg_pool2d(F.pad(x, [k // 2] * 4, mode="reflect"), k, stride=1)
    return _blur_or(kind, inputs, sigma, generator, box)


def mb_gaussian_noise(inputs, kind="black", sigma=10.0, generator=None):
    if kind == "uniform":
        return torch.randn(inputs.shape, generator=generator)
    return ref.make_baseline(inputs, kind, sigma, generator)


def mb_generator_ignored(inputs, kind="black", sigma=10.0, generator=None):
    if kind == "uniform":
        return torch.rand(inputs.shape)
    return ref.make_baseline(inputs, kind, sigma, generator)


def mb_noise_per_pixel_shared(inputs, kind="black", sigma=10.0, generator=None):
    if kind == "uniform":
        return torch.rand(inputs.shape[1:], generator=generator).expand_as(inputs)
    return ref.make_baseline(inputs, kind, sigma, generator)


# --- expected_integrated_gradients
def eig_sum(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint", batch_size=64, generator=None):
    return ref.expected_integrated_gradients(model, inputs, target, n_baselines, n_steps, rule, batch_size,
                                             generator) * n_baselines


def eig_one_draw(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint", batch_size=64, generator=None):
    base = ref.make_baseline(inputs, "uniform", generator=generator)
    return sum(ref.integrated_gradients(model, inputs, target, base, n_steps, rule, batch_size)
               for _ in range(n_baselines)) / n_baselines


def eig_mean_baseline(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint", batch_size=64, generator=None):
    base = torch.stack([ref.make_baseline(inputs, "uniform", generator=generator) for _ in range(n_baselines)]).mean(0)
    return ref.integrated_gradients(model, inputs, target, base, n_steps, rule, batch_size)


def eig_global_rng(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint", batch_size=64, generator=None):
    return ref.expected_integrated_gradients(model, inputs, target, n_baselines, n_steps, rule, batch_size, None)


def eig_shared_across_batch(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint", batch_size=64, generator=None):
    total = 0
    for _ in range(n_baselines):
        base = torch.rand(1, *inputs.shape[1:], generator=generator)
        total = total + ref.integrated_gradients(model, inputs, target, base, n_steps, rule, batch_size)
    return total / n_baselines


# --- token_baseline
def tb_all_pad(input_ids, attention_mask, tokenizer):
    return torch.full_like(input_ids, tokenizer.pad_token_id)


def tb_real_tokens_and_specials(input_ids, attention_mask, tokenizer):
    return torch.where(attention_mask == 1, torch.full_like(input_ids, tokenizer.pad_token_id), input_ids)


def tb_mask_token(input_ids, attention_mask, tokenizer):
    base = ref.token_baseline(input_ids, attention_mask, tokenizer)
    return torch.where(base != input_ids, torch.full_like(input_ids, tokenizer.mask_token_id), base)


def tb_sep_in_last_column(input_ids, attention_mask, tokenizer):
    base = torch.full_like(input_ids, tokenizer.pad_token_id)
    base[:, 0], base[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return base


# --- token_integrated_gradients
def _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, baseline_ids=None,
         baseline_embeds=None, use_mask=True, reduce=lambda a: a.sum(-1), probs=False, matrix_grad=False):
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(input_ids)
        if baseline_embeds is None:
            ids = ref.token_baseline(input_ids, attention_mask, model.tokenizer) if baseline_ids is None else baseline_ids
            base = embed(ids)
        else:
            base = baseline_embeds.expand_as(x)
    b = len(input_ids)

    def f(e):
        mask = attention_mask.repeat(e.shape[0] // b, 1) if use_mask else None
        out = model(inputs_embeds=e, attention_mask=mask)
        return F.softmax(out, 1) if probs else out

    if matrix_grad:  # the gradient of the embedding matrix: rows shared by every occurrence of a token
        avg = ref.integrated_gradients(f, x, target, base, n_steps, rule, batch_size) / (x - base).where(x != base, 1)
        avg = torch.where(x != base, avg, 0)
        rows = torch.zeros(embed.weight.shape).index_add_(0, input_ids.flatten(), avg.flatten(0, 1))
        attr = rows[input_ids] * (x - base)
    else:
        attr = ref.integrated_gradients(f, x, target, base, n_steps, rule, batch_size)
    return reduce(attr) * attention_mask


def tig_baseline_replaces_specials(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    ids = tb_all_pad(input_ids, attention_mask, model.tokenizer)
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, baseline_ids=ids)


def tig_zero_embedding_baseline(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size,
                baseline_embeds=torch.zeros(model.get_input_embeddings().embedding_dim))


def tig_no_attention_mask(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, use_mask=False)


def tig_embedding_matrix_gradient(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, matrix_grad=True)


def tig_l2_norm(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, reduce=lambda a: a.norm(dim=-1))


def tig_softmax(model, input_ids, attention_mask, target, n_steps=50, rule="midpoint", batch_size=64):
    return _tig(model, input_ids, attention_mask, target, n_steps, rule, batch_size, probs=True)


MUTANTS = {
    "riemann_rule": {
        "trapezoid over n points (captum's linspace(0, 1, n))": rr_captum_trapezoid,
        "trapezoid without half weights at the ends": rr_trapezoid_full_ends,
        "midpoint alphas k/n (the left rule)": rr_midpoint_is_left,
        "weights 1 instead of 1/n": rr_unit_weights,
    },
    "integrated_gradients": {
        "mean over steps of the weighted gradients (off by n_steps)": ig_mean_not_sum,
        "sum of gradients without the 1/n weights": ig_no_weights,
        "average gradient, × (x − x′) forgotten": ig_no_delta,
        "× x instead of × (x − x′)": ig_times_input,
        "path endpoints counted twice (trapezoid)": ig_endpoints_twice,
        "softmax probability instead of the logit": ig_softmax,
        "per-example baselines misaligned with the inputs (repeat vs repeat_interleave)": ig_misaligned_baselines,
        "the first example's baseline for every example": ig_first_baseline_only,
        "baseline argument ignored (always zeros)": ig_baseline_ignored,
        "midpoint alphas k/n (the left rule)": ig_midpoint_is_left,
        "alphas linspace(0, 1, n) whatever the rule": ig_linspace_alphas,
        "batch_size ignored: every step in one pass": ig_all_steps_at_once,
        "one forward pass per step": ig_one_step_per_pass,
    },
    "completeness_gap": {
        "sign flipped: (f(x) − f(x′)) − Σ attributions": gap_sign_flipped,
        "softmax probabilities instead of logits": gap_softmax,
        "baseline ignored: f(x) − f(0)": gap_zero_baseline,
        "one total for the whole batch": gap_batch_total,
        "relative gap instead of the gap": gap_relative,
    },
    "steps_until_converged": {
        "absolute tolerance instead of relative": steps_absolute,
        "mean over the batch instead of the worst example": steps_mean_over_batch,
        "n grows linearly instead of doubling": steps_linear_schedule,
        "returns the last n that failed": steps_one_doubling_short,
        "rule argument ignored": steps_rule_ignored,
        "max_steps instead of None when it never converges": steps_max_not_none,
    },
    "make_baseline": {
        "blur kernel 2⌈σ⌉ + 1 instead of 2⌈3σ⌉ + 1": mb_kernel_2sigma,
        "σ used as the kernel size": mb_sigma_as_kernel,
        "box blur instead of Gaussian": mb_box_blur,
        "Gaussian instead of uniform noise": mb_gaussian_noise,
        "generator ignored (global RNG)": mb_generator_ignored,
        "one noise image shared by the batch": mb_noise_per_pixel_shared,
    },
    "expected_integrated_gradients": {
        "sum over baselines instead of the mean": eig_sum,
        "one baseline drawn and reused": eig_one_draw,
        "IG from the mean baseline": eig_mean_baseline,
        "generator ignored": eig_global_rng,
        "one noise image shared by the batch": eig_shared_across_batch,
    },
    "token_baseline": {
        "[CLS] and [SEP] replaced too": tb_all_pad,
        "padding kept, but [CLS] and [SEP] replaced": tb_real_tokens_and_specials,
        "[MASK] instead of [PAD]": tb_mask_token,
        "[SEP] assumed in the last column": tb_sep_in_last_column,
    },
    "token_integrated_gradients": {
        "baseline replaces [CLS] and [SEP]": tig_baseline_replaces_specials,
        "all-zero embedding baseline instead of [PAD]": tig_zero_embedding_baseline,
        "attention mask not passed to the model": tig_no_attention_mask,
        "gradient of the embedding matrix (rows shared by repeated tokens)": tig_embedding_matrix_gradient,
        "L2 norm per token instead of the sum": tig_l2_norm,
        "softmax probability instead of the logit": tig_softmax,
    },
}


# The "partly wrong" sample submission: realistic student cells with planted bugs.
PARTIAL_SAMPLE = {
    # One forward pass per step (batch_size ignored): right values, loses only the chunking test.
    "integrated_gradients": '''def integrated_gradients(model, inputs, target, baseline=None, n_steps=50, rule="midpoint", batch_size=64):
    x = inputs.detach()
    base = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    alphas, weights = riemann_rule(n_steps, rule)
    target = torch.as_tensor(target).reshape(-1).expand(len(x))
    total = torch.zeros_like(x)
    for a, w in zip(alphas.tolist(), weights.tolist()):
        point = (base + a * (x - base)).requires_grad_(True)
        score = model(point).gather(1, target[:, None]).sum()
        total += w * torch.autograd.grad(score, point)[0]
    return total * (x - base)''',
    # Absolute tolerance: loses the steps test.
    "steps_until_converged": '''def steps_until_converged(model, inputs, target, baseline=None, rule="midpoint", tol=0.01, start=4,
                          max_steps=512, batch_size=64):
    n = start
    while n <= max_steps:
        attr = integrated_gradients(model, inputs, target, baseline, n, rule, batch_size)
        if completeness_gap(model, inputs, target, attr, baseline).abs().max() < tol:
            return n
        n *= 2
    return None''',
    # Not attempted.
    "expected_integrated_gradients": '''def expected_integrated_gradients(model, inputs, target, n_baselines=8, n_steps=32, rule="midpoint",
                                  batch_size=64, generator=None):
    # TODO
    raise NotImplementedError()''',
    # [SEP] assumed in the last column: the baseline test and the token-IG tests that use padding fail.
    "token_baseline": '''def token_baseline(input_ids, attention_mask, tokenizer):
    baseline = torch.full_like(input_ids, tokenizer.pad_token_id)
    baseline[:, 0] = tokenizer.cls_token_id
    baseline[:, -1] = tokenizer.sep_token_id
    return baseline''',
}
