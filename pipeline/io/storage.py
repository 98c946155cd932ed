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
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import (
    CredentialsError,
    EndpointUnreachable,
    InfrastructureError,
    StorageError,
    UsageError,
)
from pipeline.io.video import VIDEO_EXTENSIONS, chmod_like_new_file

logger = logging.getLogger(__name__)


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


# Retries are botocore's own, configured here: "standard" mode retries throttling, 5xx answers
# and connection errors with exponential backoff and jitter ("adaptive" adds client-side rate
# limiting); 4xx answers are not retried. Whole steps are retried on top by Prefect's task
# retries (flows/) and by running `derain run` again (it resumes). botocore's default connect
# timeout is 60 s: an unreachable endpoint took minutes to report. With these defaults a dead
# endpoint is reported within about 20 s. Each can be overridden per command with
# ``--storage-option config_kwargs.retries.max_attempts=8`` (or ``connect_timeout``,
# ``read_timeout``, ``retries.mode``), or with botocore's AWS_MAX_ATTEMPTS / AWS_RETRY_MODE.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 3,
    "read_timeout": 60,
    "retries": {"mode": "standard", "max_attempts": 3},  # retries after the first try
}


def s3_config(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """botocore ``Config`` keyword arguments: :data:`S3_CONFIG_DEFAULTS` under ``given``;
    AWS_MAX_ATTEMPTS / AWS_RETRY_MODE replace the defaults they name."""
    given = dict(given or {})
    retries = dict(S3_CONFIG_DEFAULTS["retries"])
    if os.environ.get("AWS_MAX_ATTEMPTS"):
        retries.pop("max_attempts")
    if os.environ.get("AWS_RETRY_MODE"):
        retries.pop("mode")
    retries.update(given.pop("retries", None) or {})
    return {**S3_CONFIG_DEFAULTS, **given, "retries": retries}


def storage_options_for(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``; S3 gets ``AWS_ENDPOINT_URL`` if no endpoint is given, and
    the timeouts and retries of :func:`s3_config` under the options' own ``config_kwargs``."""
    options = dict(options or {})
    if url.startswith(("s3://", "s3a://")):
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs = dict(options.get("client_kwargs", {}))
            client_kwargs.setdefault("endpoint_url", endpoint)
            options["client_kwargs"] = client_kwargs
        options["config_kwargs"] = s3_config(options.get("config_kwargs"))
    return options


def endpoint_of(location: Location) -> str:
    """The endpoint a location talks to, for messages (no credentials)."""
    if location.protocol == "file":
        return "the local filesystem"
    kwargs = getattr(location.fs, "client_kwargs", None) or {}
    return str(kwargs.get("endpoint_url") or f"the default {location.protocol} endpoint")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def _client_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(missing-credentials types, unreachable-endpoint types) of botocore and aiohttp."""
    credentials: tuple[type, ...] = ()
    unreachable: tuple[type, ...] = (ConnectionRefusedError,)
    try:
        from botocore import exceptions as be

        credentials = (be.NoCredentialsError, be.PartialCredentialsError,
                       be.CredentialRetrievalError)  # fmt: skip
        unreachable += (be.EndpointConnectionError, be.ConnectTimeoutError,
                        be.ConnectionClosedError)  # fmt: skip
    except ImportError:
        pass
    try:
        import aiohttp

        unreachable += (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)
    except ImportError:
        pass
    return credentials, unreachable


# S3 error codes that mean "these credentials are not accepted" (not "this key is forbidden").
REJECTED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                        "InvalidToken", "TokenRefreshRequired"}  # fmt: skip


def infrastructure_error(
    exc: BaseException, location: Location | None = None
) -> InfrastructureError | None:
    """The one-line :class:`~pipeline.errors.InfrastructureError` that ``exc`` (or an error it
    was raised from) amounts to: no or rejected credentials, or an endpoint that does not
    answer. None when it is neither (a missing key, a bug)."""
    credentials, unreachable = _client_error_types()
    where = f" for {location.url()}" if location else ""
    endpoint = endpoint_of(location) if location else "the storage endpoint"
    for error in _chain(exc):
        if isinstance(error, InfrastructureError):
            return error
        if credentials and isinstance(error, credentials):
            return CredentialsError(
                f"no S3 credentials found{where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance role applies "
                "(a public bucket: --storage-option anon=true)"
            )
        response = getattr(error, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if code in REJECTED_CREDENTIALS:
            return CredentialsError(
                f"{endpoint} rejects the S3 credentials{where} ({code}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
            )
        if isinstance(error, unreachable):
            return EndpointUnreachable(
                f"cannot reach {endpoint}{where} ({type(error).__name__}): check "
                "--endpoint-url / AWS_ENDPOINT_URL and the network"
            )
    return None


@contextmanager
def storage_errors(location: Location) -> Iterator[None]:
    """Re-raise missing credentials and unreachable endpoints as one-line
    :class:`~pipeline.errors.InfrastructureError` naming ``location``."""
    try:
        yield
    except InfrastructureError:
        raise
    except Exception as exc:
        infra = infrastructure_error(exc, location)
        if infra is None:
            raise
        raise infra from exc


def bucket_of(location: Location) -> str | None:
    """The bucket of an object-store location (None on a local filesystem)."""
    return None if location.protocol == "file" else location.root.strip("/").split("/")[0]


def check_bucket_exists(location: Location, role: str = "destination") -> None:
    """Refuse a location in a bucket that does not exist: derain never creates buckets."""
    bucket = bucket_of(location)
    if not bucket:
        return
    fs = location.fs
    if hasattr(fs, "call_s3"):
        # HEAD on the bucket: s3fs's exists() would answer False for an unreachable endpoint.
        def head() -> bool:
            try:
                fs.call_s3("head_bucket", Bucket=bucket)
            except FileNotFoundError:
                return False
            except PermissionError:
                return True  # may not look, may still write: later calls say more
            return True
    else:

        def head() -> bool:
            return fs.exists(bucket)

    with storage_errors(location):
        exists = head()
    if not exists:
        advice = (
            "check the URL"
            if role == "source"
            else "derain never creates buckets; create it (or fix the name) and run again"
        )
        raise StorageError(
            f"the {role} bucket {bucket!r} does not exist at {endpoint_of(location)}: {advice}"
        )


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
    # Why this object cannot be processed (e.g. a key that climbs out with '..'): it is listed
    # so that the run's manifest accounts for it, and never downloaded. None: a good video.
    refused: str | None = None


def _etag_of(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"{info.get('size', 0)}-{mtime}"


def list_videos(location: Location, *, include_refused: bool = False) -> list[SourceObject]:
    """Videos under the root, recursively, by extension; sorted by key.

    A video whose key is unsafe (``..``, control characters) is left out, or, with
    ``include_refused``, listed with ``refused`` set to the reason (the archive job records it).
    """
    fs = location.fs
    with storage_errors(location):
        exists = fs.exists(location.root)
    if not exists:
        raise FileNotFoundError(
            f"{location.url()} does not exist: give a video file or a folder (prefix) of videos"
        )
    with storage_errors(location):
        if fs.isfile(location.root):
            info = fs.info(location.root)
            name = posixpath.basename(location.root)
            return [SourceObject(name, location.url(), int(info["size"]), _etag_of(info))]
        found = fs.find(location.root, detail=True)
    objects = []
    root = location.root.rstrip("/") + "/"
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        # Not posixpath.relpath: it would fold 'a/../b.mp4' into 'b.mp4' and hide the '..'.
        relative = path[len(root) :] if path.startswith(root) else posixpath.relpath(path, root)
        name = posixpath.basename(relative)
        if name.startswith(".") or posixpath.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        url = path if location.protocol == "file" else f"{location.protocol}://{path}"
        size, etag = int(info.get("size") or 0), _etag_of(info)
        try:
            key = safe_relative_key(relative)
        except StorageError as exc:
            logger.warning("not processing %s: %s", path, exc)
            if include_refused:
                objects.append(SourceObject(relative, url, size, etag, refused=str(exc)))
            continue
        objects.append(SourceObject(key, url, size, etag))
    return sorted(objects, key=lambda o: o.key)


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
        with storage_errors(location):
            location.fs.get_file(location.root, tmp)
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
            chmod_like_new_file(tmp)  # mkstemp's 0600 would make every output private
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    else:
        try:
            destination.fs.put_file(str(local), target)
        except Exception as exc:
            raise StorageError(
                f"upload to {destination.url(key)} failed ({type(exc).__name__}: "
                f"{str(exc)[:200]}); nothing is at that key: run again to resume (this video "
                "is redone, finished ones are kept)"
            ) from exc
    return destination.url(key)


def create_exclusive(location: Location, key: str, payload: bytes) -> bool:
    """Create ``location/key`` with ``payload`` only if it does not exist; False if it does.

    Atomic where the store can do it: ``O_CREAT | O_EXCL`` locally, a conditional PUT
    (``If-None-Match: *``, s3fs's ``mode="create"``) on S3 and S3-compatible stores that
    support it. Elsewhere it checks, then writes (a narrow race), and says so in the log.
    """
    path = location.path(key)
    if location.protocol == "file":
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as fh:
            fh.write(payload)
        return True
    if location.protocol in ("s3", "s3a"):
        try:
            location.fs.pipe_file(path, payload, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # s3fs maps a 412 without its condition to EINVAL
            if "precondition" in str(exc).lower() or getattr(exc, "errno", None) == 22:
                return False
            raise
        return True
    logger.warning("%s: no atomic create on %s; checking, then writing", key, location.protocol)
    if location.fs.exists(path):
        return False
    location.fs.pipe_file(path, payload)
    return True
