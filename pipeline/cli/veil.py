"""``derain fit-veil``: fit a checkpoint's veil head on a frozen network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.cli.presence import _copy_stage1, clip_config
from pipeline.errors import UsageError, usage_errors


def fit_veil_command(args: argparse.Namespace) -> int:
    import torch

    from j4r import veil
    from j4r.checkpoint import CheckpointError, save_checkpoint
    from j4r.sources import MissingContentError
    from pipeline.registry.checkpoints import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint()
    with usage_errors(ValueError, OSError, CheckpointError):
        clips = clip_config(args.overrides)
        model, info = veil.with_veil_head(checkpoint)
        parts = [veil.load_samples(path) for path in args.samples]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clips > 0:
        from j4r.data import ClipSampler
        from j4r.sources import training_sources

        with usage_errors(MissingContentError):
            sampler = ClipSampler(training_sources(), clips)
        collected = veil.collect(
            model, sampler, clips=args.clips, seed=args.seed, progress=not args.no_progress
        )
        if args.save_samples:
            veil.save_samples(collected, args.save_samples)
        parts.append(collected)
    if not parts:
        raise UsageError("nothing to fit on: --clips 0 and no --samples")
    report = veil.fit_and_score(model.veil, veil.concat(parts), epochs=args.epochs)
    record = {
        **report,
        "collected": {"clips": args.clips, "seed": args.seed, "clip": vars(clips)}
        if args.clips > 0
        else None,
        "sample_files": [str(p) for p in args.samples],
    }
    extra = {**info.extra, "veil_fit": record}
    save_checkpoint(model, args.out, name=info.name, version=args.model_version, net=info.net,
                    extra=extra)  # fmt: skip
    _copy_stage1(Path(checkpoint), Path(args.out))
    held = report["held_out"]
    print(json.dumps(report, indent=2))
    print(
        f"derain fit-veil: held-out frames {held['frames']:.0f}: output PSNR "
        f"{held['gain_db']:+.2f} dB on average, {held['gain_db_dry']:+.2f} on dry frames, "
        f"{held['gain_db_downpour']:+.2f} on downpours, worst frame "
        f"{held['worst_frame_db']:+.2f}; checkpoint {args.out}"
    )
    return EXIT_OK
