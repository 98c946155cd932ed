"""The archive job: list → plan (skip done, resume interrupted) → run → manifests → commit.

Runner-agnostic; ``derain run`` calls :func:`run_archive`, the Prefect flow its steps
(:func:`discover`, :func:`plan_run`, :func:`execute_run`, :func:`commit_run`).

A video that fails with the project's own error or an I/O error is recorded as ``failed`` and
the run goes on. When ``max_unexpected_failures`` videos in a row fail with the same unexpected
exception type (a bug, out of memory), the :class:`CircuitBreaker` stops the run: what finished
is committed, and :func:`run_archive` raises :class:`~pipeline.errors.RunStopped`.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import RunStopped, UsageError
from pipeline.io.locations import check_outputs_outside_source, check_source_and_destination
from pipeline.io.storage import (
    SourceObject,
    check_bucket_exists,
    list_videos,
    open_location,
    storage_errors,
)
from pipeline.io.video import EncodeOptions
from pipeline.job.assemble import SegmentJoiner, frame_counts, split_long_videos
from pipeline.job.claim import Claim, claimed
from pipeline.job.manifest import ManifestStore, VideoRow, default_manifest_url, new_run_id
from pipeline.job.plan import (
    VideoTask,
    done_video_ids,
    output_keys,
    plan_tasks,
    video_id_of,
)
from pipeline.job.worker import RunContext, TaskResult
from pipeline.stage.segments import DEFAULT_SEGMENT_FRAMES, DEFAULT_WARMUP_FRAMES

if TYPE_CHECKING:
    from pipeline.runtime.runners import Runner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveJob:
    source: str
    destination: str
    manifest: str | None = None  # default: DESTINATION/_manifests
    storage_options: dict[str, Any] = field(default_factory=dict)
    encode: EncodeOptions = field(default_factory=EncodeOptions)  # also picks the extension
    force: bool = False
    max_videos: int | None = None
    # Videos longer than this run as segments on several workers (0: never split).
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    warmup_frames: int = DEFAULT_WARMUP_FRAMES
    # Videos in a row failing with the same unexpected exception type that stop the run.
    max_unexpected_failures: int = 3

    def __post_init__(self) -> None:
        for name in ("max_videos", "segment_frames", "warmup_frames"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be 0 or more, not {value}")

    @property
    def manifest_url(self) -> str:
        return self.manifest or default_manifest_url(self.destination)

    @property
    def extension(self) -> str:
        return self.encode.extension


@dataclass
class RunSummary:
    run_id: str
    runner: str
    manifest_url: str
    ok: int = 0
    failed: int = 0
    partial: int = 0  # output kept but the decode stopped early: a failure for the exit code
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    resumed_from_previous: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # manifest shards this run commits
    stopped: str | None = None  # why the circuit breaker stopped the run (None: it did not)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclass
class RunProgress:
    """How far a run is, in frames and videos; handed to ``on_progress`` after planning,
    after every finished task (a whole video or one segment of a long one), and as running
    tasks write frames (at most every :data:`PROGRESS_EVERY_S`).

    ``frames_done`` counts the frames of finished tasks and those written so far by running
    ones (a task redone after its worker died starts again from its first frame).

    ``frames_total`` is the frames the containers declare for the videos to do, less what
    failed videos will never de-rain (it shrinks when one fails); 0 when no container says.
    """

    videos_total: int
    videos_done: int = 0
    frames_total: int = 0
    frames_done: int = 0


# Least time between two progress reports while tasks run (finished tasks always report).
PROGRESS_EVERY_S = 1.0


class _LiveFrames:
    """Frames of finished tasks plus frames written so far by running ones."""

    def __init__(self, progress: RunProgress, on_progress):
        self.progress, self.on_progress = progress, on_progress
        self.finished, self.running = 0, {}
        self.reported_at = 0.0

    def running_task(self, task: VideoTask, frames: int) -> None:
        self.running[task.task_id] = frames
        now = time.monotonic()
        if self.on_progress and now - self.reported_at >= PROGRESS_EVERY_S:
            self.reported_at = now
            self._update()
            self.on_progress(self.progress)

    def finished_task(self, task: VideoTask, frames: int) -> None:
        self.running.pop(task.task_id, None)
        self.finished += frames
        self._update()

    def _update(self) -> None:
        self.progress.frames_done = self.finished + sum(self.running.values())


def _expected_frames(task: VideoTask, count: int | None) -> int:
    """Frames ``task`` should write: its segment's, else its container's count (0: unknown)."""
    segment = task.segment
    if segment is None:
        return count or 0
    stop = segment.stop if segment.stop is not None else count
    return max(0, (stop or 0) - segment.start)


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
        rows = store.read_files("videos", files).select(["video_id", "status"]).to_pylist()
        finished = {r["video_id"] for r in rows if r["status"] == "ok"}
        # Keep the shards of finished videos; failed ones are tried again.
        keep = [f for f in files if posixpath.basename(f).split("-")[0] in finished]
        return run["run_id"], keep, finished
    return None, [], set()


def skipped_row(task: VideoTask, run_id: str, model_name: str, model_version: str) -> VideoRow:
    """A video done by an earlier committed run with the same model: the run's model, and no
    measurements (they are on that run's ``ok`` row; see docs/manifests.md)."""
    now = datetime.now(UTC)
    return VideoRow.for_source(
        run_id,
        task.video_id,
        task.source,
        "skipped",
        model_name=model_name,
        model_version=model_version,
        started_at=now,
        finished_at=now,
    )


def refused_row(source: SourceObject, run_id: str, model_name: str, model_version: str) -> VideoRow:
    """A listed object that is never processed (an unsafe key): failed, with the reason."""
    now = datetime.now(UTC)
    return VideoRow.for_source(
        run_id,
        video_id_of(source.url, source.etag),
        source,
        "failed",
        error_type="StorageError",
        error_message=f"not processed: {source.refused}; rename the object",
        model_name=model_name,
        model_version=model_version,
        started_at=now,
        finished_at=now,
    )


@dataclass
class RunPlan:
    """What a run will do, decided before any video is touched (the run is begun, not done)."""

    job: ArchiveJob
    run_id: str
    model_name: str
    model_version: str
    todo: list[VideoTask]
    skipped: list[VideoTask]  # done by an earlier committed run, not redone
    resumed_files: list[str]  # shards an interrupted attempt of this run wrote (kept)
    finished_before: set[str]  # video ids an interrupted attempt of this run finished
    started: float = field(default_factory=time.monotonic)
    # Listed objects that are never processed (unsafe keys): each gets a failed row.
    refused: list[SourceObject] = field(default_factory=list)


def claim_destination(job: ArchiveJob):
    """Context manager holding the job's destination claim (see :mod:`pipeline.job.claim`)."""
    return claimed(
        job.destination,
        job.storage_options,
        info={"source": job.source, "destination": job.destination},
    )


def check_locations(job: ArchiveJob) -> None:
    """Refuse (:class:`~pipeline.errors.UsageError`) a SRC/DST pair whose run would overwrite
    originals or read its own outputs back; only a metadata look-up (is SRC a file?)."""
    source = open_location(job.source, job.storage_options)
    # The source's store first: an unreachable endpoint is one line, within seconds.
    check_bucket_exists(source, "source")
    with storage_errors(source):
        is_file = source.fs.isfile(source.root)
    check_source_and_destination(
        job.source, job.destination, extension=job.encode.extension, source_is_file=is_file
    )
    # Never create a bucket: a missing one is a typo or a missing set-up step.
    check_bucket_exists(open_location(job.destination, job.storage_options), "destination")
    if job.manifest:
        check_bucket_exists(open_location(job.manifest, job.storage_options), "manifest")


def discover(job: ArchiveJob) -> list[SourceObject]:
    """Every video under the job's source (recursive, with ETag or size+mtime), after
    :func:`check_locations`."""
    check_locations(job)
    return list_videos(open_location(job.source, job.storage_options), include_refused=True)


def manifest_store(job: ArchiveJob) -> ManifestStore:
    return ManifestStore(open_location(job.manifest_url, job.storage_options))


def plan_run(
    job: ArchiveJob, listing: list[SourceObject], *, model_name: str, model_version: str
) -> RunPlan:
    """Skip what committed runs did, resume an interrupted run of the same job, begin the run."""
    refused = [s for s in listing if s.refused]
    listing = [s for s in listing if not s.refused]
    check_outputs_outside_source(
        job.source, job.destination, list(output_keys(listing, job.encode.extension).values())
    )
    store = manifest_store(job)
    store.recover()  # a commit a killed driver left half-done is completed first
    store.check_layout()
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
        extension=job.encode.extension,
        done_ids=done | finished_before,
        force=job.force,
        max_videos=job.max_videos,
    )
    return RunPlan(
        job, run_id, model_name, model_version, todo, skipped, files, finished_before,
        refused=refused,
    )  # fmt: skip


