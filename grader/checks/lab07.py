"""Hidden-test checks of Lab 7 (TCAV: concept activation vectors and their statistical test).

Every function is compared with the answer key on the concept CNN, the MNIST CNNs and two
transformers, and tested for the properties any correct version has: a CAV flips when the two
sets are swapped and does not depend on the order of the examples, the mean CAV ignores the scale
of the activations, batch = per example, no side effects, exact values on hand-made cases.

The activations, CAVs and score arrays handed to the functions are computed here (not by the
answer key) so that no input reveals the expected output of another task.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from grader.answers import lab07 as ref
from grader.checks import (Case, CheckFailed, all_of, as_tensor, assert_close, copy_kwargs, prepared_check,
                           property_check, reference_check)
from grader.checks.properties import (batch_equals_single, check_no_side_effects, count_forward, extra_dim,
                                       no_graph, no_hooks_left_on_error, side_effect_free)
from grader.fixtures import EQUAL_LENGTH, EmbeddingInput, model

MIN_COS = 0.99  # any solver that converges finds the same CAV: cosine ≥ 0.99 is a fair demand


# ------------------------------------------------------------------ data and activations (computed here)

def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def hooked(layer: nn.Module, run) -> torch.Tensor:
    """The (detached) output of `layer` while `run()` executes, without gradients."""
    stored = []
    handle = layer.register_forward_hook(lambda m, i, out: stored.append(_output(out).detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return stored[-1]


@lru_cache(maxsize=None)
def _concept_images(concept: str, n: int, seed: int) -> torch.Tensor:
    from xailab.datasets.concepts import concept_examples, make_concept_dataset

    if concept == "random":
        return make_concept_dataset(n, seed=seed)["images"]
    return concept_examples(concept, n, seed=seed)


def concept_images(concept: str, n: int, seed: int) -> torch.Tensor:
    """Concept images (`concept` = a concept name or 'random'), a fresh copy."""
    return _concept_images(concept, n, seed).clone()


@lru_cache(maxsize=None)
def _concept_acts(concept: str, n: int, seed: int, index: int) -> torch.Tensor:
    m = model("concept-cnn")
    x = _concept_images(concept, n, seed)
    return hooked(m.features[index], lambda: m(x))


def concept_acts(concept: str, n: int, seed: int, index: int) -> torch.Tensor:
    """Activations of concept-cnn's features[index] on concept images."""
    return _concept_acts(concept, n, seed, index).clone()


@lru_cache(maxsize=None)
def _digits(kind: str, start: int, n: int) -> torch.Tensor:
    """Test digits: 'clean', 'patch' (a white 4×4 patch in a random corner: decoy-mnist-cnn's code for 0)."""
    from xailab.datasets.mnist import add_decoy, load_mnist

    x, y = load_mnist("test")
    x, y = x[start:start + n], y[start:start + n]
    return add_decoy(x, torch.zeros_like(y), informative=True, seed=start)[0] if kind == "patch" else x


def digits(kind: str, start: int, n: int) -> torch.Tensor:
    return _digits(kind, start, n).clone()


@lru_cache(maxsize=None)
def _digit_acts(name: str, kind: str, start: int, n: int, index: int) -> torch.Tensor:
    m = model(name)
    x = _digits(kind, start, n)
    return hooked(m.features[index], lambda: m(x))


def digit_acts(name: str, kind: str, start: int, n: int, index: int) -> torch.Tensor:
    return _digit_acts(name, kind, start, n, index).clone()


def encoder_layer(name: str, index: int) -> nn.Module:
    """Transformer block `index` of a course text model."""
    m = model(name)
    return m.model.bert.encoder.layer[index] if name == "tiny-bert-sentiment" else m.model.encoder.encoder.layer[index]


POSITIVE = ("the film was wonderful .", "a truly lovely and charming hotel .", "the staff were kind and helpful .",
            "i thought the meal was delicious .", "this is a brilliant book .", "what a beautiful garden .",
            "the concert was superb and the music fantastic .", "the teacher seemed friendly .")
NEGATION = ("the film was not good .", "i did not like the hotel .", "the staff were not helpful at all .",
            "this is not a good book .", "the meal was never warm .", "no one enjoyed the concert .",
            "the room was not clean .", "i would not go back .")
NEUTRAL = ("the film was two hours long .", "the hotel is near the station .", "we ate at noon .",
           "the book has ten chapters .", "the garden is behind the house .", "the concert started at eight .",
           "the room was on the third floor .", "my sister took the train .", "the shop opens on monday .",
           "the car is parked outside .")
SENTENCES = ("a wonderful and moving film", "the plot was dull and the acting awful", "not bad at all",
             "this medicine gave me terrible headaches", "the hotel is near the station .")


def text_batch(name: str, sentences) -> dict[str, torch.Tensor]:
    enc = model(name).encode(list(sentences))
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@lru_cache(maxsize=None)
def _text_states(name: str, index: int, sentences: tuple[str, ...], pooling: str) -> torch.Tensor:
    m = model(name)
    batch = text_batch(name, sentences)
    h = hooked(encoder_layer(name, index), lambda: m(**batch))
    if pooling == "cls":
        return h[:, 0]
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1)


