"""The Lab 8 answer key against slow, obviously correct re-implementations: central finite differences along
e_v − e_i (tiny-bert in float64) and the exact change on a classifier linear in its embeddings, plain loops
over positions × candidates, the recursive definition of the Levenshtein distance, brute-force searches
one sentence at a time, a loop-written Adam run, and nearest neighbours by a double loop."""
import copy
import functools
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from grader.answers import lab08 as ref
from grader.checks import lab08 as checks
from grader.checks import run_check
from grader.fixtures import mnist_batch, model

TINY, MINILM = "tiny-bert-sentiment", "minilm-sentiment"
NEG_INF = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread")  # the slow versions are fastest on one thread


@pytest.fixture(scope="module")
def tiny64():
    """A float64 copy of tiny-bert (the cached model is left alone)."""
    return copy.deepcopy(model(TINY)).double().eval()


def excluded_by_hand(ids_row, mask_row, t, c) -> bool:
    """An edit is excluded at [CLS] (0), at the last real token ([SEP]), at padding, and when it changes nothing."""
    n = int(sum(mask_row.tolist()))
    return t == 0 or t >= n - 1 or int(ids_row[t]) == c


def target_logit(net, ids, mask, target) -> float:
    with torch.no_grad():
        return float(net(input_ids=ids[None], attention_mask=mask[None])[0, target])


# ------------------------------------------------------------------ flip_scores


def test_flip_scores_by_central_differences_along_e_v_minus_e_i(tiny64):
    """(S(e + ε(e_v − e_i) at t) − S(e − ε(e_v − e_i) at t)) / 2ε, one entry at a time, in float64."""
    batch = checks.encode(checks.BATCH)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cand = checks.ids_of(["awful", "great", "table", "the", "superb"])  # "the" occurs: a no-op edit to exclude
    target = torch.tensor([1, 0, 1])
    fast = ref.flip_scores(tiny64, ids, mask, target, cand)
    assert fast.shape == (3, ids.shape[1], len(cand))
    table = tiny64.get_input_embeddings().weight.detach()
    eps = 1e-4
    checked = 0
    for b in range(len(ids)):
        with torch.no_grad():
            embeds = tiny64.get_input_embeddings()(ids[b:b + 1])
        for t in range(ids.shape[1]):
            for v, c in enumerate(cand.tolist()):
                if excluded_by_hand(ids[b], mask[b], t, c):
                    assert fast[b, t, v] == NEG_INF, (b, t, v)
                    continue
                step = torch.zeros_like(embeds)
                step[0, t] = eps * (table[c] - table[ids[b, t]])
                with torch.no_grad():
                    up = tiny64(inputs_embeds=embeds + step, attention_mask=mask[b:b + 1])[0, target[b]]
                    down = tiny64(inputs_embeds=embeds - step, attention_mask=mask[b:b + 1])[0, target[b]]
                slow = float(up - down) / (2 * eps)
                assert float(fast[b, t, v]) == pytest.approx(slow, rel=1e-5, abs=1e-6), (b, t, v)
                checked += 1
    assert checked > 80


@pytest.mark.parametrize("masked", [True, False])
def test_flip_scores_is_the_exact_change_on_a_linear_toy(masked):
    """For logits linear in the embeddings, any step along e_v − e_i is exact: replace the token and difference."""
    net = checks.linear_text(masked=masked).double()
    batch = checks.encode(checks.BATCH)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cand = checks.ids_of(["awful", "great", "superb", "the", "table"])
    target = torch.tensor([0, 1, 1])
    fast = ref.flip_scores(net, ids, mask, target, cand)
    table = net.get_input_embeddings().weight.detach()
    for b in range(len(ids)):
        with torch.no_grad():
            embeds = net.get_input_embeddings()(ids[b:b + 1])
            base = float(net(inputs_embeds=embeds, attention_mask=mask[b:b + 1])[0, target[b]])
        for t in range(ids.shape[1]):
            for v, c in enumerate(cand.tolist()):
                if excluded_by_hand(ids[b], mask[b], t, c):
                    assert fast[b, t, v] == NEG_INF
                    continue
                edited = ids[b].clone()
                edited[t] = c
                replaced = target_logit(net, edited, mask[b], int(target[b])) - base
                step = torch.zeros_like(embeds)
                step[0, t] = table[c] - table[ids[b, t]]       # a full unit step: exact for a linear model
                with torch.no_grad():
                    moved = float(net(inputs_embeds=embeds + step, attention_mask=mask[b:b + 1])[0, target[b]]) - base
                assert float(fast[b, t, v]) == pytest.approx(replaced, rel=1e-9, abs=1e-9)
                assert float(fast[b, t, v]) == pytest.approx(moved, rel=1e-9, abs=1e-9)


