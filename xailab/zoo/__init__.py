"""The model zoo: every model of the course, loadable offline by name.

    >>> from xailab import load_model
    >>> model = load_model("mnist-cnn")          # eval mode, on the CPU

Checkpoints the course trains itself live in data/models/<name>/ and are checked against
data/MANIFEST (sha256) before loading. `python -m xailab.zoo build [NAME ...]` retrains them
with their deterministic recipes and rewrites the MANIFEST entries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from xailab.assets import data_dir, model_dir, read_manifest, sha256, write_manifest


@dataclass
class ZooEntry:
    name: str
    kind: str  # "image", "text", "feature" (a model on precomputed features) or "data"
    summary: str
    loader: Callable[[Path | None], torch.nn.Module]
    recipe: Callable[[Path], dict] | None = None  # trains into a folder, returns card facts
    card: dict = field(default_factory=dict)


_ZOO: dict[str, ZooEntry] = {}


def register(name: str, kind: str, summary: str, recipe: Callable[[Path], dict] | None = None):
    """Decorator for a loader `fn(folder) -> nn.Module`; folder is None for pip-shipped weights."""

    def wrap(loader):
        _ZOO[name] = ZooEntry(name, kind, summary, loader, recipe)
        return loader

    return wrap


def _populate() -> None:
    # every module, every time (imports are cached): one imported on its own must not hide the others
    from xailab.zoo import concepts, imagenet, influence, mnist, text  # noqa: F401  (registration)


def list_models() -> dict[str, str]:
    """Name → one-line summary of every model in the zoo."""
    _populate()
    return {name: entry.summary for name, entry in _ZOO.items()}


def load_model(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load model `name` in eval mode with its committed (checksum-verified) weights."""
    _populate()
    if name not in _ZOO:
        raise KeyError(f"unknown model '{name}'. Available: {', '.join(sorted(_ZOO))}")
    entry = _ZOO[name]
    folder = model_dir(name) if entry.recipe is not None else None
    model = entry.loader(folder)
    return model.to(device).eval()


def model_card(name: str) -> dict:
    """The config.json of a trained checkpoint (architecture, data, metrics)."""
    return json.loads((model_dir(name, verify=False) / "config.json").read_text())


def save_checkpoint(module: torch.nn.Module, folder: Path, config: dict) -> None:
    """Write model.safetensors + config.json (the course's checkpoint format)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_state(module: torch.nn.Module, folder: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module


def build(names: list[str] | None = None) -> None:
    """Retrain the named checkpoints (all trained ones by default) and update the MANIFEST."""
    _populate()
    root = data_dir()
    # models first, then what is computed from them (kinds "data" and "feature"), in registration order
    names = names or sorted((n for n, e in _ZOO.items() if e.recipe is not None),
                            key=lambda n: _ZOO[n].kind in ("data", "feature"))
    for name in names:
        entry = _ZOO[name]
        if entry.recipe is None:
            print(f"{name}: pip-shipped weights, nothing to build")
            continue
        folder = root / "models" / name
        for old in folder.glob("*") if folder.exists() else []:
            old.unlink()
        print(f"== building {name}")
        facts = entry.recipe(folder)
        manifest = {k: v for k, v in read_manifest(root).items() if v.get("model") != name}
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(root).as_posix()
            manifest[rel] = {"model": name, "sha256": sha256(path), "bytes": path.stat().st_size, **facts}
        write_manifest(manifest, root)
        print(f"   {name}: {facts.get('metrics')}")
