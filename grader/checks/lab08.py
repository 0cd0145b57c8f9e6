"""Hidden-test checks of Lab 8 (counterfactual edits).

Text: first-order flip scores, the exhaustive single edit, the greedy search, flip rate, edit
distance and the minimality gap are compared with the answer key on tiny-bert-sentiment and
minilm-sentiment, and on a toy classifier that is linear in its embeddings (where the first-order
estimate is exact, so the expected values are known in closed form). Images: counterfactuals by
Adam with an L1 penalty on both MNIST CNNs, and the nearest unlike neighbour. Properties: the
model and the inputs are left unchanged, special tokens and padding are never edited, searches
are deterministic, what a function claims (the edited sentence, "flipped") is verified here with
the trusted model.
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn

from grader.answers import lab08 as ref
from grader.checks import (Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, prepared_check,
                           property_check)
from grader.checks.properties import carries_graph, check_no_side_effects, count_forward
from grader.fixtures import mnist_batch, model

TINY, MINILM = "tiny-bert-sentiment", "minilm-sentiment"


# ------------------------------------------------------------------ toy text classifier


class LinearText(nn.Module):
    """A text classifier that is linear in its input embeddings: logits = Σ_t a_t·m_t·E_t W + b with
    position weights a_t = 1 + 0.1·t and m = attention_mask (all ones when `masked` is False, so
    padding then counts too). A first-order estimate is exact for it."""

    def __init__(self, vocab: int = 30522, dim: int = 8, classes: int = 2, masked: bool = True, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embeddings = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)
        self.masked = masked
        with torch.no_grad():
            self.embeddings.weight.copy_(torch.randn(vocab, dim, generator=g))
            self.head.weight.copy_(torch.randn(classes, dim, generator=g))
            self.head.bias.copy_(torch.randn(classes, generator=g))

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def weights(self, attention_mask: torch.Tensor, t: int) -> torch.Tensor:
        a = 1 + 0.1 * torch.arange(t, dtype=torch.float32)
        m = attention_mask.float() if (self.masked and attention_mask is not None) else torch.ones(1, t)
        return a * m

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        pooled = (e * self.weights(attention_mask, e.shape[1])[..., None]).sum(1)
        return self.head(pooled)


def linear_text(masked: bool = True) -> LinearText:
    return LinearText(vocab=len(model(TINY).tokenizer), masked=masked).eval()


class PairText(nn.Module):
    """Predicts class 1 exactly when token `first` sits at position 1 and token `second` at position 2:
    a decision that two DIFFERENT substitutions reach together and no single one does."""

    def __init__(self, first: int, second: int, vocab: int):
        super().__init__()
        self.first, self.second = first, second
        self.embeddings = nn.Embedding(vocab, 2)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        hit = ((input_ids[:, 1] == self.first) & (input_ids[:, 2] == self.second)).float()
        return torch.stack([1 - hit, hit], 1)


# ------------------------------------------------------------------ sentences and helpers

BATCH = ("the film was awful .",
         "although the room was lovely , the service was terrible .",
         "this is a great book .")
PIECES = ("this medicine gave me terrible headaches", "not bad at all")
WORDS = ("awful", "great", "lovely", "terrible", "boring", "superb", "nasty", "kind", "the", "table", "dull",
         "brilliant")


def tokenizer():
    return model(TINY).tokenizer


def encode(sentences) -> dict[str, torch.Tensor]:
    enc = tokenizer()(list(sentences), padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def ids_of(words) -> torch.Tensor:
    return torch.tensor(tokenizer().convert_tokens_to_ids(list(words)))


def allowed_entries(input_ids, attention_mask, candidate_ids) -> torch.Tensor:
    """Substitutions that may be made: editable positions (the answer key's rule), candidate ≠ current token."""
    return ref.editable_mask(attention_mask)[:, :, None] & (candidate_ids[None, None, :] != input_ids[:, :, None])


def predict(m, sentences) -> torch.Tensor:
    enc = encode(sentences) if not hasattr(m, "encode") else m.encode(list(sentences))
    with torch.no_grad():
        return m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).argmax(1)


EXCLUDED_HINT = ("Excluded entries are -inf: padding (attention_mask 0), position 0 ([CLS]), the last unmasked "
                 "position of each row ([SEP]), and replacing a token by itself.")


def assert_close_inf(actual, expected: torch.Tensor, what: str, rtol: float, atol_frac: float, hint: str) -> None:
    """Same shape, -inf at exactly the same entries, finite entries close (atol relative to the largest value)."""
    actual = as_tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}")
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    excluded = torch.isneginf(expected)
    if torch.isnan(actual).any() or torch.isposinf(actual).any():
        raise CheckFailed(f"{what}: the result contains NaN or +inf. {hint}")
    wrong_inf = torch.isneginf(actual) != excluded
    if wrong_inf.any():
        b, t, v = wrong_inf.nonzero()[0].tolist()
        should = "-inf (excluded)" if excluded[b, t, v] else f"finite ({expected[b, t, v].item():.4g})"
        raise CheckFailed(f"{what}: entry [{b}, {t}, {v}] should be {should}, got {actual[b, t, v].item():.4g} "
                          f"({int(wrong_inf.sum())} entries differ in being excluded). {EXCLUDED_HINT}")
    finite = ~excluded
    if finite.any():
        scale = expected[finite].abs().max().item() or 1.0
        diff = (actual[finite] - expected[finite]).abs()
        bound = atol_frac * scale + rtol * expected[finite].abs()
        if (diff > bound).any():
            raise CheckFailed(f"{what}: values differ from the reference (max abs difference {diff.max().item():.3g}, "
                              f"reference magnitude {scale:.3g}; {(diff > bound).float().mean().item():.0%} of the "
                              f"finite entries off). {hint}")


def inf_reference_check(name, task, message, inputs, reference, rtol, atol_frac, hint):
    def expected(case: Case) -> torch.Tensor:
        return reference(**copy_kwargs(case.kwargs)).detach()

    def compare(fn, case: Case, expected_value) -> None:
        assert_close_inf(fn(**case.kwargs), expected_value, f"{task} on {case.description}", rtol, atol_frac, hint)

    return prepared_check(name, task, message, inputs, expected, compare)


# ------------------------------------------------------------------ flip_scores