def test_flip_scores_equal_exhaustive_one_edit_on_a_linear_toy():
    net = checks.linear_text()
    batch = checks.encode(checks.BATCH)
    cand = checks.ids_of(["awful", "lovely", "kind", "dull", "the"])
    first_order = ref.flip_scores(net, **batch, target=1, candidate_ids=cand)
    exact = ref.exhaustive_one_edit(net, **batch, target=1, candidate_ids=cand, batch_size=5)
    assert torch.equal(torch.isneginf(first_order), torch.isneginf(exact))
    finite = torch.isfinite(exact)
    scale = float(exact[finite].abs().max())
    torch.testing.assert_close(first_order[finite], exact[finite], rtol=1e-5, atol=1e-5 * scale)


# ------------------------------------------------------------------ exhaustive_one_edit


@pytest.mark.parametrize("name,sentences,words,target", [
    (TINY, checks.BATCH, ["awful", "great", "table", "the"], torch.tensor([1, 1, 0])),
    (MINILM, checks.PIECES, ["great", "awful", "not"], 1),
])
def test_exhaustive_one_edit_by_a_loop_over_positions_and_candidates(name, sentences, words, target):
    """One forward pass per edited sentence, each sentence alone (no padding in the slow version)."""
    m = model(name)
    batch = checks.encode(sentences)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cand = checks.ids_of(words)
    targets = torch.as_tensor(target).reshape(-1).expand(len(ids))
    fast = ref.exhaustive_one_edit(m, ids, mask, target, cand, batch_size=7)
    for b in range(len(ids)):
        n = int(mask[b].sum())
        row, row_mask, tb = ids[b, :n], mask[b, :n], int(targets[b])
        base = target_logit(m, row, row_mask, tb)
        for t in range(ids.shape[1]):
            for v, c in enumerate(cand.tolist()):
                if excluded_by_hand(ids[b], mask[b], t, c):
                    assert fast[b, t, v] == NEG_INF, (b, t, v)
                    continue
                edited = row.clone()
                edited[t] = c
                slow = target_logit(m, edited, row_mask, tb) - base
                assert float(fast[b, t, v]) == pytest.approx(slow, rel=1e-3, abs=2e-4), (b, t, v)


# ------------------------------------------------------------------ edit_distance


def levenshtein(a, b) -> int:
    """The recursive definition (memoised on the suffixes)."""
    @functools.lru_cache(maxsize=None)
    def d(i, j):
        if i == len(a):
            return len(b) - j
        if j == len(b):
            return len(a) - i
        return min(d(i + 1, j) + 1, d(i, j + 1) + 1, d(i + 1, j + 1) + (a[i] != b[j]))
    return d(0, 0)


def test_edit_distance_by_the_recursive_definition():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randrange(0, 8))]
        b = [rng.choice("abc") for _ in range(rng.randrange(0, 8))]
        assert ref.edit_distance(a, b) == levenshtein(a, b), (a, b)
        assert ref.edit_distance(b, a) == ref.edit_distance(a, b)
    words = "the film was awful great".split()
    for _ in range(50):
        a = tuple(rng.choice(words) for _ in range(rng.randrange(0, 7)))
        b = tuple(rng.choice(words) for _ in range(rng.randrange(0, 7)))
        assert ref.edit_distance(a, b) == levenshtein(a, b), (a, b)


def test_the_recursive_levenshtein_passes_the_edit_distance_check():
    passed, message = run_check("lab08.edit_distance.reference", levenshtein)
    assert passed, message


# ------------------------------------------------------------------ nearest_unlike_neighbour


def nun_by_loops(x, dataset, labels, target):
    targets = torch.as_tensor(target).reshape(-1).expand(len(x))
    out = []
    for i in range(len(x)):
        best, best_d = None, None
        for j in range(len(dataset)):
            if int(labels[j]) != int(targets[i]):
                continue
            d = float(((x[i].double() - dataset[j].double()) ** 2).sum())
            if best_d is None or d < best_d:  # strict: a tie keeps the lower index
                best, best_d = j, d
        out.append(best)
    return torch.tensor(out)


