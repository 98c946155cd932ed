"""``derain models REGISTRY``: the published model versions and which one is latest."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import EXIT_OK, EXIT_USAGE


def models_command(args: argparse.Namespace) -> int:
    from pipeline.models import list_models
    from pipeline.run_cli import parse_storage_options
    from pipeline.storage import StorageError

    try:
        options = parse_storage_options(args.storage_option, args.endpoint_url)
        models = list_models(args.registry, options)
    except (ValueError, StorageError, OSError) as exc:
        print(f"derain models: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(models, indent=2))
        return EXIT_OK
    if not models:
        print(
            f"derain models: no published models under {args.registry} (jobs use the shipped one)"
        )
        return EXIT_OK
    print(f"{'version':<24} {'name':<14} {'sha256':<14} {'modified':<26} latest")
    for m in models:
        mark = "*" if m["latest"] else ""
        sha = m["sha256"][:12]
        print(f"{m['version']:<24} {m['name']:<14} {sha:<14} {m['modified']:<26} {mark}")
    return EXIT_OK