FLIP_HINT = ("Score (e_v − e_i)·∂S/∂e_i with S the pre-softmax logit of each row's target, e_i the word embedding "
             "of the current token (get_input_embeddings()(input_ids)), e_v the row of get_input_embeddings().weight "
             "of candidate v; the model gets inputs_embeds= and attention_mask=.")


def flip_cases() -> list[Case]:
    cases = []
    cand = ids_of(WORDS)
    for name, target in ((TINY, torch.tensor([1, 1, 0])), (MINILM, 1)):
        cases.append(Case(f"{name}, 3 padded sentences, targets {target.tolist() if torch.is_tensor(target) else target}, "
                          f"12 candidates (one already in a sentence)",
                          dict(model=model(name), **encode(BATCH), target=target, candidate_ids=cand.clone())))
    cases.append(Case(f"{MINILM}, 2 padded sentences with word pieces ('headaches' = 2 tokens), target 0, "
                      "4 candidates", dict(model=model(MINILM), **encode(PIECES), target=0,
                                           candidate_ids=ids_of(["great", "fine", "awful", "not"]))))
    return cases


inf_reference_check("lab08.flip_scores.reference", "flip_scores",
                    "matches the reference first-order flip scores on tiny-bert and MiniLM (padded batches, word pieces)",
                    flip_cases, ref.flip_scores, rtol=1e-3, atol_frac=1e-4, hint=FLIP_HINT)


def linear_cases() -> list[Case]:
    return [Case("a classifier linear in its embeddings (logits = Σ_t a_t·E_t·W + b over unmasked positions), "
                 "3 padded sentences, targets [0, 1, 1], 5 candidates",
                 dict(model=linear_text(), **encode(BATCH), target=torch.tensor([0, 1, 1]),
                      candidate_ids=ids_of(["awful", "great", "superb", "the", "table"]))),
            Case("the same linear classifier but one that does NOT ignore padding (padding changes its output), "
                 "3 padded sentences, target 0, 4 candidates",
                 dict(model=linear_text(masked=False), **encode(BATCH), target=0,
                      candidate_ids=ids_of(["awful", "lovely", "kind", "dull"])))]


def linear_expected(case: Case) -> torch.Tensor:
    """For a model linear in its embeddings the first-order change is exact: a_t·(e_v − e_i)·W[target]."""
    kw = case.kwargs
    m, ids, mask, cand = kw["model"], kw["input_ids"], kw["attention_mask"], kw["candidate_ids"]
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(ids))
    w = m.head.weight.detach()[target]                                   # (B, D)
    table = m.embeddings.weight.detach()
    a = m.weights(mask, ids.shape[1]).expand(len(ids), -1)               # (B, T)
    gain_v = (table[cand] @ w.T).T                                      # (B, V)
    gain_i = (table[ids] * w[:, None, :]).sum(-1)                        # (B, T)
    out = a[..., None] * (gain_v[:, None, :] - gain_i[..., None])
    return out.masked_fill(~allowed_entries(ids, mask, cand), float("-inf"))


def flip_linear(fn, case: Case) -> None:
    assert_close_inf(fn(**case.kwargs), linear_expected(case), f"flip_scores on {case.description}", 1e-4, 1e-5,
                     "For this model the first-order estimate is the exact change a_t·(e_v − e_i)·W[target]. "
                     + FLIP_HINT)


def flip_per_sentence(fn, case: Case) -> None:
    """Each sentence alone (no padding) gives its row of the padded batch."""
    kw = case.kwargs
    batched = as_tensor(fn(**kw), "flip_scores")
    mask = kw["attention_mask"]
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(mask))
    for i in range(len(mask)):
        n = int(mask[i].sum())
        single = dict(kw, input_ids=kw["input_ids"][i:i + 1, :n], attention_mask=mask[i:i + 1, :n],
                      target=int(target[i]))
        alone = as_tensor(fn(**single), "flip_scores")
        assert_close_inf(batched[i:i + 1, :n], alone, f"flip_scores: sentence {i} in a padded batch vs alone "
                         f"({case.description})", 1e-3, 1e-3,
                         "Pass the attention_mask to the model, and use each row's own target.")


def no_side_effects_twice(task: str, compare_twice):
    def prop(fn, case: Case) -> None:
        first = fn.call(dict(case.kwargs), observe=True)
        check_no_side_effects(task, first.facts)
        compare_twice(fn(**case.kwargs), first.output, case)
    return prop


def same_scores(second, first, case: Case) -> None:
    assert_close_inf(second, as_tensor(first, "flip_scores"), f"flip_scores called twice on {case.description}",
                     1e-4, 1e-6, "The second call differs: are gradients accumulating between calls?")


def detached_scores(fn, case: Case) -> None:
    """Scores are numbers, not a graph: nothing in the result requires grad."""
    if fn.call(case.kwargs, post=carries_graph).output:
        raise CheckFailed(f"flip_scores on {case.description} returned a tensor that requires grad: build the scores "
                          "from the gradient and DETACHED embeddings (embedding table and inputs_embeds .detach()), "
                          "so the result carries no autograd graph.")


property_check("lab08.flip_scores.linear", "flip_scores",
               "exact on a classifier linear in its embeddings; padding, [CLS], [SEP] and no-op edits excluded",
               linear_cases, flip_linear)

property_check("lab08.flip_scores.properties", "flip_scores",
               "batch = each sentence alone; model and inputs untouched; repeatable; no autograd graph",
               lambda: flip_cases()[:1],
               all_of(no_side_effects_twice("flip_scores", same_scores), flip_per_sentence, detached_scores))


# ------------------------------------------------------------------ exhaustive_one_edit

EXHAUSTIVE_HINT = ("Entry [b, t, v] is S(row b with token t replaced by candidate v) − S(row b), S the pre-softmax "
                   "logit of the row's target, evaluated with the model (input_ids=, attention_mask=); "
                   "-inf where the edit is excluded.")


def exhaustive_cases() -> list[Case]:
    return [
        Case(f"{TINY}, 3 padded sentences, targets [1, 1, 0], 12 candidates, batch_size=64",
             dict(model=model(TINY), **encode(BATCH), target=torch.tensor([1, 1, 0]), candidate_ids=ids_of(WORDS),
                  batch_size=64)),
        Case(f"{MINILM}, 2 padded sentences with word pieces, target 1, 6 candidates, batch_size=16",
             dict(model=model(MINILM), **encode(PIECES), target=1,
                  candidate_ids=ids_of(["great", "awful", "fine", "not", "terrible", "good"]), batch_size=16)),
    ]


