"""Planning a run: stable video ids, output keys, and what is already done.

A video's id is a hash of its source URL and its ETag (or size+mtime), so a changed object gets
a new id and is done again, and an unchanged one is skipped when a committed manifest already
holds it as ``ok`` under the same model version. ``force`` redoes everything.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, replace

from pipeline.io.storage import SourceObject
from pipeline.stage.segments import Segment

# Segment parts wait here, under the destination, until their video is joined; then deleted.
STAGING_PREFIX = "_staging"


def video_id_of(source_url: str, etag: str) -> str:
    return hashlib.sha256(f"{source_url}\0{etag}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class VideoTask:
    """A whole video, or one segment of a long one (``segment`` set, ``segments`` > 1)."""

    video_id: str
    source: SourceObject
    output_key: str  # relative to the destination root
    segment: Segment | None = None
    segments: int = 1

    @property
    def task_id(self) -> str:
        return self.video_id if self.segment is None else f"{self.video_id}#{self.segment.index}"

    def part_key(self, run_id: str) -> str:
        """Where a segment's encoded part waits (under the destination) until it is joined."""
        extension = posixpath.splitext(self.output_key)[1]
        index = self.segment.index if self.segment else 0
        return f"{STAGING_PREFIX}/{run_id}/{self.video_id}/{index:05d}{extension}"

    def split(self, segments: list[Segment]) -> list[VideoTask]:
        """One task per segment (the task itself when there is only one)."""
        if len(segments) <= 1:
            return [self]
        return [replace(self, segment=s, segments=len(segments)) for s in segments]


def output_keys(sources: list[SourceObject], extension: str) -> dict[str, str]:
    """``a/b.mov`` -> ``a/b.mp4``; same-stem inputs get ``a/b_mov.mp4`` instead of colliding."""
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for source in sources:
        stem, suffix = posixpath.splitext(source.key)
        key = stem + extension
        if key in taken:
            key = f"{stem}_{suffix.lstrip('.')}{extension}"
        taken.add(key)
        keys[source.key] = key
    return keys


def plan_tasks(
    sources: list[SourceObject],
    *,
    extension: str,
    done_ids: set[str],
    force: bool = False,
    max_videos: int | None = None,
) -> tuple[list[VideoTask], list[VideoTask]]:
    """Split the listing into (to do, skipped as already done)."""
    keys = output_keys(sources, extension)
    todo, skipped = [], []
    for source in sources:
        task = VideoTask(video_id_of(source.url, source.etag), source, keys[source.key])
        (skipped if task.video_id in done_ids and not force else todo).append(task)
    if max_videos is not None:
        todo = todo[:max_videos]
    return todo, skipped


def done_video_ids(videos_table, model_version: str) -> set[str]:
    """Ids with an ``ok`` row for ``model_version`` in a (committed) videos table."""
    if videos_table.num_rows == 0:
        return set()
    rows = videos_table.select(["video_id", "status", "model_version"]).to_pylist()
    return {
        r["video_id"] for r in rows if r["status"] == "ok" and r["model_version"] == model_version
    }
