"""``derain run SRC DST`` on local files: discover, plan output paths, de-rain each video.

A video that fails (unreadable, corrupt, not a video) is reported with its reason and the run
goes on; the caller turns failures into a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.derain import DerainStage, VideoResult
from pipeline.video import VIDEO_EXTENSIONS, EncodeOptions, VideoError, probe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class Outcome:
    job: Job
    result: VideoResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def discover(source: Path) -> tuple[Path, list[Path]]:
    """The root that relative paths hang from, and the videos under ``source`` (sorted)."""
    if source.is_file():
        return source.parent, [source]
    if source.is_dir():
        videos = [
            p
            for p in source.rglob("*")
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")
        ]
        return source, sorted(videos)
    raise FileNotFoundError(f"{source} does not exist: give a video file or a folder of videos")


def plan(root: Path, videos: list[Path], destination: Path, options: EncodeOptions) -> list[Job]:
    """One job per video; ``a.mp4`` and ``a.mkv`` in one folder get distinct outputs."""
    jobs: list[Job] = []
    taken: set[Path] = set()
    for video in videos:
        relative = video.relative_to(root)
        output = destination / relative.with_suffix(options.extension)
        if output in taken:
            output = destination / relative.with_name(
                f"{relative.stem}_{relative.suffix.lstrip('.')}{options.extension}"
            )
            logger.warning("%s: output name taken by another input; writing %s", video, output)
        taken.add(output)
        jobs.append(Job(video, output))
    return jobs


def count_frames(jobs: list[Job]) -> int:
    total = 0
    for job in jobs:
        with contextlib.suppress(VideoError):
            total += probe(job.source).frames
    return total


def run_jobs(
    jobs: list[Job],
    stage: DerainStage,
    *,
    on_frames: Callable[[int], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            outcome = Outcome(job, result=stage.process(job.source, job.output, on_frames))
        except (VideoError, OSError, ValueError, RuntimeError) as exc:
            logger.debug("failed %s", job.source, exc_info=True)
            outcome = Outcome(job, error=f"{type(exc).__name__}: {exc}")
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    return outcomes
