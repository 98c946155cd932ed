"""A model registry in object storage: published J4R-Net checkpoints and a ``latest`` pointer.

Layout under a registry root (a local path, ``file://`` or ``s3://bucket/prefix``)::

    REGISTRY/j4r/VERSION/model.safetensors
    REGISTRY/j4r/VERSION/config.json          # written after the weights: marks VERSION whole
    REGISTRY/j4r/VERSION/{MODEL_CARD.md, eval.json, eval.md, stage1/...}   # optional
    REGISTRY/j4r/latest.json                  # {"version", "published_at", "sha256"}, LAST

``latest.json`` is written only after every file of its version is in place, so a reader that
follows it never finds a partial version. Downloads land in a local cache keyed by version and
weights sha256, are verified against the expected sha256 and only then renamed into place.
No torch at import time: this module also serves ``derain models``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import ModelRegistryError
from pipeline.io.storage import Location, open_location, put_file

logger = logging.getLogger(__name__)

MODEL_FAMILY = "j4r"
LATEST = "latest.json"
WEIGHTS = "model.safetensors"  # j4r.checkpoint.WEIGHTS (kept import-light)
CONFIG = "config.json"  # j4r.checkpoint.CONFIG
OPTIONAL_FILES = ("MODEL_CARD.md", "eval.json", "eval.md")
OPTIONAL_SUBFOLDERS = ("stage1",)  # the single-frame checkpoint that `derain eval` compares


def _family(registry: Location) -> str:
    return registry.path(MODEL_FAMILY)


def _check_version_name(version: str) -> str:
    unusable = not version or "/" in version or version in {".", "..", "latest"}
    if unusable or version.endswith(".json"):
        raise ModelRegistryError(f"unusable model version {version!r}")
    return version


def _read_json(location: Location, path: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` in ``location``'s filesystem, or None when absent."""
    try:
        with location.fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def _sha256(path: Path) -> str:
    from j4r.checkpoint import file_sha256

    return file_sha256(path)