inf_reference_check("lab08.exhaustive_one_edit.reference", "exhaustive_one_edit",
                    "matches the exact change of the target logit for every single replacement (tiny-bert, MiniLM)",
                    exhaustive_cases, ref.exhaustive_one_edit, rtol=1e-3, atol_frac=1e-4, hint=EXHAUSTIVE_HINT)


def exhaustive_linear(fn, case: Case) -> None:
    assert_close_inf(fn(**dict(case.kwargs, batch_size=7)), linear_expected(case),
                     f"exhaustive_one_edit on {case.description}, batch_size=7", 1e-4, 1e-5,
                     "For this model every single replacement changes the logit by exactly a_t·(e_v − e_i)·W[target]. "
                     + EXHAUSTIVE_HINT)


property_check("lab08.exhaustive_one_edit.linear", "exhaustive_one_edit",
               "exact on a classifier linear in its embeddings, padding included or not",
               linear_cases, exhaustive_linear)


def exhaustive_batched(fn, case: Case) -> None:
    kw = dict(case.kwargs, batch_size=32)
    n_edits = int(allowed_entries(kw["input_ids"], kw["attention_mask"], kw["candidate_ids"]).sum())
    _, calls, rows = count_forward(fn, kw)
    most = math.ceil(n_edits / 32) + 1
    if rows > 32 or calls > most:
        raise CheckFailed(f"exhaustive_one_edit made {calls} forward passes of up to {rows} rows for {n_edits} edited "
                          f"sentences with batch_size=32: expected at most {most} passes (the edited copies in "
                          "batches of at most batch_size rows, plus one for the unedited sentences).")


def same_exact(second, first, case: Case) -> None:
    assert_close_inf(second, as_tensor(first, "exhaustive_one_edit"),
                     f"exhaustive_one_edit called twice on {case.description}", 1e-4, 1e-6, "The second call differs.")


property_check("lab08.exhaustive_one_edit.properties", "exhaustive_one_edit",
               "edited copies batched (batch_size rows per forward pass); model and inputs untouched",
               lambda: exhaustive_cases()[:1],
               all_of(no_side_effects_twice("exhaustive_one_edit", same_exact), exhaustive_batched))


# ------------------------------------------------------------------ greedy_counterfactual

GREEDY_HINT = ("Each step: flip_scores of the current sentence, shortlist the top_k finite scores, evaluate every "
               "shortlisted edit exactly in one batch, apply the one with the largest target logit; a position already "
               "edited is not edited again; stop as soon as the prediction is `target` or after max_edits edits.")

GREEDY_WORDS = ("adorable", "calming", "elegant", "generous", "neat", "superb", "wise", "brutal", "crude", "dumb",
                "grim", "lame", "rotten", "vile", "nice", "bad")


def normalise_edits(edits, what: str) -> list[tuple[int, str, str]]:
    if not isinstance(edits, (list, tuple)):
        raise CheckFailed(f"{what}: the edit list should be a list of (position, old_token, new_token), "
                          f"got {type(edits).__name__}.")
    out = []
    for e in edits:
        if not isinstance(e, (list, tuple)) or len(e) != 3:
            raise CheckFailed(f"{what}: each edit should be a tuple (position, old_token, new_token), got {e!r:.80}.")
        p, old, new = e
        if isinstance(p, torch.Tensor) and p.numel() == 1:
            p = p.item()
        if isinstance(p, float) and p.is_integer():
            p = int(p)
        if not isinstance(p, int) or isinstance(p, bool) or not isinstance(old, str) or not isinstance(new, str):
            raise CheckFailed(f"{what}: each edit should be (int position, str old token, str new token), got {e!r:.80}.")
        out.append((p, old, new))
    return out


def unpack_result(result, what: str) -> tuple[str, list]:
    if not isinstance(result, (list, tuple)) or len(result) != 2 or not isinstance(result[0], str):
        raise CheckFailed(f"{what}: expected (edited sentence as a str, edit list), got {type(result).__name__}.")
    return result[0], normalise_edits(result[1], what)


def ids_of_sentence(sentence: str) -> list[int]:
    return tokenizer()(sentence)["input_ids"]


def greedy_expected(case: Case):
    sentence, edits = ref.greedy_counterfactual(**copy_kwargs(case.kwargs))
    return ids_of_sentence(sentence), normalise_edits(edits, "the reference")


def greedy_compare(fn, case: Case, expected) -> None:
    exp_ids, exp_edits = expected
    what = f"greedy_counterfactual on {case.description}"
    sentence, edits = unpack_result(fn(**case.kwargs), what)
    if edits != exp_edits:
        cause = ""
        positions = [p for p, _, _ in edits]
        if len(set(positions)) < len(positions):
            cause = (" A position is edited twice: once a position has been edited, mask it out of later steps "
                     "(and stop when no editable position is left).")
        elif len(edits) == len(exp_edits) + 1 and edits[:-1] == exp_edits:
            cause = " One edit too many: check whether the prediction is already `target` before each step."
        elif len(edits) > len(exp_edits) and edits[:len(exp_edits)] == exp_edits:
            cause = (f" {len(edits) - len(exp_edits)} edits too many: the search must stop as soon as the prediction "
                     "is `target` (test it before every step, also before the first) — max_edits is a budget, not a "
                     "number of steps to make.")
        elif len(edits) + 1 == len(exp_edits) and exp_edits[:-1] == edits:
            cause = " One edit too few: stop only when the prediction IS the target (or the budget is spent)."
        raise CheckFailed(f"{what}: expected the edits {exp_edits}, got {edits}.{cause} {GREEDY_HINT}")
    if ids_of_sentence(sentence) != exp_ids:
        raise CheckFailed(f"{what}: the edits are right but the returned sentence {sentence!r} does not tokenise to the "
                          "edited tokens: return tokenizer.convert_tokens_to_string(edited tokens without [CLS]/[SEP]).")


def greedy_case(name, sentence, target, words=GREEDY_WORDS, max_edits=3, top_k=5, extra=""):
    m = model(name)
    return Case(f"{name}, {sentence!r} → class {target}, {len(words)} candidates, max_edits={max_edits}, "
                f"top_k={top_k}{extra}",
                dict(model=m, tokenizer=m.tokenizer, sentence=sentence, target=target, candidates=list(words),
                     max_edits=max_edits, top_k=top_k))


