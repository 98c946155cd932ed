"""``derain fit-presence``: fit a checkpoint's rain-presence head on a frozen network."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import UsageError, usage_errors


def clip_config(overrides: list[str]):
    """The training clips' config with ``clip.KEY=VALUE`` (or ``KEY=VALUE``) overrides."""
    from j4r.config import ClipConfig, from_dict, parse_overrides

    values = parse_overrides(overrides)
    return from_dict(ClipConfig, {**values.pop("clip", {}), **values})


def fit_presence_command(args: argparse.Namespace) -> int:
    import torch

    from j4r import presence
    from j4r.checkpoint import CheckpointError, save_checkpoint
    from j4r.sources import MissingContentError
    from pipeline.registry.checkpoints import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint()
    with usage_errors(ValueError, OSError, CheckpointError):
        clips = clip_config(args.overrides)
        model, info = presence.with_presence_head(
            checkpoint, smoothing=args.smoothing, ramp=args.ramp, persistence=args.persistence
        )
        parts = [presence.load_samples(path) for path in args.samples]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clips > 0:
        from j4r.data import ClipSampler
        from j4r.sources import training_sources

        with usage_errors(MissingContentError):
            sampler = ClipSampler(training_sources(), clips)
        collected = presence.collect(
            model,
            sampler,
            clips=args.clips,
            seed=args.seed,
            threshold_db=args.threshold_db,
            progress=not args.no_progress,
        )
        if args.save_samples:
            presence.save_samples(collected, args.save_samples)
        parts.append(collected)
    if not parts:
        raise UsageError("nothing to fit on: --clips 0 and no --samples")
    # Saved samples were labelled at their collection's threshold: label all at this one.
    samples = presence.relabel(presence.concat(parts), args.threshold_db)
    report = presence.fit_and_score(
        model.presence, samples, epochs=args.epochs, weight_decay=args.weight_decay
    )
    record = {
        **report,
        "threshold_db": args.threshold_db,
        "collected": {"clips": args.clips, "seed": args.seed, "clip": vars(clips)}
        if args.clips > 0
        else None,
        "sample_files": [str(p) for p in args.samples],
    }
    extra = {**info.extra, "presence_fit": record}
    save_checkpoint(model, args.out, name=info.name, version=args.model_version, net=info.net,
                    extra=extra)  # fmt: skip
    stage1 = Path(checkpoint) / "stage1"
    if stage1.is_dir() and Path(args.out).resolve() != Path(checkpoint).resolve():
        shutil.copytree(stage1, Path(args.out) / "stage1", dirs_exist_ok=True)
    held = report["held_out"]
    print(json.dumps(report, indent=2))
    print(
        f"derain fit-presence: held-out frames {held['frames']:.0f}: accuracy "
        f"{held['accuracy']:.3f}, dry frames judged rainy {held['dry_judged_rainy']:.1%}, rainy "
        f"frames judged dry {held['rainy_judged_dry']:.1%}; checkpoint {args.out}"
    )
    return EXIT_OK
