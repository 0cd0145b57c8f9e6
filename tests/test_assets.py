"""Checkpoints are verified against data/MANIFEST, with a clear message when something is wrong."""
import shutil

import pytest

from xailab import load_model
from xailab.assets import AssetError, data_dir, read_manifest, sha256


def test_manifest_lists_every_checkpoint_file_with_its_facts():
    root = data_dir()
    manifest = read_manifest(root)
    on_disk = {p.relative_to(root).as_posix() for p in (root / "models").rglob("*") if p.is_file()}
    assert on_disk == set(manifest), "data/models and data/MANIFEST disagree: run `make models`"
    for rel, entry in manifest.items():
        assert entry["sha256"] == sha256(root / rel), rel
        assert entry["bytes"] == (root / rel).stat().st_size
        assert entry["provenance"] and entry["licence"] and entry["metrics"], rel


def test_checkpoints_are_small():
    total = sum(e["bytes"] for e in read_manifest().values())
    assert total < 40e6, f"committed checkpoints weigh {total / 1e6:.1f} MB"


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    shutil.copytree(data_dir(), tmp_path / "data")
    monkeypatch.setenv("XAILAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_missing_checkpoint_says_what_to_do(data_copy):
    (data_copy / "models" / "mnist-cnn" / "model.safetensors").unlink()
    with pytest.raises(AssetError, match="missing.*make models"):
        load_model("mnist-cnn")


def test_corrupt_checkpoint_is_refused(data_copy):
    path = data_copy / "models" / "mnist-cnn" / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(AssetError, match="corrupt"):
        load_model("mnist-cnn")


def test_unknown_model_lists_the_zoo():
    with pytest.raises(KeyError, match="mnist-cnn"):
        load_model("resnet-9000")
