"""``derain eval``: the comparison table as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.cli import EXIT_OK, EXIT_USAGE


def evaluate_checkpoint(
    checkpoint: Path, single_checkpoint: Path | None = None, *, frames: int, crop: int
) -> tuple[dict[str, Any], str]:
    """Score ``checkpoint`` (and its stage-1 model) on both test sets: (record, Markdown table).

    ``single_checkpoint`` defaults to ``checkpoint/stage1`` when that exists.
    """
    from j4r.checkpoint import load_checkpoint
    from j4r.evaluate import evaluate, markdown_table

    single_path = single_checkpoint or (checkpoint / "stage1")
    model, info = load_checkpoint(checkpoint)
    single = load_checkpoint(single_path)[0] if single_path.exists() else None
    started = time.monotonic()
    results = evaluate(model, single, frames=frames, crop=crop)
    record = {
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "frames": frames,
        "crop": crop,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    return record, markdown_table(results)


def write_evaluation(record: dict[str, Any], table: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "eval.md").write_text(table)


def eval_command(args: argparse.Namespace) -> int:
    from j4r.checkpoint import DEFAULT_CHECKPOINT, CheckpointError
    from j4r.sources import MissingContentError

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        record, table = evaluate_checkpoint(
            checkpoint, args.single_checkpoint, frames=args.frames, crop=args.crop
        )
    except (CheckpointError, MissingContentError) as exc:
        print(f"derain eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    write_evaluation(record, table, args.out)
    print(table)
    print(f"derain eval: wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return EXIT_OK
