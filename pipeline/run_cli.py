"""``derain run``: local files and folders, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.derain import DerainStage
from pipeline.local_run import Outcome, count_frames, discover, plan, run_jobs
from pipeline.video import EncodeOptions


def run_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from j4r.checkpoint import CheckpointError

    try:
        root, videos = discover(args.src)
    except FileNotFoundError as exc:
        print(f"derain run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not videos:
        print(
            f"derain run: no videos under {args.src} (looked for .mp4 .mkv .avi .mov .mpg ...)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = EncodeOptions(lossless=args.lossless, crf=args.crf)
    jobs = plan(root, videos, args.dst, options)
    stage = DerainStage(
        args.checkpoint, device=args.device, chunk_frames=args.chunk_frames, options=options
    )
    try:
        stage.setup()
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"derain run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bar = tqdm(total=count_frames(jobs), unit="frame", desc="derain", disable=args.no_progress)

    def report(outcome: Outcome) -> None:
        if not outcome.ok:
            bar.write(f"FAILED {outcome.job.source}: {outcome.error}")

    outcomes = run_jobs(jobs, stage, on_frames=bar.update, on_outcome=report)
    bar.close()
    return summarise(outcomes, stage)


def summarise(outcomes: list[Outcome], stage: DerainStage) -> int:
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    frames = sum(o.result.frames for o in done)
    seconds = sum(o.result.seconds for o in done)
    rate = frames / seconds if seconds else 0.0
    print(
        f"derain run: {len(done)} ok, {len(failed)} failed; {frames} frames in {seconds:.1f} s "
        f"({rate:.1f} frames/s) on {stage.device} with {stage.info.name} {stage.info.version}"
    )
    for outcome in failed:
        print(f"  failed: {outcome.job.source}: {outcome.error}")
    return EXIT_FAILED if failed else EXIT_OK
