"""``derain fit-presence``, ``tune-ramp`` and ``fit-veil``: the heads fitted on a frozen network."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import UsageError, usage_errors


def clip_config(overrides: list[str]):
    """The training clips' config with ``clip.KEY=VALUE`` (or ``KEY=VALUE``) overrides."""
    from j4r.config import ClipConfig, from_dict, parse_overrides

    values = parse_overrides(overrides)
    return from_dict(ClipConfig, {**values.pop("clip", {}), **values})


def _copy_stage1(checkpoint: Path, out: Path) -> None:
    """A checkpoint's stage-1 model (``derain eval``'s single-frame row) goes along."""
    stage1 = checkpoint / "stage1"
    if stage1.is_dir() and out.resolve() != checkpoint.resolve():
        shutil.copytree(stage1, out / "stage1", dirs_exist_ok=True)


def _write_json(path: Path, record: dict) -> None:
    """Written whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


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
    _copy_stage1(Path(checkpoint), Path(args.out))
    held = report["held_out"]
    print(json.dumps(report, indent=2))
    print(
        f"derain fit-presence: held-out frames {held['frames']:.0f}: accuracy "
        f"{held['accuracy']:.3f}, dry frames judged rainy {held['dry_judged_rainy']:.1%}, rainy "
        f"frames judged dry {held['rainy_judged_dry']:.1%}; checkpoint {args.out}"
    )
    return EXIT_OK


def tune_ramp_command(args: argparse.Namespace) -> int:
    import torch

    from j4r import presence, ramp
    from j4r.checkpoint import CheckpointError, read_info, save_checkpoint
    from j4r.data import ClipSampler
    from j4r.sources import MissingContentError, training_sources
    from pipeline.registry.checkpoints import default_checkpoint

    if args.clips < 1:
        raise UsageError("--clips must be at least 1")
    checkpoint = args.checkpoint or default_checkpoint()
    with usage_errors(ValueError, OSError, CheckpointError):
        clips = clip_config(args.overrides)
        if not read_info(checkpoint).net.rain_presence:
            raise UsageError(
                f"{checkpoint} has no rain-presence head: fit one with `derain fit-presence` "
                "first (the ramp scales that head's verdict)"
            )
        model, info = presence.with_presence_head(checkpoint)
        if clips.clean_fraction <= 0:
            raise UsageError(
                "the bound on harm needs rain-free validation clips: set clip.clean_fraction "
                "above 0 (e.g. --set clip.clean_fraction=0.45)"
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    with usage_errors(MissingContentError):
        sampler = ClipSampler(training_sources(), clips)
    changes = ramp.measure_changes(
        model, sampler, clips=args.clips, seed=args.seed, progress=not args.no_progress
    )
    candidates = tuple(args.ramps) if args.ramps else ramp.DEFAULT_RAMPS
    rows = ramp.sweep(changes, candidates, threshold_db=args.threshold_db)
    if rows[0]["dry_frames"] == 0:
        raise UsageError(
            f"none of the {args.clips} validation clips came out rain-free: raise --clips or "
            "clip.clean_fraction"
        )
    chosen = ramp.choose_ramp(rows, args.min_dry_psnr)
    record = {
        "model": info.identity,
        "clips": args.clips,
        "seed": args.seed,
        "clip": vars(clips),
        "threshold_db": args.threshold_db,
        "min_dry_psnr": args.min_dry_psnr,
        "rows": rows,
        "chosen": chosen["ramp"],
    }
    print(ramp.markdown_table(rows, chosen))
    if args.json:
        with usage_errors(OSError):
            _write_json(args.json, record)
    if args.out:
        tuned, tuned_info = presence.with_presence_head(checkpoint, ramp=tuple(chosen["ramp"]))
        extra = {**info.extra, "ramp_choice": record}
        version = args.model_version or info.version
        with usage_errors(OSError):
            save_checkpoint(tuned, args.out, name=info.name, version=version,
                            net=tuned_info.net, extra=extra)  # fmt: skip
            _copy_stage1(Path(checkpoint), Path(args.out))
    lo, hi = chosen["ramp"]
    print(
        f"derain tune-ramp: {args.clips} validation clips, chosen ramp {lo:g},{hi:g}: dry frames "
        f"changed {chosen['dry_changed']:.1%}, rainy gain {chosen['rainy_gain_db']:+.2f} dB"
        + (f"; checkpoint {args.out}" if args.out else "")
    )
    return EXIT_OK


def fit_veil_command(args: argparse.Namespace) -> int:
    import torch

    from j4r import presence, veil
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
            presence.save_samples(collected, args.save_samples)
        parts.append(collected)
    if not parts:
        raise UsageError("nothing to fit on: --clips 0 and no --samples")
    report = veil.fit_and_score(model.veil, presence.concat(parts), epochs=args.epochs)
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