def test_nearest_unlike_neighbour_by_a_loop():
    x, _ = mnist_batch(5, split="test")
    data, labels = mnist_batch(300, split="train")
    data = torch.cat([data, data[:20]])     # exact duplicates: ties must go to the lower index
    labels = torch.cat([labels, labels[:20]])
    for target in (3, torch.tensor([0, 1, 2, 7, 9])):
        assert ref.nearest_unlike_neighbour(x, data, labels, target).tolist() == \
            nun_by_loops(x, data, labels, target).tolist()
    g = torch.Generator().manual_seed(1)
    small = torch.randint(0, 3, (40, 1, 2, 2), generator=g).float()   # many exact ties
    small_labels = torch.randint(0, 3, (40,), generator=g)
    queries = torch.randint(0, 3, (6, 1, 2, 2), generator=g).float()
    for target in (0, 1, 2, torch.tensor([2, 1, 0, 0, 1, 2])):
        assert ref.nearest_unlike_neighbour(queries, small, small_labels, target).tolist() == \
            nun_by_loops(queries, small, small_labels, target).tolist()


def test_the_loop_neighbour_passes_the_checks():
    for name in ("lab08.nearest_unlike_neighbour.reference", "lab08.nearest_unlike_neighbour.properties"):
        passed, message = run_check(name, nun_by_loops)
        assert passed, message


# ------------------------------------------------------------------ counterfactual_image


def adam_by_a_loop(net, x, target, lam, steps, lr, init_noise=0.0, generator=None):
    """The textbook loop, one image at a time (the loss is a sum over images and Adam works per pixel, so the
    images do not interact): zero_grad, loss.backward(), step, clamp — on a copy of the model."""
    net = copy.deepcopy(net).requires_grad_(False)
    targets = torch.as_tensor(target).reshape(-1).expand(len(x))
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) if init_noise else torch.zeros_like(x)
    out = []
    for i in range(len(x)):
        x0 = x[i:i + 1].clone()
        xp = (x0 + init_noise * noise[i:i + 1]).clamp(0, 1).requires_grad_(True)
        opt = torch.optim.Adam([xp], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(net(xp), targets[i:i + 1]) + lam * (xp - x0).abs().sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                xp.clamp_(0, 1)
        out.append(xp.detach())
    return torch.cat(out)


@pytest.mark.parametrize("kw", [
    dict(target=torch.tensor([9, 3, 0]), lam=0.01, steps=15, lr=0.05),
    dict(target=1, lam=0.1, steps=10, lr=0.02, init_noise=0.1),
])
def test_counterfactual_image_equals_a_loop_written_adam_run(kw):
    """In float64, where a batch of images and each image alone agree to rounding (Adam magnifies float32's
    batch-size-dependent rounding where a pixel's gradient is near 0)."""
    net = copy.deepcopy(model("mnist-cnn")).double()
    x = mnist_batch(3)[0].double()
    fast, flipped = ref.counterfactual_image(net, x.clone(), generator=torch.Generator().manual_seed(4), **kw)
    slow = adam_by_a_loop(net, x, generator=torch.Generator().manual_seed(4), **kw)
    assert (fast - x).abs().max() > 0.01
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
    targets = torch.as_tensor(kw["target"]).reshape(-1).expand(3)
    with torch.no_grad():
        assert torch.equal(flipped, net(slow).argmax(1) == targets)


def test_counterfactual_image_flips_mnist_digits_with_sparse_edits():
    """4s become 9s; each counterfactual is valid (checked with the model) and closer in L1 than the nearest 9
    among 1000 training digits."""
    from xailab.datasets.mnist import load_mnist

    net = model("mnist-cnn")
    x, y = load_mnist("test")
    fours = x[y == 4][:10]
    with torch.no_grad():
        fours = fours[net(fours).argmax(1) == 4][:6].clone()    # 4s that the model calls 4s
    xp, flipped = ref.counterfactual_image(net, fours, 9, lam=0.01, steps=100, lr=0.05)
    with torch.no_grad():
        assert (net(xp).argmax(1) == 9).all()
    assert flipped.all()
    assert xp.min() >= 0 and xp.max() <= 1
    data, labels = mnist_batch(1000, split="train")
    nearest = data[ref.nearest_unlike_neighbour(fours, data, labels, 9)]
    l1 = (xp - fours).abs().flatten(1).sum(1)
    assert (l1 < (nearest - fours).abs().flatten(1).sum(1)).all()
    assert (l1 > 0).all()


# ------------------------------------------------------------------ greedy_counterfactual, flip_rate, minimality_gap


def greedy_by_loops(model, tokenizer, sentence, target, candidates, max_edits=3, top_k=10):
    """The greedy search with the shortlist ranked by sorted() and each shortlisted edit evaluated alone."""
    ids = tokenizer(sentence, return_tensors="pt")["input_ids"][0]
    mask = torch.ones_like(ids)
    cand = tokenizer.convert_tokens_to_ids(list(candidates))
    edits, used = [], set()
    while len(edits) < max_edits:
        with torch.no_grad():
            if int(model(input_ids=ids[None], attention_mask=mask[None]).argmax(1)) == target:
                break
        scores = ref.flip_scores(model, ids[None], mask[None], target, torch.tensor(cand))[0]
        options = [(float(scores[t, v]), t, c) for t in range(1, len(ids) - 1) if t not in used
                   for v, c in enumerate(cand) if c != int(ids[t])]
        shortlist = sorted(options, key=lambda o: -o[0])[:top_k]
        if not shortlist:
            break
        best = None
        for _, t, c in shortlist:
            edited = ids.clone()
            edited[t] = c
            logit = target_logit(model, edited, mask, target)
            if best is None or logit > best[0]:
                best = (logit, t, c, edited)
        _, t, c, edited = best
        edits.append((t, *tokenizer.convert_ids_to_tokens([int(ids[t]), c])))
        ids, used = edited, used | {t}
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids[1:-1].tolist())), edits


