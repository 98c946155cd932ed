"""Long videos across workers: split them into segments before dispatch, join the parts after.

Before dispatch the driver reads each video's frame count from its container header (a few
ranged reads, no download) and splits videos longer than a segment into segment tasks. Each
segment is de-rained on whichever worker is free, primed with warm-up frames, and its part is
uploaded to a staging key. When the last segment of a video is back, :class:`SegmentJoiner`
downloads the parts, joins them without re-encoding, uploads the video to its final key in one
piece and deletes the parts; the driver then records one videos row and one frames shard for
it, so the manifests hold each frame once however the work was spread.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import StorageError, VideoError
from pipeline.io.scratch import scratch_dir
from pipeline.io.storage import open_location, put_file
from pipeline.io.video import EncodeOptions, concat_videos, probe
from pipeline.job.manifest import FrameRows, VideoRow
from pipeline.job.plan import VideoTask
from pipeline.job.worker import TaskResult
from pipeline.stage.segments import plan_segments

logger = logging.getLogger(__name__)


def container_frames(url: str, options: dict[str, Any]) -> int | None:
    """The frame count a video's container declares, read remotely; None if it cannot say."""
    location = open_location(url, options)
    try:
        with location.fs.open(location.root, "rb") as handle:
            return probe(handle).frames or None
    except (VideoError, OSError, StorageError) as exc:
        # The worker that gets the whole video reports the real problem in the manifest.
        logger.info("%s: no frame count before dispatch (%s); not splitting it", url, exc)
        return None


def frame_counts(
    tasks: list[VideoTask], options: dict[str, Any], probe_threads: int = 8
) -> list[int | None]:
    """The frame count each task's container declares (None where it cannot say), read in
    parallel from the containers' headers."""
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=probe_threads) as pool:
        return list(pool.map(lambda t: container_frames(t.source.url, options), tasks))


def split_long_videos(
    tasks: list[VideoTask],
    options: dict[str, Any],
    *,
    segment_frames: int,
    warmup_frames: int,
    probe_threads: int = 8,
    counts: list[int | None] | None = None,
) -> list[VideoTask]:
    """Replace each video longer than ``segment_frames`` by its segment tasks (in order).
    ``counts``: the tasks' :func:`frame_counts`, when the caller has them already."""
    if segment_frames <= 0 or not tasks:
        return tasks
    if counts is None:
        counts = frame_counts(tasks, options, probe_threads)
    split: list[VideoTask] = []
    for task, frames in zip(tasks, counts, strict=True):
        segments = plan_segments(
            frames or 0, segment_frames=segment_frames, warmup_frames=warmup_frames
        )
        split += task.split(segments)
    return split


def merge_rows(rows: list[VideoRow]) -> VideoRow:
    """One videos row from the rows of a video's segments (in segment order)."""
    first = rows[0]
    failed = [(i, r) for i, r in enumerate(rows) if r.status not in ("ok", "partial")]
    partial = [(i, r) for i, r in enumerate(rows) if r.status == "partial"]
    started = min(r.started_at for r in rows)
    finished = max(r.finished_at for r in rows)
    merged = replace(
        first,
        output_url=None,
        frames=sum(r.frames for r in rows),
        worker=",".join(sorted({r.worker for r in rows if r.worker})),
        started_at=started,
        finished_at=finished,
    )
    if failed:
        index, bad = failed[0]
        merged.status = "failed"
        merged.error_type = bad.error_type
        merged.error_message = f"segment {index + 1}/{len(rows)}: {bad.error_message}"
        return merged
    if partial:
        index, short = partial[0]
        merged.status = "partial"
        merged.error_type = short.error_type
        merged.error_message = f"segment {index + 1}/{len(rows)}: {short.error_message}"
    ok_rows = [r for r in rows if r.frames]
    seconds = (finished - started).total_seconds()
    merged.fps, merged.width, merged.height = first.fps, first.width, first.height
    merged.frames_per_second = merged.frames / seconds if seconds > 0 else None
    merged.alpha_mean = (
        sum(r.alpha_mean * r.frames for r in ok_rows) / merged.frames if merged.frames else None
    )
    return merged


def merge_frames(parts: list[FrameRows | None]) -> FrameRows:
    merged = FrameRows()
    for part in parts:
        if part is None:
            continue
        for name, values in vars(part).items():
            getattr(merged, name).extend(values)
    return merged


class SegmentJoiner:
    """Collects segment results; returns a whole video's result once all its parts are in."""

    def __init__(self, destination_url: str, options: dict[str, Any], encode: EncodeOptions):
        self.destination = open_location(destination_url, options)
        self.options = options
        self.encode = encode
        self.pending: dict[str, dict[int, TaskResult]] = {}

    def add(self, result: TaskResult) -> TaskResult | None:
        """The whole video's result once all its parts are in (a whole video's at once)."""
        task = result.task
        if task.segment is None:
            return result
        parts = self.pending.setdefault(task.video_id, {})
        parts[task.segment.index] = result
        if len(parts) < task.segments:
            return None
        del self.pending[task.video_id]
        ordered = [(parts[i].row, parts[i].frames) for i in range(task.segments)]
        unexpected = any(parts[i].unexpected for i in range(task.segments))
        whole = replace(task, segment=None, segments=1)
        merged = merge_rows([r for r, _ in ordered])
        done = ("ok", "partial")
        part_urls = [r.output_url for r, _ in ordered if r.status in done and r.frames]
        try:
            if merged.status in done:
                merged.output_url = self._join(whole, part_urls)
        except (VideoError, StorageError, OSError) as exc:
            merged.status = "failed"
            merged.error_type, merged.error_message = type(exc).__name__, f"joining parts: {exc}"
        finally:
            self._delete([r.output_url for r, _ in ordered if r.output_url])
        merged.finished_at = datetime.now(UTC)
        if merged.status not in done:
            return TaskResult(whole, merged, None, unexpected)
        return TaskResult(whole, merged, merge_frames([f for _, f in ordered]))

    def _join(self, task: VideoTask, part_urls: list[str]) -> str:
        with scratch_dir("join") as workdir:
            local_parts = []
            for i, url in enumerate(part_urls):
                target = Path(workdir) / f"{i:05d}{posixpath.splitext(url)[1]}"
                part = open_location(url, self.options)
                part.fs.get_file(part.root, str(target))
                local_parts.append(target)
            joined = concat_videos(
                local_parts, Path(workdir) / f"joined{self.encode.extension}", options=self.encode
            )
            return put_file(joined, self.destination, task.output_key)

    def _delete(self, urls: list[str]) -> None:
        for url in urls:
            location = open_location(url, self.options)
            try:
                location.fs.rm_file(location.root)
            except (OSError, StorageError) as exc:
                logger.warning("could not delete staged part %s: %s", url, exc)
