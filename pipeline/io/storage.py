"""Object storage through fsspec: local paths, ``file://`` and ``s3://`` (s3fs).

S3-compatible stores (MinIO, Ceph, moto) are reached with an endpoint URL, given as the
``endpoint_url`` option or the standard ``AWS_ENDPOINT_URL`` variable. Credentials come from the
standard AWS chain (environment, profile, instance role) and are never logged. Downloads stream
to local temp files (decord would otherwise read a whole object into memory) and uploads go in
one piece, so a reader never sees half an object at its final key.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import StorageError, UsageError
from pipeline.io.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """A filesystem and a root path inside it (no trailing slash)."""

    fs: Any
    root: str
    protocol: str

    def url(self, relative: str = "") -> str:
        path = posixpath.join(self.root, relative) if relative else self.root
        return path if self.protocol == "file" else f"{self.protocol}://{path}"

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative)


def parse_storage_options(pairs: list[str], endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options from ``KEY=VALUE`` pairs (values parsed as YAML scalars, dotted keys
    nest: ``client_kwargs.region_name=eu``) and an optional S3 endpoint URL."""
    from j4r.config import parse_overrides  # the project's one KEY=VALUE parser

    try:
        options = parse_overrides(pairs)
    except ValueError as exc:
        raise UsageError(f"storage options: {exc}") from exc
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def storage_options_for(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``; S3 gets ``AWS_ENDPOINT_URL`` if no endpoint is given."""
    options = dict(options or {})
    if url.startswith(("s3://", "s3a://")):
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs = dict(options.get("client_kwargs", {}))
            client_kwargs.setdefault("endpoint_url", endpoint)
            options["client_kwargs"] = client_kwargs
    return options


def open_location(url: str | Path, options: dict[str, Any] | None = None) -> Location:
    import fsspec

    url = str(url)
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options_for(url, options))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {url!r}: {exc}") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    protocol = "file" if protocol in ("file", "local") else protocol
    return Location(fs=fs, root=root.rstrip("/") or "/", protocol=protocol)


def safe_relative_key(key: str) -> str:
    """Normalise a relative key and refuse any that could escape its root.

    Spaces and unicode are kept (NFC-normalised); ``..``, absolute paths, empty parts and
    control characters are refused.
    """
    key = unicodedata.normalize("NFC", key.replace("\\", "/"))
    if key.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise StorageError(f"unsafe key {key!r}: absolute or with control characters")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise StorageError(f"unsafe key {key!r}: empty or climbs out with '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class SourceObject:
    """A video found under a source root."""

    key: str  # relative to the source root, '/'-separated
    url: str
    size: int
    etag: str  # ETag, or size+mtime where the store has none


def _etag_of(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"{info.get('size', 0)}-{mtime}"


def list_videos(location: Location) -> list[SourceObject]:
    """Videos under the root, recursively, by extension; sorted by key."""
    fs = location.fs
    if not retry(lambda: fs.exists(location.root), what=f"check {location.url()}"):
        raise FileNotFoundError(
            f"{location.url()} does not exist: give a video file or a folder (prefix) of videos"
        )
    if fs.isfile(location.root):
        info = fs.info(location.root)
        name = posixpath.basename(location.root)
        return [SourceObject(name, location.url(), int(info["size"]), _etag_of(info))]
    found = retry(lambda: fs.find(location.root, detail=True), what=f"list {location.url()}")
    objects = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        relative = posixpath.relpath(path, location.root)
        name = posixpath.basename(relative)
        if name.startswith(".") or posixpath.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        try:
            key = safe_relative_key(relative)
        except StorageError as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        url = path if location.protocol == "file" else f"{location.protocol}://{path}"
        objects.append(SourceObject(key, url, int(info.get("size") or 0), _etag_of(info)))
    return sorted(objects, key=lambda o: o.key)


TRANSIENT = (ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Network hiccups and 5xx/throttling answers are worth retrying; 4xx are not."""
    if isinstance(exc, TRANSIENT):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout"}
    return type(exc).__name__ in {
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
    }


def retry(fn: Callable[[], T], *, what: str, attempts: int = 4, base_delay: float = 0.5) -> T:
    """Call ``fn``, retrying transient failures with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = base_delay * 2 ** (attempt - 1)
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def local_copy(url: str, options: dict[str, Any] | None, workdir: str | Path) -> Iterator[Path]:
    """A local file with the object's bytes (the file itself when it is already local)."""
    location = open_location(url, options)
    if location.protocol == "file":
        yield Path(location.root)
        return
    suffix = posixpath.splitext(location.root)[1]
    handle, tmp = tempfile.mkstemp(suffix=suffix, dir=workdir)
    os.close(handle)
    try:
        retry(lambda: location.fs.get_file(location.root, tmp), what=f"download {url}")
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def put_file(local: Path, destination: Location, key: str) -> str:
    """Upload ``local`` to ``destination/key`` in one piece; returns the final URL.

    On a local filesystem the bytes go to a temp file beside the target and are renamed into
    place; on S3 an object only becomes visible when its (multipart) upload completes.
    """
    key = safe_relative_key(key)
    target = destination.path(key)
    if destination.protocol == "file":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".part-", dir=Path(target).parent)
        os.close(handle)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    else:
        retry(lambda: destination.fs.put_file(str(local), target), what=f"upload {key}")
    return destination.url(key)
