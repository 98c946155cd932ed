"""What several sub-commands read from their arguments, each built in one place."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.io.storage import parse_storage_options
from pipeline.io.video import EncodeOptions
from pipeline.runtime.runners import RunnerSettings
from pipeline.stage.config import (
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILE_PIXELS,
    StageConfig,
)


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """fsspec options from ``--storage-option KEY=VALUE`` and ``--endpoint-url``."""
    return parse_storage_options(args.storage_option, args.endpoint_url)


def stage_config(args: argparse.Namespace) -> StageConfig:
    """The stage ``derain run`` / ``derain demo`` arguments describe (absent ones: defaults)."""
    checkpoint = getattr(args, "checkpoint", None)
    return StageConfig(
        checkpoint=str(checkpoint) if checkpoint else None,
        device=getattr(args, "device", "auto"),
        chunk_frames=getattr(args, "chunk_frames", 16),
        precision=getattr(args, "precision", "auto"),
        tile_pixels=getattr(args, "tile_pixels", DEFAULT_TILE_PIXELS),
        tile_overlap=getattr(args, "tile_overlap", DEFAULT_TILE_OVERLAP),
        memory_limit_mb=getattr(args, "memory_limit_mb", DEFAULT_MEMORY_LIMIT_MB),
        clips_per_batch=getattr(args, "clips_per_worker", 1),
        encode=EncodeOptions(
            lossless=getattr(args, "lossless", False), crf=getattr(args, "crf", 18)
        ),
        cpus=getattr(args, "cpus_per_worker", 1.0),
    )


def runner_settings(args: argparse.Namespace) -> RunnerSettings:
    return RunnerSettings(kind=args.runner, address=args.address, workers=args.workers)
