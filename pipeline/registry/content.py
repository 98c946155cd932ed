"""Clean training content in object storage: a prefix of photos every training worker reads.

``upload_training_content`` copies j4r's default training photos (scikit-image's, plus the
Debian wallpapers when installed) under a URL prefix; ``download_training_sources`` turns such a
prefix back into :class:`j4r.sources.CleanSource` objects on a worker of any node.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io.storage import Location, open_location, put_file

if TYPE_CHECKING:
    from j4r.sources import CleanSource

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # j4r.sources.IMAGE_SUFFIXES


def list_images(location: Location) -> dict[str, int]:
    """Image files directly or deeper under the prefix: ``{relative key: size in bytes}``."""
    fs = location.fs
    if not fs.exists(location.root):
        return {}
    found = fs.find(location.root, detail=True)
    return {
        posixpath.relpath(path, location.root): int(info.get("size") or 0)
        for path, info in found.items()
        if posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS
    }


def upload_training_content(url: str, options: dict[str, Any] | None = None) -> list[str]:
    """Upload the default training photos under ``url``; returns the keys uploaded now.

    Photos already there with the same size are skipped, so calling it again is cheap.
    """
    from j4r.sources import training_photo_paths

    location = open_location(url, options)
    present = list_images(location)
    uploaded = []
    for path in training_photo_paths():
        if present.get(path.name) == path.stat().st_size:
            continue
        put_file(path, location, path.name)
        uploaded.append(path.name)
    logger.info(
        "training content at %s: %d photos uploaded, %d already there",
        location.url(),
        len(uploaded),
        len(present),
    )
    return uploaded


def download_training_sources(
    url: str, options: dict[str, Any] | None = None, *, max_side: int = 1024
) -> list[CleanSource]:
    """The photos under ``url`` as ``list[CleanSource]`` (RGB ``(3, h, w)`` float32 in [0, 1]).

    Images are read one at a time through a temp file and resized to at most ``max_side``.
    """
    from j4r.sources import CleanSource, read_image_rgb

    location = open_location(url, options)
    keys = sorted(list_images(location))
    if not keys:
        raise FileNotFoundError(
            f"no training photos (.jpg, .png) under {location.url()}: "
            "upload them with pipeline.registry.content.upload_training_content"
        )
    sources = []
    with tempfile.TemporaryDirectory(prefix="content-") as tmp:
        for key in keys:
            local = Path(tmp) / posixpath.basename(key)
            remote = location.path(key)
            location.fs.get_file(remote, str(local))
            sources.append(CleanSource(key, read_image_rgb(local, max_side)))
            local.unlink()
    logger.info("training content: %d photos from %s", len(sources), location.url())
    return sources
