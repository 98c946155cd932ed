"""``derain bench``: model-only vs end-to-end throughput, FLOP efficiency and peak memory."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.exit_codes import EXIT_OK


def _size(text: str) -> tuple[int, int]:
    from pipeline.errors import UsageError

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--big {text!r}: give WIDTHxHEIGHT, e.g. 3840x2160, or none") from None
    return width, height


def bench_command(args: argparse.Namespace) -> int:
    from pipeline.tools.bench import render_table, run_bench

    results = run_bench(
        args.checkpoint,
        device=args.device,
        width=args.width,
        height=args.height,
        frames=args.frames,
        threads=args.threads,
        precision=args.precision,
        bf16_frames=args.bf16_frames,
        drift_frames=args.drift_frames,
        big=None if args.big == "none" else _size(args.big),
        big_frames=args.big_frames,
    )
    print(render_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"derain bench: wrote {args.out}")
    return EXIT_OK