def step_cases() -> list[Case]:
    return [
        greedy_case(TINY, "the film was awful .", 1, max_edits=1, top_k=5),
        greedy_case(TINY, "the staff seemed rude and the food was cold .", 1, max_edits=1, top_k=1),
        greedy_case(TINY, "this is a lovely hotel .", 0, max_edits=1, top_k=8),
        greedy_case(MINILM, "the film was awful .", 1, max_edits=1, top_k=5),
        greedy_case(MINILM, "this is a lovely hotel .", 0, max_edits=1, top_k=1),
    ]


prepared_check("lab08.greedy_counterfactual.step", "greedy_counterfactual",
               "one greedy step picks the reference edit (tiny-bert and MiniLM, top_k = 1, 5, 8)",
               step_cases, greedy_expected, greedy_compare)


def search_cases() -> list[Case]:
    return [
        greedy_case(MINILM, "the weekend felt favorable and merry .", 0),
        greedy_case(MINILM, "i thought the lecture was vile and the room was dirty .", 1, top_k=3),
        greedy_case(TINY, "this is a miserable lecture .", 1),
        greedy_case(TINY, "in my opinion the song felt rather dangerous .", 1, max_edits=2, top_k=4),
        greedy_case(TINY, "the film was awful .", 0, extra=" (already predicted as the target: no edit)"),
        greedy_case(TINY, "the film was awful .", 1, max_edits=0, extra=" (no budget: no edit)"),
        greedy_case(TINY, "awful film", 1, words=("terrible", "bad", "dull", "awful"), max_edits=4, top_k=3,
                    extra=" (only 2 editable tokens, negative candidates: the search runs out of positions before "
                          "max_edits)"),
    ]


prepared_check("lab08.greedy_counterfactual.search", "greedy_counterfactual",
               "the whole greedy search gives the reference edits and stops where it should",
               search_cases, greedy_expected, greedy_compare)

OUTCOME_SENTENCES = ("the hotel was awful .", "this is a miserable lecture .", "the staff seemed rude .",
                     "i thought the meal was delicious .", "the concert was superb and the music fantastic .",
                     "this is a disastrous game .")


def outcome_cases() -> list[Case]:
    words = ("wonderful", "great", "lovely", "superb", "kind", "awful", "terrible", "rude", "dreadful", "ugly")
    m = model(TINY)
    return [Case(f"{TINY}, 6 lexicon sentences, each towards the other class, 10 candidates, max_edits=3, top_k=10",
                 dict(model=m, tokenizer=m.tokenizer, sentences=OUTCOME_SENTENCES, candidates=list(words),
                      max_edits=3, top_k=10))]


def run_outcomes(fn, kw) -> tuple[int, int, list]:
    """(flipped, edits over the flipped ones, per-sentence results) with every result verified here."""
    m = kw["model"]
    targets = (1 - predict(m, kw["sentences"])).tolist()
    flipped, edits, rows = 0, 0, []
    for sentence, target in zip(kw["sentences"], targets):
        args = dict(model=m, tokenizer=kw["tokenizer"], sentence=sentence, target=target,
                    candidates=kw["candidates"], max_edits=kw["max_edits"], top_k=kw["top_k"])
        out, changes = unpack_result(fn(**args), f"greedy_counterfactual on {sentence!r}")
        ok = int(predict(m, [out])[0]) == target
        flipped += ok
        edits += len(changes) if ok else 0
        rows.append((sentence, out, ok, len(changes)))
    return flipped, edits, rows


def outcome_expected(case: Case):
    return run_outcomes(lambda **kw: ref.greedy_counterfactual(**kw), case.kwargs)[:2]


def outcome_compare(fn, case: Case, expected) -> None:
    ref_flipped, ref_edits = expected
    flipped, edits, rows = run_outcomes(fn, case.kwargs)
    n = len(rows)
    if flipped < ref_flipped - 1:
        raise CheckFailed(f"greedy_counterfactual on {case.description}: {flipped}/{n} returned sentences are predicted "
                          f"as the target (checked with the model here); the reference reaches {ref_flipped}/{n}. "
                          + GREEDY_HINT)
    if flipped and edits > ref_edits + 1:
        raise CheckFailed(f"greedy_counterfactual on {case.description}: {edits} edits in total for the flipped "
                          f"sentences, the reference needs {ref_edits} (at most one more is accepted). " + GREEDY_HINT)


prepared_check("lab08.greedy_counterfactual.outcome", "greedy_counterfactual",
               "flips as many sentences as the reference (±1) with at most one edit more (verified with the model)",
               outcome_cases, outcome_expected, outcome_compare)


def greedy_consistent(fn, case: Case) -> None:
    """Edits touch only real tokens, each edit's old token is the token there, the sentence is the edited one;
    the model is left unchanged; a second call gives the same result."""
    kw = case.kwargs
    first = fn.call(dict(kw), observe=True)
    check_no_side_effects("greedy_counterfactual", first.facts)
    what = f"greedy_counterfactual on {case.description}"
    sentence, edits = unpack_result(first.output, what)
    tok = tokenizer()
    tokens = tok.convert_ids_to_tokens(ids_of_sentence(kw["sentence"]))
    if len(edits) > kw["max_edits"]:
        raise CheckFailed(f"{what}: {len(edits)} edits with max_edits={kw['max_edits']}.")
    if len({p for p, _, _ in edits}) < len(edits):
        raise CheckFailed(f"{what}: the edits {edits} change a position twice: each position is edited at most once.")
    for p, old, new in edits:
        if not 1 <= p <= len(tokens) - 2:
            raise CheckFailed(f"{what}: an edit at position {p} of {len(tokens)} tokens: [CLS] (0) and [SEP] "
                              f"({len(tokens) - 1}) must never be edited. Positions count from [CLS] = 0.")
        if tokens[p] != old:
            raise CheckFailed(f"{what}: the edit {(p, old, new)} says the old token is {old!r}, but the token at "
                              f"position {p} is {tokens[p]!r} at that point (positions count from [CLS] = 0).")
        if new not in kw["candidates"] or new == old:
            raise CheckFailed(f"{what}: the edit {(p, old, new)} does not replace the token by another candidate.")
        tokens[p] = new
    if ids_of_sentence(sentence) != tok.convert_tokens_to_ids(tokens):
        raise CheckFailed(f"{what}: the returned sentence {sentence!r} is not the original with the listed edits "
                          "applied.")
    again = unpack_result(fn(**kw), what)
    if again != (sentence, edits):
        raise CheckFailed(f"{what}: two calls gave different results ({edits} then {again[1]}): the search must be "
                          "deterministic.")