class CircuitBreaker:
    """Trips when ``limit`` finished videos in a row failed with the same unexpected
    exception type; a success or an expected failure (bad video, storage) resets it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.error_type: str | None = None
        self.count = 0

    def record(self, result: TaskResult) -> str | None:
        """The reason to stop the run now, or None to go on."""
        if not result.unexpected:
            self.error_type, self.count = None, 0
            return None
        if result.row.error_type == self.error_type:
            self.count += 1
        else:
            self.error_type, self.count = result.row.error_type, 1
        if self.limit <= 0 or self.count < self.limit:
            return None
        return (
            f"stopped after {self.count} videos in a row failed with an unexpected "
            f"{self.error_type} (last: {result.task.source.url}: {result.row.error_message}); "
            "this is not a problem of the videos: fix the cause and run again to resume"
        )


def execute_run(
    plan: RunPlan,
    runner: Runner,
    on_result: Callable[[VideoTask, VideoRow], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunSummary:
    """De-rain the planned videos on ``runner``; one manifest shard per finished video.
    ``on_result`` is called per finished video, ``on_progress`` per finished task and, at most
    every second, as running tasks write frames (:class:`RunProgress`).

    The shards are staged, not visible to readers until :func:`commit_run` commits them.
    When the circuit breaker trips, the videos still running are abandoned and the summary
    says why (``stopped``); what finished is in ``files``, ready to commit.
    """
    job, store = plan.job, manifest_store(plan.job)
    options = job.storage_options
    summary = RunSummary(
        run_id=plan.run_id,
        runner=runner.description,
        manifest_url=job.manifest_url,
        resumed_from_previous=len(plan.finished_before),
        files=list(plan.resumed_files),
    )
    context = RunContext(plan.run_id, job.destination, options, options, job.manifest_url)
    counts = frame_counts(plan.todo, options)
    tasks = split_long_videos(
        plan.todo,
        options,
        segment_frames=job.segment_frames,
        warmup_frames=job.warmup_frames,
        counts=counts,
    )
    count_of = {t.video_id: c for t, c in zip(plan.todo, counts, strict=True)}
    progress = RunProgress(videos_total=len(plan.todo), frames_total=sum(c or 0 for c in counts))
    if on_progress:
        on_progress(progress)
    if len(tasks) > len(plan.todo):
        logger.info("%d videos split into %d tasks", len(plan.todo), len(tasks))
    joiner = SegmentJoiner(job.destination, options, job.encode)
    breaker = CircuitBreaker(job.max_unexpected_failures)
    live = _LiveFrames(progress, on_progress)
    # Nobody listening: the runner need not gather frame counts (Ray polls its workers for them).
    results = runner.run(tasks, context, live.running_task if on_progress else None)
    for result in results:
        expected = _expected_frames(result.task, count_of.get(result.task.video_id))
        live.finished_task(result.task, result.row.frames)
        if result.row.status != "ok":  # never de-rained: out of the total
            progress.frames_total -= max(0, expected - result.row.frames)
        whole = joiner.add(result)
        if whole is None:
            if on_progress:
                on_progress(progress)
            continue  # more segments of this video to come
        progress.videos_done += 1
        if on_progress:
            on_progress(progress)
        task, row = whole.task, whole.row
        summary.files += store.write_video(row, whole.frames)
        if row.status == "ok":
            summary.ok += 1
            summary.frames += row.frames
        elif row.status == "partial":
            summary.partial += 1
            summary.frames += row.frames
            summary.failures.append((task.source.url, f"partial: {row.error_message}"))
        else:
            summary.failed += 1
            summary.failures.append((task.source.url, f"{row.error_type}: {row.error_message}"))
        if on_result:
            on_result(task, row)
        summary.stopped = breaker.record(whole)
        if summary.stopped:
            logger.error("run %s %s", plan.run_id, summary.stopped)
            close = getattr(results, "close", None)
            if close:
                close()
            break
    if plan.refused and not summary.stopped:
        rows = [
            refused_row(source, plan.run_id, plan.model_name, plan.model_version)
            for source in plan.refused
        ]
        summary.files += store.write_videos(rows, shard="refused")
        summary.failed += len(rows)
        summary.failures += [(r.source_url, f"{r.error_type}: {r.error_message}") for r in rows]
    newly_skipped = [t for t in plan.skipped if t.video_id not in plan.finished_before]
    if newly_skipped:
        rows = [
            skipped_row(t, plan.run_id, plan.model_name, plan.model_version) for t in newly_skipped
        ]
        summary.files += store.write_videos(rows, shard="skipped")
    summary.skipped = len(newly_skipped)
    summary.ok += len(plan.finished_before)
    summary.seconds = time.monotonic() - plan.started
    return summary


def commit_run(plan: RunPlan, summary: RunSummary) -> None:
    """Commit the run to the manifest tables: from now on readers see ``summary.files``."""
    record = {
        "source": plan.job.source,
        "destination": plan.job.destination,
        "ok": summary.ok,
        "failed": summary.failed,
        "partial": summary.partial,
        "skipped": summary.skipped,
        "frames": summary.frames,
        "seconds": round(summary.seconds, 3),
        "model_name": plan.model_name,
        "model_version": plan.model_version,
        "runner": summary.runner,
    }
    if summary.stopped:
        record["stopped"] = summary.stopped
    manifest_store(plan.job).commit_run(plan.run_id, summary.files, record)


def run_archive(
    job: ArchiveJob,
    runner: Runner,
    *,
    model_name: str,
    model_version: str,
    on_result: Callable[[VideoTask, VideoRow], None] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    claim: Claim | None = None,
) -> RunSummary:
    """The whole job: discover → plan → execute → commit (``derain run``; the flow's steps).

    The destination is claimed for the run (:mod:`pipeline.job.claim`): pass ``claim`` when
    the caller holds it already, else it is taken here and released at the end. Raises
    :class:`~pipeline.job.claim.ClaimedError` when another live run holds it, and
    :class:`~pipeline.errors.RunStopped` (after committing) when the breaker trips.
    """
    if claim is None:
        with claim_destination(job) as held:
            return run_archive(
                job,
                runner,
                model_name=model_name,
                model_version=model_version,
                on_result=on_result,
                on_progress=on_progress,
                claim=held,
            )
    plan = plan_run(job, discover(job), model_name=model_name, model_version=model_version)
    claim.set_run_id(plan.run_id)
    summary = execute_run(plan, runner, on_result, on_progress)
    commit_run(plan, summary)
    if summary.stopped:
        raise RunStopped(f"run {summary.run_id} {summary.stopped}", summary)
    return summary


def migrate_manifests(
    destination: str, storage_options: dict[str, Any] | None = None, manifest: str | None = None
) -> list[str]:
    """Copy the version-1 manifests under ``destination`` into the Delta tables
    (``derain manifest --migrate``); returns the migrated run ids.

    Holds the destination's claim, so no run commits meanwhile; safe to run again (runs
    already in the tables are not copied twice).
    """
    options = storage_options or {}
    url = manifest or default_manifest_url(destination)
    with claimed(destination, options, info={"destination": destination, "migrate": url}):
        store = ManifestStore(open_location(url, options))
        store.recover()
        migrated = store.migrate_v1()
    logger.info("migrated %d run(s) to the Delta tables at %s", len(migrated), url)
    return migrated
