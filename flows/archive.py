"""The ``derain-archive`` flow: discover → plan → run on Ray → commit manifests → report.

Thin over :mod:`pipeline.job.archive`: each step is one call into the data plane. Ray is driven
directly from the run task (it joins ``ray_address`` or starts a local instance): a Prefect task
runner submits stateless tasks and cannot hold the GPU actors that keep per-clip memory.

Deployed as ``derain-archive/nightly`` by ``prefect.yaml`` (cron, concurrency limit 1, so two
overlapping nightly runs never do the same work).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from flows.settings import configured
from pipeline.errors import RunStopped, VideoFailures
from pipeline.io.storage import SourceObject
from pipeline.io.video import EncodeOptions
from pipeline.job.archive import (
    ArchiveJob,
    RunPlan,
    RunSummary,
    check_locations,
    claim_destination,
    commit_run,
    discover,
    execute_run,
    manifest_store,
    plan_run,
)
from pipeline.runtime.runners import RunnerSettings
from pipeline.stage.config import DEFAULT_MEMORY_LIMIT_MB, DEFAULT_TILE_PIXELS, StageConfig
from pipeline.stage.segments import DEFAULT_SEGMENT_FRAMES, DEFAULT_WARMUP_FRAMES

FLOW_NAME = "derain-archive"
# Storage calls back off 2 s, 10 s, 30 s: throttling and brief outages pass, bad URLs do not.
STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "cache_policy": NONE}
__all__ = ["FLOW_NAME", "VideoFailures", "derain_archive"]


@task(name="discover", **STORAGE_RETRIES)
def discover_videos(job: ArchiveJob) -> list[SourceObject]:
    videos = discover(job)
    get_run_logger().info("%d videos under %s", len(videos), job.source)
    return videos


@task(name="resolve-model", **STORAGE_RETRIES)
def resolve_model_version(
    registry: str | None, version: str, options: dict[str, Any]
) -> tuple[str, str, str]:
    """(checkpoint the workers load, model name, model version) for the requested version."""
    from pipeline.registry.checkpoints import default_checkpoint, verify_checkpoint
    from pipeline.registry.models import MODEL_FAMILY, resolve_model

    local = resolve_model(registry, version, options)
    info = verify_checkpoint(local)  # a bad checkpoint fails here, before any worker starts
    checkpoint = str(local)
    if registry and local != default_checkpoint():
        # Workers on other nodes fetch the published version from the registry themselves.
        checkpoint = f"{registry.rstrip('/')}/{MODEL_FAMILY}/{info.version}"
    get_run_logger().info("model %s %s from %s", info.name, info.version, checkpoint)
    return checkpoint, info.name, info.version


@task(name="plan", **STORAGE_RETRIES)
def plan(job: ArchiveJob, videos: list[SourceObject], model: tuple[str, str, str]) -> RunPlan:
    _, name, version = model
    run_plan = plan_run(job, videos, model_name=name, model_version=version)
    get_run_logger().info(
        "run %s: %d to do, %d already done, %d resumed",
        run_plan.run_id,
        len(run_plan.todo),
        len(run_plan.skipped),
        len(run_plan.finished_before),
    )
    return run_plan


@task(name="run-on-ray", cache_policy=NONE)
def run_videos(run_plan: RunPlan, stage: StageConfig, runner: RunnerSettings) -> RunSummary:
    """De-rain the planned videos; a progress artifact follows along. Not retried: re-running
    the flow resumes the run instead, skipping what finished."""
    from pipeline.runtime.runners import build_runner

    logger = get_run_logger()
    progress_id = create_progress_artifact(
        0.0, key="derain-progress", description=f"frames done in run {run_plan.run_id}"
    )

    def on_result(video, row) -> None:  # one line per finished video in the flow run's logs
        if row.status == "ok":
            logger.info("%s done: %d frames", video.source.url, row.frames)
        elif row.status == "partial":
            logger.warning("%s partial (output kept): %s", video.source.url, row.error_message)
        else:
            logger.warning("%s failed: %s: %s", video.source.url, row.error_type, row.error_message)

    def on_progress(progress) -> None:  # in frames: a long video's segments move it
        if progress.frames_total:
            done = 100.0 * min(1.0, progress.frames_done / progress.frames_total)
        else:
            done = 100.0 * progress.videos_done / max(1, progress.videos_total)
        update_progress_artifact(progress_id, done)

    workers = build_runner(stage, runner)
    try:
        summary = execute_run(run_plan, workers, on_result, on_progress)
    finally:
        workers.close()
    update_progress_artifact(progress_id, 100.0)
    return summary


@task(name="commit-manifests", **STORAGE_RETRIES)
def commit(run_plan: RunPlan, summary: RunSummary) -> None:
    commit_run(run_plan, summary)


@task(name="report", **STORAGE_RETRIES)
def publish_report(job: ArchiveJob, run_id: str) -> str:
    """The report file beside the manifests, and the same report as Prefect artifacts. The
    artifact links its images to the PNG files written beside the report (inlined as base64
    they made every artifact megabytes long in Prefect's database)."""
    from pipeline.job.report import build_report, render_markdown, write_report

    store = manifest_store(job)
    report = build_report(store, run_id)
    url = write_report(store, report)
    create_table_artifact(report.videos, key="derain-videos", description=f"run {run_id}")
    folder = url.rsplit("/", 1)[0]
    markdown = render_markdown(report, image_link=lambda name: f"{folder}/{name}")
    create_markdown_artifact(markdown, key="derain-report", description=f"run {run_id}: {url}")
    return url


@flow(name=FLOW_NAME, log_prints=False)
def derain_archive(
    source: str | None = None,
    destination: str | None = None,
    manifest: str | None = None,
    storage_options: dict[str, Any] | None = None,
    ray_address: str | None = None,
    runner: Literal["ray", "sequential"] = "ray",
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    clips_per_worker: int = 1,
    lossless: bool = False,
    crf: int = 18,
    device: str = "auto",
    precision: str = "auto",
    tile_pixels: int | None = DEFAULT_TILE_PIXELS,
    memory_limit_mb: float = DEFAULT_MEMORY_LIMIT_MB,
    max_videos: int | None = None,
    force: bool = False,
    model_version: str = "latest",
    model_registry: str | None = None,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    warmup_frames: int = DEFAULT_WARMUP_FRAMES,
    fail_on_video_errors: bool = True,
) -> dict[str, Any]:
    """De-rain every new or changed video under ``source`` into ``destination``.

    ``precision`` (auto, fp32, bf16) is resolved on each worker's device and recorded in the
    videos rows; frames over ``tile_pixels`` run as tiles; a video whose frames would need more
    than ``memory_limit_mb`` on a worker even in tiles fails alone.
    Videos already done by the same model version are skipped; an interrupted run resumes.
    ``model_version`` ``latest`` means the registry's latest (or the shipped checkpoint when
    there is no registry). With ``fail_on_video_errors`` the flow run ends failed when any
    video failed, after its manifests and report are written; when the circuit breaker stopped
    the run (videos kept failing with an unexpected error) it ends failed in any case. Prefect
    stores parameters: keep credentials out of ``storage_options`` (workers use the AWS chain:
    env, profile, role).
    """
    source = configured("source", source)
    destination = configured("destination", destination)
    model_registry = configured("model_registry", model_registry, required=False)
    options = storage_options or {}
    encode = EncodeOptions(lossless=lossless, crf=crf)
    settings = RunnerSettings(kind=runner, address=ray_address, workers=workers)
    job = ArchiveJob(
        source=source,
        destination=destination,
        manifest=manifest,
        storage_options=options,
        encode=encode,
        force=force,
        max_videos=max_videos,
        segment_frames=segment_frames,
        warmup_frames=warmup_frames,
    )
    # Refused at once (not retried): SRC/DST overlap, a missing bucket, bad stage settings.
    check_locations(job)
    stage = StageConfig(
        checkpoint=None,
        checkpoint_options=options,
        device=device,
        precision=precision,
        tile_pixels=tile_pixels,
        memory_limit_mb=memory_limit_mb,
        encode=encode,
        clips_per_batch=clips_per_worker,
        cpus=cpus_per_worker,
    )
    videos = discover_videos(job)
    model = resolve_model_version(model_registry, model_version, options)
    stage = replace(stage, checkpoint=model[0])
    # One run at a time on the destination; a second one fails at once naming the first.
    with claim_destination(job) as claim:
        run_plan = plan(job, videos, model)
        claim.set_run_id(run_plan.run_id)
        summary = run_videos(run_plan, stage, settings)
        commit(run_plan, summary)
        report_url = publish_report(job, run_plan.run_id)
    result = {
        "run_id": summary.run_id,
        "ok": summary.ok,
        "failed": summary.failed,
        "partial": summary.partial,
        "skipped": summary.skipped,
        "frames": summary.frames,
        "seconds": round(summary.seconds, 1),
        "model": f"{model[1]} {model[2]}",
        "manifests": summary.manifest_url,
        "report": report_url,
    }
    get_run_logger().info("derain-archive: %s", result)
    if summary.stopped:
        raise RunStopped(f"run {summary.run_id} {summary.stopped} (see {report_url})", summary)
    if (summary.failed or summary.partial) and fail_on_video_errors:
        failures = "; ".join(f"{url}: {error}" for url, error in summary.failures[:5])
        count = summary.failed + summary.partial
        raise VideoFailures(f"{count} video(s) failed (see {report_url}): {failures}")
    return result
