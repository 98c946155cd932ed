"""``derain models REGISTRY``: the published model versions and which one is latest."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import usage_errors


def models_command(args: argparse.Namespace) -> int:
    from pipeline.cli.common import storage_options
    from pipeline.registry.models import list_models

    with usage_errors(ValueError, OSError):
        models = list_models(args.registry, storage_options(args))
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
