"""Typical mistakes in Lab 8, one function each."""
import itertools

import torch
import torch.nn.functional as F

from grader.answers import lab08 as ref


def _scores(model, input_ids, attention_mask, target, candidate_ids, objective="logit", allowed=None,
            use_mask=True, subtract=True, sign=1.0):
    """First-order flip scores with one convention changed."""
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask if use_mask else None)
    if objective == "softmax":
        logits = logits.softmax(-1)
    score = logits.gather(1, ref._index(target, len(input_ids))[:, None]).sum()
    (grad,) = torch.autograd.grad(score, embeds)
    table = model.get_input_embeddings().weight.detach()[candidate_ids]
    scores = grad @ table.T
    if subtract:
        scores = scores - (grad * embeds.detach()).sum(-1, keepdim=True)
    if allowed is None:
        allowed = ref.editable_mask(attention_mask)[:, :, None] & (candidate_ids[None, None, :] != input_ids[:, :, None])
    return (sign * scores).masked_fill(~allowed, float("-inf"))


# --- flip_scores
def fs_sign_flipped(model, input_ids, attention_mask, target, candidate_ids):
    return _scores(model, input_ids, attention_mask, target, candidate_ids, sign=-1.0)


def fs_no_subtraction(model, input_ids, attention_mask, target, candidate_ids):
    return _scores(model, input_ids, attention_mask, target, candidate_ids, subtract=False)


def fs_padding_editable(model, input_ids, attention_mask, target, candidate_ids):
    allowed = torch.ones_like(input_ids, dtype=torch.bool)
    allowed[:, 0] = False
    allowed[torch.arange(len(input_ids)), attention_mask.sum(1) - 1] = False
    allowed = allowed[:, :, None] & (candidate_ids[None, None, :] != input_ids[:, :, None])
    return _scores(model, input_ids, attention_mask, target, candidate_ids, allowed=allowed)


def fs_specials_editable(model, input_ids, attention_mask, target, candidate_ids):
    allowed = attention_mask.bool()[:, :, None] & (candidate_ids[None, None, :] != input_ids[:, :, None])
    return _scores(model, input_ids, attention_mask, target, candidate_ids, allowed=allowed)


def fs_same_token_kept(model, input_ids, attention_mask, target, candidate_ids):
    allowed = ref.editable_mask(attention_mask)[:, :, None].expand(-1, -1, len(candidate_ids))
    return _scores(model, input_ids, attention_mask, target, candidate_ids, allowed=allowed)


def fs_softmax(model, input_ids, attention_mask, target, candidate_ids):
    return _scores(model, input_ids, attention_mask, target, candidate_ids, objective="softmax")


def fs_no_attention_mask(model, input_ids, attention_mask, target, candidate_ids):
    return _scores(model, input_ids, attention_mask, target, candidate_ids, use_mask=False)


def fs_first_target(model, input_ids, attention_mask, target, candidate_ids):
    return _scores(model, input_ids, attention_mask, int(ref._index(target, len(input_ids))[0]), candidate_ids)


