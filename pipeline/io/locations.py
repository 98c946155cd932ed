"""Where SRC and DST are, compared before anything is read or written.

``derain run DIR DIR`` would overwrite the original videos, and a DST inside SRC would have the
next run de-rain its own outputs. :func:`check_source_and_destination` refuses both (and a SRC
inside DST whose outputs would land inside SRC) for every spelling of a location: local paths
(relative, ``file://``, trailing slashes, ``.``/``..``, symlinks resolved) and object storage
(``s3://``/``s3a://``, trailing slashes, ``//``), compared component by component so that
``in`` and ``input`` never count as nested. No storage is touched.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.errors import UsageError

# Object stores that name the same thing with several schemes.
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "local": "file"}


@dataclass(frozen=True)
class Place:
    """A location as a store and the components of its path there (no trailing slash)."""

    store: str  # "file", or "s3" etc.
    parts: tuple[str, ...]

    def contains(self, other: Place) -> bool:
        """True when ``other`` is this place or lies under it."""
        return self.store == other.store and other.parts[: len(self.parts)] == self.parts

    def relative(self, other: Place) -> tuple[str, ...]:
        """``other``'s components below this place (``other`` must lie under it)."""
        return other.parts[len(self.parts) :]


def place_of(url: str | Path) -> Place:
    """Normalise a location's spelling (see the module docstring); never touches storage."""
    text = str(url)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    if scheme in ("", "file"):
        if scheme == "file":
            text = unquote(urlsplit(text).path) or "/"
        path = Path(os.path.expanduser(text)).resolve(strict=False)  # symlinks, '..', relative
        return Place("file", tuple(p for p in path.parts if p != "/"))
    rest = text.split("://", 1)[1]
    parts = []
    for part in rest.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return Place(scheme, tuple(parts))


def output_key_of_single_file(source: str, extension: str) -> str:
    """The output key of a single-file SRC: its name with the output extension."""
    name = posixpath.basename(str(source).rstrip("/"))
    return posixpath.splitext(name)[0] + extension


def check_source_and_destination(
    source: str | Path,
    destination: str | Path,
    *,
    extension: str | None = None,
    source_is_file: bool = False,
    reserved: tuple[str, ...] = ("_manifests", "_staging"),
) -> None:
    """Refuse (:class:`UsageError`) a SRC/DST pair whose run would overwrite or re-read data.

    - DST is SRC, or DST lies inside SRC: outputs would overwrite originals, or the next run
      would de-rain its own outputs;
    - SRC lies inside DST's reserved folders (manifests, staging);
    - SRC is a single file and its output (same name, ``extension``) would be SRC itself.

    SRC inside DST is otherwise allowed; :func:`check_outputs_outside_source` then checks the
    planned output keys once the listing is known.
    """
    src, dst = place_of(source), place_of(destination)
    if source_is_file:
        name = output_key_of_single_file(str(source), extension or "")
        if src == dst or (extension is not None and Place(dst.store, (*dst.parts, name)) == src):
            raise UsageError(
                f"the output of {source} would overwrite it (DST {destination} is the video "
                "itself, or its folder and the output keeps its name): choose another DST"
            )
        return
    if src == dst:
        raise UsageError(
            f"SRC and DST are the same place ({source} and {destination}): the outputs would "
            "overwrite the original videos; choose a DST outside SRC"
        )
    if src.contains(dst):
        inner = "/".join(src.relative(dst))
        raise UsageError(
            f"DST {destination} lies inside SRC {source} (at {inner}/): the next run would "
            "de-rain its own outputs; choose a DST outside SRC"
        )
    if dst.contains(src):
        below = dst.relative(src)
        if below and below[0] in reserved:
            raise UsageError(
                f"SRC {source} lies inside DST's {below[0]}/ folder, which derain writes: "
                "choose another SRC"
            )


def check_outputs_outside_source(
    source: str | Path, destination: str | Path, output_keys: list[str]
) -> None:
    """With SRC inside DST, refuse a plan whose output keys land inside SRC (they would
    overwrite originals or be read back by the next run)."""
    src, dst = place_of(source), place_of(destination)
    if src == dst or not dst.contains(src):
        return
    prefix = dst.relative(src)
    inside = [k for k in output_keys if tuple(k.split("/"))[: len(prefix)] == prefix]
    if inside:
        shown = ", ".join(inside[:3]) + (" ..." if len(inside) > 3 else "")
        raise UsageError(
            f"SRC {source} lies inside DST {destination} and {len(inside)} output(s) would land "
            f"inside SRC ({shown}): they would overwrite originals or be read again by the next "
            "run; choose a DST outside SRC"
        )