def _put_json(data: dict[str, Any], destination: Location, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "data.json"
        local.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return put_file(local, destination, key)


def _files_to_publish(checkpoint_dir: Path) -> list[tuple[Path, str]]:
    """``(local file, key relative to the version)`` with the weights first, config.json last."""
    files = [(checkpoint_dir / WEIGHTS, WEIGHTS)]
    files += [(checkpoint_dir / n, n) for n in OPTIONAL_FILES if (checkpoint_dir / n).is_file()]
    for sub in OPTIONAL_SUBFOLDERS:
        if (checkpoint_dir / sub / WEIGHTS).is_file() and (checkpoint_dir / sub / CONFIG).is_file():
            files += [(checkpoint_dir / sub / n, f"{sub}/{n}") for n in (WEIGHTS, CONFIG)]
    files.append((checkpoint_dir / CONFIG, CONFIG))
    return files


def publish_model(
    checkpoint_dir: Path,
    registry_url: str,
    options: dict[str, Any] | None = None,
    *,
    version: str | None = None,
    set_latest: bool = True,
) -> str:
    """Upload a checkpoint folder as ``REGISTRY/j4r/VERSION``; returns the version.

    ``version`` defaults to the one in the checkpoint's config.json. Publishing the same
    weights again is a no-op (and may still move ``latest``); different weights under an
    existing version are refused. ``latest.json`` is written last, only if ``set_latest``.
    """
    from pipeline.registry.checkpoints import read_model_info

    checkpoint_dir = Path(checkpoint_dir)
    info = read_model_info(checkpoint_dir)  # raises CheckpointError for an incomplete folder
    sha = _sha256(checkpoint_dir / WEIGHTS)
    if sha != info.sha256:
        raise ModelRegistryError(
            f"{checkpoint_dir}: weights sha256 {sha[:12]} differs from config.json "
            f"({info.sha256[:12]}); the checkpoint is corrupt"
        )
    version = _check_version_name(version or info.version)
    registry = open_location(registry_url, options)
    version_key = f"{MODEL_FAMILY}/{version}"
    existing = _read_json(registry, registry.path(f"{version_key}/{CONFIG}"))
    if existing is not None and existing.get("sha256") != sha:
        raise ModelRegistryError(
            f"{registry.url(version_key)} already holds different weights "
            f"(sha256 {str(existing.get('sha256'))[:12]}, new {sha[:12]}); publish a new version"
        )
    if existing is None:
        for local, relative in _files_to_publish(checkpoint_dir):
            if relative == CONFIG and version != info.version:
                # The version a worker reads from config.json is the one manifests record.
                config = json.loads(local.read_text())
                _put_json({**config, "version": version}, registry, f"{version_key}/{CONFIG}")
                continue
            put_file(local, registry, f"{version_key}/{relative}")
        logger.info("published %s (sha256 %s)", registry.url(version_key), sha[:12])
    else:
        logger.info("%s already published with the same weights", registry.url(version_key))
    if set_latest:
        pointer = {
            "version": version,
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sha256": sha,
        }
        _put_json(pointer, registry, f"{MODEL_FAMILY}/{LATEST}")
        logger.info("latest -> %s", version)
    return version


def default_cache_dir() -> Path:
    """``$DERAIN_MODEL_CACHE``, else ``$XDG_CACHE_HOME/derain/models`` (``~/.cache`` default)."""
    if os.environ.get("DERAIN_MODEL_CACHE"):
        return Path(os.environ["DERAIN_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "derain" / "models"


def _download_version(source: Location, version: str, sha256: str, cache_dir: Path) -> Path:
    """Every file under ``source.root`` into ``cache_dir/VERSION-SHA16``, verified; cached."""
    target = cache_dir / f"{version}-{sha256[:16]}"
    if target.is_dir():
        try:
            _verify_download(target, sha256, str(target))
            logger.info("model %s from cache %s", version, target)
            return target
        except ModelRegistryError as exc:
            logger.warning("discarding a bad cached copy: %s", exc)
            shutil.rmtree(target, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fs = source.fs
    found = fs.find(source.root)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".download-"))
    try:
        for remote in found:
            local = tmp / posixpath.relpath(remote, source.root)
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        _verify_download(tmp, sha256, source.url())
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same download first
            if not (target / WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("model %s downloaded from %s to %s", version, source.url(), target)
    return target


def _verify_download(folder: Path, sha256: str, url: str) -> None:
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise ModelRegistryError(f"{url} is not a complete checkpoint ({WEIGHTS}, {CONFIG})")
    actual = _sha256(folder / WEIGHTS)
    recorded = json.loads((folder / CONFIG).read_text()).get("sha256")
    if actual != sha256 or (recorded and recorded != actual):
        raise ModelRegistryError(
            f"{url}: downloaded weights have sha256 {actual[:12]}, expected {sha256[:12]} "
            f"(config.json says {str(recorded)[:12]}); refusing a corrupt or replaced model"
        )


def _shipped_checkpoint(reason: str) -> Path:
    from j4r.checkpoint import DEFAULT_CHECKPOINT

    logger.info("using the shipped checkpoint %s: %s", DEFAULT_CHECKPOINT, reason)
    return DEFAULT_CHECKPOINT


def resolve_model(
    registry_url: str | None,
    version: str = "latest",
    options: dict[str, Any] | None = None,
    *,
    cache_dir: Path | None = None,
) -> Path:
    """A local checkpoint folder for ``version`` of the registry (``load_checkpoint`` reads it).

    No registry, or ``latest`` with no ``latest.json`` yet, gives the shipped checkpoint.
    """
    if not registry_url:
        return _shipped_checkpoint("no model registry given")
    registry = open_location(registry_url, options)
    if version == "latest":
        pointer = _read_json(registry, registry.path(f"{MODEL_FAMILY}/{LATEST}"))
        if pointer is None:
            return _shipped_checkpoint(f"{registry.url(MODEL_FAMILY)} has no {LATEST}")
        version, sha = pointer["version"], pointer["sha256"]
    else:
        config = _read_json(registry, registry.path(f"{MODEL_FAMILY}/{version}/{CONFIG}"))
        if config is None:
            raise ModelRegistryError(f"{registry.url(MODEL_FAMILY)} has no version {version!r}")
        sha = config["sha256"]
    source = open_location(registry.url(f"{MODEL_FAMILY}/{_check_version_name(version)}"), options)
    folder = _download_version(source, version, sha, cache_dir or default_cache_dir())
    logger.info("model %s (sha256 %s) from %s", version, sha[:12], registry.url(MODEL_FAMILY))
    return folder


def fetch_checkpoint(
    url: str, options: dict[str, Any] | None = None, cache_dir: Path | None = None
) -> Path:
    """A local folder for the checkpoint at ``url`` (a published version, or any folder).

    Local folders are returned as they are; remote ones are downloaded once into the cache and
    checked against the sha256 in their config.json.
    """
    source = open_location(url, options)
    if source.protocol == "file":
        return Path(source.root)
    config = _read_json(source, source.path(CONFIG))
    if config is None or "sha256" not in config:
        raise ModelRegistryError(f"{url} is not a checkpoint: no {CONFIG} with a sha256")
    version = _check_version_name(str(config.get("version") or posixpath.basename(source.root)))
    return _download_version(source, version, config["sha256"], cache_dir or default_cache_dir())


def _modified(info: dict[str, Any]) -> str:
    value = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else ""


def list_models(registry_url: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Published versions, oldest name first: ``{version, name, sha256, url, modified, latest}``.

    Folders without a config.json (an upload in progress or abandoned) are left out.
    """
    registry = open_location(registry_url, options)
    fs, family = registry.fs, _family(registry)
    if not fs.exists(family):
        return []
    pointer = _read_json(registry, registry.path(f"{MODEL_FAMILY}/{LATEST}")) or {}
    entries = fs.ls(family, detail=True)
    models = []
    for entry in sorted(entries, key=lambda e: e["name"]):
        if entry.get("type") != "directory":
            continue
        version = posixpath.basename(entry["name"].rstrip("/"))
        config = _read_json(registry, registry.path(f"{MODEL_FAMILY}/{version}/{CONFIG}"))
        if config is None:
            continue
        weights = registry.path(f"{MODEL_FAMILY}/{version}/{WEIGHTS}")
        models.append(
            {
                "version": version,
                "name": config.get("name", ""),
                "sha256": config.get("sha256", ""),
                "url": registry.url(f"{MODEL_FAMILY}/{version}"),
                "modified": _modified(fs.info(weights)),
                "latest": version == pointer.get("version"),
            }
        )
    return models