def text_states(name: str, index: int, sentences, pooling: str) -> torch.Tensor:
    """Pooled hidden states of a transformer block for `sentences` ('cls' or 'mean' over real tokens)."""
    return _text_states(name, index, tuple(sentences), pooling).clone()


def unit_rows(k: int, d: int, seed: int) -> torch.Tensor:
    """k random unit vectors of dimension d, (k, d)."""
    v = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=1, keepdim=True)


def lexicon(n: int, seed: int, label: int | None = None) -> tuple[str, ...]:
    """Lexicon template sentences (mixed labels, or only `label`)."""
    from xailab.datasets.text import make_lexicon_sentences

    data = make_lexicon_sentences(3 * n, seed=seed)
    texts = [t for t, y in zip(data.texts, data.labels) if label is None or y == label]
    return tuple(texts[:n])


# ------------------------------------------------------------------ layer activations

class TupleBlock(nn.Module):
    """A layer that returns a tuple (hidden, extra), as transformer blocks of older libraries do."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return h, h.sum()


class TupleNet(nn.Module):
    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.block = TupleBlock(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.block(x)[0] * 2.0)


def toy_models():
    g = torch.Generator().manual_seed(11)
    linear = nn.Sequential(nn.Flatten(), nn.Identity(), nn.Linear(12, 3)).eval()
    tuple_net = TupleNet().eval()
    with torch.no_grad():
        for p in list(linear.parameters()) + list(tuple_net.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    return linear, tuple_net, g



class TupleTextModel(nn.Module):
    """A text classifier whose block returns a tuple and whose head averages EVERY position, padding
    included: the gradient reaches the padded positions, so only the attention mask can exclude them."""

    def __init__(self, vocab: int = 40, d: int = 6, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.block = TupleBlock(d)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.block(self.embed(input_ids))[0].mean(1))


def toy_text_batch() -> dict[str, torch.Tensor]:
    """Three token sequences of lengths 5, 3 and 4 padded to 5 (pad id 0), with their attention mask."""
    ids = torch.tensor([[2, 17, 5, 33, 3], [2, 9, 3, 0, 0], [2, 21, 12, 3, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def toy_text_model() -> TupleTextModel:
    g = torch.Generator().manual_seed(17)
    m = TupleTextModel().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m




def activation_cases() -> list[Case]:
    cnn = model("concept-cnn")
    mnist = model("mnist-cnn")
    tiny = model("tiny-bert-sentiment")
    with torch.no_grad():
        embeds = tiny.get_input_embeddings()(text_batch("tiny-bert-sentiment", EQUAL_LENGTH)["input_ids"])
    tuple_net = toy_models()[1]
    return [
        Case("concept-cnn, features[8] (64×8×8), 10 concept images, batch_size=4",
             dict(model=cnn, layer=cnn.features[8], inputs=concept_images("random", 10, 201), batch_size=4)),
        Case("concept-cnn, features[4] (a ReLU, 32×32×32), 6 concept images",
             dict(model=cnn, layer=cnn.features[4], inputs=concept_images("shape:cross", 6, 202))),
        Case("mnist-cnn, features[5] (a Conv2d, 64×14×14), 7 digits, batch_size=3",
             dict(model=mnist, layer=mnist.features[5], inputs=digits("clean", 10, 7), batch_size=3)),
        Case("tiny-bert-sentiment via its input embeddings, transformer block 0 (7 tokens × 64), 4 sentences",
             dict(model=EmbeddingInput(tiny).eval(), layer=encoder_layer("tiny-bert-sentiment", 0), inputs=embeds)),
        Case("a layer that returns a tuple (hidden, extra): 5 inputs of 6 values, batch_size=2",
             dict(model=tuple_net, layer=tuple_net.block,
                  inputs=torch.randn(5, 6, generator=torch.Generator().manual_seed(14)), batch_size=2)),
    ]


reference_check("lab07.layer_activations.reference", "layer_activations",
                "matches the reference activations of CNN layers and of a transformer block",
                activation_cases, ref.layer_activations, rtol=1e-4, atol=1e-5,
                hint="Return the OUTPUT of `layer` (a forward hook), of shape (N, ...) as the layer produces it — "
                     "not flattened, every batch concatenated in order; the first element if the layer returns a tuple.")


def activations_batched(fn, case: Case) -> None:
    kw = dict(case.kwargs, batch_size=4)
    n = kw["inputs"].shape[0]
    _, calls, rows = count_forward(fn, kw)
    if rows > 4 or calls > math.ceil(n / 4):
        raise CheckFailed(f"layer_activations made {calls} forward passes of up to {rows} inputs for {n} inputs with "
                          f"batch_size=4: expected {math.ceil(n / 4)} passes of at most 4 inputs each.")


property_check("lab07.layer_activations.properties", "layer_activations",
               "batches of batch_size inputs; hooks removed (also when the model fails); model and inputs untouched",
               lambda: activation_cases()[:1] + activation_cases()[3:4],
               all_of(activations_batched, side_effect_free("layer_activations"),
                      no_hooks_left_on_error("layer_activations", extra_dim)))


# ------------------------------------------------------------------ train_cav and mean_cav


def cav_cases() -> list[Case]:
    tiny_pos = lexicon(36, 301, label=1)
    tiny_rand = lexicon(44, 302)
    return [
        Case("concept-cnn features[8] (4096 values): 24 triangle images vs 24 random images, l2=0.01",
             dict(concept_acts=concept_acts("shape:triangle", 24, 101, 8), random_acts=concept_acts("random", 24, 102, 8),
                  l2=0.01)),
        Case("concept-cnn features[5] (8192 values): 20 red-target images vs 30 random images, l2=0.001",
             dict(concept_acts=concept_acts("colour:red", 20, 103, 5), random_acts=concept_acts("random", 30, 104, 5),
                  l2=0.001)),
        Case("mnist-cnn features[7] (3136 values): 20 digits with a white corner patch vs 25 clean digits, l2=0.1",
             dict(concept_acts=digit_acts("mnist-cnn", "patch", 0, 20, 7),
                  random_acts=digit_acts("mnist-cnn", "clean", 20, 25, 7), l2=0.1)),
        Case("tiny-bert-sentiment block 1, [CLS] states (64 values): 36 positive vs 44 mixed sentences, l2=0.01",
             dict(concept_acts=text_states("tiny-bert-sentiment", 1, tiny_pos, "cls"),
                  random_acts=text_states("tiny-bert-sentiment", 1, tiny_rand, "cls"), l2=0.01)),
        Case("minilm-sentiment block 3, mean-pooled states (384 values): 8 negated vs 10 neutral sentences, l2=0.03",
             dict(concept_acts=text_states("minilm-sentiment", 3, NEGATION, "mean"),
                  random_acts=text_states("minilm-sentiment", 3, NEUTRAL, "mean"), l2=0.03)),
    ]


def check_cav(actual, expected: torch.Tensor, task: str, what: str, hint: str = "") -> None:
    """Shape (D,), unit length, and cosine ≥ MIN_COS with the expected direction."""
    actual = as_tensor(actual, task)
    d = expected.shape[0]
    if tuple(actual.shape) != (d,):
        raise CheckFailed(f"{task} on {what}: expected a vector of shape ({d},) — one weight per activation value, "
                          f"the activations flattened per example — got shape {tuple(actual.shape)}.")
    actual = actual.double()
    if not torch.isfinite(actual).all():
        raise CheckFailed(f"{task} on {what}: the CAV contains NaN or inf.")
    norm = actual.norm().item()
    if abs(norm - 1) > 1e-3:
        raise CheckFailed(f"{task} on {what}: the CAV has length {norm:.4g}; return it with unit length (v / ‖v‖).")
    cos = float(actual @ expected.double() / expected.double().norm())
    if cos < MIN_COS:
        if cos < -MIN_COS:
            cause = "It points to the random set: the CAV must point towards the concept."
        else:
            cause = hint
        raise CheckFailed(f"{task} on {what}: the CAV's cosine with the reference direction is {cos:.4f} "
                          f"(needed ≥ {MIN_COS}). {cause}".strip())


TRAIN_CAV_HINT = ("Minimise (1/N)·Σ log(1 + exp(−y·(w·x + b))) + (l2/2)·‖w‖² over w and the unpenalised bias b, "
                  "with y = +1 for the concept and −1 for the random examples, N = all examples of both sets, "
                  "activations flattened; run the solver to convergence (e.g. LBFGS in float64).")


def cav_check(name: str, task: str, message: str, inputs, reference, hint: str) -> None:
    def expected(case: Case) -> torch.Tensor:
        return reference(**copy_kwargs(case.kwargs)).detach().double()

    def compare(fn, case: Case, expected_value: torch.Tensor) -> None:
        check_cav(fn(**case.kwargs), expected_value, task, case.description, hint)

    prepared_check(name, task, message, inputs, expected, compare)


cav_check("lab07.train_cav.reference", "train_cav",
          "finds the reference CAV direction on CNN layers and transformer states (cosine ≥ 0.99, unit length)",
          cav_cases, ref.train_cav, TRAIN_CAV_HINT)


def objective_cases() -> list[Case]:
    """2-D sets, elongated and far from the origin: the optimal direction turns with l2 and with the bias."""
    g = torch.Generator().manual_seed(7)
    scale = torch.tensor([3.0, 0.3])
    concept = torch.randn(30, 2, generator=g) * scale + torch.tensor([4.0, 4.6])
    rand = torch.randn(50, 2, generator=g) * scale + torch.tensor([4.6, 4.0])
    cases = [Case(f"2-D sets (30 concept, 50 random examples, stretched along the first axis, centred near (4, 4)), "
                  f"l2={l2}", dict(concept_acts=concept, random_acts=rand, l2=l2)) for l2 in (0.003, 0.03, 0.3, 3.0)]
    g13 = torch.Generator().manual_seed(13)
    few = torch.randn(8, 2, generator=g13) * torch.tensor([0.3, 2.0]) + torch.tensor([1.0, 0.0])
    many = torch.randn(60, 2, generator=g13) * torch.tensor([2.0, 0.3]) + torch.tensor([0.0, 1.0])
    cases.append(Case("8 concept vs 60 random 2-D examples, elongated across each other, l2=0.01 (every example "
                      "weighs 1/N)", dict(concept_acts=few, random_acts=many, l2=0.01)))
    x = torch.randn(12, 3, 2, generator=g) + 1.0
    cases.append(Case("12 concept examples of shape (3, 2) vs 16 random ones, l2=0.05 (flatten them)",
                      dict(concept_acts=x, random_acts=torch.randn(16, 3, 2, generator=g), l2=0.05)))
    return cases


cav_check("lab07.train_cav.objective", "train_cav",
          "minimises the stated objective: the direction follows l2 and the unpenalised bias",
          objective_cases, ref.train_cav, TRAIN_CAV_HINT)


def swap_flips(fn, case: Case) -> None:
    kw = case.kwargs
    forward = as_tensor(fn(**kw), "train_cav").double()
    backward = as_tensor(fn(**dict(kw, concept_acts=kw["random_acts"], random_acts=kw["concept_acts"])),
                         "train_cav").double()
    if forward.shape != backward.shape or not torch.isfinite(forward).all() or not torch.isfinite(backward).all():
        raise CheckFailed("train_cav: the CAVs for (concept, random) and (random, concept) have different shapes "
                          "or are not finite.")
    cos = float(forward @ backward / (forward.norm() * backward.norm()).clamp(min=1e-30))
    if cos > -MIN_COS:
        raise CheckFailed(f"train_cav on {case.description}: swapping the two sets should reverse the CAV exactly "
                          f"(cosine −1), got cosine {cos:.4f}. Label the concept +1 and the random examples −1 "
                          "(or 1/0) whatever their order, and fit all of them.")


def order_free(fn, case: Case) -> None:
    kw = case.kwargs
    first = as_tensor(fn(**kw), "train_cav").double()
    g = torch.Generator().manual_seed(3)
    shuffled = dict(kw, concept_acts=kw["concept_acts"][torch.randperm(len(kw["concept_acts"]), generator=g)],
                    random_acts=kw["random_acts"][torch.randperm(len(kw["random_acts"]), generator=g)])
    second = as_tensor(fn(**shuffled), "train_cav").double()
    if first.shape != second.shape:
        raise CheckFailed("train_cav: shuffling the examples changed the shape of the CAV.")
    cos = float(first @ second / (first.norm() * second.norm()).clamp(min=1e-30))
    if cos < 0.999:
        raise CheckFailed(f"train_cav on {case.description}: shuffling the examples within each set changed the "
                          f"CAV (cosine {cos:.4f} between the two). Fit every example (no random train/test split) "
                          "and run the solver to convergence.")


property_check("lab07.train_cav.properties", "train_cav",
               "swapping the sets reverses the CAV; the order of the examples does not matter; inputs untouched",
               lambda: cav_cases()[:1] + cav_cases()[3:4],
               all_of(swap_flips, order_free, side_effect_free("train_cav", rtol=1e-3, atol=1e-4)))


def mean_cav_cases() -> list[Case]:
    return [Case(c.description.rsplit(",", 1)[0], {k: v for k, v in c.kwargs.items() if k != "l2"})
            for c in (cav_cases()[i] for i in (0, 2, 4))]


reference_check("lab07.mean_cav.reference", "mean_cav",
                "matches the reference difference-of-means CAV (CNN layers and transformer states)",
                mean_cav_cases, ref.mean_cav, rtol=1e-4, atol=1e-6,
                hint="Mean of the flattened concept activations minus the mean of the flattened random ones, "
                     "divided by its length.")


def mean_cav_exact(fn, case: Case) -> None:
    concept = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    rand = torch.tensor([[0.0, 1.0]])
    expected = torch.tensor([2.0, -1.0]) / math.sqrt(5)
    assert_close(fn(concept_acts=concept, random_acts=rand), expected,
                 "mean_cav of concept {(1,0), (3,0)} vs random {(0,1)}", 1e-5, 1e-6,
                 "(mean of the concept set − mean of the random set) / its length = (2, −1)/√5.")


def mean_cav_scale_free(fn, case: Case) -> None:
    kw = case.kwargs
    base = as_tensor(fn(**kw), "mean_cav")
    for factor in (7.5, 0.01):
        scaled = fn(concept_acts=kw["concept_acts"] * factor, random_acts=kw["random_acts"] * factor)
        assert_close(scaled, base, f"mean_cav with both sets scaled by {factor} vs unscaled ({case.description})",
                     1e-4, 1e-6, "Scaling all activations by a positive factor must not change the direction.")
    swapped = fn(concept_acts=kw["random_acts"], random_acts=kw["concept_acts"])
    assert_close(swapped, -base, f"mean_cav with the sets swapped ({case.description})", 1e-4, 1e-6,
                 "Swapping the sets must reverse the CAV.")


property_check("lab07.mean_cav.properties", "mean_cav",
               "exact on a hand-made case; scale-free; swapping reverses it; inputs untouched",
               lambda: mean_cav_cases()[:1],
               all_of(mean_cav_exact, mean_cav_scale_free, side_effect_free("mean_cav")))


# ------------------------------------------------------------------ directional derivatives


def dd_cnn_cases() -> list[Case]:
    cnn, mnist, decoy = model("concept-cnn"), model("mnist-cnn"), model("decoy-mnist-cnn")
    xc = concept_images("random", 6, 401)
    from xailab.datasets.mnist import load_mnist

    _, yd = load_mnist("test")
    return [
        Case("concept-cnn, features[8] (4096 values), 6 concept images, targets 0..3, one CAV",
             dict(model=cnn, layer=cnn.features[8], inputs=xc, target=torch.tensor([0, 1, 2, 3, 0, 1]),
                  cav=unit_rows(1, 4096, 1)[0])),
        Case("concept-cnn, features[5] (8192 values), 6 concept images, class 2 for all, 3 CAVs stacked (3, 8192)",
             dict(model=cnn, layer=cnn.features[5], inputs=xc, target=2, cav=unit_rows(3, 8192, 2))),
        Case("concept-cnn, features[10] (a ReLU; 4096 values), 6 concept images, class 1, 2 CAVs stacked",
             dict(model=cnn, layer=cnn.features[10], inputs=xc, target=1, cav=unit_rows(2, 4096, 3))),
        Case("mnist-cnn, features[7] (3136 values), 5 digits, their labels, one CAV",
             dict(model=mnist, layer=mnist.features[7], inputs=digits("clean", 40, 5), target=yd[40:45].clone(),
                  cav=unit_rows(1, 3136, 4)[0])),
        Case("decoy-mnist-cnn, features[6] (a ReLU; 12544 values), 5 patched digits, class 0, 2 CAVs stacked",
             dict(model=decoy, layer=decoy.features[6], inputs=digits("patch", 50, 5), target=0,
                  cav=unit_rows(2, 12544, 5))),
    ]


def dd_transformer_cases() -> list[Case]:
    cases = []
    for name, index, k in (("tiny-bert-sentiment", 1, 2), ("minilm-sentiment", 2, 1)):
        m = model(name)
        with torch.no_grad():
            embeds = m.get_input_embeddings()(text_batch(name, EQUAL_LENGTH)["input_ids"])
        d = embeds.shape[1] * m.get_input_embeddings().embedding_dim
        cav = unit_rows(k, d, 6)
        cases.append(Case(f"{name} via its input embeddings, transformer block {index} (7 tokens × hidden), "
                          f"4 sentences, per-example targets, CAV of shape {tuple(cav.shape if k > 1 else cav[0].shape)}",
                          dict(model=EmbeddingInput(m).eval(), layer=encoder_layer(name, index), inputs=embeds,
                               target=torch.tensor([1, 0, 1, 0]), cav=cav if k > 1 else cav[0])))
    return cases


DD_HINT = ("∂(pre-softmax score of each example's target)/∂(layer output), flattened per example, dotted with the "
           "CAV: (B,) for a CAV of shape (D,), (B, K) for a stack (K, D).")

reference_check("lab07.directional_derivatives.cnn", "directional_derivatives",
                "matches the reference on concept-cnn and the MNIST CNNs (one CAV and stacks of CAVs)",
                dd_cnn_cases, ref.directional_derivatives, rtol=1e-3, atol=1e-6, hint=DD_HINT)

reference_check("lab07.directional_derivatives.transformer", "directional_derivatives",
                "matches the reference at transformer blocks (through the input embeddings)",
                dd_transformer_cases, ref.directional_derivatives, rtol=1e-3, atol=1e-6, hint=DD_HINT)


def dd_exact(fn, case: Case) -> None:
    linear, tuple_net, g = toy_models()
    x = torch.randn(4, 3, 4, generator=g)
    cav = unit_rows(2, 12, 12)
    expected = (linear[2].weight[1] @ cav.T).detach().expand(4, 2)
    assert_close(fn(model=linear, layer=linear[1], inputs=x, target=1, cav=cav), expected,
                 "directional_derivatives of f(x) = W·flatten(x) + b at the flattened input, class 1", 1e-5, 1e-6,
                 "For a linear head the gradient of the class-1 score w.r.t. its input is W[1] for every example, "
                 "so the result is W[1]·cav.")
    xt = torch.randn(5, 6, generator=g)
    cav_t = unit_rows(1, 6, 13)[0]
    expected_t = (2.0 * tuple_net.head.weight[torch.tensor([0, 2, 1, 1, 0])].detach()) @ cav_t
    assert_close(fn(model=tuple_net, layer=tuple_net.block, inputs=xt, target=torch.tensor([0, 2, 1, 1, 0]),
                    cav=cav_t), expected_t,
                 "directional_derivatives at a layer that returns a tuple (hidden, extra)", 1e-5, 1e-6,
                 "When the layer returns a tuple, use its first element as the activations.")


property_check("lab07.directional_derivatives.properties", "directional_derivatives",
               "exact on linear heads and tuple outputs; batch = per example; hooks removed; model and inputs untouched",
               lambda: dd_cnn_cases()[:1],
               all_of(dd_exact, side_effect_free("directional_derivatives"),
                      batch_equals_single("directional_derivatives", 1e-3, 1e-6),
                      no_hooks_left_on_error("directional_derivatives", extra_dim)))


# ------------------------------------------------------------------ TCAV score


def score_cases() -> list[Case]:
    g = torch.Generator().manual_seed(21)
    d1 = torch.randn(25, generator=g)
    d1[::6] = 0.0
    d2 = torch.randn(40, 7, generator=g) + torch.linspace(-1.5, 1.5, 7)
    d2[:5] = 0.0
    d3 = torch.randn(9, 3, generator=g).double() * 1e-3
    return [Case("25 directional derivatives (some exactly 0)", dict(derivatives=d1)),
            Case("(40, 7): 40 examples × 7 CAVs (some rows exactly 0)", dict(derivatives=d2)),
            Case("(9, 3) float64 values of order 1e-3", dict(derivatives=d3))]


reference_check("lab07.tcav_score.reference", "tcav_score",
                "the fraction of strictly positive directional derivatives, per CAV",
                score_cases, ref.tcav_score, rtol=1e-6, atol=1e-6,
                hint="Count the examples whose derivative is > 0 (0 does not count) and divide by the number of "
                     "examples (axis 0); a (B,) input gives a 0-dim tensor, (B, K) gives (K,).")


def score_exact(fn, case: Case) -> None:
    d = torch.tensor([[2.0, -1.0], [0.0, -3.0], [0.5, 4.0], [-0.1, -2.0]])
    assert_close(fn(derivatives=d), torch.tensor([0.5, 0.25]),
                 "tcav_score of [[2, −1], [0, −3], [0.5, 4], [−0.1, −2]]", 1e-6, 1e-6,
                 "Column 0 has 2 positive values of 4 (0 is not positive), column 1 has 1 of 4.")
    assert_close(fn(derivatives=torch.tensor([100.0, -0.01, -0.01, -0.01, -0.01])), torch.tensor(0.2),
                 "tcav_score of [100, −0.01, −0.01, −0.01, −0.01]", 1e-6, 1e-6,
                 "The score counts signs, not magnitudes: 1 positive value of 5.")


property_check("lab07.tcav_score.properties", "tcav_score", "exact on hand-made cases; inputs untouched",
               lambda: score_cases()[:1], all_of(score_exact, side_effect_free("tcav_score")))


# ------------------------------------------------------------------ TCAV


def tcav_cases() -> list[Case]:
    cnn, decoy = model("concept-cnn"), model("decoy-mnist-cnn")
    from xailab.datasets.mnist import load_mnist

    x, y = load_mnist("test")
    zeros = x[:300][y[:300] == 0][:12].clone()
    return [
        Case("concept-cnn, features[8], 16 triangle images, class 2, concept 'shape:triangle', 4 runs of "
             "16 concept vs 16 random images",
             dict(model=cnn, layer=cnn.features[8], class_inputs=concept_images("shape:triangle", 16, 501), target=2,
                  concept_sets=[concept_acts("shape:triangle", 16, 510 + i, 8) for i in range(4)],
                  random_sets=[concept_acts("random", 16, 520 + i, 8) for i in range(4)])),
        Case("concept-cnn, features[5], 20 circle images, class 0, concept 'colour:blue', 5 runs of 12 concept vs "
             "14 random images, l2=10",
             dict(model=cnn, layer=cnn.features[5], class_inputs=concept_images("shape:circle", 20, 502), target=0,
                  concept_sets=[concept_acts("colour:blue", 12, 530 + i, 5) for i in range(5)],
                  random_sets=[concept_acts("random", 14, 540 + i, 5) for i in range(5)], l2=10.0)),
        Case("decoy-mnist-cnn, features[7], 12 zeros, class 0, concept 'white corner patch', 3 runs of 15 vs 15 digits",
             dict(model=decoy, layer=decoy.features[7], class_inputs=zeros, target=0,
                  concept_sets=[digit_acts("decoy-mnist-cnn", "patch", 100 + 15 * i, 15, 7) for i in range(3)],
                  random_sets=[digit_acts("decoy-mnist-cnn", "clean", 200 + 15 * i, 15, 7) for i in range(3)])),
    ]


def tcav_expected(case: Case):
    concept, rand = ref.tcav(**copy_kwargs(case.kwargs))
    return concept.detach(), rand.detach()


def tcav_compare(fn, case: Case, expected) -> None:
    out = fn(**case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(f"tcav should return a pair (concept_scores, random_scores), got {type(out).__name__}.")
    n = case.kwargs["class_inputs"].shape[0]
    # Derivatives near 0 (a nuisance concept, random-vs-random runs) may change sign with a CAV that is only
    # slightly different (e.g. a float32 solver at a large l2): two borderline examples may fall either way.
    slack = 2.0 / n + 1e-6
    for got, want, what in ((out[0], expected[0], "concept_scores"), (out[1], expected[1], "random_scores")):
        got = as_tensor(got, "tcav")
        if tuple(got.shape) != tuple(want.shape):
            raise CheckFailed(f"tcav on {case.description}: {what} should have shape {tuple(want.shape)} (one score "
                              f"per run), got {tuple(got.shape)}.")
        off = (got.double() - want.double()).abs()
        if not torch.isfinite(got).all() or (off > slack).any():
            raise CheckFailed(
                f"tcav on {case.description}: {what} differ from the reference (largest difference "
                f"{off.max().item():.3g}; one example is worth {1 / n:.3g}, two may differ). Run i: concept_sets[i] against "
                "random_sets[i]; null run i: random_sets[i] (as the concept) against random_sets[(i + 1) % R]; "
                "pass l2 on to train_cav, and score the fraction of positive directional derivatives.")


prepared_check("lab07.tcav.reference", "tcav",
               "matches the reference concept and random-vs-random scores on concept-cnn and decoy-mnist-cnn",
               tcav_cases, tcav_expected, tcav_compare)


property_check("lab07.tcav.properties", "tcav", "hooks removed; model and activations untouched",
               lambda: tcav_cases()[2:],
               lambda fn, case: check_no_side_effects("tcav", fn.call(case.kwargs, observe=True).facts))


# ------------------------------------------------------------------ significance


def significance_cases() -> list[Case]:
    g = torch.Generator().manual_seed(31)

    def scores(n, mean, spread):
        return (mean + spread * torch.randn(n, generator=g)).clamp(0, 1)

    return [
        Case("10 concept scores near 0.9 vs 12 random scores near 0.5, alpha=0.05, 1 test",
             dict(concept_scores=scores(10, 0.9, 0.08), random_scores=scores(12, 0.5, 0.25), alpha=0.05, n_tests=1)),
        Case("8 vs 15 scores with unequal spreads (p between 0.005 and 0.05), alpha=0.05, 10 tests",
             dict(concept_scores=torch.tensor([0.62, 0.71, 0.55, 0.68, 0.74, 0.6, 0.66, 0.7]),
                  random_scores=torch.tensor([0.5, 0.3, 0.8, 0.45, 0.6, 0.2, 0.55, 0.7, 0.4, 0.35, 0.65, 0.5,
                                              0.25, 0.75, 0.45]), alpha=0.05, n_tests=10)),
        Case("12 vs 12 scores, a small difference (two-sided p between 0.025 and 0.05), alpha=0.05, 1 test",
             dict(concept_scores=torch.tensor([0.55, 0.6, 0.5, 0.65, 0.7, 0.45, 0.6, 0.55, 0.5, 0.7, 0.6, 0.65]),
                  random_scores=torch.tensor([0.5, 0.45, 0.6, 0.4, 0.55, 0.5, 0.35, 0.6, 0.45, 0.5, 0.55, 0.65]),
                  alpha=0.05, n_tests=1)),
        Case("concept scores all 1.0 vs random scores that swing between 0 and 1, alpha=0.05, 44 tests",
             dict(concept_scores=torch.ones(20),
                  random_scores=torch.tensor([1.0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1]),
                  alpha=0.05, n_tests=44)),
        Case("both samples constant and equal (all 1.0): the t statistic is undefined",
             dict(concept_scores=torch.ones(6), random_scores=torch.ones(9), alpha=0.05, n_tests=1)),
        Case("both samples constant but different (all 1.0 vs all 0.0)",
             dict(concept_scores=torch.ones(5), random_scores=torch.zeros(7), alpha=0.05, n_tests=3)),
        Case("both samples constant and equal, alpha=1.0 (p = 1 is not < 1: not significant)",
             dict(concept_scores=torch.ones(4), random_scores=torch.ones(5), alpha=1.0, n_tests=1)),
    ]


def significance_expected(case: Case):
    return ref.significance(**copy_kwargs(case.kwargs))


def significance_compare(fn, case: Case, expected) -> None:
    out = fn(**case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(f"significance should return a pair (p_value, significant), got {type(out).__name__}.")
    p, decision = out
    try:
        p = float(p.item() if isinstance(p, torch.Tensor) else p)
        decision = bool(decision.item() if isinstance(decision, torch.Tensor) else decision)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed("significance should return a float p-value and a bool.") from None
    want_p, want_decision = expected
    if not math.isfinite(p) or abs(p - want_p) > 1e-6 + 1e-5 * want_p:
        raise CheckFailed(f"significance on {case.description}: p-value {p:.6g}, expected {want_p:.6g}. Use the "
                          "two-sided two-sample t-test with equal variances (scipy.stats.ttest_ind's default) and "
                          "return its uncorrected p-value; an undefined p (NaN: both samples constant and equal) is 1.0.")
    if decision != want_decision:
        raise CheckFailed(f"significance on {case.description}: significant={decision}, expected {want_decision} "
                          f"(p = {want_p:.4g}, alpha = {case.kwargs['alpha']}, {case.kwargs['n_tests']} tests). "
                          "Bonferroni: significant when p < alpha / n_tests.")


prepared_check("lab07.significance.reference", "significance",
               "two-sided t-test p-values and Bonferroni decisions match the reference (constant samples included)",
               significance_cases, significance_expected, significance_compare)


# ------------------------------------------------------------------ text


def text_cases(kind: str) -> list[Case]:
    tiny, minilm = "tiny-bert-sentiment", "minilm-sentiment"
    cases = []
    for name, index, pooling in ((tiny, 0, "cls"), (tiny, 1, "mean"), (minilm, 2, "mean"), (minilm, 5, "cls")):
        kw = dict(model=model(name), layer=encoder_layer(name, index), **text_batch(name, SENTENCES), pooling=pooling)
        what = f"{name}, block {index}, {pooling} pooling, 5 padded sentences"
        if kind == "dd":
            hidden = model(name).get_input_embeddings().embedding_dim
            if index % 2:
                kw.update(target=torch.tensor([1, 0, 1, 0, 1]), cav=unit_rows(3, hidden, 40 + index))
                what += ", per-example targets, 3 CAVs stacked"
            else:
                kw.update(target=1, cav=unit_rows(1, hidden, 40 + index)[0])
                what += ", positive class, one CAV"
        cases.append(Case(what, kw))
    toy = toy_text_model()
    for pooling in ("cls", "mean"):
        kw = dict(model=toy, layer=toy.block, **toy_text_batch(), pooling=pooling)
        what = (f"a toy text model whose block returns a tuple and whose head averages every position (padding "
                f"too), {pooling} pooling, 3 padded sequences")
        if kind == "dd":
            kw.update(target=torch.tensor([0, 2, 1]), cav=unit_rows(2, 6, 60))
            what += ", per-example targets, 2 CAVs stacked"
        cases.append(Case(what, kw))
    bad = dict(cases[-1].kwargs, pooling="max")
    cases.append(Case("pooling='max' (only 'cls' and 'mean' exist)", bad, raises="ValueError"))
    return cases


def bad_token(case: Case) -> dict:
    """The case's arguments with a token id past the vocabulary: the embedding fails inside the model."""
    ids = case.kwargs["input_ids"].clone()
    ids[0, 1] = 10 ** 6
    return dict(case.kwargs, input_ids=ids)


