"""One video, start to finish, on whichever worker holds the stage: download, de-rain, upload.

Runner-agnostic: the sequential runner calls it in-process, a Ray actor calls it remotely.
Any failure becomes a ``failed`` row with its reason (nothing is uploaded for that video) and
the worker goes on. A failure that is not the project's own error nor an I/O error (a bug, out
of memory) is marked ``unexpected``: the driver stops the run when several videos in a row
fail that way (:class:`pipeline.job.archive.CircuitBreaker`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import StorageError, is_video_failure
from pipeline.io.scratch import scratch_dir
from pipeline.io.storage import local_copy, open_location, put_file
from pipeline.job.manifest import FrameRows, VideoRow
from pipeline.job.plan import VideoTask
from pipeline.stage.derain import DerainStage, VideoResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every task of a run shares (small and picklable: it travels to Ray actors)."""

    run_id: str
    destination_url: str
    source_options: dict[str, Any]
    destination_options: dict[str, Any]
    manifest_url: str | None = None  # where thumbnails go (beside the manifests); None: none
    workdir: str | None = None


@dataclass
class TaskResult:
    """What a worker hands back for one task: its videos row, its frame rows (None unless it
    finished), and whether it failed with an unexpected exception type."""

    task: VideoTask
    row: VideoRow
    frames: FrameRows | None = None
    unexpected: bool = False


def frame_rows(result: VideoResult, first_index: int = 0) -> FrameRows:
    """One row per written frame; ``timestamp_s`` is the frame's source time stamp (seconds
    from the first frame), or ``index / fps`` for a result that carries none."""
    rows = FrameRows()
    times = result.timestamps_s
    for k, stats in enumerate(result.frame_stats):
        index = first_index + k
        rows.frame_index.append(index)
        if k < len(times):
            rows.timestamp_s.append(times[k])
        else:
            rows.timestamp_s.append(index / result.fps if result.fps else 0.0)
        rows.alpha_mean.append(stats.alpha_mean)
        rows.alpha_frac.append(stats.alpha_frac)
        rows.alpha_p95.append(stats.alpha_p95)
        rows.streak_mean.append(stats.streak_mean)
        rows.change_mean.append(stats.change_mean)
        rows.rain_probability.append(stats.rain_probability)
    return rows


def process_task(
    stage: DerainStage,
    task: VideoTask,
    context: RunContext,
    worker: str | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> TaskResult:
    """De-rain one video (or one segment of it) from its source URL to its destination key;
    ``on_frames(n)`` after every chunk with the frames written so far (warm-up not counted).

    A segment's part goes to a staging key instead; the driver joins the parts when every
    segment of the video is done (:mod:`pipeline.job.assemble`).
    """
    if stage.model is None:
        stage.setup()
    row = VideoRow.for_source(
        context.run_id,
        task.video_id,
        task.source,
        "failed",
        model_name=stage.info.name,
        model_version=stage.info.version,
        model_sha256=stage.info.sha256,
        device=stage.device,
        precision=stage.precision,
        worker=worker or socket.gethostname(),
        started_at=datetime.now(UTC),
    )
    frames = None
    local_name = None
    unexpected = False
    try:
        with scratch_dir("video", context.workdir) as workdir:
            with local_copy(task.source.url, context.source_options, workdir) as local_source:
                local_name = str(local_source)
                local_output = Path(workdir) / f"out{stage.options.extension}"
                result = stage.process(
                    local_source,
                    local_output,
                    on_frames=_running_total(on_frames),
                    segment=task.segment,
                )
            destination = open_location(context.destination_url, context.destination_options)
            key = task.output_key if task.segment is None else task.part_key(context.run_id)
            row.output_url = put_file(local_output, destination, key)
        row.status = "ok"
        if result.incomplete:  # output kept, but the manifest and the exit code say so
            row.status, row.error_type, row.error_message = (
                "partial",
                "IncompleteDecode",
                result.incomplete,
            )
            logger.warning("%s: partial: %s", task.source.url, result.incomplete)
        row.frames, row.fps = result.frames, result.fps
        row.width, row.height = result.width, result.height
        row.tiles = result.tiles
        row.frames_per_second = result.frames / result.seconds if result.seconds else None
        row.alpha_mean = result.alpha_mean
        frames = frame_rows(result, task.segment.start if task.segment else 0)
        _upload_thumbnail(result, task, context)
    except Exception as exc:
        unexpected = not is_video_failure(exc)
        if unexpected:
            logger.exception("%s failed unexpectedly", task.source.url)
        else:
            logger.warning("%s failed: %s", task.source.url, type(exc).__name__)
        message = str(exc).replace(local_name, task.source.url) if local_name else str(exc)
        row.error_type, row.error_message = type(exc).__name__, message[:2000]
    row.finished_at = datetime.now(UTC)
    return TaskResult(task, row, frames, unexpected)


def _running_total(on_frames: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """The stage reports each chunk's frames; callers want the total so far."""
    if on_frames is None:
        return None
    total = 0

    def add(count: int) -> None:
        nonlocal total
        total += count
        on_frames(total)

    return add


def _upload_thumbnail(result: VideoResult, task: VideoTask, context: RunContext) -> None:
    """Before/after PNG beside the manifests; a report nicety, so a failure only warns."""
    if context.manifest_url is None or result.thumbnail_after is None:
        return
    from pipeline.job.manifest import thumbnail_key
    from pipeline.job.report import side_by_side_png

    png = side_by_side_png(result.thumbnail_before, result.thumbnail_after)
    try:
        location = open_location(context.manifest_url, context.destination_options)
        key = thumbnail_key(context.run_id, task.video_id)
        with scratch_dir("thumb", context.workdir) as tmp:
            local = Path(tmp) / "thumb.png"
            local.write_bytes(png)
            put_file(local, location, key)
    except (StorageError, OSError) as exc:
        logger.warning("%s: thumbnail not uploaded (%s)", task.source.url, exc)
