"""``derain eval``: the comparison table as JSON and Markdown."""

from __future__ import annotations

import argparse

from pipeline.cli.exit_codes import EXIT_OK


def eval_command(args: argparse.Namespace) -> int:
    from j4r.sources import MissingContentError
    from pipeline.errors import usage_errors
    from pipeline.registry.checkpoints import default_checkpoint
    from pipeline.tools.evaluation import (
        evaluate_checkpoint,
        parse_sets,
        write_evaluation,
        write_samples,
    )

    checkpoint = args.checkpoint or default_checkpoint()
    with usage_errors(MissingContentError, ValueError):
        sets = parse_sets(args.sets)
        record, table = evaluate_checkpoint(
            checkpoint,
            args.single_checkpoint,
            frames=args.frames,
            crop=args.crop,
            sets=sets,
            precision=getattr(args, "precision", "fp32"),
            ablations=getattr(args, "ablations", False),
        )
    write_evaluation(record, table, args.out)
    print(table)
    print(f"derain eval: wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    if not args.no_samples:
        written = write_samples(checkpoint, args.out / "samples", frames=args.frames)
        print(f"derain eval: {len(written)} before/after PNGs in {args.out / 'samples'}")
    return EXIT_OK
