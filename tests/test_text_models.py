"""The review-text data and the two sentiment classifiers of the zoo."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest
import torch

from xailab.datasets.text import (NEGATIVE_WORDS, POSITIVE_WORDS, content_mask, evidence_words, gold_rationale,
                                  load_drug_reviews, make_lexicon_sentences, tokenizer, vader_lexicon)
from xailab.zoo import load_model

MODELS = ["tiny-bert-sentiment", "minilm-sentiment"]
POSITIVE = ["the staff was wonderful and the food was delicious .",
            "this medicine works great , i feel so much better and i am very happy with it ."]
NEGATIVE = ["the food was terrible and the service was rude .",
            "awful side effects , i felt horrible and miserable . the worst drug i ever took ."]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return load_model(request.param)


def test_lexicon_sentences_are_deterministic():
    a, b = make_lexicon_sentences(40, seed=3), make_lexicon_sentences(40, seed=3)
    assert a == b
    assert a.texts != make_lexicon_sentences(40, seed=4).texts
    assert sum(a.labels) == 20


@pytest.mark.parametrize("split", ["train", "test"])
def test_evidence_points_at_lexicon_words(split):
    lexicon, pools = vader_lexicon(), evidence_words(split)
    allowed = {1: set(pools["positive"]), -1: set(pools["negative"])}
    data = make_lexicon_sentences(300, seed=0, split=split)
    kinds = set()
    for text, label, evidence, polarity in zip(*data):
        words = text.split()
        kinds.add((len(evidence), len(set(polarity))))
        for pos, sign in zip(evidence, polarity):
            assert words[pos] in allowed[sign]
            assert sign * lexicon[words[pos]] >= 1.5
        others = [w for i, w in enumerate(words) if i not in evidence]
        assert not any(w in lexicon for w in others), text
        assert label == int(polarity[-1] > 0)  # the last (second) clause decides
    assert kinds == {(1, 1), (2, 1), (2, 2)}  # single, double, mixed


def test_evidence_words_split_is_disjoint_and_complete():
    train, test = evidence_words("train"), evidence_words("test")
    for key, words in (("positive", POSITIVE_WORDS), ("negative", NEGATIVE_WORDS)):
        assert not set(train[key]) & set(test[key])
        assert sorted(train[key] + test[key]) == sorted(words)


def test_word_positions_are_token_positions():
    tok = tokenizer()
    data = make_lexicon_sentences(50, seed=0, split="test")
    for text, evidence in zip(data.texts, data.evidence):
        tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
        assert tokens[1:-1] == text.split()
        assert all(tokens[p + 1] == text.split()[p] for p in evidence)


def test_token_masks_of_a_padded_batch():
    tok = tokenizer()
    data = make_lexicon_sentences(12, seed=3, split="test")
    enc = tok(data.texts, padding=True, return_tensors="pt")
    content, gold = content_mask(enc["attention_mask"]), gold_rationale(data.evidence, enc["input_ids"].shape)
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    for i, (text, evidence) in enumerate(zip(data.texts, data.evidence)):
        ids = enc["input_ids"][i].tolist()
        assert [j for j, t in enumerate(ids) if t not in special] == content[i].nonzero().flatten().tolist()
        tokens = tok.convert_ids_to_tokens(ids)
        assert [tokens[j] for j in gold[i].nonzero().flatten().tolist()] == [text.split()[p] for p in sorted(evidence)]
    assert not (gold & ~content).any()


def test_drug_reviews():
    train, test = load_drug_reviews("train"), load_drug_reviews("test")
    assert (len(train), len(test)) == (546, 343)
    assert {y for _, y in train + test} == {0, 1}
    assert not any("&#039;" in t for t, _ in train)


@pytest.mark.parametrize("name", MODELS)
def test_loading_is_silent(name, capfd):
    load_model(name)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_interface(model):
    assert not model.training and not any(m.training for m in model.modules())
    assert model.labels == ["negative", "positive"]
    enc = model.encode(["the film was great .", "the film was great and the music was lovely ."])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[1].all() and mask[0].sum() == 7 and not mask[0, 7:].any()
    assert (ids[0, 7:] == model.tokenizer.pad_token_id).all()
    assert model.tokens(ids[0])[:7] == ["[CLS]", "the", "film", "was", "great", ".", "[SEP]"]
    assert model.encode(["word " * 200], max_length=64)["input_ids"].shape == (1, 64)
    with torch.no_grad():
        logits = model(**enc)
    assert logits.shape == (2, 2)


def test_gradients_flow_through_inputs_embeds(model):
    enc = model.encode(POSITIVE + NEGATIVE)
    embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"])
    torch.testing.assert_close(logits, model(**enc))
    logits[:, 1].sum().backward()
    assert torch.isfinite(embeds.grad).all() and embeds.grad.abs().sum() > 0


def test_clear_sentences(model):
    probs = model.predict_proba(POSITIVE + NEGATIVE)
    assert probs.argmax(1).tolist() == [1] * len(POSITIVE) + [0] * len(NEGATIVE)
