"""Models and inputs shared by the checks, cached, and restored if a student's code damaged them."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from xailab import load_model

_MODELS: dict[str, tuple[nn.Module, dict, dict[str, torch.Tensor]]] = {}


def model_state(model: nn.Module) -> dict:
    """What a well-behaved explanation method must leave as it found it."""
    return {
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules()),
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": sum(p.grad is not None for p in model.parameters()),
        "modules": [type(m).__name__ for m in model.modules()],
    }


def unchanged(model: nn.Module, state: dict, params: dict[str, torch.Tensor]) -> bool:
    """True when `model` still has the given state and parameter values."""
    current = dict(model.named_parameters())
    return (model_state(model) == state and current.keys() == params.keys()
            and all(torch.equal(current[k], v) for k, v in params.items()))


def snapshot(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    return model_state(model), {k: v.detach().clone() for k, v in model.named_parameters()}


def model(name: str) -> nn.Module:
    """A cached zoo model in eval mode; reloaded when a previous call left it modified."""
    if name in _MODELS and unchanged(*_MODELS[name]):
        return _MODELS[name][0]
    torch.manual_seed(0)
    m = load_model(name)
    _MODELS[name] = (m, *snapshot(m))
    return m


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
