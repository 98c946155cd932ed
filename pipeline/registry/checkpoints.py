"""Checkpoint folders as the pipeline sees them: j4r's loaders with the pipeline's errors.

j4r raises its own ``CheckpointError``; these re-raise it as :class:`pipeline.errors.
CheckpointError` (a subclass of both j4r's and ``DerainError``). No torch at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import checkpoint_errors


def default_checkpoint() -> Path:
    """The shipped checkpoint folder."""
    from j4r.checkpoint import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT


def read_model_info(checkpoint: str | Path | None = None):
    """``j4r.checkpoint.ModelInfo`` of a local checkpoint folder (None: the shipped one)."""
    from j4r.checkpoint import read_info

    with checkpoint_errors():
        return read_info(checkpoint or default_checkpoint())


def load_model(checkpoint: str | Path | None = None, *, device: str = "cpu") -> tuple[Any, Any]:
    """``(model in eval mode on device, ModelInfo)`` from a local folder (None: shipped)."""
    from j4r.checkpoint import load_checkpoint

    with checkpoint_errors():
        return load_checkpoint(checkpoint, device=device)


def verify_checkpoint(checkpoint: str | Path | None = None):
    """Load a local checkpoint once on the CPU and throw it away; its ``ModelInfo``.

    The driver calls this before any worker starts or any video is touched, so a bad config,
    unreadable or mismatched weights fail once, as one :class:`CheckpointError` line naming
    the file, instead of in every Ray actor (where torch may abort the process).
    """
    _, info = load_model(checkpoint, device="cpu")
    return info
