"""The archive job: list → plan (skip done, resume interrupted) → run → manifests → commit.

Runner-agnostic; ``derain run`` and the Prefect flow both call :func:`run_archive`.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.manifest import ManifestStore, VideoRow, new_run_id
from pipeline.plan import VideoTask, done_video_ids, plan_tasks
from pipeline.runners import Runner
from pipeline.storage import list_videos, open_location
from pipeline.worker import RunContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveJob:
    source: str
    destination: str
    manifest: str | None = None  # default: DESTINATION/_manifests
    storage_options: dict[str, Any] = field(default_factory=dict)
    extension: str = ".mp4"
    force: bool = False
    max_videos: int | None = None

    @property
    def manifest_url(self) -> str:
        return self.manifest or posixpath.join(str(self.destination).rstrip("/"), "_manifests")


@dataclass
class RunSummary:
    run_id: str
    runner: str
    manifest_url: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    resumed_from_previous: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def _resume(store: ManifestStore, job: ArchiveJob, model_version: str):
    """An interrupted run of the same job: its id, the shards to keep, the ids it finished."""
    for run in reversed(store.uncommitted_runs()):
        same = (run.get("source"), run.get("destination"), run.get("model_version")) == (
            job.source,
            job.destination,
            model_version,
        )
        if not same:
            continue
        files = store.run_files(run["run_id"])
        rows = store.read("videos", files).select(["video_id", "status"]).to_pylist()
        finished = {r["video_id"] for r in rows if r["status"] == "ok"}
        # Keep the shards of finished videos; failed ones are tried again.
        keep = [f for f in files if posixpath.basename(f).split("-")[0] in finished]
        return run["run_id"], keep, finished
    return None, [], set()


def skipped_row(task: VideoTask, run_id: str, model_version: str) -> VideoRow:
    now = datetime.now(UTC)
    return VideoRow(
        run_id=run_id,
        video_id=task.video_id,
        source_url=task.source.url,
        source_key=task.source.key,
        etag=task.source.etag,
        status="skipped",
        model_version=model_version,
        started_at=now,
        finished_at=now,
    )


def run_archive(
    job: ArchiveJob,
    runner: Runner,
    *,
    model_name: str,
    model_version: str,
    on_planned: Callable[[int], None] | None = None,
    on_result: Callable[[VideoTask, VideoRow], None] | None = None,
) -> RunSummary:
    started = time.monotonic()
    options = job.storage_options
    source = open_location(job.source, options)
    store = ManifestStore(open_location(job.manifest_url, options))
    listing = list_videos(source)
    done = done_video_ids(store.read("videos"), model_version)
    run_id, files, finished_before = _resume(store, job, model_version)
    if run_id is None:
        run_id = new_run_id()
        store.begin_run(
            run_id,
            {
                "source": job.source,
                "destination": job.destination,
                "model_name": model_name,
                "model_version": model_version,
                "started_at": datetime.now(UTC).isoformat(),
                "videos_listed": len(listing),
            },
        )
    else:
        logger.info("resuming run %s: %d videos already done", run_id, len(finished_before))
    todo, skipped = plan_tasks(
        listing,
        extension=job.extension,
        done_ids=done | finished_before,
        force=job.force,
        max_videos=job.max_videos,
    )
    summary = RunSummary(
        run_id=run_id,
        runner=runner.description,
        manifest_url=job.manifest_url,
        resumed_from_previous=len(finished_before),
    )
    if on_planned:
        on_planned(len(todo))
    context = RunContext(run_id, job.destination, options, options)
    for task, row, frames in runner.run(todo, context):
        files += store.write_video(row, frames)
        if row.status == "ok":
            summary.ok += 1
            summary.frames += row.frames
        else:
            summary.failed += 1
            summary.failures.append((task.source.url, f"{row.error_type}: {row.error_message}"))
        if on_result:
            on_result(task, row)
    newly_skipped = [t for t in skipped if t.video_id not in finished_before]
    if newly_skipped:
        rows = [skipped_row(t, run_id, model_version) for t in newly_skipped]
        files += store.write_videos(rows, shard="skipped")
    summary.skipped = len(newly_skipped)
    summary.ok += len(finished_before)
    summary.seconds = time.monotonic() - started
    store.commit_run(
        run_id,
        files,
        {
            "ok": summary.ok,
            "failed": summary.failed,
            "skipped": summary.skipped,
            "frames": summary.frames,
            "seconds": round(summary.seconds, 3),
            "model_name": model_name,
            "model_version": model_version,
            "runner": runner.description,
        },
    )
    return summary
