"""``derain eval``: the comparison table as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.cli import EXIT_OK, EXIT_USAGE


def eval_command(args: argparse.Namespace) -> int:
    from j4r.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
    from j4r.evaluate import evaluate, markdown_table
    from j4r.sources import MissingContentError

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    single_path = args.single_checkpoint or (checkpoint / "stage1")
    try:
        model, info = load_checkpoint(checkpoint)
        single = load_checkpoint(single_path)[0] if single_path.exists() else None
        started = time.monotonic()
        results = evaluate(model, single, frames=args.frames, crop=args.crop)
    except (CheckpointError, MissingContentError) as exc:
        print(f"derain eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    table = markdown_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "frames": args.frames,
        "crop": args.crop,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    (args.out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "eval.md").write_text(table)
    print(table)
    print(f"derain eval: wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return EXIT_OK
