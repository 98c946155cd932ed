"""``derain run``: local paths or object storage, sequential or on Ray, with manifests."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    from pipeline.cli.common import runner_settings, stage_config, storage_options
    from pipeline.errors import UsageError, usage_errors
    from pipeline.io.storage import list_videos, open_location
    from pipeline.job.archive import ArchiveJob, check_locations, claim_destination
    from pipeline.registry.checkpoints import verify_checkpoint
    from pipeline.stage.device import check_device_available

    with usage_errors(FileNotFoundError):
        options = storage_options(args)
        stage = stage_config(args)
        settings = runner_settings(args)
        job = ArchiveJob(
            source=str(args.src),
            destination=str(args.dst),
            manifest=args.manifest,
            storage_options=options,
            encode=stage.encode,
            force=args.force,
            max_videos=args.max_videos,
            segment_frames=args.segment_frames,
            warmup_frames=args.warmup_frames,
        )
        check_locations(job)  # SRC == DST, DST inside SRC: refused before anything is read
        if not list_videos(open_location(args.src, options), include_refused=True):
            raise UsageError(
                f"no videos under {args.src} (looked for .mp4 .mkv .avi .mov .mpg ...)"
            )
        info = verify_checkpoint(args.checkpoint)  # before any worker or video
        if settings.runs_here:
            check_device_available(stage.device)
    # One run at a time on DST (exit 2 naming the other run); released at the end, or on errors.
    with claim_destination(job) as claim:
        return _run(args, job, stage, settings, info, claim)


def _run(args, job, stage, settings, info, claim) -> int:
    from tqdm import tqdm

    from pipeline.errors import CheckpointError, RunStopped, UsageError
    from pipeline.job.archive import run_archive
    from pipeline.runtime.runners import build_runner

    try:
        runner = build_runner(stage, settings)
    except CheckpointError as exc:  # loads in the driver, not on a worker: the caller's to fix
        raise UsageError(str(exc)) from exc
    # In frames, so that one long video moves the bar as its segments finish; videos as postfix.
    bar = tqdm(total=0, unit="frame", desc="derain", disable=args.no_progress)

    def progressed(progress) -> None:
        bar.total = max(progress.frames_total, progress.frames_done)
        bar.n = progress.frames_done
        bar.set_postfix_str(f"videos {progress.videos_done}/{progress.videos_total}")

    def finished(task, row) -> None:
        if row.status == "partial":
            bar.write(f"PARTIAL {task.source.url}: {row.error_message} (output kept)")
        elif row.status != "ok":
            bar.write(f"FAILED {task.source.url}: {row.error_type}: {row.error_message}")

    stopped = None
    try:
        summary = run_archive(
            job,
            runner,
            model_name=info.name,
            model_version=info.version,
            on_result=finished,
            on_progress=progressed,
            claim=claim,
        )
    except RunStopped as exc:
        stopped, summary = exc, exc.summary
    finally:
        bar.close()
        runner.close()
    print(
        f"derain run: {summary.ok} ok, {summary.failed} failed, "
        + (f"{summary.partial} partial, " if summary.partial else "")
        + f"{summary.skipped} skipped; "
        f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.frames_per_second:.1f} "
        f"frames/s); {info.name} {info.version}; {summary.runner}; run {summary.run_id}"
    )
    print(f"  manifests: {summary.manifest_url}")
    for url, error in summary.failures:
        print(f"  failed: {url}: {error}")
    if stopped is not None:
        print(f"derain run: {stopped}", file=sys.stderr)
    return EXIT_FAILED if summary.failed or summary.partial or stopped else EXIT_OK
