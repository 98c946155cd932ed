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

# Numeric precision of the network on its device (j4r.precision.PRECISIONS; kept here so that
# this module stays import-light): auto picks bf16 where it is fast (CUDA with bf16, CPUs with
# AMX), fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")

# Frames of more pixels than the tile budget run as overlapping tiles of at most that many.
# None (default): sized from the memory limit and the network's width so that one tile's
# activations take a third of it (pipeline.stage.tiles.tile_budget): with the shipped model
# and 4 GiB, 2.2 MPx, so 1920x1080 still runs whole. See the README's speed and memory section.
DEFAULT_TILE_PIXELS = None
# Pixels neighbouring tiles share: the outer quarter each side is discarded, the middle half
# blended. Measured on real footage with heavy rain over 48 frames (README): 16 px keeps tiled
# output 67.7 dB (worst frame) from untiled, 32 px 86.7 dB (at most 1 level of difference).
DEFAULT_TILE_OVERLAP = 32
# What one worker may use: a frame whose estimated peak (tiles included) exceeds it fails alone
# before it is decoded, and tile memories spill to a temp file beyond an eighth of it.
DEFAULT_MEMORY_LIMIT_MB = 4096
# Decoded chunks hold at most this many pixels (and at least one frame): an 8K frame is 100 MB.
DEFAULT_CHUNK_PIXELS = 2**24


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
    precision: str = "auto"  # auto, fp32 or bf16 (resolved on the worker's device)
    chunk_frames: int = 16  # frames decoded at a time (the output does not depend on it)
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS  # ... and at most this many pixels per chunk
    tile_pixels: int | None = DEFAULT_TILE_PIXELS  # tile budget; None: auto; 0: never tile
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    memory_limit_mb: float = DEFAULT_MEMORY_LIMIT_MB
    clips_per_batch: int = 1  # >1: that many videos at once, stepped together as one batch
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    cpus: float = 1.0  # CPU cores (torch threads) a worker of this stage gets

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision {self.precision!r}: choose one of {list(PRECISIONS)}")
        if (self.tile_pixels or 0) < 0 or self.tile_overlap < 0:
            raise UsageError("tile pixels and tile overlap must not be negative")
        if 0 < (self.tile_pixels or 0) < 16 * max(1, self.tile_overlap) ** 2:
            raise UsageError(
                f"tile pixels {self.tile_pixels}: too small for an overlap of "
                f"{self.tile_overlap} px (at least 16 x overlap²)"
            )
        if self.memory_limit_mb <= 0 or self.chunk_pixels < 1:
            raise UsageError("memory limit and chunk pixels must be positive")
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