def test_greedy_counterfactual_by_loops():
    cases = [c for c in checks.step_cases() + checks.search_cases() if c.kwargs["model"] is model(TINY)]
    cases += checks.linear_greedy_case()[1:]
    assert len(cases) >= 8
    for case in cases:
        assert ref.greedy_counterfactual(**case.kwargs) == greedy_by_loops(**case.kwargs), case.description


def test_flip_rate_by_a_loop_over_sentences():
    for name in (TINY, MINILM):
        m = model(name)
        sentences = list(checks.RATE_SENTENCES)
        targets = [1, 0, 1, 0, 0, 0, 1]
        preds = []
        for s in sentences:
            ids = m.tokenizer(s, return_tensors="pt")["input_ids"][0]
            with torch.no_grad():
                preds.append(int(m(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None]).argmax(1)))
        for target in (1, targets):
            t = [target] * len(sentences) if isinstance(target, int) else target
            expected = sum(p == q for p, q in zip(preds, t)) / len(sentences)
            assert ref.flip_rate(m, m.tokenizer, sentences, target, batch_size=3) == pytest.approx(expected)


def fewest_edits_by_loops(m, tokenizer, sentence, target, candidates, max_edits):
    """k*: try k = 0, 1, …, max_edits substitutions, one edited sentence at a time; None if none flips it."""
    ids = tokenizer(sentence, return_tensors="pt")["input_ids"][0]
    mask = torch.ones_like(ids)
    cand = tokenizer.convert_tokens_to_ids(list(candidates))

    def predicted(row):
        with torch.no_grad():
            return int(m(input_ids=row[None], attention_mask=mask[None]).argmax(1))

    if predicted(ids) == target:
        return 0
    for k in range(1, max_edits + 1):
        for positions in itertools.combinations(range(1, len(ids) - 1), k):
            for words in itertools.product(cand, repeat=k):
                if any(int(ids[p]) == w for p, w in zip(positions, words)):
                    continue
                row = ids.clone()
                for p, w in zip(positions, words):
                    row[p] = w
                if predicted(row) == target:
                    return k
    return None


def test_minimality_gap_by_brute_force_and_the_check_covers_every_k():
    """On the check's tiny-bert cases; among them k* = 0, 1, 2 and 'no counterfactual' all occur."""
    seen = set()
    for case in checks.gap_cases():
        kw = case.kwargs
        if kw["model"] is not model(TINY):
            continue
        k = fewest_edits_by_loops(kw["model"], kw["tokenizer"], kw["sentence"], kw["target"], kw["candidates"],
                                  kw["max_edits"])
        expected = None if k is None else kw["n_edits"] - k
        assert ref.minimality_gap(**kw) == expected, case.description
        seen.add(k)
    assert {0, 1, 2, None} <= seen
