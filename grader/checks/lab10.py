"""Hidden-test checks of Lab 10 (natural-language rationales).

Extractive rationales are compared with the answer key on the course's two transformers —
tiny-bert-sentiment on lexicon sentences (which carry gold evidence positions) and minilm-sentiment on
real drug reviews — with hand-made cases for every convention (ties, special tokens, padding, the
rounding of k), exact ids and masks for the ERASER deletion, and the metrics' own identities (an empty
rationale has comprehensiveness 0, the whole input sufficiency 0, batch = per example). The simulator
and LAS are checked on hand-made count matrices and on given simulator outputs; no generator runs here.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from grader.answers import lab10 as ref
from grader.checks import Case, CheckFailed, all_of, as_tensor, assert_close, prepared_check, property_check
from grader.checks.properties import check_no_side_effects, count_forward, no_graph, side_effect_free
from grader.fixtures import model

PAD = 0


# ------------------------------------------------------------------ inputs

@lru_cache(maxsize=None)
def _lexicon(name: str, n: int, seed: int):
    from xailab.datasets.text import gold_rationale, make_lexicon_sentences

    data = make_lexicon_sentences(n, seed=seed, split="test")
    enc = model(name).encode(data.texts)
    return enc["input_ids"], enc["attention_mask"], gold_rationale(data.evidence, enc["input_ids"].shape)


def lexicon_batch(name: str = "tiny-bert-sentiment", n: int = 6, seed: int = 11):
    """(input_ids, attention_mask, gold) of n padded lexicon test sentences, fresh copies."""
    ids, mask, gold = _lexicon(name, n, seed)
    return ids.clone(), mask.clone(), gold.clone()


@lru_cache(maxsize=None)
def _reviews(n: int, max_length: int, start: int):
    from xailab.datasets.text import load_drug_reviews

    texts = [t for t, _ in load_drug_reviews("test")[start:start + n]]
    enc = model("minilm-sentiment").encode(texts, max_length=max_length)
    return enc["input_ids"], enc["attention_mask"]


def review_batch(n: int = 4, max_length: int = 40, start: int = 0):
    """(input_ids, attention_mask) of n drug reviews, truncated to max_length tokens, for minilm-sentiment."""
    ids, mask = _reviews(n, max_length, start)
    return ids.clone(), mask.clone()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_scores(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian scores, larger than any content score at [CLS], [SEP] and padding (never to be selected)."""
    s = torch.randn(mask.shape, generator=gen(seed))
    return torch.where(ref.content_mask(mask), s, torch.full_like(s, 50.0))


def tied_scores(mask: torch.Tensor, seed: int, levels: int = 3) -> torch.Tensor:
    """Integer scores with many ties (0 … levels−1); specials and padding get the largest value."""
    s = torch.randint(0, levels, mask.shape, generator=gen(seed)).float()
    return torch.where(ref.content_mask(mask), s, torch.full_like(s, float(levels + 5)))


