"""Typical mistakes in Lab 10, one function each."""
import math

import torch
import torch.nn.functional as F

from grader.answers import lab10 as ref


def _real(attention_mask):
    return attention_mask.bool()


def _select(scores, allowed, k):
    masked = scores.masked_fill(~allowed, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return allowed & (rank < k[:, None])


# --- top-k rationale
def topk_includes_specials(scores, attention_mask, fraction):
    real = _real(attention_mask)
    n = real.sum(1)
    k = torch.tensor([math.ceil(fraction * int(m)) for m in n])
    return _select(scores, real, k)


def topk_floor(scores, attention_mask, fraction):
    content = ref.content_mask(attention_mask)
    k = torch.tensor([int(fraction * int(m)) for m in content.sum(1)])
    return _select(scores, content, k)


def topk_round(scores, attention_mask, fraction):
    content = ref.content_mask(attention_mask)
    k = torch.tensor([round(fraction * int(m)) for m in content.sum(1)])
    return _select(scores, content, k)


def topk_k_from_all_tokens(scores, attention_mask, fraction):
    content = ref.content_mask(attention_mask)
    k = torch.tensor([math.ceil(fraction * int(m)) for m in attention_mask.sum(1)])
    return _select(scores, content, k)


def topk_ties_later_first(scores, attention_mask, fraction):
    content = ref.content_mask(attention_mask)
    k = torch.tensor([math.ceil(fraction * int(m)) for m in content.sum(1)])
    rev = _select(scores.flip(1), content.flip(1), k)
    return rev.flip(1)


def topk_absolute(scores, attention_mask, fraction):
    return ref.top_k_rationale(scores.abs(), attention_mask, fraction)


# --- contiguous rationale
def window_rightmost(scores, attention_mask, length):
    return _window(scores, attention_mask, length, rightmost=True)


def _window(scores, attention_mask, length, rightmost=False, allowed=None, short_whole=True):
    content = ref.content_mask(attention_mask) if allowed is None else allowed
    out = torch.zeros_like(content)
    for i in range(len(content)):
        pos = content[i].nonzero().flatten().tolist()
        if length <= 0 or not pos:
            continue
        if len(pos) <= length:
            if short_whole:
                out[i, pos] = True
            continue
        best, start = None, None
        for j in range(len(pos) - length + 1):
            s = float(scores[i, pos[j:j + length]].sum())
            if best is None or s > best or (rightmost and s == best):
                best, start = s, j
        out[i, pos[start:start + length]] = True
    return out


def window_includes_specials(scores, attention_mask, length):
    return _window(scores, attention_mask, length, allowed=_real(attention_mask))


def window_short_rows_empty(scores, attention_mask, length):
    return _window(scores, attention_mask, length, short_whole=False)


def window_absolute(scores, attention_mask, length):
    return ref.contiguous_rationale(scores.abs(), attention_mask, length)


# --- deletion
def remove_masks_in_place(input_ids, attention_mask, rationale, pad_token_id=0):
    drop = rationale.bool() & ref.content_mask(attention_mask)
    return input_ids.clone(), (attention_mask.bool() & ~drop).to(attention_mask.dtype)


def remove_pads_in_place(input_ids, attention_mask, rationale, pad_token_id=0):
    drop = rationale.bool() & ref.content_mask(attention_mask)
    return input_ids.masked_fill(drop, pad_token_id), (attention_mask.bool() & ~drop).to(attention_mask.dtype)


def remove_specials_too(input_ids, attention_mask, rationale, pad_token_id=0):
    keep = attention_mask.bool() & ~rationale.bool()
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    kept = keep.gather(1, order)
    return torch.where(kept, input_ids.gather(1, order), pad_token_id), kept.to(attention_mask.dtype)


def remove_pad_zero(input_ids, attention_mask, rationale, pad_token_id=0):
    return ref.remove_tokens(input_ids, attention_mask, rationale, 0)


def remove_trimmed(input_ids, attention_mask, rationale, pad_token_id=0):
    ids, mask = ref.remove_tokens(input_ids, attention_mask, rationale, pad_token_id)
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def keep_only_rationale(input_ids, attention_mask, rationale, pad_token_id=0):
    return remove_specials_too(input_ids, attention_mask, ~rationale.bool(), pad_token_id)


def keep_masks_in_place(input_ids, attention_mask, rationale, pad_token_id=0):
    return remove_masks_in_place(input_ids, attention_mask, ~rationale.bool(), pad_token_id)


def keep_removes_rationale(input_ids, attention_mask, rationale, pad_token_id=0):
    return ref.remove_tokens(input_ids, attention_mask, rationale, pad_token_id)


def keep_pad_zero(input_ids, attention_mask, rationale, pad_token_id=0):
    return ref.keep_tokens(input_ids, attention_mask, rationale, 0)


# --- comprehensiveness and sufficiency
def _metric(model, input_ids, attention_mask, rationale, reduce, score="prob", cls="pred"):
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask)
        ids, mask = reduce(input_ids, attention_mask, rationale)
        part = model(input_ids=ids, attention_mask=mask)
    if cls == "pred":
        c = full.argmax(1)
    elif cls == "reduced":
        c = part.argmax(1)
    else:
        c = torch.full((len(full),), cls)
    f = (lambda z: z) if score == "logit" else (lambda z: F.softmax(z, -1))
    return f(full).gather(1, c[:, None])[:, 0] - f(part).gather(1, c[:, None])[:, 0]