reference_check("lab07.text_activations.reference", "text_activations",
                "matches the reference pooled states of two transformers ([CLS] and mean over real tokens)",
                lambda: text_cases("acts"), ref.text_activations, rtol=1e-4, atol=1e-5,
                hint="Hook the block's output (B, T, H); 'cls' takes position 0, 'mean' averages over the positions "
                     "where attention_mask is 1. Pass the attention_mask to the model.")


def padding_free(task: str, rtol: float, atol: float):
    """Each sentence alone (no padding) gives its row of the padded batch."""

    def prop(fn, case: Case) -> None:
        kw = case.kwargs
        batched = as_tensor(fn(**kw), task)
        mask = kw["attention_mask"]
        for i in range(mask.shape[0]):
            n = int(mask[i].sum())
            single = dict(kw, input_ids=kw["input_ids"][i:i + 1, :n], attention_mask=mask[i:i + 1, :n])
            if isinstance(kw.get("target"), torch.Tensor):
                single["target"] = kw["target"][i:i + 1]
            assert_close(batched[i:i + 1], as_tensor(fn(**single), task),
                         f"{task}: sentence {i} in a padded batch vs alone ({case.description})", rtol, atol,
                         "Padding must change nothing: pass the attention_mask to the model and pool over real "
                         "tokens only.")

    return prop


