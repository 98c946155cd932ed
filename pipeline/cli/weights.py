"""``derain average-weights``: a checkpoint whose weights lie between two fine-tunes."""

from __future__ import annotations

import argparse

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import UsageError, usage_errors


def average_weights_command(args: argparse.Namespace) -> int:
    from j4r.checkpoint import CheckpointError, read_info, save_checkpoint
    from j4r.soup import average_weights, describe

    if args.out.resolve() in (args.first.resolve(), args.second.resolve()):
        raise UsageError("--out must be a new folder, not one of the checkpoints averaged")
    with usage_errors(ValueError, OSError, CheckpointError):
        model, info = average_weights(args.first, args.second, share=args.share)
        record = describe(info, read_info(args.second), args.share)
        version = args.model_version or info.version
        save_checkpoint(model, args.out, name=info.name, version=version, net=info.net,
                        extra={"average_weights": record})  # fmt: skip
    print(
        f"derain average-weights: {1 - args.share:g} x {args.first} + {args.share:g} x "
        f"{args.second} -> {args.out} (no presence head: fit one with `derain fit-presence`)"
    )
    return EXIT_OK
