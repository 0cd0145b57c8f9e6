"""Lab 8 answer key: counterfactual edits — HotFlip-style flip scores, greedy and exhaustive token
searches, their metrics, and image counterfactuals with an L1 penalty."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def editable_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True where a token may be replaced — not padding (attention_mask 0), not the
    first position ([CLS]) and not the last unmasked position ([SEP]) of each row."""
    mask = attention_mask.bool().clone()
    mask[:, 0] = False
    last = attention_mask.long().sum(1) - 1
    mask[torch.arange(len(mask), device=mask.device), last.clamp(min=0)] = False
    return mask


def _index(target, n: int, device=None) -> torch.Tensor:
    return torch.as_tensor(target, device=device).reshape(-1).expand(n)


def flip_scores(model, input_ids, attention_mask, target, candidate_ids):
    ids = input_ids
    b = ids.shape[0]
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask)
    score = logits.gather(1, _index(target, b, logits.device)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, embeds)
    table = model.get_input_embeddings().weight.detach()[candidate_ids]          # (V, D)
    scores = grad @ table.T - (grad * embeds.detach()).sum(-1, keepdim=True)       # (B, T, V)
    allowed = editable_mask(attention_mask)[:, :, None] & (candidate_ids[None, None, :] != ids[:, :, None])
    return scores.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def exhaustive_one_edit(model, input_ids, attention_mask, target, candidate_ids, batch_size=256):
    b, t = input_ids.shape
    index = _index(target, b, input_ids.device)
    allowed = editable_mask(attention_mask)[:, :, None] & (candidate_ids[None, None, :] != input_ids[:, :, None])
    rows, pos, cand = allowed.nonzero(as_tuple=True)
    edited = input_ids[rows].clone()
    edited[torch.arange(len(rows)), pos] = candidate_ids[cand]
    masks = attention_mask[rows]
    base = model(input_ids=input_ids, attention_mask=attention_mask).gather(1, index[:, None])[:, 0]
    scores = [model(input_ids=edited[i:i + batch_size], attention_mask=masks[i:i + batch_size])
              .gather(1, index[rows[i:i + batch_size]][:, None])[:, 0]
              for i in range(0, len(rows), batch_size)]
    out = torch.full((b, t, len(candidate_ids)), float("-inf"), dtype=base.dtype, device=input_ids.device)
    if len(rows):
        out[rows, pos, cand] = torch.cat(scores) - base[rows]
    return out


def _encode(tokenizer, sentence):
    enc = tokenizer(sentence, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def greedy_counterfactual(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    device = model.get_input_embeddings().weight.device
    ids, mask = (t.to(device) for t in _encode(tokenizer, sentence))
    cand = torch.tensor(tokenizer.convert_tokens_to_ids(list(candidates)), device=device)
    edits, done = [], torch.zeros(ids.shape[1], dtype=torch.bool, device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask)[0]
    while logits.argmax().item() != target and len(edits) < max_edits:
        scores = flip_scores(model, ids, mask, target, cand)[0].masked_fill(done[:, None], float("-inf")).flatten()
        k = min(top_k, int(torch.isfinite(scores).sum()))
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
        logits = out[best]
        done[p] = True
        edits.append((p, old, tokenizer.convert_ids_to_tokens(ids[0, p].item())))
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return tokenizer.convert_tokens_to_string(tokens[1:-1]), edits


def flip_rate(model, tokenizer, sentences, target, batch_size=64):
    device = model.get_input_embeddings().weight.device
    n = len(sentences)
    preds = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            enc = tokenizer(list(sentences[i:i + batch_size]), padding=True, return_tensors="pt")
            preds.append(model(input_ids=enc["input_ids"].to(device),
                               attention_mask=enc["attention_mask"].to(device)).argmax(1).cpu())
    return (torch.cat(preds) == _index(target, n)).float().mean().item()


def edit_distance(a, b):
    a, b = list(a), list(b)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def minimality_gap(model, tokenizer, sentence, target, candidates, n_edits, max_edits=2, batch_size=256):
    device = model.get_input_embeddings().weight.device
    ids, mask = (t.to(device) for t in _encode(tokenizer, sentence))
    cand = torch.tensor(tokenizer.convert_tokens_to_ids(list(candidates)), device=device)
    positions = editable_mask(mask)[0].nonzero()[:, 0].tolist()
    with torch.no_grad():
        if model(input_ids=ids, attention_mask=mask).argmax(1).item() == target:
            return n_edits
        for k in range(1, max_edits + 1):
            rows = []
            for chosen in itertools.combinations(positions, k):
                for words in itertools.product(cand.tolist(), repeat=k):
                    if all(ids[0, p].item() != w for p, w in zip(chosen, words)):
                        row = ids[0].clone()
                        row[list(chosen)] = torch.tensor(words, device=device)
                        rows.append(row)
            if not rows:
                continue
            edited = torch.stack(rows)
            for i in range(0, len(edited), batch_size):
                chunk = edited[i:i + batch_size]
                preds = model(input_ids=chunk, attention_mask=mask.expand(len(chunk), -1)).argmax(1)
                if (preds == target).any():
                    return n_edits - k
    return None


def counterfactual_image(model, x, target, lam=0.01, steps=100, lr=0.05, init_noise=0.0, generator=None):
    x0 = x.detach()
    index = _index(target, x0.shape[0], x0.device)
    start = x0
    if init_noise > 0:
        start = x0 + init_noise * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    xp = start.clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(xp), index, reduction="sum") + lam * (xp - x0).abs().sum()
        (xp.grad,) = torch.autograd.grad(loss, xp)
        opt.step()
        with torch.no_grad():
            xp.clamp_(0, 1)
    xp = xp.detach()
    with torch.no_grad():
        flipped = model(xp).argmax(1) == index
    return xp, flipped


def nearest_unlike_neighbour(x, dataset, labels, target):
    b = x.shape[0]
    index = _index(target, b, x.device)
    d = ((x.flatten(1)[:, None, :] - dataset.flatten(1)[None, :, :]) ** 2).sum(-1)   # (B, N)
    d = d.masked_fill(labels[None, :] != index[:, None], float("inf"))
    return d.argmin(1)
