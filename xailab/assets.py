"""Where the committed checkpoints live, and their integrity check against data/MANIFEST."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class AssetError(RuntimeError):
    """A checkpoint file is missing, unlisted or corrupt."""


def data_dir() -> Path:
    """The asset folder: $XAILAB_DATA, else the repository's data/, else the installed copy."""
    if os.environ.get("XAILAB_DATA"):
        return Path(os.environ["XAILAB_DATA"])
    repo_data = Path(__file__).resolve().parents[1] / "data"
    if (repo_data / "MANIFEST").exists():
        return repo_data
    try:
        import xailab_data

        return Path(xailab_data.__file__).parent
    except ImportError as err:  # pragma: no cover - broken install
        raise AssetError("xailab's data folder was not found; reinstall xailab or set XAILAB_DATA") from err


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path | None = None) -> dict:
    root = root or data_dir()
    path = root / "MANIFEST"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_manifest(entries: dict, root: Path | None = None) -> None:
    root = root or data_dir()
    (root / "MANIFEST").write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")


def model_dir(name: str, verify: bool = True) -> Path:
    """The folder of checkpoint `name`, after checking every file the MANIFEST lists for it."""
    root = data_dir()
    folder = root / "models" / name
    files = {k: v for k, v in read_manifest(root).items() if v.get("model") == name}
    if not files:
        raise AssetError(
            f"model '{name}' is not listed in {root / 'MANIFEST'}; rebuild it with "
            f"`make models` (python -m xailab.zoo build {name})"
        )
    if verify:
        for rel, entry in files.items():
            path = root / rel
            if not path.exists():
                raise AssetError(
                    f"checkpoint file {path} is missing. Restore it from git "
                    f"(`git checkout -- data/{rel}`) or rebuild with `make models`."
                )
            if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
                raise AssetError(
                    f"checkpoint file {path} is corrupt: sha256 {sha256(path)[:12]}… "
                    f"({path.stat().st_size} bytes) but MANIFEST expects {entry['sha256'][:12]}… "
                    f"({entry['bytes']} bytes). Restore it from git or rebuild with `make models`."
                )
    return folder
