"""Models and inputs shared by the checks and the answer-key tests, cached."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from grader.checks.student import mark_zoo_model
from xailab import load_model

_MODELS: dict[str, nn.Module] = {}


def model(name: str) -> nn.Module:
    """A cached zoo model in eval mode. Checks hand out copies only (pickled; in the kernel the model
    is loaded by name from the zoo), so the cached one is never changed by a student's code."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = load_model(name)
        mark_zoo_model(name, _MODELS[name])
    return _MODELS[name]


class EmbeddingInput(nn.Module):
    """A text classifier seen as a function of its input embeddings: (B,T,D) → (B,classes).

    Lets image-style methods (gradient, SmoothGrad, …) run on a transformer. No padding: use
    sentences of equal token length (EQUAL_LENGTH), so any batch of rows is valid."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return self.text_model(inputs_embeds=embeds, attention_mask=mask)


@lru_cache(maxsize=None)
def _mnist(split: str, decoy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from xailab.datasets.mnist import load_decoy_mnist, load_mnist

    return load_decoy_mnist(split)[:2] if decoy else load_mnist(split)


def mnist_batch(n: int = 4, split: str = "test", decoy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n digits of a split, as fresh copies (student code may modify what it gets)."""
    x, y = _mnist(split, decoy)
    return x[:n].clone(), y[:n].clone()


SENTENCES = (
    "a wonderful and moving film",
    "the plot was dull and the acting awful",
    "not bad at all",
    "this medicine gave me terrible headaches",
)


EQUAL_LENGTH = (  # 7 WordPiece tokens each, [CLS] and [SEP] included
    "a wonderful and moving film",
    "a dull and boring film",
    "an awful and painful movie",
    "a great and lovely story",
)


def text_batch(name: str, sentences=SENTENCES) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of `sentences` for text model `name` (padded batch)."""
    enc = model(name).encode(list(sentences))
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class UnmaskedTextModel(nn.Module):
    """A small text classifier that ignores `attention_mask`: the mean of tanh(embedding) over ALL
    positions, then a linear layer. Padding changes its output, so its gradient is non-zero at
    padding positions (unlike a transformer that masks them). Same interface as the course's text
    models: get_input_embeddings(), forward(input_ids=… or inputs_embeds=…, attention_mask=…), tokenizer."""

    def __init__(self, tokenizer, vocab: int = 30522, dim: int = 8, classes: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embeddings = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            self.embeddings.weight.copy_(torch.randn(vocab, dim, generator=g))
            self.head.weight.copy_(torch.randn(classes, dim, generator=g))
        self.tokenizer = tokenizer

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        return self.head(torch.tanh(e).mean(1))


def unmasked_text_model(name: str = "tiny-bert-sentiment") -> UnmaskedTextModel:
    """An UnmaskedTextModel with the tokenizer (and vocabulary size) of course text model `name`."""
    tok = model(name).tokenizer
    return UnmaskedTextModel(tok, vocab=len(tok)).eval()
