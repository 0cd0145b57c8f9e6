"""Lab 10 answer key: extractive rationales (selection, ERASER deletion, comprehensiveness, sufficiency,
AOPC, plausibility) and free-text rationales scored by simulatability (naive Bayes simulator, LAS)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xailab.datasets.text import content_mask

BINS = (0.01, 0.05, 0.1, 0.2, 0.5)


def top_k_rationale(scores, attention_mask, fraction):
    """The k = ceil(fraction · n) highest-scoring content tokens of each row, n its number of content tokens
    (k computed in Python floats); ties: the earlier position first."""
    content = content_mask(attention_mask)
    n = content.sum(1)
    k = torch.tensor([math.ceil(fraction * int(m)) for m in n], device=scores.device)
    masked = scores.detach().masked_fill(~content, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return content & (rank < k[:, None])


def contiguous_rationale(scores, attention_mask, length):
    """The window of `length` consecutive content tokens with the largest score sum (ties: leftmost)."""
    content = content_mask(attention_mask)
    b, t = content.shape
    n = content.sum(1)
    out = torch.zeros_like(content)
    if length <= 0:
        return out
    width = min(length, t)
    s = scores.detach().masked_fill(~content, 0.0)
    sums = s.unfold(1, width, 1).sum(-1)                            # (B, T − width + 1), window starting at j
    starts = torch.arange(sums.shape[1], device=s.device)[None]
    valid = (starts >= 1) & (starts + width <= n[:, None] + 1)
    best = sums.masked_fill(~valid, float("-inf")).argmax(1)         # first maximum: the leftmost window
    pos = torch.arange(t, device=s.device)[None]
    window = (pos >= best[:, None]) & (pos < best[:, None] + width)
    short = n <= length                                              # the whole content fits in the window
    return torch.where(short[:, None], content, window & content)


def remove_tokens(input_ids, attention_mask, rationale, pad_token_id=0):
    """Delete the rationale's content tokens and re-pack each row to the left: (ids, mask) of shape (B, T)."""
    keep = attention_mask.bool() & ~(rationale.bool() & content_mask(attention_mask))
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    kept = keep.gather(1, order)
    ids = torch.where(kept, input_ids.gather(1, order), torch.full_like(input_ids, pad_token_id))
    return ids, kept.to(attention_mask.dtype)


def keep_tokens(input_ids, attention_mask, rationale, pad_token_id=0):
    """Keep only the rationale's content tokens (and [CLS], [SEP]), re-packed: (ids, mask) of shape (B, T)."""
    return remove_tokens(input_ids, attention_mask, ~rationale.bool(), pad_token_id)


@torch.no_grad()
def _predicted(model, input_ids, attention_mask):
    probs = F.softmax(model(input_ids=input_ids, attention_mask=attention_mask), -1)
    pred = probs.argmax(1)
    return probs.gather(1, pred[:, None]).squeeze(1), pred


@torch.no_grad()
def _prob(model, input_ids, attention_mask, pred):
    probs = F.softmax(model(input_ids=input_ids, attention_mask=attention_mask), -1)
    return probs.gather(1, pred[:, None]).squeeze(1)


def comprehensiveness(model, input_ids, attention_mask, rationale):
    """p(ŷ | x) − p(ŷ | x without the rationale), ŷ the class predicted on the full input: (B,)."""
    full, pred = _predicted(model, input_ids, attention_mask)
    ids, mask = remove_tokens(input_ids, attention_mask, rationale, model.tokenizer.pad_token_id)
    return full - _prob(model, ids, mask, pred)


def sufficiency(model, input_ids, attention_mask, rationale):
    """p(ŷ | x) − p(ŷ | the rationale alone), ŷ the class predicted on the full input: (B,)."""
    full, pred = _predicted(model, input_ids, attention_mask)
    ids, mask = keep_tokens(input_ids, attention_mask, rationale, model.tokenizer.pad_token_id)
    return full - _prob(model, ids, mask, pred)