def linear_greedy_case() -> list[Case]:
    m = linear_text()
    return [greedy_case(MINILM, "although the room was lovely , the service was terrible .", 1, max_edits=4, top_k=6),
            Case("a classifier linear in its embeddings (no tokenizer inside; the tokenizer passed), "
                 "'the room was lovely .' towards class 0, 8 candidates, max_edits=4, top_k=3",
                 dict(model=m, tokenizer=tokenizer(), sentence="the room was lovely .", target=0,
                      candidates=["awful", "great", "superb", "table", "the", "kind", "nasty", "room"],
                      max_edits=4, top_k=3))]


property_check("lab08.greedy_counterfactual.properties", "greedy_counterfactual",
               "edits only real tokens, reports them truthfully, deterministic; model untouched",
               linear_greedy_case, greedy_consistent)


# ------------------------------------------------------------------ flip_rate

RATE_SENTENCES = ("the film was wonderful .", "awful", "the plot was dull but the acting was brilliant .",
                  "although the room was lovely , the service was terrible .", "nice", "this is a horrible app .",
                  "the staff seemed kind and the food was delicious and the view was lovely .")


def rate_cases() -> list[Case]:
    cases = []
    for name in (TINY, MINILM):
        m = model(name)
        cases.append(Case(f"{name}, 7 sentences of very different lengths, target 1, batch_size=3",
                          dict(model=m, tokenizer=m.tokenizer, sentences=list(RATE_SENTENCES), target=1,
                               batch_size=3)))
        cases.append(Case(f"{name}, 7 sentences, per-sentence targets [1, 0, 1, 0, 0, 0, 1] as a list",
                          dict(model=m, tokenizer=m.tokenizer, sentences=list(RATE_SENTENCES),
                               target=[1, 0, 1, 0, 0, 0, 1])))
    m = model(TINY)
    cases.append(Case(f"{TINY}, 4 sentences, per-sentence targets as a tensor, batch_size=64",
                      dict(model=m, tokenizer=m.tokenizer, sentences=list(RATE_SENTENCES[:4]),
                           target=torch.tensor([0, 0, 1, 1]), batch_size=64)))
    cases.append(Case("a classifier linear in its embeddings, 7 sentences, target 0, batch_size=2",
                      dict(model=linear_text(), tokenizer=tokenizer(), sentences=list(RATE_SENTENCES), target=0,
                           batch_size=2)))
    return cases