property_check("lab07.text_activations.properties", "text_activations",
               "padding changes nothing; no gradients; hooks removed (also when the model fails); model and inputs "
               "untouched",
               lambda: text_cases("acts")[1:2],
               all_of(padding_free("text_activations", 1e-4, 1e-5), no_graph("text_activations"),
                      side_effect_free("text_activations"), no_hooks_left_on_error("text_activations", bad_token)))

TEXT_DD_HINT = ("'cls': ∂score/∂(block output at position 0) · CAV. 'mean': the derivative when EVERY real token's "
                "state moves along the CAV (which moves the mean-pooled state by exactly the CAV) = "
                "Σ over real tokens of ∂score/∂h_t · CAV. Pre-softmax score; pass the attention_mask to the model.")

reference_check("lab07.text_directional_derivatives.reference", "text_directional_derivatives",
                "matches the reference on two transformers, [CLS] and mean pooling, one CAV and stacks",
                lambda: text_cases("dd"), ref.text_directional_derivatives, rtol=1e-3, atol=1e-5, hint=TEXT_DD_HINT)


def head_identity(fn, case: Case) -> None:
    """minilm-sentiment mean-pools its last block and applies a linear head: the derivative is W[target]·CAV."""
    name = "minilm-sentiment"
    m = model(name)
    batch = text_batch(name, SENTENCES[:3])
    cav = unit_rows(2, 384, 50)
    expected = (m.model.head.weight[0] @ cav.T).detach().expand(3, 2)
    assert_close(fn(model=m, layer=encoder_layer(name, 5), **batch, target=0, cav=cav, pooling="mean"), expected,
                 "text_directional_derivatives of minilm-sentiment at its last block, mean pooling, class 0",
                 1e-3, 1e-5,
                 "minilm-sentiment's logits are W·(mean of the last block's states) + b: moving every real token "
                 "along the CAV changes the class-0 score by exactly W[0]·CAV — sum the per-token gradients over "
                 "the real tokens (do not average them).")


property_check("lab07.text_directional_derivatives.properties", "text_directional_derivatives",
               "exact at minilm's mean-pooled last block; padding changes nothing; hooks removed (also when the "
               "model fails); model untouched",
               lambda: text_cases("dd")[2:3],
               all_of(head_identity, padding_free("text_directional_derivatives", 1e-3, 1e-5),
                      side_effect_free("text_directional_derivatives", rtol=1e-3, atol=1e-5),
                      no_hooks_left_on_error("text_directional_derivatives", bad_token)))