def _remove(pad):
    return lambda i, m, r: ref.remove_tokens(i, m, r, pad)


def _keep(pad):
    return lambda i, m, r: ref.keep_tokens(i, m, r, pad)


def comp_masks_in_place(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, lambda i, m, r: remove_masks_in_place(i, m, r))


def comp_logits(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _remove(0), score="logit")


def comp_reduced_prediction(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _remove(0), cls="reduced")


def comp_positive_class(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _remove(0), cls=1)


def comp_keeps_instead(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _keep(0))


def suff_masks_in_place(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, lambda i, m, r: keep_masks_in_place(i, m, r))


def suff_logits(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _keep(0), score="logit")


def suff_reduced_prediction(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _keep(0), cls="reduced")


def suff_positive_class(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, _keep(0), cls=1)


def suff_drops_specials(model, input_ids, attention_mask, rationale):
    return _metric(model, input_ids, attention_mask, rationale, lambda i, m, r: keep_only_rationale(i, m, r))


def _with_graph(model, input_ids, attention_mask, rationale, reduce):
    probs = F.softmax(model(input_ids=input_ids, attention_mask=attention_mask), -1)
    pred = probs.argmax(1, keepdim=True)
    ids, mask = reduce(input_ids, attention_mask, rationale)
    reduced = F.softmax(model(input_ids=ids, attention_mask=mask), -1)
    return (probs.gather(1, pred) - reduced.gather(1, pred))[:, 0]


def comp_keeps_graph(model, input_ids, attention_mask, rationale):
    return _with_graph(model, input_ids, attention_mask, rationale, _remove(0))


def suff_keeps_graph(model, input_ids, attention_mask, rationale):
    return _with_graph(model, input_ids, attention_mask, rationale, _keep(0))


def topk_k_from_longest_row(scores, attention_mask, fraction):
    content = ref.content_mask(attention_mask)
    k = math.ceil(fraction * int(content.sum(1).max()))
    return _select(scores, content, torch.full((len(content),), k))


# --- AOPC
def _aopc_terms(model, input_ids, attention_mask, scores, metric, fractions):
    fn = {"comprehensiveness": ref.comprehensiveness, "sufficiency": ref.sufficiency}[metric]
    return [fn(model, input_ids, attention_mask, ref.top_k_rationale(scores, attention_mask, f)) for f in fractions]


def aopc_without_zero_bin(model, input_ids, attention_mask, scores, metric="comprehensiveness", bins=ref.BINS):
    terms = _aopc_terms(model, input_ids, attention_mask, scores, metric, bins)
    return sum(terms) / len(terms)


def aopc_divides_by_bins(model, input_ids, attention_mask, scores, metric="comprehensiveness", bins=ref.BINS):
    terms = _aopc_terms(model, input_ids, attention_mask, scores, metric, (0.0, *bins))
    return sum(terms) / len(bins)


def aopc_sum(model, input_ids, attention_mask, scores, metric="comprehensiveness", bins=ref.BINS):
    return sum(_aopc_terms(model, input_ids, attention_mask, scores, metric, (0.0, *bins)))


def aopc_always_comprehensiveness(model, input_ids, attention_mask, scores, metric="comprehensiveness",
                                  bins=ref.BINS):
    return ref.aopc(model, input_ids, attention_mask, scores, "comprehensiveness", bins)


def aopc_default_bins(model, input_ids, attention_mask, scores, metric="comprehensiveness", bins=ref.BINS):
    return ref.aopc(model, input_ids, attention_mask, scores, metric)


# --- plausibility
def prf_micro(rationale, gold, attention_mask):
    real = attention_mask.bool()
    r, g = rationale.bool() & real, gold.bool() & real
    hit, npred, ngold = (r & g).sum().double(), r.sum().double(), g.sum().double()
    p = hit / npred if npred else torch.tensor(0.0)
    rec = hit / ngold if ngold else torch.tensor(0.0)
    f1 = 2 * p * rec / (p + rec) if p + rec > 0 else torch.tensor(0.0)
    return torch.stack([p, rec, f1]).float().expand(len(r), 3).clone()