def number(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailed(f"{what}: expected a number, got {type(value).__name__}.")
    return float(value)


def rate_compare(fn, case: Case, expected) -> None:
    what = f"flip_rate on {case.description}"
    got = number(fn(**case.kwargs), what)
    if abs(got - expected) > 1e-6:
        raise CheckFailed(f"{what}: expected {expected:.4f}, got {got:.4f}. The share of sentences whose predicted "
                          "class (argmax of the logits, padded batches WITH the attention mask) equals the target.")


prepared_check("lab08.flip_rate.reference", "flip_rate",
               "the share of sentences predicted as the target (padded batches, per-sentence targets)",
               rate_cases, lambda case: float(ref.flip_rate(**copy_kwargs(case.kwargs))), rate_compare)


# ------------------------------------------------------------------ edit_distance


def distance_cases() -> list[Case]:
    rng = random.Random(8)
    hand = [([], []), (["a"], []), ([], ["a", "b"]), (list("kitten"), list("sitting")), ("flaw", "lawn"),
            ("the film was awful".split(), "the film was great".split()),
            ("the film was awful".split(), "the awful film".split()),
            ("a b c d".split(), "b c d a".split()), ("abc", "abc")]
    cases = [Case(f"{a!r} vs {b!r}", dict(a=a, b=b)) for a, b in hand]
    for i in range(12):
        a = [rng.choice("abcd") for _ in range(rng.randrange(0, 9))]
        b = [rng.choice("abcd") for _ in range(rng.randrange(0, 9))]
        cases.append(Case(f"random token lists {a} vs {b}", dict(a=a, b=b)))
    return cases


def distance_compare(fn, case: Case, expected) -> None:
    what = f"edit_distance of {case.description}"
    got = number(fn(**case.kwargs), what)
    if got != expected:
        raise CheckFailed(f"{what}: expected {expected}, got {got:g}. Levenshtein distance: the fewest insertions, "
                          "deletions and substitutions (each costs 1) that turn one sequence into the other.")


prepared_check("lab08.edit_distance.reference", "edit_distance",
               "Levenshtein distance on hand-made and random token sequences",
               distance_cases, lambda case: ref.edit_distance(**copy_kwargs(case.kwargs)), distance_compare)


# ------------------------------------------------------------------ minimality_gap


def gap_cases() -> list[Case]:
    cases = []
    for name in (TINY, MINILM):
        m = model(name)
        base = dict(model=m, tokenizer=m.tokenizer)
        cases += [
            Case(f"{name}, 'the film was awful .' → 1, 4 candidates, n_edits=3, max_edits=2",
                 dict(base, sentence="the film was awful .", target=1, candidates=["superb", "table", "dull", "kind"],
                      n_edits=3, max_edits=2)),
            Case(f"{name}, 'the room was lovely and the staff kind .' → 0, 3 candidates, n_edits=2, max_edits=2",
                 dict(base, sentence="the room was lovely and the staff kind .", target=0,
                      candidates=["dirty", "rude", "table"], n_edits=2, max_edits=2)),
            # two negative words and no positive candidate: one substitution is not enough, two are
            Case(f"{name}, 'the film was awful and boring .' → 1, 3 neutral candidates, n_edits=3, max_edits=2 "
                 "(both negative words must go)",
                 dict(base, sentence="the film was awful and boring .", target=1, candidates=["table", "kind", "the"],
                      n_edits=3, max_edits=2)),
        ]
    m = model(TINY)
    base = dict(model=m, tokenizer=m.tokenizer)
    cases += [
        Case(f"{TINY}, a sentence already predicted as the target, n_edits=0",
             dict(base, sentence="the film was awful .", target=0, candidates=["superb", "kind"], n_edits=0,
                  max_edits=2)),
        Case(f"{TINY}, 'the film was awful .' → 1 with neutral candidates only, n_edits=1, max_edits=1",
             dict(base, sentence="the film was awful .", target=1, candidates=["table", "the", "film"], n_edits=1,
                  max_edits=1)),
        Case(f"{TINY}, 'the film was awful .' → 1 with negative candidates only, n_edits=2, max_edits=2",
             dict(base, sentence="the film was awful .", target=1, candidates=["terrible", "bad", "dull"], n_edits=2,
                  max_edits=2)),
        Case(f"{TINY}, 'the film was awful and boring .' → 1, 3 neutral candidates, n_edits=2, max_edits=3",
             dict(base, sentence="the film was awful and boring .", target=1, candidates=["table", "kind", "the"],
                  n_edits=2, max_edits=3)),
        Case(f"{TINY}, 'the staff seemed rude and the food was cold .' → 1, 3 candidates, n_edits=2, max_edits=2, "
             "batch_size=5", dict(base, sentence="the staff seemed rude and the food was cold .", target=1,
                                  candidates=["kind", "warm", "table"], n_edits=2, max_edits=2, batch_size=5)),
        # two edits would flip it, but max_edits=1 allows one: None
        Case(f"{TINY}, 'the film was awful and boring .' → 1, 3 neutral candidates, n_edits=3, max_edits=1",
             dict(base, sentence="the film was awful and boring .", target=1, candidates=["table", "kind", "the"],
                  n_edits=3, max_edits=1)),
        # only the very first substitution (position 1, the first candidate) flips it
        Case(f"{TINY}, 'rude staff .' → 1, candidates ['kind'], n_edits=1, max_edits=1",
             dict(base, sentence="rude staff .", target=1, candidates=["kind"], n_edits=1, max_edits=1, batch_size=2)),
    ]
    tok = m.tokenizer
    pair = PairText(*tok.convert_tokens_to_ids(["kind", "table"]), vocab=len(tok)).eval()
    cases.append(Case("a toy model that predicts 1 only for 'kind' at position 1 AND 'table' at position 2, "
                      "'the film .' → 1, candidates ['kind', 'table'], n_edits=3, max_edits=2",
                      dict(model=pair, tokenizer=tok, sentence="the film .", target=1, candidates=["kind", "table"],
                           n_edits=3, max_edits=2)))
    return cases


def gap_batched(fn, case: Case) -> None:
    """No forward pass sees more than batch_size rows."""
    kw = dict(case.kwargs, batch_size=4)
    _, calls, rows = count_forward(fn, kw)
    if rows > 4:
        raise CheckFailed(f"minimality_gap on {case.description} with batch_size=4 ran the model on {rows} rows at "
                          "once: evaluate the edited sentences in batches of at most batch_size rows.")


def gap_compare(fn, case: Case, expected) -> None:
    what = f"minimality_gap on {case.description}"
    got = fn(**case.kwargs)
    if expected is None:
        if got is not None:
            raise CheckFailed(f"{what}: expected None, got {got!r}: no substitution of at most max_edits tokens "
                              "makes the model predict the target here (the exhaustive search over k = 1, …, max_edits "
                              "finds nothing), and then the answer is None, not a number.")
        return
    if got is None:
        raise CheckFailed(f"{what}: expected {expected}, got None: search k = 1, 2, …, max_edits substitutions "
                          "(distinct editable positions, each by a candidate other than the current token).")
    got = number(got, what)
    if got != expected:
        raise CheckFailed(f"{what}: expected {expected}, got {got:g}. The gap is n_edits − k*, k* the fewest "
                          "substitutions (distinct editable positions, candidates other than the current token) after "
                          "which the prediction is `target`; k* = 0 if it already is.")


prepared_check("lab08.minimality_gap.reference", "minimality_gap",
               "exhaustive minimum number of edits, and the gap to n_edits (tiny-bert and MiniLM)",
               gap_cases, lambda case: ref.minimality_gap(**copy_kwargs(case.kwargs)), gap_compare)

property_check("lab08.minimality_gap.properties", "minimality_gap",
               "the exhaustive search runs in batches of at most batch_size rows",
               lambda: [c for c in gap_cases() if "neutral candidates, n_edits=3, max_edits=2" in c.description][:1],
               gap_batched)


# ------------------------------------------------------------------ counterfactual_image

IMAGE_HINT = ("Adam (lr) on x′ for `steps` steps, loss Σ_batch [CE(f(x′), target) + lam·‖x′ − x‖₁] (summed over the "
              "batch), x′ clamped to [0, 1] after every step, starting from clamp(x + init_noise·ε) with "
              "ε = torch.randn(x.shape, generator=generator).")


def digits(n: int, decoy: bool = False, start: int = 0) -> torch.Tensor:
    x, _ = mnist_batch(start + n, decoy=decoy)
    return x[start:].clone()


def image_cases() -> list[Case]:
    return [
        Case("mnist-cnn, 3 digits → class 9, lam=0.01, 12 steps, lr=0.05",
             dict(model=model("mnist-cnn"), x=digits(3), target=9, lam=0.01, steps=12, lr=0.05)),
        Case("decoy-mnist-cnn, 3 decoy digits → classes [3, 8, 0], lam=0.05, 10 steps, lr=0.02",
             dict(model=model("decoy-mnist-cnn"), x=digits(3, decoy=True, start=3), target=torch.tensor([3, 8, 0]),
                  lam=0.05, steps=10, lr=0.02)),
        Case("mnist-cnn, 2 digits → class 1, lam=0.1, 8 steps, lr=0.05, init_noise=0.1 with a generator seeded 3",
             dict(model=model("mnist-cnn"), x=digits(2, start=6), target=1, lam=0.1, steps=8, lr=0.05,
                  init_noise=0.1, generator=torch.Generator().manual_seed(3))),
    ]


def image_expected(case: Case):
    kw = copy_kwargs(case.kwargs)
    if "generator" in kw:
        kw["generator"] = torch.Generator().manual_seed(3)
    xp, flipped = ref.counterfactual_image(**kw)
    return xp.detach(), flipped


def unpack_image(result, x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(result, (list, tuple)) or len(result) != 2:
        raise CheckFailed(f"{what}: expected a pair (x_cf, flipped), got {type(result).__name__}.")
    xp, flipped = as_tensor(result[0], what), as_tensor(result[1], what)
    if tuple(xp.shape) != tuple(x.shape):
        raise CheckFailed(f"{what}: x_cf should have the shape of x {tuple(x.shape)}, got {tuple(xp.shape)}.")
    if tuple(flipped.shape) != (x.shape[0],) or flipped.dtype != torch.bool:
        raise CheckFailed(f"{what}: `flipped` should be a bool tensor of shape ({x.shape[0]},), got "
                          f"{flipped.dtype} {tuple(flipped.shape)}.")
    return xp.float(), flipped


def image_compare(fn, case: Case, expected) -> None:
    what = f"counterfactual_image on {case.description}"
    kw = dict(case.kwargs)
    if "generator" in kw:
        kw["generator"] = torch.Generator().manual_seed(3)
    xp, flipped = unpack_image(fn(**kw), kw["x"], what)
    assert_close(xp, expected[0], what, 1e-3, 2e-3, IMAGE_HINT)
    if not torch.equal(flipped, expected[1]):
        raise CheckFailed(f"{what}: `flipped` is {flipped.tolist()}, expected {expected[1].tolist()} "
                          "(argmax of the model's logits on x_cf equals the target).")


prepared_check("lab08.counterfactual_image.reference", "counterfactual_image",
               "matches the reference optimisation on both MNIST CNNs (a few Adam steps, L1 penalty, clamping)",
               image_cases, image_expected, image_compare)


class LinearImage(nn.Module):
    """logits = W·flatten(x) + b: one Adam step moves each pixel by lr·sign(∂loss/∂x) (then clamped)."""

    def __init__(self, pixels: int = 16, classes: int = 3, seed: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(pixels, classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(classes, pixels, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def image_linear(fn, case: Case) -> None:
    m = LinearImage().eval()
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 1, 4, 4, generator=g)
    target = torch.tensor([0, 2, 1])
    xp, flipped = unpack_image(fn(model=m, x=x, target=target, lam=0.5, steps=1, lr=0.1), x,
                               "counterfactual_image on a linear model, 1 step")
    with torch.no_grad():
        p = m(x).softmax(1)
    grad = ((p - nn.functional.one_hot(target, 3).float()) @ m.lin.weight.detach()).reshape(x.shape)
    expected = (x - 0.1 * grad / (grad.abs() + 1e-8)).clamp(0, 1)
    assert_close(xp, expected, "counterfactual_image on a linear model, 3 images of 4×4, lam=0.5, 1 Adam step, lr=0.1",
                 1e-4, 1e-5, "Adam's first step moves every pixel by lr·sign(gradient); at x′ = x the L1 term has "
                 "gradient 0; then clamp to [0, 1]. " + IMAGE_HINT)
    xp0, flipped0 = unpack_image(fn(model=m, x=x, target=target, lam=0.5, steps=0, lr=0.1), x,
                                 "counterfactual_image with steps=0")
    assert_close(xp0, x, "counterfactual_image with steps=0 (x_cf must be x)", 0, 1e-7, IMAGE_HINT)
    if not torch.equal(flipped0, m(x).argmax(1) == target):
        raise CheckFailed("counterfactual_image with steps=0: `flipped` must say whether the model predicts the target "
                          "for x_cf (= x here).")


property_check("lab08.counterfactual_image.linear", "counterfactual_image",
               "one Adam step on a linear model is exact; zero steps return x",
               lambda: [Case("a linear model", {})], image_linear)


def image_outcome_cases() -> list[Case]:
    from xailab.datasets.mnist import load_decoy_mnist, load_mnist

    x, y = load_mnist("test")
    fours = x[y == 4][:3].clone()
    xd, yd, _ = load_decoy_mnist("test")
    sevens = xd[yd == 7][:2].clone()
    return [Case("mnist-cnn, three 4s → class 9, lam=0.01, 60 steps, lr=0.05",
                 dict(model=model("mnist-cnn"), x=fours, target=9, lam=0.01, steps=60, lr=0.05)),
            Case("decoy-mnist-cnn, two decoy 7s → class 1, lam=0.01, 60 steps, lr=0.05",
                 dict(model=model("decoy-mnist-cnn"), x=sevens, target=1, lam=0.01, steps=60, lr=0.05))]


def image_outcome_expected(case: Case):
    xp, flipped = ref.counterfactual_image(**copy_kwargs(case.kwargs))
    return (xp - case.kwargs["x"]).abs().flatten(1).sum(1), flipped


def image_outcome_compare(fn, case: Case, expected) -> None:
    ref_l1, ref_flipped = expected
    kw = case.kwargs
    what = f"counterfactual_image on {case.description}"
    xp, _ = unpack_image(fn(**kw), kw["x"], what)
    if xp.min() < 0 or xp.max() > 1:
        raise CheckFailed(f"{what}: x_cf has values in [{xp.min():.3f}, {xp.max():.3f}]: clamp to [0, 1] after every step.")
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(xp))
    with torch.no_grad():
        reached = kw["model"](xp).argmax(1) == target
    l1 = (xp - kw["x"]).abs().flatten(1).sum(1)
    for i in range(len(xp)):
        if ref_flipped[i] and not reached[i]:
            raise CheckFailed(f"{what}: image {i} is not classified as the target after the optimisation (checked with "
                              "the model here), the reference's is. " + IMAGE_HINT)
        if ref_flipped[i] and l1[i] > 1.2 * ref_l1[i]:
            raise CheckFailed(f"{what}: image {i} changed by L1 {l1[i]:.2f}, more than 1.2× the reference's "
                              f"{ref_l1[i]:.2f}: the penalty is lam·Σ|x′ − x| (L1, not L2). " + IMAGE_HINT)


prepared_check("lab08.counterfactual_image.outcome", "counterfactual_image",
               "valid counterfactuals (checked with the model) within 1.2× the reference's L1 distance",
               image_outcome_cases, image_outcome_expected, image_outcome_compare)


def image_properties(fn, case: Case) -> None:
    kw = case.kwargs
    what = f"counterfactual_image on {case.description}"
    first = fn.call(dict(kw, generator=torch.Generator().manual_seed(1)), observe=True, seed=0)
    check_no_side_effects("counterfactual_image", first.facts)
    x = kw["x"]
    xp, flipped = unpack_image(first.output, x, what)
    if xp.min() < 0 or xp.max() > 1:
        raise CheckFailed(f"{what}: x_cf has values in [{xp.min():.3f}, {xp.max():.3f}]: clamp x′ to [0, 1] after every "
                          "step (and the start).")
    target = torch.as_tensor(kw["target"]).reshape(-1).expand(len(x))
    with torch.no_grad():
        truth = kw["model"](xp).argmax(1) == target
    if not torch.equal(flipped, truth):
        raise CheckFailed(f"{what}: `flipped` is {flipped.tolist()} but the model predicts the target for "
                          f"{truth.tolist()} of the returned images.")
    again, _ = unpack_image(fn.call(dict(kw, generator=torch.Generator().manual_seed(1)), seed=7).output, x, what)
    assert_close(again, xp, f"{what}, twice with a generator seeded 1 (the global random state differing)", 1e-5, 1e-6,
                 "Draw the starting noise from `generator`: torch.randn(x.shape, generator=generator).")
    other, _ = unpack_image(fn(**dict(kw, generator=torch.Generator().manual_seed(2))), x, what)
    if torch.allclose(other, xp, rtol=1e-5, atol=1e-6):
        raise CheckFailed(f"{what}: the same result for generators seeded 1 and 2 with init_noise > 0: the starting "
                          "noise must come from `generator`.")
    plain = dict(kw, init_noise=0.0, generator=None)
    batched, _ = unpack_image(fn(**plain), x, what)
    for i in range(len(x)):
        row, _ = unpack_image(fn(**dict(plain, x=x[i:i + 1], target=int(target[i]))), x[i:i + 1], what)
        assert_close(batched[i:i + 1], row, f"counterfactual_image: image {i} of a batch vs alone ({case.description}, "
                     "init_noise=0)", 1e-3, 2e-3,
                     "Sum the loss over the batch (not the mean): each image's optimisation must not depend on the "
                     "others.")


def image_detached(fn, case: Case) -> None:
    if fn.call(dict(case.kwargs, steps=2), post=carries_graph).output:
        raise CheckFailed(f"counterfactual_image on {case.description}: the returned x′ requires grad: return it "
                          "detached (xp.detach()), a plain image.")


property_check("lab08.counterfactual_image.properties", "counterfactual_image",
               "x′ in [0, 1] and detached; `flipped` is true; noise from the generator; batch = per image; model and "
               "x untouched",
               lambda: [Case("mnist-cnn, 2 digits → classes [1, 7], lam=0.05, 6 steps, lr=0.05, init_noise=0.2",
                             dict(model=model("mnist-cnn"), x=digits(2, start=10), target=torch.tensor([1, 7]),
                                  lam=0.05, steps=6, lr=0.05, init_noise=0.2))],
               all_of(image_properties, image_detached))


# ------------------------------------------------------------------ nearest_unlike_neighbour


def nun_cases() -> list[Case]:
    from xailab.datasets.mnist import load_mnist

    x, y = load_mnist("train")
    data, labels = x[:600].clone(), y[:600].clone()
    return [
        Case("6 test digits, 600 training digits, targets [9, 4, 1, 7, 0, 3]",
             dict(x=digits(6), dataset=data, labels=labels, target=torch.tensor([9, 4, 1, 7, 0, 3]))),
        Case("4 test digits, 600 training digits, class 8 for all",
             dict(x=digits(4, start=6), dataset=data, labels=labels, target=8)),
    ]


def nun_compare(fn, case: Case, expected) -> None:
    what = f"nearest_unlike_neighbour on {case.description}"
    got = as_tensor(fn(**case.kwargs), what)
    if tuple(got.shape) != tuple(expected.shape) or got.is_floating_point():
        raise CheckFailed(f"{what}: expected integer indices of shape {tuple(expected.shape)}, got {got.dtype} "
                          f"{tuple(got.shape)}.")
    if not torch.equal(got.long(), expected):
        raise CheckFailed(f"{what}: expected indices {expected.tolist()}, got {got.tolist()}: the index (into `dataset`) "
                          "of the training image with label `target` closest to each x in L2 distance.")


prepared_check("lab08.nearest_unlike_neighbour.reference", "nearest_unlike_neighbour",
               "finds the reference neighbours among MNIST training digits",
               nun_cases, lambda case: ref.nearest_unlike_neighbour(**copy_kwargs(case.kwargs)), nun_compare)


def nun_exact(fn, case: Case) -> None:
    data = torch.tensor([[3.0, 0.0, 0.0, 0.0],    # 0: class 2 — from 0: squared L2 9, L1 3
                         [1.5, 1.5, 1.5, 0.0],    # 1: class 2 — from 0: squared L2 6.75, L1 4.5
                         [1.0, 1.0, 1.0, 1.0],    # 2: class 0
                         [1.0, 1.0, 1.0, 1.0],    # 3: class 0, the same image as 2
                         [0.0, 0.0, 0.0, 0.0],    # 4: class 1
                         [0.0, 0.0, 0.0, 0.5]])   # 5: class 1
    labels = torch.tensor([2, 2, 0, 0, 1, 1])
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]).reshape(3, 1, 2, 2)
    cases = [(x[:1], 2, [1], "image 0 → class 2: the closest in L2 is index 1, the closest in L1 index 0"),
             (x, torch.tensor([2, 0, 1]), [1, 2, 5], "per-example targets; images 2 and 3 tie → the lower index"),
             (x, 1, [4, 5, 5], "class 1 for all")]
    for xs, target, expected, why in cases:
        got = as_tensor(fn(x=xs, dataset=data.reshape(6, 1, 2, 2), labels=labels, target=target),
                        "nearest_unlike_neighbour")
        if tuple(got.shape) != (len(expected),) or got.tolist() != expected:
            raise CheckFailed(f"nearest_unlike_neighbour on hand-made 2×2 images ({why}): expected {expected}, got "
                              f"{got.tolist()}. Squared L2 distance over all pixels; only images whose label is the "
                              "target; ties → the lowest index.")


property_check("lab08.nearest_unlike_neighbour.properties", "nearest_unlike_neighbour",
               "exact on hand-made images (L2, not L1; per-example targets; ties → lowest index); inputs untouched",
               lambda: nun_cases()[1:],
               all_of(nun_exact, lambda fn, case: check_no_side_effects(
                   "nearest_unlike_neighbour", fn.call(dict(case.kwargs), observe=True).facts)))