# --- exhaustive_one_edit
def ex_no_baseline(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    out = ref.exhaustive_one_edit(model, input_ids, attention_mask, target, candidate_ids, batch_size)
    with torch.no_grad():
        base = model(input_ids=input_ids, attention_mask=attention_mask).gather(
            1, ref._index(target, len(input_ids))[:, None])
    return out + base[:, :, None]


def ex_softmax(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    class Probs(torch.nn.Module):
        def forward(self, **kw):
            return model(**kw).softmax(-1)

    return ref.exhaustive_one_edit(Probs(), input_ids, attention_mask, target, candidate_ids, batch_size)


def ex_padding_editable(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    inner = ref.editable_mask

    def loose(mask):
        m = torch.ones_like(mask, dtype=torch.bool)
        m[:, 0] = False
        m[torch.arange(len(mask)), mask.sum(1) - 1] = False
        return m

    ref.editable_mask = loose
    try:
        return ref.exhaustive_one_edit(model, input_ids, attention_mask, target, candidate_ids, batch_size)
    finally:
        ref.editable_mask = inner


def ex_one_edit_per_pass(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    return ref.exhaustive_one_edit(model, input_ids, attention_mask, target, candidate_ids, batch_size=1)


def ex_no_attention_mask(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    class NoMask(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None):
            return model(input_ids=input_ids)

    return ref.exhaustive_one_edit(NoMask(), input_ids, attention_mask, target, candidate_ids, batch_size)


# --- greedy_counterfactual
def _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, exact=True, late=False,
            scores_fn=ref.flip_scores, shift=0, reedit=False, stop=True):
    enc = tokenizer(sentence, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cand = torch.tensor(tokenizer.convert_tokens_to_ids(list(candidates)))
    edits, done = [], torch.zeros(ids.shape[1], dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask)[0]
    previous = logits
    while (not stop or (previous if late else logits).argmax().item() != target) and len(edits) < max_edits:
        scores = scores_fn(model, ids, mask, target, cand)[0]
        scores = (scores if reedit else scores.masked_fill(done[:, None], float("-inf"))).flatten()
        k = min(top_k if exact else 1, int(torch.isfinite(scores).sum()))
        if k == 0:
            break
        top = torch.topk(scores, k).indices
        pos, c = top // len(cand), top % len(cand)
        edited = ids.repeat(k, 1)
        edited[torch.arange(k), pos] = cand[c]
        with torch.no_grad():
            out = model(input_ids=edited, attention_mask=mask.repeat(k, 1))
        best = out[:, target].argmax().item()
        p = pos[best].item()
        old = tokenizer.convert_ids_to_tokens(ids[0, p].item())
        ids = edited[best:best + 1]
        previous, logits = logits, out[best]
        done[p] = True
        edits.append((p - shift, old, tokenizer.convert_ids_to_tokens(ids[0, p].item())))
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return tokenizer.convert_tokens_to_string(tokens[1:-1]), edits


def gr_one_step_late(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, late=True)


def gr_no_exact_evaluation(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, exact=False)


def gr_specials_editable(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, scores_fn=fs_specials_editable)


def gr_positions_without_cls(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, shift=1)


def gr_sign_flipped(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, scores_fn=fs_sign_flipped)


def gr_reedits_positions(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    """Lets a later step edit a position again (edits can undo each other)."""
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, reedit=True)


def gr_uses_budget(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    """Keeps editing after the flip, until max_edits (for _ in range(max_edits), no stopping test)."""
    return _greedy(model, tokenizer, sentence, target, candidates, max_edits, top_k, stop=False)


# --- flip_rate
def fr_no_attention_mask(model, tokenizer, sentences, target, batch_size=64):
    preds = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            enc = tokenizer(list(sentences[i:i + batch_size]), padding=True, return_tensors="pt")
            preds.append(model(input_ids=enc["input_ids"]).argmax(1))
    return (torch.cat(preds) == ref._index(target, len(sentences))).float().mean().item()


def fr_not_equal(model, tokenizer, sentences, target, batch_size=64):
    return 1.0 - ref.flip_rate(model, tokenizer, sentences, target, batch_size)


def fr_mean_of_batch_means(model, tokenizer, sentences, target, batch_size=64):
    t = ref._index(target, len(sentences))
    rates = [ref.flip_rate(model, tokenizer, sentences[i:i + batch_size], t[i:i + batch_size])
             for i in range(0, len(sentences), batch_size)]
    return sum(rates) / len(rates)


def fr_first_target(model, tokenizer, sentences, target, batch_size=64):
    return ref.flip_rate(model, tokenizer, sentences, int(ref._index(target, len(sentences))[0]), batch_size)


# --- edit_distance
def ed_substitution_costs_two(a, b):
    a, b = list(a), list(b)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + 2 * (x != y))
    return row[-1]


def ed_positional(a, b):
    a, b = list(a), list(b)
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def ed_no_first_row(a, b):
    a, b = list(a), list(b)
    row = [0] * (len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def ed_words_of_sets(a, b):
    return len(set(a) ^ set(b))


# --- minimality_gap
def mg_returns_minimum(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    gap = ref.minimality_gap(model, tokenizer, sentence, target, candidates, n_edits, max_edits, batch_size)
    return None if gap is None else n_edits - gap


def mg_only_one_edit(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    return ref.minimality_gap(model, tokenizer, sentence, target, candidates, n_edits, min(max_edits, 1), batch_size)


def mg_no_zero(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    """Forgets that the sentence may already be predicted as the target (k* = 0)."""
    class Never(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = True

        def get_input_embeddings(self):
            return model.get_input_embeddings()

        def forward(self, **kw):
            out = model(**kw)
            if self.first:
                self.first = False
                out = out.clone()
                out[:, target] = -1e9
            return out

    return ref.minimality_gap(Never(), tokenizer, sentence, target, candidates, n_edits, max_edits, batch_size)


def mg_largest_k(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    """Searches only k = max_edits substitutions."""
    enc = tokenizer(sentence, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cand = tokenizer.convert_tokens_to_ids(list(candidates))
    positions = ref.editable_mask(mask)[0].nonzero()[:, 0].tolist()
    with torch.no_grad():
        if model(input_ids=ids, attention_mask=mask).argmax(1).item() == target:
            return n_edits
        rows = []
        for chosen in itertools.combinations(positions, max_edits):
            for words in itertools.product(cand, repeat=max_edits):
                if all(ids[0, p].item() != w for p, w in zip(chosen, words)):
                    row = ids[0].clone()
                    row[list(chosen)] = torch.tensor(words)
                    rows.append(row)
        if rows:
            edited = torch.stack(rows)
            if (model(input_ids=edited, attention_mask=mask.expand(len(edited), -1)).argmax(1) == target).any():
                return n_edits - max_edits
    return None


# --- counterfactual_image
def _image(model, x, target, lam, steps, lr, init_noise, generator, penalty="l1", clamp=True, ce="sum",
           leave_grads=False):
    x0 = x.detach()
    index = ref._index(target, len(x0))
    start = x0 + init_noise * torch.randn(x0.shape, generator=generator)
    xp = (start.clamp(0, 1) if clamp else start).requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=lr)
    for _ in range(steps):
        dist = (xp - x0).abs().sum() if penalty == "l1" else ((xp - x0) ** 2).sum()
        loss = F.cross_entropy(model(xp), index, reduction=ce) + lam * dist
        if leave_grads:
            opt.zero_grad()
            loss.backward()
        else:
            (xp.grad,) = torch.autograd.grad(loss, xp)
        opt.step()
        if clamp:
            with torch.no_grad():
                xp.clamp_(0, 1)
    xp = xp.detach()
    with torch.no_grad():
        flipped = model(xp).argmax(1) == index
    return xp, flipped


def ci_l2_penalty(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    return _image(model, x, target, lam, steps, lr, init_noise, generator, penalty="l2")


def ci_no_clamping(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    return _image(model, x, target, lam, steps, lr, init_noise, generator, clamp=False)


def ci_ce_mean(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    return _image(model, x, target, lam, steps, lr, init_noise, generator, ce="mean")


def ci_flipped_on_x(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    xp, _ = ref.counterfactual_image(model, x, target, lam, steps, lr, init_noise, generator)
    with torch.no_grad():
        return xp, model(x).argmax(1) == ref._index(target, len(x))


def ci_global_noise(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    return _image(model, x, target, lam, steps, lr, init_noise, None)


def ci_leaves_grads(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    return _image(model, x, target, lam, steps, lr, init_noise, generator, leave_grads=True)


# --- nearest_unlike_neighbour
def nn_l1(x, dataset, labels, target):
    index = ref._index(target, len(x))
    d = (x.flatten(1)[:, None] - dataset.flatten(1)[None]).abs().sum(-1)
    return d.masked_fill(labels[None] != index[:, None], float("inf")).argmin(1)


def nn_any_class(x, dataset, labels, target):
    d = ((x.flatten(1)[:, None] - dataset.flatten(1)[None]) ** 2).sum(-1)
    return d.argmin(1)


def nn_farthest(x, dataset, labels, target):
    index = ref._index(target, len(x))
    d = ((x.flatten(1)[:, None] - dataset.flatten(1)[None]) ** 2).sum(-1)
    return d.masked_fill(labels[None] != index[:, None], -float("inf")).argmax(1)


def nn_first_target(x, dataset, labels, target):
    return ref.nearest_unlike_neighbour(x, dataset, labels, int(ref._index(target, len(x))[0]))


MUTANTS = {
    "flip_scores": {
        "gradient sign flipped": fs_sign_flipped,
        "(e_v)·∇ without subtracting e_i": fs_no_subtraction,
        "padding editable": fs_padding_editable,
        "[CLS] and [SEP] editable": fs_specials_editable,
        "replacing a token by itself not excluded": fs_same_token_kept,
        "softmax probability instead of the logit": fs_softmax,
        "attention mask not passed to the model": fs_no_attention_mask,
        "first row's target for the whole batch": fs_first_target,
    },
    "exhaustive_one_edit": {
        "logit after the edit instead of its change": ex_no_baseline,
        "softmax probability instead of the logit": ex_softmax,
        "padding editable": ex_padding_editable,
        "one forward pass per edited sentence": ex_one_edit_per_pass,
        "attention mask not passed to the model": ex_no_attention_mask,
    },
    "greedy_counterfactual": {
        "stopping one step late": gr_one_step_late,
        "no exact evaluation (the top flip score is applied)": gr_no_exact_evaluation,
        "[CLS] and [SEP] editable": gr_specials_editable,
        "positions counted without [CLS]": gr_positions_without_cls,
        "gradient sign flipped in the shortlist": gr_sign_flipped,
        "keeps editing after the flip": gr_uses_budget,
        "edits a position again": gr_reedits_positions,
    },
    "flip_rate": {
        "attention mask not passed to the model": fr_no_attention_mask,
        "share of sentences NOT predicted as the target": fr_not_equal,
        "mean of per-batch rates": fr_mean_of_batch_means,
        "first sentence's target for all": fr_first_target,
    },
    "edit_distance": {
        "substitution costs 2": ed_substitution_costs_two,
        "position-wise mismatches (Hamming) plus the length difference": ed_positional,
        "first row not initialised": ed_no_first_row,
        "symmetric difference of the token sets": ed_words_of_sets,
    },
    "minimality_gap": {
        "returns k* instead of the gap": mg_returns_minimum,
        "searches one edit only": mg_only_one_edit,
        "forgets k* = 0 (already the target)": mg_no_zero,
        "searches only k = max_edits": mg_largest_k,
    },
    "counterfactual_image": {
        "L2 penalty instead of L1": ci_l2_penalty,
        "no clamping to [0, 1]": ci_no_clamping,
        "cross-entropy averaged over the batch, L1 summed": ci_ce_mean,
        "`flipped` computed on the original x": ci_flipped_on_x,
        "starting noise from the global generator": ci_global_noise,
        "loss.backward() leaving .grad on the model": ci_leaves_grads,
    },
    "nearest_unlike_neighbour": {
        "L1 distance instead of L2": nn_l1,
        "nearest image of any class": nn_any_class,
        "farthest instead of nearest": nn_farthest,
        "first target for all": nn_first_target,
    },
}


PARTIAL_SAMPLE = {
    # Not clamped to [0, 1]: the reference comparison, the outcome and the properties fail.
    "counterfactual_image": '''def counterfactual_image(model, x, target, lam=0.05, steps=100, lr=0.05, init_noise=0.0, generator=None):
    x0 = x.detach()
    xp = (x0 + init_noise * torch.randn(x0.shape, generator=generator)).requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=lr)
    t = torch.as_tensor(target).reshape(-1).expand(len(x0))
    for _ in range(steps):
        loss = F.cross_entropy(model(xp), t, reduction="sum") + lam * (xp - x0).abs().sum()
        (xp.grad,) = torch.autograd.grad(loss, xp)
        opt.step()
    with torch.no_grad():
        return xp.detach(), model(xp).argmax(1) == t''',
    # Raises: the neighbour test fails, nothing else does.
    "nearest_unlike_neighbour": '''def nearest_unlike_neighbour(x, dataset, labels, target):
    raise NotImplementedError("no time left for this one")''',
    # A syntax error: the function is never defined.
    "edit_distance": '''def edit_distance(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)
    return table[-1][-1]''',
    # Returns k* (the fewest edits) instead of the gap n_edits − k*.
    "minimality_gap": '''import itertools


def minimality_gap(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    enc = tokenizer(sentence, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cand = tokenizer.convert_tokens_to_ids(list(candidates))
    positions = editable_mask(mask)[0].nonzero()[:, 0].tolist()
    with torch.no_grad():
        for k in range(0, max_edits + 1):
            for chosen in itertools.combinations(positions, k):
                for new in itertools.product(cand, repeat=k):
                    row = ids.clone()
                    row[0, list(chosen)] = torch.tensor(new, dtype=row.dtype)
                    if model(input_ids=row, attention_mask=mask).argmax(1).item() == target:
                        return k
    return None''',
}
