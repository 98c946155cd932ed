"""The stage's settings, typed and frozen: built once (from ``derain`` arguments or flow
parameters) and handed unchanged to every runner and worker.

Import-light (no torch): the CLI and the flow definitions build it before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.video import EncodeOptions
from pipeline.stage.device import check_device_name

# Numeric precision of the network on its device. Only fp32 for now (bf16 autocast is planned).
PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class Resources:
    """What one stage needs from its worker: CPU cores (torch threads) and GPUs."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    """One J4R-Net on one device and how it streams a video through it."""

    # A local checkpoint folder, or the URL of a published model version (fetched by each
    # worker with ``checkpoint_options``); None: the shipped checkpoint.
    checkpoint: str | None = None
    checkpoint_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"  # auto, cpu, cuda or cuda:N (see pipeline.stage.device)
    precision: str = "fp32"
    chunk_frames: int = 16  # frames decoded at a time (the output does not depend on it)
    clips_per_batch: int = 1  # >1: that many videos at once, stepped together as one batch
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    cpus: float = 1.0  # CPU cores (torch threads) a worker of this stage gets

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision {self.precision!r}: choose one of {list(PRECISIONS)}")
        if self.chunk_frames < 1:
            raise UsageError(f"chunk frames must be at least 1, not {self.chunk_frames}")
        if self.clips_per_batch < 1:
            raise UsageError(f"clips per batch must be at least 1, not {self.clips_per_batch}")
        if self.cpus <= 0:
            raise UsageError(f"cpus per worker must be positive, not {self.cpus}")
        if not str(self.device).strip():
            raise UsageError("device is empty: give auto, cpu, cuda or cuda:N")
        check_device_name(self.device)

    @property
    def resources(self) -> Resources:
        """Declared by the stage, read by every runner (Ray reserves them per actor)."""
        gpus = 1.0 if str(self.device).startswith("cuda") else 0.0
        return Resources(cpus=self.cpus, gpus=gpus)
