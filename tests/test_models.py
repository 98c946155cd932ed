"""Model registry (pipeline.registry.models) and training content (pipeline.registry.content),
local and on S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.registry import models
from pipeline.registry.models import (
    ModelRegistryError,
    fetch_checkpoint,
    list_models,
    publish_model,
    resolve_model,
)


def retrained(source: Path, folder: Path, *, version: str, seed: int) -> Path:
    """A checkpoint like ``source`` with other weights (a different sha256)."""
    import torch

    from j4r.checkpoint import read_info, save_checkpoint
    from j4r.model import build_model

    info = read_info(source)
    torch.manual_seed(seed)
    return save_checkpoint(
        build_model(info.net), folder, name=info.name, version=version, net=info.net
    )


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """The tiny checkpoint with a model card, evaluation files and a stage-1 sub-checkpoint."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "MODEL_CARD.md").write_text("# tiny\n")
    (folder / "eval.json").write_text("{}\n")
    shutil.copytree(tiny_checkpoint, folder / "stage1")
    return folder


def test_publish_then_resolve_latest_locally(checkpoint, tmp_path):
    from j4r.checkpoint import load_checkpoint, read_info

    registry = tmp_path / "registry"
    assert publish_model(checkpoint, str(registry), version="2026.12.01") == "2026.12.01"
    version_dir = registry / "j4r" / "2026.12.01"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "MODEL_CARD.md",
        "config.json",
        "eval.json",
        "model.safetensors",
        "stage1",
    ]
    pointer = json.loads((registry / "j4r" / "latest.json").read_text())
    assert pointer["version"] == "2026.12.01"
    assert pointer["sha256"] == read_info(checkpoint).sha256
    assert pointer["published_at"].endswith("+00:00")
    folder = resolve_model(str(registry), cache_dir=tmp_path / "cache")
    assert folder.parent == tmp_path / "cache"
    _, info = load_checkpoint(folder)
    assert info.sha256 == pointer["sha256"]
    assert (folder / "stage1" / "model.safetensors").is_file()


def test_latest_is_written_after_every_file_of_its_version(checkpoint, tmp_path, monkeypatch):
    uploaded: list[str] = []
    real_put = models.put_file

    def recording_put(local, destination, key):
        uploaded.append(key)
        return real_put(local, destination, key)

    monkeypatch.setattr(models, "put_file", recording_put)
    publish_model(checkpoint, str(tmp_path / "registry"), version="v1")
    assert uploaded[-1] == "j4r/latest.json"
    assert uploaded[-2] == "j4r/v1/config.json"  # the version's completion mark
    assert uploaded[0] == "j4r/v1/model.safetensors"
    assert len(uploaded) == 7  # weights, card, eval.json, stage1 x2, config, latest


def test_resolve_falls_back_to_the_shipped_checkpoint(tmp_path, caplog):
    from j4r.checkpoint import DEFAULT_CHECKPOINT

    caplog.set_level("INFO", logger="pipeline.registry.models")
    assert resolve_model(None) == DEFAULT_CHECKPOINT
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    assert resolve_model(str(empty), cache_dir=tmp_path / "cache") == DEFAULT_CHECKPOINT
    assert "has no latest.json" in caplog.text
    with pytest.raises(ModelRegistryError, match="no version"):
        resolve_model(str(empty), "2026.01.01", cache_dir=tmp_path / "cache")


def test_publish_refuses_other_weights_under_an_existing_version(checkpoint, tmp_path):
    registry = str(tmp_path / "registry")
    publish_model(checkpoint, registry, version="v1")
    assert publish_model(checkpoint, registry, version="v1") == "v1"  # same weights: a no-op
    other = retrained(checkpoint, tmp_path / "other", version="v1", seed=7)
    with pytest.raises(ModelRegistryError, match="different weights"):
        publish_model(other, registry)


def test_a_replaced_weights_file_is_refused_and_not_cached(checkpoint, tmp_path):
    registry = tmp_path / "registry"
    publish_model(checkpoint, str(registry), version="v1")
    other = retrained(checkpoint, tmp_path / "other", version="v1", seed=7)
    shutil.copy(other / "model.safetensors", registry / "j4r" / "v1" / "model.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(ModelRegistryError, match="sha256"):
        resolve_model(str(registry), cache_dir=cache)
    assert not any(p.name.startswith("v1-") for p in cache.iterdir())


def test_a_corrupt_checkpoint_is_not_published(checkpoint, tmp_path):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelRegistryError, match="corrupt"):
        publish_model(checkpoint, str(tmp_path / "registry"))


def test_registry_on_s3_versions_latest_and_cli(checkpoint, s3, tmp_path, capsys):
    from pipeline.cli.main import main

    fs, bucket, options = s3
    registry = f"s3://{bucket}/models"
    publish_model(checkpoint, registry, options, version="2026.12.01")
    newer = retrained(checkpoint, tmp_path / "newer", version="2026.12.02", seed=3)
    publish_model(newer, registry, options, set_latest=False)  # version from its config.json
    fs.invalidate_cache()
    listed = list_models(registry, options)
    assert [(m["version"], m["latest"]) for m in listed] == [
        ("2026.12.01", True),
        ("2026.12.02", False),
    ]
    cache = tmp_path / "cache"
    latest = resolve_model(registry, options=options, cache_dir=cache)
    # Published as 2026.12.01 from a checkpoint saved as "test": config.json says 2026.12.01.
    assert json.loads((latest / "config.json").read_text())["version"] == "2026.12.01"
    pinned = resolve_model(registry, "2026.12.02", options, cache_dir=cache)
    fetched = fetch_checkpoint(f"{registry}/j4r/2026.12.02", options, cache_dir=cache)
    assert fetched == pinned != latest
    assert (pinned / "model.safetensors").read_bytes() == (newer / "model.safetensors").read_bytes()
    assert fetch_checkpoint(str(checkpoint), options) == checkpoint  # local: as it is
    assert main(["models", registry, "--endpoint-url", options["endpoint_url"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("2026.12.01") and lines[1].endswith("*")
    assert lines[2].startswith("2026.12.02") and not lines[2].endswith("*")


def test_training_content_round_trip_on_s3(s3, monkeypatch):
    import j4r.sources
    from pipeline.registry.content import download_training_sources, upload_training_content

    fs, bucket, options = s3
    photos = j4r.sources.training_photo_paths()[:2]
    monkeypatch.setattr(j4r.sources, "training_photo_paths", lambda: photos)
    url = f"s3://{bucket}/content"
    assert upload_training_content(url, options) == [p.name for p in photos]
    fs.invalidate_cache()
    assert upload_training_content(url, options) == []  # already there
    sources = download_training_sources(url, options, max_side=64)
    assert sorted(s.name for s in sources) == sorted(p.name for p in photos)
    assert all(s.rgb.shape[0] == 3 and max(s.rgb.shape[1:]) <= 64 for s in sources)