def synthetic_mask(lengths: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made right-padded rows: ids 101 (CLS) 1000+j … 102 (SEP) 0 …, with `lengths` real tokens."""
    width = width or max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1000 + 100 * i, 1000 + 100 * i + n)
        ids[i, 0], ids[i, n - 1] = 101, 102
        mask[i, :n] = 1
    return ids, mask


def random_rationale(mask: torch.Tensor, seed: int, p: float = 0.4, specials: bool = True) -> torch.Tensor:
    """A random bool rationale; with `specials` it also marks [CLS], [SEP] and padding (to be ignored)."""
    r = torch.rand(mask.shape, generator=gen(seed)) < p
    if specials:
        r[:, 0] = True
        r |= mask == 0
        n = mask.sum(1)
        r[torch.arange(len(n)), n - 1] = True
    return r


# ------------------------------------------------------------------ comparison helpers

def assert_mask_equal(actual, expected: torch.Tensor, what: str, hint: str = "") -> None:
    """Exact comparison of a selection mask (bool or 0/1 values), with the first differing row shown."""
    actual = as_tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}".strip())
    if actual.is_floating_point() or actual.is_complex():
        if not torch.isin(actual, torch.tensor([0.0, 1.0], dtype=actual.dtype)).all():
            raise CheckFailed(f"{what}: expected a bool mask (True = selected), got values other than 0 and 1.")
    elif actual.dtype != torch.bool and not ((actual == 0) | (actual == 1)).all():
        raise CheckFailed(f"{what}: expected a bool mask (True = selected), got values other than 0 and 1.")
    got = actual != 0
    exp = expected.bool()
    rows = (got != exp).any(1).nonzero().flatten().tolist()
    if rows:
        i = rows[0]
        raise CheckFailed(f"{what}: {len(rows)} of {len(exp)} rows differ from the reference; row {i}: expected "
                          f"positions {exp[i].nonzero().flatten().tolist()}, got {got[i].nonzero().flatten().tolist()}. "
                          f"{hint}".strip())


def assert_ints_equal(actual, expected: torch.Tensor, what: str, hint: str = "") -> None:
    actual = as_tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}".strip())
    if actual.is_floating_point() and not (actual == actual.round()).all():
        raise CheckFailed(f"{what}: expected integers, got fractional values.")
    got, exp = actual.long(), expected.long()
    rows = (got != exp).any(1).nonzero().flatten().tolist()
    if rows:
        i = rows[0]
        raise CheckFailed(f"{what}: {len(rows)} of {len(exp)} rows differ from the reference; row {i}: expected "
                          f"{exp[i].tolist()}, got {got[i].tolist()}. {hint}".strip())


def pair(output, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise CheckFailed(f"{what} should return a pair (input_ids, attention_mask), got {type(output).__name__}"
                          + (f" of length {len(output)}" if isinstance(output, (tuple, list)) else "") + ".")
    return as_tensor(output[0], what + " (input_ids)"), as_tensor(output[1], what + " (attention_mask)")


def mask_check(name: str, task: str, message: str, inputs, reference, hint: str = ""):
    def expected(case: Case):
        return reference(**case.kwargs)

    def compare(fn, case: Case, expected_value) -> None:
        assert_mask_equal(fn(**case.kwargs), expected_value, f"{task} on {case.description}", hint)

    return prepared_check(name, task, message, inputs, expected, compare)


def row_alone(kwargs: dict, i: int, keys: tuple[str, ...]) -> dict:
    """Row i of every batched argument, trimmed to its real tokens (no padding at all)."""
    n = int(kwargs["attention_mask"][i].sum())
    out = dict(kwargs)
    for k in keys:
        out[k] = kwargs[k][i:i + 1, :n].clone()
    return out


# ------------------------------------------------------------------ top-k rationales

def top_k_cases() -> list[Case]:
    ids, mask, _ = lexicon_batch(n=8)
    rids, rmask = review_batch(4, 48)
    _, m30 = synthetic_mask([32, 17, 12, 3])  # 30, 15, 10 and 1 content tokens
    cases = [Case(f"tiny-bert lexicon sentences, Gaussian scores, fraction={f}",
                  dict(scores=random_scores(mask, 1), attention_mask=mask, fraction=f)) for f in (0.2, 0.5, 1.0)]
    cases += [
        Case("tiny-bert lexicon sentences, fraction=0.01 (k = 1: at least one token for any fraction > 0)",
             dict(scores=random_scores(mask, 2), attention_mask=mask, fraction=0.01)),
        Case("tiny-bert lexicon sentences, fraction=0.0 (nothing selected)",
             dict(scores=random_scores(mask, 3), attention_mask=mask, fraction=0.0)),
        Case("tiny-bert lexicon sentences, integer scores with many ties, fraction=0.3 (ties: earlier position first)",
             dict(scores=tied_scores(mask, 4), attention_mask=mask, fraction=0.3)),
        Case("minilm drug reviews (48 tokens), Gaussian scores, fraction=0.1",
             dict(scores=random_scores(rmask, 5), attention_mask=rmask, fraction=0.1)),
        Case("minilm drug reviews, negative scores only, fraction=0.25 (still the k largest)",
             dict(scores=-random_scores(rmask, 6).abs() - 1, attention_mask=rmask, fraction=0.25)),
        Case("rows of 30, 15, 10 and 1 content tokens, fraction=0.1 (k = 3, 2, 1, 1)",
             dict(scores=random_scores(m30, 7), attention_mask=m30, fraction=0.1)),
        Case("rows of 30, 15, 10 and 1 content tokens, fraction=0.15 (k = 5, 3, 2, 1: always rounded up)",
             dict(scores=random_scores(m30, 10), attention_mask=m30, fraction=0.15)),
        Case("rows of 30, 15, 10 and 1 content tokens, fraction=0.2 (k = 6, 3, 2, 1)",
             dict(scores=tied_scores(m30, 8, levels=2), attention_mask=m30, fraction=0.2)),
        Case("rows of 30, 15, 10 and 1 content tokens, fraction=0.5 (k = 15, 8, 5, 1)",
             dict(scores=random_scores(m30, 9), attention_mask=m30, fraction=0.5)),
    ]
    return cases


mask_check("lab10.top_k_rationale.reference", "top_k_rationale",
           "selects the reference top-k content tokens (k = ceil(fraction · n), ties earlier first) on both models",
           top_k_cases, ref.top_k_rationale,
           hint="Rank only the content tokens ([CLS], [SEP] and padding are never selected, whatever their score); "
                "k = ceil(fraction · n) with n the content tokens of the row (rounded up: any fraction > 0 selects at "
                "least one token); equal scores: the earlier "
                "position wins (a stable sort).")


def selects_k(fn, case: Case) -> None:
    kw = case.kwargs
    out = as_tensor(fn(**kw), "top_k_rationale")
    mask = kw["attention_mask"]
    if tuple(out.shape) != tuple(mask.shape):
        raise CheckFailed(f"top_k_rationale: expected shape {tuple(mask.shape)}, got {tuple(out.shape)}.")
    sel = out != 0
    content = ref.content_mask(mask)
    if (sel & ~content).any():
        raise CheckFailed("top_k_rationale selected [CLS], [SEP] or padding positions (given the largest scores "
                          "here): only content tokens may be selected.")
    n = content.sum(1)
    for fraction in (0.05, 0.35, 0.8):
        sel = as_tensor(fn(**dict(kw, fraction=fraction)), "top_k_rationale") != 0
        k = torch.tensor([math.ceil(fraction * int(m)) for m in n])
        if not torch.equal(sel.sum(1), k):
            raise CheckFailed(f"top_k_rationale with fraction={fraction}: expected {k.tolist()} tokens per row "
                              f"(ceil(fraction · n) of n = {n.tolist()} content tokens), got {sel.sum(1).tolist()}.")


def top_k_per_row(fn, case: Case) -> None:
    kw = case.kwargs
    batched = as_tensor(fn(**kw), "top_k_rationale") != 0
    for i in range(kw["attention_mask"].shape[0]):
        single = row_alone(kw, i, ("scores", "attention_mask"))
        n = single["attention_mask"].shape[1]
        alone = as_tensor(fn(**single), "top_k_rationale")
        assert_mask_equal(alone, batched[i:i + 1, :n], f"top_k_rationale: row {i} alone (no padding) vs row {i} of "
                          "the padded batch", "Each row's k comes from its own number of content tokens.")


property_check("lab10.top_k_rationale.properties", "top_k_rationale",
               "never selects special tokens or padding; k per row; batch = per example; inputs untouched",
               lambda: [Case("tiny-bert lexicon sentences, the largest scores on [CLS], [SEP] and padding, fraction=0.3",
                             dict(scores=random_scores(lexicon_batch(n=8)[1], 12), attention_mask=lexicon_batch(n=8)[1],
                                  fraction=0.3))],
               all_of(selects_k, top_k_per_row, side_effect_free("top_k_rationale")))


# ------------------------------------------------------------------ contiguous rationales

def contiguous_cases() -> list[Case]:
    ids, mask, _ = lexicon_batch(n=8)
    rids, rmask = review_batch(4, 48)
    _, short = synthetic_mask([9, 6, 4, 3])  # 7, 4, 2 and 1 content tokens
    return [
        Case("tiny-bert lexicon sentences, Gaussian scores, length=3",
             dict(scores=random_scores(mask, 21), attention_mask=mask, length=3)),
        Case("tiny-bert lexicon sentences, Gaussian scores, length=1",
             dict(scores=random_scores(mask, 22), attention_mask=mask, length=1)),
        Case("tiny-bert lexicon sentences, integer scores with ties, length=2 (ties: the leftmost window)",
             dict(scores=tied_scores(mask, 23), attention_mask=mask, length=2)),
        Case("minilm drug reviews (48 tokens), Gaussian scores, length=5",
             dict(scores=random_scores(rmask, 24), attention_mask=rmask, length=5)),
        Case("rows of 7, 4, 2 and 1 content tokens, length=4 (rows shorter than the window: all their content)",
             dict(scores=random_scores(short, 25), attention_mask=short, length=4)),
        Case("rows of 7, 4, 2 and 1 content tokens, all scores equal, length=2 (the leftmost window)",
             dict(scores=torch.ones(short.shape), attention_mask=short, length=2)),
        Case("rows of 7, 4, 2 and 1 content tokens, length=0 (nothing selected)",
             dict(scores=random_scores(short, 26), attention_mask=short, length=0)),
        Case("rows of 7, 4, 2 and 1 content tokens, length=20 (longer than every row and than T)",
             dict(scores=random_scores(short, 27), attention_mask=short, length=20)),
    ]


mask_check("lab10.contiguous_rationale.reference", "contiguous_rationale",
           "selects the reference window of consecutive content tokens with the largest total score",
           contiguous_cases, ref.contiguous_rationale,
           hint="Slide a window of `length` tokens over the content tokens only (never over [CLS], [SEP] or padding), "
                "take the largest sum of scores (ties: the leftmost window); a row with at most `length` content "
                "tokens is selected whole.")


def contiguous_shape(fn, case: Case) -> None:
    kw = case.kwargs
    mask = kw["attention_mask"]
    content = ref.content_mask(mask)
    n = content.sum(1)
    for length in (2, 4):
        sel = as_tensor(fn(**dict(kw, length=length)), "contiguous_rationale") != 0
        if tuple(sel.shape) != tuple(mask.shape):
            raise CheckFailed(f"contiguous_rationale: expected shape {tuple(mask.shape)}, got {tuple(sel.shape)}.")
        if (sel & ~content).any():
            raise CheckFailed("contiguous_rationale selected [CLS], [SEP] or padding: the window lies inside the content.")
        want = torch.minimum(n, torch.tensor(length))
        if not torch.equal(sel.sum(1), want):
            raise CheckFailed(f"contiguous_rationale with length={length}: expected {want.tolist()} tokens per row, "
                              f"got {sel.sum(1).tolist()}.")
        for i in range(len(sel)):
            where = sel[i].nonzero().flatten()
            if len(where) and where[-1] - where[0] + 1 != len(where):
                raise CheckFailed(f"contiguous_rationale: row {i} selects positions {where.tolist()}, which are not "
                                  "consecutive.")
    batched = as_tensor(fn(**kw), "contiguous_rationale") != 0
    for i in range(len(mask)):
        single = row_alone(kw, i, ("scores", "attention_mask"))
        assert_mask_equal(fn(**single), batched[i:i + 1, :single["attention_mask"].shape[1]],
                          f"contiguous_rationale: row {i} alone vs in the padded batch")


property_check("lab10.contiguous_rationale.properties", "contiguous_rationale",
               "one run of min(length, n) content tokens per row; batch = per example; inputs untouched",
               lambda: [Case("tiny-bert lexicon sentences, largest scores on special tokens and padding, length=3",
                             dict(scores=random_scores(lexicon_batch(n=8)[1], 28), attention_mask=lexicon_batch(n=8)[1],
                                  length=3))],
               all_of(contiguous_shape, side_effect_free("contiguous_rationale")))


# ------------------------------------------------------------------ deletion and re-packing

def deletion_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=8)
    rids, rmask = review_batch(4, 40)
    sids, smask = synthetic_mask([7, 5, 3, 6], width=9)
    return [
        Case("tiny-bert lexicon sentences, the gold evidence tokens",
             dict(input_ids=ids, attention_mask=mask, rationale=gold)),
        Case("tiny-bert lexicon sentences, a random rationale that also marks [CLS], [SEP] and padding (to be ignored)",
             dict(input_ids=ids, attention_mask=mask, rationale=random_rationale(mask, 31))),
        Case("minilm drug reviews (40 tokens), a random rationale over about half the tokens",
             dict(input_ids=rids, attention_mask=rmask, rationale=random_rationale(rmask, 32, p=0.5))),
        Case("hand-made rows of 7, 5, 3 and 6 tokens padded to 9, a random rationale, pad_token_id=7",
             dict(input_ids=sids, attention_mask=smask, rationale=random_rationale(smask, 33, p=0.5),
                  pad_token_id=7)),
        Case("hand-made rows, an empty rationale (nothing changes)",
             dict(input_ids=sids, attention_mask=smask, rationale=torch.zeros(smask.shape, dtype=torch.bool))),
        Case("hand-made rows, every position in the rationale (only [CLS] [SEP] are left)",
             dict(input_ids=sids, attention_mask=smask, rationale=torch.ones(smask.shape, dtype=torch.bool))),
        Case("hand-made rows, the rationale as a 0/1 long tensor",
             dict(input_ids=sids, attention_mask=smask, rationale=random_rationale(smask, 34).long())),
    ]


def deletion_check(name: str, task: str, message: str, reference, hint: str):
    def expected(case: Case):
        return reference(**case.kwargs)

    def compare(fn, case: Case, expected_value) -> None:
        ids, mask = pair(fn(**case.kwargs), task)
        assert_ints_equal(ids, expected_value[0], f"{task} on {case.description}: input_ids", hint)
        assert_ints_equal(mask, expected_value[1], f"{task} on {case.description}: attention_mask", hint)

    return prepared_check(name, task, message, deletion_cases, expected, compare)


deletion_check("lab10.remove_tokens.reference", "remove_tokens",
               "deletes the rationale and re-packs each row: exact ids and masks on both tokenisers",
               ref.remove_tokens,
               "Delete the rationale's content tokens, shift the remaining tokens left (order kept), fill the end "
               "with pad_token_id and attention_mask 0; keep the shape (B, T); [CLS], [SEP] and padding positions of "
               "the rationale are ignored.")

deletion_check("lab10.keep_tokens.reference", "keep_tokens",
               "keeps only the rationale (with [CLS] and [SEP]), re-packed: exact ids and masks on both tokenisers",
               ref.keep_tokens,
               "Keep [CLS], the rationale's content tokens and [SEP], in their order, re-packed to the left and "
               "padded with pad_token_id (attention_mask 0); keep the shape (B, T).")


def repacked(task: str):
    def prop(fn, case: Case) -> None:
        kw = case.kwargs
        ids, mask = pair(fn(**kw), task)
        m = mask.long()
        if tuple(m.shape) != tuple(kw["attention_mask"].shape):
            raise CheckFailed(f"{task}: expected shape {tuple(kw['attention_mask'].shape)}, got {tuple(m.shape)}.")
        for what, got, given in (("input_ids", ids, kw["input_ids"]), ("attention_mask", mask, kw["attention_mask"])):
            if got.dtype != given.dtype:
                raise CheckFailed(f"{task}: the returned {what} has dtype {got.dtype}; return the dtype of the "
                                  f"{what} you were given ({given.dtype}), as the model expects.")
        n = m.sum(1)
        packed = torch.arange(m.shape[1])[None] < n[:, None]
        if not torch.equal(m.bool(), packed):
            raise CheckFailed(f"{task}: the attention mask must be 1 for the first tokens of each row and 0 after "
                              "them (tokens deleted and the row re-packed), not 0 in the middle (masked in place).")
        first = kw["input_ids"][:, 0]
        last = kw["input_ids"][torch.arange(len(n)), kw["attention_mask"].sum(1) - 1]
        if not (torch.equal(ids[:, 0].long(), first) and torch.equal(ids[torch.arange(len(n)), n - 1].long(), last)):
            raise CheckFailed(f"{task}: every row must still start with its [CLS] and end with its [SEP] token.")
        for i in range(len(n)):
            single = row_alone(kw, i, ("input_ids", "attention_mask", "rationale"))
            sids, smask = pair(fn(**single), task)
            width = single["input_ids"].shape[1]
            assert_ints_equal(sids, ids[i:i + 1, :width], f"{task}: row {i} alone vs in the batch (input_ids)")
            assert_ints_equal(smask, mask[i:i + 1, :width], f"{task}: row {i} alone vs in the batch (attention_mask)")

    return prop


def repack_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=8)
    return [Case("tiny-bert lexicon sentences, a random rationale marking special tokens and padding too",
                 dict(input_ids=ids, attention_mask=mask, rationale=random_rationale(mask, 35)))]


for _task in ("remove_tokens", "keep_tokens"):
    property_check(f"lab10.{_task}.properties", _task,
                   "rows re-packed (no holes), [CLS] and [SEP] kept, batch = per example, inputs untouched",
                   repack_cases, all_of(repacked(_task), side_effect_free(_task)))


# ------------------------------------------------------------------ comprehensiveness and sufficiency

def faithfulness_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=8)
    rids, rmask = review_batch(3, 32)
    bert, minilm = model("tiny-bert-sentiment"), model("minilm-sentiment")
    return [
        Case("tiny-bert, lexicon sentences, the gold evidence as rationale",
             dict(model=bert, input_ids=ids, attention_mask=mask, rationale=gold)),
        Case("tiny-bert, lexicon sentences, a random rationale (special tokens and padding marked too)",
             dict(model=bert, input_ids=ids, attention_mask=mask, rationale=random_rationale(mask, 41))),
        Case("tiny-bert, lexicon sentences, the top 30 % of random scores",
             dict(model=bert, input_ids=ids, attention_mask=mask,
                  rationale=ref.top_k_rationale(random_scores(mask, 42), mask, 0.3))),
        Case("minilm-sentiment, drug reviews (32 tokens), a random rationale",
             dict(model=minilm, input_ids=rids, attention_mask=rmask, rationale=random_rationale(rmask, 43, p=0.3))),
        Case("minilm-sentiment, drug reviews, a contiguous window of 8 tokens",
             dict(model=minilm, input_ids=rids, attention_mask=rmask,
                  rationale=ref.contiguous_rationale(random_scores(rmask, 44), rmask, 8))),
    ]


def metric_check(task: str, reference, hint: str):
    def expected(case: Case):
        return reference(**case.kwargs).detach()

    def compare(fn, case: Case, expected_value) -> None:
        assert_close(fn(**case.kwargs), expected_value, f"{task} on {case.description}", 1e-4, 2e-5, hint)

    return prepared_check(f"lab10.{task}.reference", task,
                          f"matches the reference {task} on tiny-bert and minilm-sentiment",
                          faithfulness_cases, expected, compare)


metric_check("comprehensiveness", ref.comprehensiveness,
             "p(ŷ | x) − p(ŷ | x without the rationale): softmax probabilities (not logits) of the class the model "
             "predicts on the FULL input, with the rationale deleted and the row re-packed (remove_tokens), not "
             "masked in place.")
metric_check("sufficiency", ref.sufficiency,
             "p(ŷ | x) − p(ŷ | the rationale alone): softmax probabilities (not logits) of the class the model "
             "predicts on the FULL input; the reduced input keeps [CLS], the rationale and [SEP] (keep_tokens).")


def identity(task: str, rationale_of, what: str):
    """The metric is 0 for a trivial rationale (empty for comprehensiveness, everything for sufficiency)."""

    def prop(fn, case: Case) -> None:
        kw = dict(case.kwargs, rationale=rationale_of(case.kwargs["attention_mask"]))
        out = as_tensor(fn(**kw), task)
        if tuple(out.shape) != (kw["input_ids"].shape[0],):
            raise CheckFailed(f"{task}: expected shape ({kw['input_ids'].shape[0]},), one value per example, "
                              f"got {tuple(out.shape)}.")
        if not torch.isfinite(out).all() or out.abs().max() > 1e-5:
            raise CheckFailed(f"{task} of {what} must be 0 for every example (nothing changes), got "
                              f"{[round(v, 4) for v in out.tolist()]}.")

    return prop


def metric_per_row(task: str):
    def prop(fn, case: Case) -> None:
        kw = case.kwargs
        batched = as_tensor(fn(**kw), task)
        for i in range(kw["input_ids"].shape[0]):
            single = row_alone(kw, i, ("input_ids", "attention_mask", "rationale"))
            assert_close(fn(**single), batched[i:i + 1], f"{task}: row {i} alone vs in the padded batch", 1e-4, 2e-5,
                         "Each example's value depends on that example only (its own predicted class).")

    return prop


def metric_batched(task: str):
    def prop(fn, case: Case) -> None:
        _, calls, _ = count_forward(fn, case.kwargs)
        if calls > 2:
            raise CheckFailed(f"{task} ran the model {calls} times for one batch: run the full batch once and the "
                              "reduced batch once.")

    return prop


def property_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=8)
    return [Case("tiny-bert, lexicon sentences, a random rationale",
                 dict(model=model("tiny-bert-sentiment"), input_ids=ids, attention_mask=mask,
                      rationale=random_rationale(mask, 45, specials=False)))]


property_check("lab10.comprehensiveness.properties", "comprehensiveness",
               "an empty rationale gives 0; batch = per example; two forward passes; no autograd graph; model and "
               "inputs untouched",
               property_cases,
               all_of(identity("comprehensiveness", lambda m: torch.zeros(m.shape, dtype=torch.bool), "an empty rationale"),
                      metric_per_row("comprehensiveness"), metric_batched("comprehensiveness"),
                      side_effect_free("comprehensiveness"), no_graph("comprehensiveness")))

property_check("lab10.sufficiency.properties", "sufficiency",
               "the whole input as rationale gives 0; batch = per example; two forward passes; no autograd graph; model and "
               "inputs untouched",
               property_cases,
               all_of(identity("sufficiency", lambda m: torch.ones(m.shape, dtype=torch.bool), "the whole input"),
                      metric_per_row("sufficiency"), metric_batched("sufficiency"), side_effect_free("sufficiency"),
                      no_graph("sufficiency")))


# ------------------------------------------------------------------ AOPC

def aopc_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=8)
    rids, rmask = review_batch(3, 32)
    bert, minilm = model("tiny-bert-sentiment"), model("minilm-sentiment")
    return [
        Case("tiny-bert, lexicon sentences, Gaussian scores, comprehensiveness",
             dict(model=bert, input_ids=ids, attention_mask=mask, scores=random_scores(mask, 51))),
        Case("tiny-bert, lexicon sentences, Gaussian scores, sufficiency",
             dict(model=bert, input_ids=ids, attention_mask=mask, scores=random_scores(mask, 52), metric="sufficiency")),
        Case("tiny-bert, lexicon sentences, scores = the gold evidence, sufficiency, bins (0.1, 0.3)",
             dict(model=bert, input_ids=ids, attention_mask=mask, scores=gold.float(), metric="sufficiency",
                  bins=(0.1, 0.3))),
        Case("minilm-sentiment, drug reviews, Gaussian scores, sufficiency, bins (0.05, 0.25)",
             dict(model=minilm, input_ids=rids, attention_mask=rmask, scores=random_scores(rmask, 54),
                  metric="sufficiency", bins=(0.05, 0.25))),
    ]


def _aopc_expected(case: Case):
    return ref.aopc(**case.kwargs).detach()


def _aopc_compare(fn, case: Case, expected_value) -> None:
    assert_close(fn(**case.kwargs), expected_value, f"aopc on {case.description}", 1e-4, 2e-5,
                 "AOPC = the mean of the metric over the top-k rationales of the empty (0 %) bin and every bin of "
                 "`bins`: divide by len(bins) + 1.")


prepared_check("lab10.aopc.reference", "aopc",
               "matches the reference AOPC (0 % bin included) on tiny-bert and minilm-sentiment",
               aopc_cases, _aopc_expected, _aopc_compare)


def aopc_per_row(fn, case: Case) -> None:
    kw = case.kwargs
    batched = as_tensor(fn(**kw), "aopc")
    for i in range(kw["input_ids"].shape[0]):
        single = row_alone(kw, i, ("input_ids", "attention_mask", "scores"))
        assert_close(fn(**single), batched[i:i + 1], f"aopc: row {i} alone vs in the padded batch", 1e-4, 2e-5)


property_check("lab10.aopc.properties", "aopc", "batch = per example; no autograd graph; model and inputs untouched",
               lambda: [Case(c.description, dict(c.kwargs, input_ids=c.kwargs["input_ids"][:3],
                                                 attention_mask=c.kwargs["attention_mask"][:3],
                                                 scores=c.kwargs["scores"][:3])) for c in aopc_cases()[1:2]],
               all_of(aopc_per_row, side_effect_free("aopc"), no_graph("aopc")))


# ------------------------------------------------------------------ plausibility

def plausibility_cases() -> list[Case]:
    ids, mask, gold = lexicon_batch(n=10, seed=13)
    _, smask = synthetic_mask([9, 8, 6, 9, 7], width=10)
    sgold = torch.zeros(smask.shape, dtype=torch.bool)
    spred = torch.zeros(smask.shape, dtype=torch.bool)
    sgold[0, 2:6] = True; spred[0, 3:5] = True                        # IoU 2/4 = 0.5: a match
    sgold[1, 1:4] = True; spred[1, [1, 5]] = True                      # IoU 1/3: no match; a second, missed span
    sgold[2, 2] = True                                                 # nothing predicted
    spred[3, 2:4] = True; spred[3, 6] = True                           # no gold at all
    sgold[4, [1, 4]] = True; spred[4, [1, 2, 4]] = True                # spans (1,3) IoU 0.5 and (4,5) IoU 1
    spred[0, 9] = True; sgold[1, 8:] = True                            # padding positions: ignored
    bert = model("tiny-bert-sentiment")
    with torch.no_grad():
        pred = bert(input_ids=ids, attention_mask=mask).argmax(1)
    from grader.answers.lab01 import token_saliency

    sal = token_saliency(bert, ids, mask, pred)
    return [
        Case("tiny-bert lexicon sentences: the top 20 % of the model's gradient saliency vs the gold evidence",
             dict(rationale=ref.top_k_rationale(sal, mask, 0.2), gold=gold, attention_mask=mask)),
        Case("tiny-bert lexicon sentences: a contiguous window of 3 tokens vs the gold evidence",
             dict(rationale=ref.contiguous_rationale(sal, mask, 3), gold=gold, attention_mask=mask)),
        Case("tiny-bert lexicon sentences: a random rationale vs the gold evidence",
             dict(rationale=random_rationale(mask, 61, specials=False), gold=gold, attention_mask=mask)),
        Case("hand-made rows: partial overlaps (IoU exactly 0.5 and 1/3), an empty prediction, an empty gold row, "
             "True at padding positions (ignored)",
             dict(rationale=spred, gold=sgold, attention_mask=smask)),
    ]


def plausibility_check(task: str, reference, hint: str, extra: list[Case] | None = None):
    def inputs():
        return plausibility_cases() + (extra or [])

    def expected(case: Case):
        return reference(**case.kwargs)

    def compare(fn, case: Case, expected_value) -> None:
        assert_close(fn(**case.kwargs), expected_value, f"{task} on {case.description}", 1e-5, 1e-6, hint)

    return prepared_check(f"lab10.{task}.reference", task,
                          f"matches the reference {task} on lexicon sentences and hand-made spans", inputs,
                          expected, compare)


plausibility_check("token_prf", ref.token_prf,
                   "One row (precision, recall, F1) per example, over tokens: precision = |r ∩ g| / |r| (0 when r is "
                   "empty), recall = |r ∩ g| / |g| (0 when g is empty), F1 = 2PR / (P + R) (0 when P or R is 0); "
                   "positions with attention_mask 0 are ignored.")

def iou_edge_cases() -> list[Case]:
    """Hand-made spans where a wrong union or a missing guard shows: a gold span that starts before the predicted
    one (IoU 2/5 = 0.4: no hit), a batch without any predicted span, a batch without any gold span."""
    mask = torch.ones(3, 8, dtype=torch.long)
    gold = torch.zeros(3, 8, dtype=torch.bool)
    pred = torch.zeros(3, 8, dtype=torch.bool)
    gold[0, 1:6] = True; pred[0, 4:6] = True                          # IoU 2/5: no hit (union from 1 to 6)
    gold[1, 2:4] = True; pred[1, 1:4] = True                          # IoU 2/3: a hit
    gold[2, 5:7] = True; pred[2, 3:7] = True                          # IoU 2/4: a hit
    return [
        Case("hand-made rows: a gold span that starts before the predicted one (IoU 2/5), IoU 2/3, IoU 2/4",
             dict(rationale=pred, gold=gold, attention_mask=mask)),
        Case("hand-made rows, an empty rationale in every row (no predicted span at all: precision 0)",
             dict(rationale=torch.zeros_like(pred), gold=gold, attention_mask=mask)),
        Case("hand-made rows, an empty gold rationale in every row (no gold span at all: recall 0)",
             dict(rationale=pred, gold=torch.zeros_like(gold), attention_mask=mask)),
    ]


plausibility_check("iou_f1", ref.iou_f1,
                   "Spans are maximal runs of selected tokens; a predicted span is a hit when its best IoU with a gold "
                   "span of the SAME example is ≥ threshold; precision = hits / predicted spans, recall = hits / gold "
                   "spans, both counted over the whole batch (micro), F1 = 2PR / (P + R); padding is ignored.",
                   extra=[Case(c.description + ", threshold=0.3", dict(c.kwargs, threshold=0.3))
                          for c in plausibility_cases()[2:]] + iou_edge_cases())


def prf_identities(fn, case: Case) -> None:
    kw = case.kwargs
    gold = kw["gold"]
    perfect = as_tensor(fn(**dict(kw, rationale=gold)), "token_prf")
    assert_close(perfect, torch.ones(len(gold), 3), "token_prf of the gold rationale itself", 0, 1e-6,
                 "A rationale equal to the gold one has precision, recall and F1 of 1.")
    batched = as_tensor(fn(**kw), "token_prf")
    for i in range(len(gold)):
        single = row_alone(kw, i, ("rationale", "gold", "attention_mask"))
        assert_close(fn(**single), batched[i:i + 1], f"token_prf: row {i} alone vs in the padded batch", 1e-5, 1e-6,
                     "Each row is scored on its own tokens only.")


property_check("lab10.token_prf.properties", "token_prf",
               "gold vs itself scores 1; batch = per example; inputs untouched",
               lambda: plausibility_cases()[:1], all_of(prf_identities, side_effect_free("token_prf")))


def iou_identities(fn, case: Case) -> None:
    kw = case.kwargs
    gold = kw["gold"]
    perfect = as_tensor(fn(**dict(kw, rationale=gold)), "iou_f1")
    assert_close(perfect, torch.ones(3), "iou_f1 of the gold rationale itself", 0, 1e-6,
                 "Every gold span matches itself (IoU 1): precision, recall and F1 of 1, as tensor([P, R, F1]).")


property_check("lab10.iou_f1.properties", "iou_f1",
               "gold vs itself scores 1; inputs untouched",
               lambda: plausibility_cases()[:1], all_of(iou_identities, side_effect_free("iou_f1")))


# ------------------------------------------------------------------ simulator

def counts(n: int, v: int, seed: int, rate: float = 0.6) -> torch.Tensor:
    return torch.poisson(torch.full((n, v), rate), generator=gen(seed))


def simulator_cases() -> list[Case]:
    g = gen(71)
    y = torch.randint(0, 2, (40,), generator=g)
    x = counts(40, 12, 72)
    x[:, 0] += 2 * y                                                   # feature 0 is evidence for class 1
    yt = torch.randint(0, 2, (25,), generator=g)
    xt = counts(25, 12, 73)
    xt[:, 0] += 2 * yt
    y3 = torch.randint(0, 3, (30,), generator=g)
    x3 = counts(30, 9, 74, 0.4)
    x3[torch.arange(30), y3] += 2                                      # feature c is evidence for class c
    y3t = torch.randint(0, 3, (20,), generator=g)
    x3t = counts(20, 9, 75, 0.4)
    x3t[torch.arange(20), y3t] += 1
    balanced = torch.tensor([0, 1, 0, 1, 1, 0])
    xb = torch.tensor([[2, 0, 1], [0, 3, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 2]], dtype=torch.float32)
    xbt = torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 1], [3, 0, 0], [0, 2, 0]], dtype=torch.float32)
    return [
        Case("2 classes, 40 training rows of 12 word counts, 25 test rows, alpha=1",
             dict(train_features=x, train_targets=y, test_features=xt, test_targets=yt)),
        Case("the same data, alpha=0.1", dict(train_features=x, train_targets=y, test_features=xt, test_targets=yt,
                                              alpha=0.1)),
        Case("3 classes, 30 training rows of 9 counts, 20 test rows, alpha=0.5",
             dict(train_features=x3, train_targets=y3, test_features=x3t, test_targets=y3t, alpha=0.5)),
        Case("2 classes, unbalanced training targets (8 of 40 positive), 25 test rows",
             dict(train_features=x, train_targets=(torch.arange(40) % 5 == 0).long(), test_features=xt,
                  test_targets=yt)),
        Case("6 hand-made training rows with balanced classes; a test row without any word (a tie: class 0)",
             dict(train_features=xb, train_targets=balanced, test_features=xbt,
                  test_targets=torch.tensor([0, 1, 0, 0, 1]))),
        Case("the same hand-made data, every test target 1",
             dict(train_features=xb, train_targets=balanced, test_features=xbt, test_targets=torch.ones(5).long())),
        Case("3 training classes, test targets of classes 0 and 1 only (the classes are 0 … 2 all the same)",
             dict(train_features=x3, train_targets=y3, test_features=x3t, test_targets=y3t % 2)),
        Case("2 training classes, a test target of class 2 that no training row has (never predicted)",
             dict(train_features=x, train_targets=y, test_features=xt[:6],
                  test_targets=torch.tensor([0, 1, 2, 1, 0, 2]))),
    ]


def _sim_expected(case: Case):
    return ref.simulator_accuracy(**case.kwargs)


def _sim_compare(fn, case: Case, expected_value) -> None:
    assert_close(fn(**case.kwargs), expected_value, f"simulator_accuracy on {case.description}", 0, 1e-6,
                 "Multinomial naive Bayes: log prior log(N_c / N) plus Σ_j x_j · log((N_cj + alpha) / (N_c + alpha·V)), "
                 "N_cj the total count of feature j in the training rows of class c; predict the class with the "
                 "largest score (ties: the smaller class index); return 1.0 where it equals test_targets, else 0.0.")


prepared_check("lab10.simulator_accuracy.reference", "simulator_accuracy",
               "matches the reference naive Bayes simulator (2 and 3 classes, smoothing, priors, ties)",
               simulator_cases, _sim_expected, _sim_compare)


def simulator_deterministic(fn, case: Case) -> None:
    kw = case.kwargs
    first = as_tensor(fn.call(kw, seed=0).output, "simulator_accuracy")
    again = as_tensor(fn.call(kw, seed=3).output, "simulator_accuracy")
    assert_close(again, first, "simulator_accuracy twice with a different global random state", 0, 0,
                 "The simulator must be deterministic (naive Bayes needs no random numbers).")
    reply = fn.call(kw, observe=True)
    check_no_side_effects("simulator_accuracy", reply.facts)
    order = torch.randperm(len(kw["train_targets"]), generator=gen(76))
    shuffled = as_tensor(fn(**dict(kw, train_features=kw["train_features"][order],
                                   train_targets=kw["train_targets"][order])), "simulator_accuracy")
    assert_close(shuffled, first, "simulator_accuracy with the training rows shuffled", 0, 1e-6,
                 "The trained simulator may not depend on the order of the training rows.")


property_check("lab10.simulator_accuracy.properties", "simulator_accuracy",
               "deterministic, independent of the order of the training rows, inputs untouched",
               lambda: simulator_cases()[:1], simulator_deterministic)


# ------------------------------------------------------------------ LAS

def las_cases() -> list[Case]:
    g = gen(81)
    cases = []
    for n, p in ((40, 0.5), (25, 0.8)):
        x = (torch.rand(n, generator=g) < 0.7).float()
        xe = (torch.rand(n, generator=g) < 0.8).float()
        e = (torch.rand(n, generator=g) < p).float()
        cases.append(Case(f"{n} random simulator outcomes (0/1), about {p:.0%} leaked",
                          dict(x_correct=x, xe_correct=xe, e_correct=e)))
    x = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0.])
    xe = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1.])
    e = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0.])
    cases.append(Case("8 hand-made outcomes: leaked gain 0.5, non-leaked gain 0.0 (LAS 0.25, naive 0.25)",
                      dict(x_correct=x, xe_correct=xe, e_correct=e)))
    cases.append(Case("8 hand-made outcomes, 6 leaked and 2 not: LAS weighs the two groups equally",
                      dict(x_correct=x, xe_correct=xe, e_correct=torch.tensor([1, 1, 1, 1, 1, 1, 0, 0.]))))
    cases.append(Case("8 hand-made outcomes, every one leaked (no non-leaked group: its gain and LAS are nan)",
                      dict(x_correct=x, xe_correct=xe, e_correct=torch.ones(8))))
    cases.append(Case("8 hand-made outcomes as bool tensors, none leaked",
                      dict(x_correct=x.bool(), xe_correct=xe.bool(), e_correct=torch.zeros(8, dtype=torch.bool))))
    return cases


KEYS = ("naive", "leaked", "nonleaked", "las", "leak_rate")


def _las_expected(case: Case):
    return ref.las(**case.kwargs)


def _las_compare(fn, case: Case, expected_value) -> None:
    out = fn(**case.kwargs)
    what = f"las on {case.description}"
    if not isinstance(out, dict) or set(out) != set(KEYS):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise CheckFailed(f"{what}: expected a dict with the keys {list(KEYS)}, got {got}.")
    for key in KEYS:
        value = out[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)):
            raise CheckFailed(f"{what}: {key!r} should be a number, got {type(value).__name__}.")
        want = expected_value[key]
        if math.isnan(want) != math.isnan(float(value)) or (not math.isnan(want) and abs(float(value) - want) > 1e-9):
            raise CheckFailed(
                f"{what}: {key!r} is {float(value):.4g}, expected {want:.4g}. naive = mean(xe) − mean(x); the gains "
                "are mean(xe) − mean(x) within the leaked group (e_correct == 1) and within the non-leaked one (nan "
                "when a group is empty); las = the mean of the two gains (nan if one is nan); leak_rate = the share "
                "of leaked examples.")


prepared_check("lab10.las.reference", "las",
               "matches the reference LAS, per-group gains and naive simulatability (exact, nan for an empty group)",
               las_cases, _las_expected, _las_compare)
