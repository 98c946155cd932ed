"""``derain demo``: the one-command quick start on synthetic rain over held-out footage."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK


def demo_command(args: argparse.Namespace) -> int:
    from j4r.sources import MissingContentError
    from pipeline.cli.common import runner_settings, stage_config
    from pipeline.errors import usage_errors
    from pipeline.job.archive import ArchiveJob, run_archive
    from pipeline.registry.checkpoints import read_model_info
    from pipeline.runtime.runners import build_runner
    from pipeline.tools.demo import compare, write_rainy_clips

    out: Path = args.out
    with usage_errors(MissingContentError):
        clean_by_stem = write_rainy_clips(out / "rainy", args.frames)
        info = read_model_info(args.checkpoint)
        stage, settings = stage_config(args), runner_settings(args)
    runner = build_runner(stage, settings)
    try:
        summary = run_archive(
            ArchiveJob(source=str(out / "rainy"), destination=str(out / "derained"), force=True),
            runner,
            model_name=info.name,
            model_version=info.version,
        )
    finally:
        runner.close()
    print(
        f"derain demo: {info.name} {info.version}; {summary.runner}; "
        f"{summary.frames} frames at {summary.frames_per_second:.1f} frames/s"
    )
    print(f"{'clip':<28} {'PSNR rainy':>10} {'PSNR derained':>14}")
    for stem, rainy_db, derained_db in compare(
        out / "rainy", out / "derained", clean_by_stem, out / "compare"
    ):
        print(f"{stem:<28} {rainy_db:>10.2f} {derained_db:>14.2f}")
    print(
        f"derain demo: videos in {out / 'derained'}, manifests in {summary.manifest_url}, "
        f"rainy | derained | clean PNGs in {out / 'compare'}"
    )
    return EXIT_FAILED if summary.failed else EXIT_OK