def prf_sentences(rationale, gold, attention_mask):
    real = attention_mask.bool()
    hit = ((rationale.bool() & gold.bool() & real).any(1)).float()
    return torch.stack([hit, hit, hit], 1)


def prf_counts_padding(rationale, gold, attention_mask):
    return ref.token_prf(rationale, gold, torch.ones_like(attention_mask))


def prf_swapped(rationale, gold, attention_mask):
    return ref.token_prf(rationale, gold, attention_mask)[:, [1, 0, 2]]


def iou_strict(rationale, gold, attention_mask, threshold=0.5):
    return ref.iou_f1(rationale, gold, attention_mask, threshold + 1e-9)


def iou_macro(rationale, gold, attention_mask, threshold=0.5):
    rows = [ref.iou_f1(rationale[i:i + 1], gold[i:i + 1], attention_mask[i:i + 1], threshold)
            for i in range(len(rationale))]
    p, r = torch.stack(rows)[:, :2].mean(0)
    return torch.stack([p, r, 2 * p * r / (p + r) if p + r > 0 else torch.tensor(0.0)])


def iou_tokens(rationale, gold, attention_mask, threshold=0.5):
    real = attention_mask.bool()
    r, g = rationale.bool() & real, gold.bool() & real
    hit = (r & g).sum().double()
    p, rec = hit / max(int(r.sum()), 1), hit / max(int(g.sum()), 1)
    return torch.stack([p, rec, 2 * p * rec / (p + rec) if p + rec > 0 else torch.tensor(0.0)]).float()


def iou_ignores_threshold(rationale, gold, attention_mask, threshold=0.5):
    return ref.iou_f1(rationale, gold, attention_mask, 0.5)


# --- simulator
def _nb(train_features, train_targets, test_features, test_targets, alpha=1.0, prior=True, binary=False,
        denominator=True, last_on_tie=False):
    x, xt = train_features.double(), test_features.double()
    if binary:
        x, xt = (x > 0).double(), (xt > 0).double()
    c = int(max(train_targets.max(), test_targets.max())) + 1
    onehot = F.one_hot(train_targets.long(), c).double()
    counts = onehot.T @ x
    denom = counts.sum(1, keepdim=True) + (alpha * x.shape[1] if denominator else alpha)
    scores = xt @ (torch.log(counts + alpha) - torch.log(denom)).T
    if prior:
        scores = scores + torch.log(onehot.sum(0) / len(train_targets))
    pred = (c - 1 - scores.flip(1).argmax(1)) if last_on_tie else scores.argmax(1)
    return (pred == test_targets.long()).double()


def sim_no_prior(train_features, train_targets, test_features, test_targets, alpha=1.0):
    return _nb(train_features, train_targets, test_features, test_targets, alpha, prior=False)


def sim_binary_features(train_features, train_targets, test_features, test_targets, alpha=1.0):
    return _nb(train_features, train_targets, test_features, test_targets, alpha, binary=True)


def sim_smoothing_not_per_word(train_features, train_targets, test_features, test_targets, alpha=1.0):
    return _nb(train_features, train_targets, test_features, test_targets, alpha, denominator=False)


def sim_ties_to_last_class(train_features, train_targets, test_features, test_targets, alpha=1.0):
    return _nb(train_features, train_targets, test_features, test_targets, alpha, last_on_tie=True)


def sim_predictions_not_correctness(train_features, train_targets, test_features, test_targets, alpha=1.0):
    correct = ref.simulator_accuracy(train_features, train_targets, test_features, test_targets, alpha)
    return torch.where(correct > 0, test_targets.double(), 1 - test_targets.double())


# --- LAS
def las_bins_swapped(x_correct, xe_correct, e_correct):
    out = ref.las(x_correct, xe_correct, e_correct)
    out["leaked"], out["nonleaked"] = out["nonleaked"], out["leaked"]
    out["leak_rate"] = 1 - out["leak_rate"]
    return out


def las_weighted_mean(x_correct, xe_correct, e_correct):
    out = ref.las(x_correct, xe_correct, e_correct)
    out["las"] = out["naive"]
    return out


def las_skips_empty_group(x_correct, xe_correct, e_correct):
    out = ref.las(x_correct, xe_correct, e_correct)
    present = [g for g in (out["leaked"], out["nonleaked"]) if not math.isnan(g)]
    out["las"] = sum(present) / len(present)
    return out


