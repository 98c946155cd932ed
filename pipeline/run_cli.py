"""``derain run``: local paths or object storage, sequential or on Ray, with manifests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def parse_storage_options(pairs: list[str], endpoint_url: str | None) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--storage-option {pair!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def stage_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.video import EncodeOptions

    return {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "device": args.device,
        "chunk_frames": args.chunk_frames,
        "options": EncodeOptions(lossless=args.lossless, crf=args.crf),
    }


def build_runner(
    *,
    stage: dict[str, Any],
    runner: str = "ray",
    address: str | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    clips_per_worker: int = 1,
):
    """A sequential runner, or Ray actors (joining ``address`` or a local Ray), on ``stage``."""
    if runner == "sequential":
        from pipeline.derain import DerainStage
        from pipeline.runners import SequentialRunner

        return SequentialRunner(lambda: DerainStage(**stage))
    from pipeline.ray_runner import RayRunner

    return RayRunner(
        stage,
        workers=workers,
        address=address,
        cpus_per_worker=cpus_per_worker,
        clips_per_worker=clips_per_worker,
    )


def make_runner(args: argparse.Namespace, kwargs: dict[str, Any]):
    """The runner ``args.runner`` names, holding stages built from ``kwargs``."""
    return build_runner(
        stage=kwargs,
        runner=args.runner,
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        clips_per_worker=getattr(args, "clips_per_worker", 1),
    )


def run_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from j4r.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, read_info
    from pipeline.archive import ArchiveJob, run_archive
    from pipeline.storage import StorageError, list_videos, open_location

    try:
        options = parse_storage_options(args.storage_option, args.endpoint_url)
        if not list_videos(open_location(args.src, options)):
            print(
                f"derain run: no videos under {args.src} (looked for .mp4 .mkv .avi .mov .mpg ...)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        info = read_info(args.checkpoint or DEFAULT_CHECKPOINT)
    except (ValueError, CheckpointError, StorageError, FileNotFoundError) as exc:
        print(f"derain run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kwargs = stage_kwargs(args)
    job = ArchiveJob(
        source=str(args.src),
        destination=str(args.dst),
        manifest=args.manifest,
        storage_options=options,
        extension=kwargs["options"].extension,
        force=args.force,
        max_videos=args.max_videos,
        segment_frames=args.segment_frames,
        warmup_frames=args.warmup_frames,
    )
    runner = make_runner(args, kwargs)
    bar = tqdm(total=0, unit="video", desc="derain", disable=args.no_progress)

    def planned(count: int) -> None:
        bar.total = count
        bar.refresh()

    def finished(task, row) -> None:
        if row.status != "ok":
            bar.write(f"FAILED {task.source.url}: {row.error_type}: {row.error_message}")
        bar.update(1)

    try:
        summary = run_archive(
            job,
            runner,
            model_name=info.name,
            model_version=info.version,
            on_planned=planned,
            on_result=finished,
        )
    finally:
        bar.close()
        runner.close()
    print(
        f"derain run: {summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped; "
        f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.frames_per_second:.1f} "
        f"frames/s); {info.name} {info.version}; {summary.runner}; run {summary.run_id}"
    )
    print(f"  manifests: {summary.manifest_url}")
    for url, error in summary.failures:
        print(f"  failed: {url}: {error}")
    return EXIT_FAILED if summary.failed else EXIT_OK