def aopc(model, input_ids, attention_mask, scores, metric="comprehensiveness", bins=BINS):
    """ERASER's AOPC: the mean of `metric` over the top-k rationales of the bins and the empty (0 %) one: (B,)."""
    fn = {"comprehensiveness": comprehensiveness, "sufficiency": sufficiency}[metric]
    total = 0.0
    for fraction in (0.0, *bins):
        total = total + fn(model, input_ids, attention_mask, top_k_rationale(scores, attention_mask, fraction))
    return total / (len(bins) + 1)


def _f1(p, r):
    return torch.where((p > 0) & (r > 0), 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(p))


def token_prf(rationale, gold, attention_mask):
    """Per-example token precision, recall and F1 of `rationale` against `gold`: (B, 3) float."""
    real = attention_mask.bool()
    r, g = rationale.bool() & real, gold.bool() & real
    hit = (r & g).sum(1).double()
    npred, ngold = r.sum(1).double(), g.sum(1).double()
    p = torch.where(npred > 0, hit / npred.clamp(min=1), torch.zeros_like(hit))
    rec = torch.where(ngold > 0, hit / ngold.clamp(min=1), torch.zeros_like(hit))
    return torch.stack([p, rec, _f1(p, rec)], 1).float()


def spans(row):
    """Maximal runs of True in a 1-d bool tensor: [(start, end)] with end exclusive."""
    out, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def iou_f1(rationale, gold, attention_mask, threshold=0.5):
    """ERASER's IOU F1 (micro over the batch): a predicted span matches when its best IoU with a gold span
    of the same example is ≥ threshold. Returns tensor([precision, recall, f1])."""
    real = attention_mask.bool()
    r, g = rationale.bool() & real, gold.bool() & real
    matched = n_pred = n_gold = 0
    for i in range(r.shape[0]):
        pred_spans, gold_spans = spans(r[i]), spans(g[i])
        n_pred += len(pred_spans)
        n_gold += len(gold_spans)
        for a, b in pred_spans:
            best = 0.0
            for c, d in gold_spans:
                inter = max(0, min(b, d) - max(a, c))
                best = max(best, inter / (max(b, d) - min(a, c)))
            matched += best >= threshold
    p = torch.tensor(matched / n_pred if n_pred else 0.0, dtype=torch.float64)
    rec = torch.tensor(matched / n_gold if n_gold else 0.0, dtype=torch.float64)
    return torch.stack([p, rec, _f1(p, rec)]).float()


def simulator_accuracy(train_features, train_targets, test_features, test_targets, alpha=1.0):
    """Multinomial naive Bayes (Laplace smoothing alpha, class prior from the training counts) trained on
    (train_features, train_targets); 1.0 where it predicts test_targets, else 0.0: (N_test,)."""
    x, xt = train_features.double(), test_features.double()
    classes = int(max(train_targets.max(), test_targets.max())) + 1
    onehot = F.one_hot(train_targets.long(), classes).double()        # (N, C)
    counts = onehot.T @ x                                             # (C, V)
    log_theta = torch.log(counts + alpha) - torch.log(counts.sum(1, keepdim=True) + alpha * x.shape[1])
    log_prior = torch.log(onehot.sum(0) / len(train_targets))
    pred = (xt @ log_theta.T + log_prior).argmax(1)
    return (pred == test_targets.long()).double()


def las(x_correct, xe_correct, e_correct):
    """Leakage-adjusted simulatability (Hase et al. 2020) from per-example simulator correctness (0/1).

    leaked = e_correct == 1. Gains acc(x, e) − acc(x) on all examples ("naive"), on the leaked and on the
    non-leaked ones (nan for an empty group); "las" = the mean of the two groups' gains (nan when a group
    is empty, as in the paper's code); "leak_rate" = the share of leaked examples."""
    x, xe, leaked = x_correct.double(), xe_correct.double(), e_correct.bool()
    gains = []
    for group in (leaked, ~leaked):
        gains.append((xe[group].mean() - x[group].mean()).item() if group.any() else math.nan)
    return {"naive": (xe.mean() - x.mean()).item(), "leaked": gains[0], "nonleaked": gains[1],
            "las": (gains[0] + gains[1]) / 2, "leak_rate": leaked.double().mean().item()}