def las_reversed_gain(x_correct, xe_correct, e_correct):
    out = ref.las(xe_correct, x_correct, e_correct)
    return out


def las_leakage_from_xe(x_correct, xe_correct, e_correct):
    return ref.las(x_correct, xe_correct, xe_correct)


MUTANTS = {
    "top_k_rationale": {"includes_specials": topk_includes_specials, "floor_k": topk_floor,
                        "round_k": topk_round, "k_from_all_tokens": topk_k_from_all_tokens,
                        "ties_later_first": topk_ties_later_first, "absolute_scores": topk_absolute,
                        "k_from_longest_row": topk_k_from_longest_row},
    "contiguous_rationale": {"rightmost_tie": window_rightmost, "includes_specials": window_includes_specials,
                             "short_rows_empty": window_short_rows_empty, "absolute_scores": window_absolute},
    "remove_tokens": {"masks_in_place": remove_masks_in_place, "pads_in_place": remove_pads_in_place,
                      "removes_specials": remove_specials_too, "pad_id_zero": remove_pad_zero,
                      "trimmed": remove_trimmed},
    "keep_tokens": {"drops_specials": keep_only_rationale, "masks_in_place": keep_masks_in_place,
                    "removes_rationale": keep_removes_rationale, "pad_id_zero": keep_pad_zero},
    "comprehensiveness": {"masks_in_place": comp_masks_in_place, "logits": comp_logits,
                          "reduced_prediction": comp_reduced_prediction, "positive_class": comp_positive_class,
                          "keeps_instead": comp_keeps_instead, "keeps_graph": comp_keeps_graph},
    "sufficiency": {"masks_in_place": suff_masks_in_place, "logits": suff_logits,
                    "reduced_prediction": suff_reduced_prediction, "positive_class": suff_positive_class,
                    "drops_specials": suff_drops_specials, "keeps_graph": suff_keeps_graph},
    "aopc": {"without_zero_bin": aopc_without_zero_bin, "divides_by_bins": aopc_divides_by_bins, "sum": aopc_sum,
             "always_comprehensiveness": aopc_always_comprehensiveness, "default_bins": aopc_default_bins},
    "token_prf": {"micro_over_batch": prf_micro, "per_sentence": prf_sentences,
                  "counts_padding": prf_counts_padding, "precision_recall_swapped": prf_swapped},
    "iou_f1": {"strictly_greater": iou_strict, "macro": iou_macro, "token_level": iou_tokens,
               "ignores_threshold": iou_ignores_threshold},
    "simulator_accuracy": {"no_prior": sim_no_prior, "binary_features": sim_binary_features,
                           "smoothing_not_per_word": sim_smoothing_not_per_word,
                           "ties_to_last_class": sim_ties_to_last_class,
                           "predictions_not_correctness": sim_predictions_not_correctness},
    "las": {"bins_swapped": las_bins_swapped, "weighted_mean": las_weighted_mean,
            "skips_empty_group": las_skips_empty_group, "reversed_gain": las_reversed_gain,
            "leakage_from_xe": las_leakage_from_xe},
}

# Planted bugs for the partial sample submission (grade_id → source of the whole solution cell).
PARTIAL_SAMPLE = {
    # Masks the rationale in place instead of deleting it: the reference comparison fails, the properties
    # (empty rationale → 0, batch = per example, two forward passes, no side effects) still pass.
    "comprehensiveness": '''def comprehensiveness(model, input_ids, attention_mask, rationale):
    with torch.no_grad():
        probs = model(input_ids=input_ids, attention_mask=attention_mask).softmax(-1)
        pred = probs.argmax(1, keepdim=True)
        masked = attention_mask * ~(rationale.bool() & content_mask(attention_mask))
        reduced = model(input_ids=input_ids, attention_mask=masked).softmax(-1)
    return (probs.gather(1, pred) - reduced.gather(1, pred))[:, 0]''',
    # Raises: both IOU F1 tests fail, nothing else does.
    "iou_f1": '''def iou_f1(rationale, gold, attention_mask, threshold=0.5):
    raise NotImplementedError("no time left for this one")''',
    # A syntax error: the function is never defined.
    "las": '''def las(x_correct, xe_correct, e_correct):
    leaked = e_correct.bool(
    return {}''',
    # k counted over every real token and [CLS]/[SEP] allowed: the reference and the property tests fail.
    "top_k_rationale": '''import math


def top_k_rationale(scores, attention_mask, fraction):
    real = attention_mask.bool()
    k = torch.tensor([math.ceil(fraction * int(n)) for n in real.sum(1)])
    order = torch.sort(scores.masked_fill(~real, float("-inf")), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return real & (rank < k[:, None])''',
}
