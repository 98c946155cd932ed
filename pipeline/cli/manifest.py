"""``derain manifest DST`` (the runs under a destination) and ``derain report DST``.

Both answer alike: a DST (or ``--manifest``) that does not exist is exit 2; one without any
committed run is exit 0 with a line saying so (nothing to list, nothing to report); an
unreachable endpoint or missing credentials are exit 3."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import usage_errors


def open_store(args: argparse.Namespace):
    """The manifest store ``args`` name (DST/_manifests unless --manifest); (url, store).

    A destination that does not exist is a :class:`~pipeline.errors.UsageError` (a typo)."""
    from pipeline.cli.common import storage_options
    from pipeline.errors import UsageError
    from pipeline.io.storage import open_location, storage_errors
    from pipeline.job.manifest import ManifestStore, default_manifest_url

    options = storage_options(args)
    given = args.manifest or args.dst
    location = open_location(given, options)
    with storage_errors(location):
        exists = location.fs.exists(location.root)
    if not exists:
        raise UsageError(f"{given} does not exist: give the DST of a `derain run` (or --manifest)")
    url = args.manifest or default_manifest_url(args.dst)
    return url, ManifestStore(open_location(url, options))


def migrate_command(args: argparse.Namespace) -> int:
    from pipeline.cli.common import storage_options
    from pipeline.job.archive import migrate_manifests

    with usage_errors(ValueError, OSError):
        migrated = migrate_manifests(args.dst, storage_options(args), args.manifest)
    print(f"derain manifest: migrated {len(migrated)} run(s) to the Delta tables")
    for run_id in migrated:
        print(f"  {run_id}")
    return EXIT_OK


def manifest_command(args: argparse.Namespace) -> int:
    if args.migrate:
        return migrate_command(args)
    with usage_errors(ValueError, OSError):
        url, store = open_store(args)
        commits = store.commits()
        pending = store.uncommitted_runs()
        old = store.v1_runs_to_migrate()
    if args.json:
        print(
            json.dumps(
                {
                    "committed": commits,
                    "uncommitted": pending,
                    "v1_unmigrated": [c["run_id"] for c in old],
                },
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    if old:
        print(
            f"{len(old)} run(s) in the old (version 1) layout, not in the tables yet: "
            "`derain manifest --migrate DST` copies them"
        )
    if not commits and not pending:
        print(f"derain manifest: no runs under {url} yet")
        return EXIT_OK
    print(
        f"{'run':<28} {'model':<24} {'ok':>5} {'failed':>6} {'partial':>7} {'skipped':>7} "
        f"{'frames':>8} {'seconds':>8}"
    )
    for c in commits:
        model = f"{c.get('model_name', '?')} {c.get('model_version', '?')}"
        print(
            f"{c['run_id']:<28} {model:<24} {c.get('ok', 0):>5} {c.get('failed', 0):>6} "
            f"{c.get('partial', 0):>7} {c.get('skipped', 0):>7} {c.get('frames', 0):>8} "
            f"{c.get('seconds', 0):>8.1f}"
        )
    if any(c.get("partial") for c in commits):
        with usage_errors(ValueError, OSError):
            rows = store.read("videos").to_pylist()
        for r in rows:
            if r["status"] == "partial":
                print(
                    f"  partial (output kept, run {r['run_id']}): {r['source_url']}: "
                    f"{r['error_message']}"
                )
    for run in pending:
        print(
            f"{run['run_id']:<28} not committed (running, or interrupted: `derain run` with "
            "the same SRC and DST resumes it)"
        )
    totals = {k: sum(c.get(k, 0) for c in commits) for k in ("ok", "failed", "partial", "frames")}
    print(
        f"{len(commits)} committed run(s): {totals['ok']} videos ok, {totals['failed']} failed, "
        f"{totals['partial']} partial, {totals['frames']} frames; manifests at {url}"
    )
    return EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    from pipeline.job.report import build_report, render_markdown, write_report

    with usage_errors(LookupError, ValueError, OSError):
        url, store = open_store(args)
        if args.run is None and not store.commits():
            # Like `derain manifest`: an existing destination without runs is not an error.
            print(f"derain report: no committed runs under {url} yet: nothing to report")
            return EXIT_OK
        report = build_report(store, args.run, detail=args.detail)
        url = write_report(store, report)
    if args.print:
        print(render_markdown(report, image_link=lambda name: name))
    c = report.commit
    print(
        f"run {report.run_id}: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
        f"{c.get('skipped', 0)} skipped; report with {len(report.images)} image(s): {url}"
    )
    return EXIT_OK
