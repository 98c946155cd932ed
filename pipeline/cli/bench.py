"""``derain bench``: model-only vs end-to-end throughput, FLOP efficiency and peak memory."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.exit_codes import EXIT_OK


def bench_command(args: argparse.Namespace) -> int:
    from pipeline.tools.bench import render_table, run_bench

    results = run_bench(
        args.checkpoint,
        device=args.device,
        width=args.width,
        height=args.height,
        frames=args.frames,
        threads=args.threads,
    )
    print(render_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"derain bench: wrote {args.out}")
    return EXIT_OK
