"""Big frames on a bounded worker: chunks bounded by pixels, tiles with their own memories
(spilled to a temp file when they would not fit beside the rest), and the estimate that lets a
frame too big even for tiles fail alone, before it is decoded.

The tiling itself (:mod:`j4r.tiling`) is pure torch; this module decides when to use it and
where the tiles' recurrent memories live.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from pipeline.errors import VideoError
from pipeline.stage.config import StageConfig

logger = logging.getLogger(__name__)

MIB = 2**20
# Calibrated on this project's machine with the shipped model (README, "Speed and memory"):
# torch, FFmpeg, Arrow and the model before the first frame.
BASE_BYTES = 450 * MIB
# Peak activations of one J4R-Net step, per pixel and per channel of the network (fp32):
# measured 1.3 GB of RSS swing per 2.1 MPx tile with the shipped 24-channel model.
ACTIVATION_BYTES_PER_PX_CHANNEL = 27.0
# Share of the memory limit one tile's activations may take when the budget is automatic.
TILE_SHARE = 1 / 3
# Decoded and de-rained chunks alive at once (at most): the decode queue (2), the one decoded,
# the one being de-rained, the output being built, the encode queue (2), the one encoding.
CHUNKS_IN_FLIGHT = 8


def chunk_frames_for(width: int, height: int, config: StageConfig) -> int:
    """Frames per decoded chunk: ``config.chunk_frames``, fewer for big frames (at least 1)."""
    return max(1, min(config.chunk_frames, config.chunk_pixels // max(1, width * height)))


def tile_budget(config: StageConfig, channels: int) -> int:
    """Most pixels per step: ``config.tile_pixels``, or (None) a third of the memory limit's
    worth of activations for a network this wide; 0 means never tile."""
    if config.tile_pixels is not None:
        return config.tile_pixels
    budget = config.memory_limit_mb * MIB * TILE_SHARE
    return max(
        16 * max(1, config.tile_overlap) ** 2,
        int(budget / (ACTIVATION_BYTES_PER_PX_CHANNEL * channels)),
    )


def tiles_for(width: int, height: int, config: StageConfig, channels: int):
    """The :class:`j4r.tiling.TileGrid` for this frame size, or None to run frames whole."""
    from j4r.tiling import plan_tiles

    budget = tile_budget(config, channels)
    if not budget or width * height <= budget:
        return None
    return plan_tiles(height, width, budget, config.tile_overlap)


def state_bytes(width: int, height: int, config: StageConfig, channels: int) -> int:
    """Bytes of one clip's recurrent memory (fp32), over all its tiles."""
    grid = tiles_for(width, height, config, channels)
    pixels = grid.covered_pixels if grid is not None else width * height
    return 4 * channels * pixels


def spills(width: int, height: int, config: StageConfig, channels: int) -> bool:
    """Whether a tiled clip's memories go to a temp file (over an eighth of the limit)."""
    if tiles_for(width, height, config, channels) is None:
        return False
    return state_bytes(width, height, config, channels) > config.memory_limit_mb * MIB / 8


def estimate_peak_bytes(
    width: int, height: int, config: StageConfig, channels: int, *, lossless: bool = False
) -> int:
    """A worker's peak memory for one clip of this frame size (an estimate, from the header)."""
    pixels = width * height
    grid = tiles_for(width, height, config, channels)
    frames = chunk_frames_for(width, height, config)
    total = BASE_BYTES + CHUNKS_IN_FLIGHT * frames * pixels * 3
    total += pixels * 1.5 * (2 if lossless else 12)  # encoder: x264 lookahead (capped) or FFV1
    step_pixels = grid.tile_pixels if grid is not None else pixels
    total += ACTIVATION_BYTES_PER_PX_CHANNEL * channels * step_pixels
    if grid is not None:
        total += 4 * pixels  # the blended luma of the whole frame
        if spills(width, height, config, channels):
            total += 2 * 4 * channels * grid.tile_pixels  # one tile's memory in, one out
        else:
            total += state_bytes(width, height, config, channels)
    else:
        total += 4 * channels * pixels
    return int(total)


def check_frame_fits(
    width: int, height: int, config: StageConfig, channels: int, *, lossless: bool = False
) -> None:
    """Raise :class:`VideoError` (the video fails alone) when even tiles would not fit."""
    peak = estimate_peak_bytes(width, height, config, channels, lossless=lossless)
    if peak > config.memory_limit_mb * MIB:
        raise VideoError(
            f"{width}x{height} frames need about {peak / MIB:,.0f} MiB on a worker even in "
            f"tiles of {tile_budget(config, channels):,} px, over its limit of "
            f"{config.memory_limit_mb:,.0f} MiB (raise --memory-limit-mb on bigger workers)"
        )


class SpilledMemories:
    """Tile memories in an unlinked temp file, one tile in RAM at a time.

    Reads and writes go through ``pread``/``pwrite`` (no mapping), so only the page cache holds
    them, which the kernel may write back and drop: they never count in the worker's RSS.
    Behaves as the mutable sequence :func:`j4r.tiling.derain_tiled_frame` expects.
    """

    def __init__(self, shapes: list[tuple[int, ...]], device: str, directory: str | None = None):
        import numpy as np

        self.shapes = shapes
        self.device = device
        sizes = [4 * int(np.prod(s)) for s in shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
        self.present = [False] * len(shapes)
        # Closed by close() (TiledClip.close, at the end of the clip's stream).
        self._file = tempfile.TemporaryFile(prefix="derain-tiles-", dir=directory)  # noqa: SIM115
        self._fd = self._file.fileno()

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int):
        import numpy as np
        import torch

        if not self.present[index]:
            return None
        array = np.empty(self.shapes[index], dtype=np.float32)
        view, done = memoryview(array).cast("B"), 0
        while done < self.sizes[index]:
            got = os.preadv(self._fd, [view[done:]], self.offsets[index] + done)
            if got <= 0:
                raise OSError(f"short read of tile {index}'s memory")
            done += got
        return torch.from_numpy(array).to(self.device)

    def __setitem__(self, index: int, memory) -> None:
        import torch

        array = memory.detach().to("cpu", torch.float32).contiguous().numpy()
        if array.shape != tuple(self.shapes[index]):
            raise ValueError(f"tile {index}: memory {array.shape}, expected {self.shapes[index]}")
        view, done = memoryview(array).cast("B"), 0
        while done < self.sizes[index]:
            done += os.pwrite(self._fd, view[done:], self.offsets[index] + done)
        self.present[index] = True

    def close(self) -> None:
        self._file.close()


@dataclass
class TiledClip:
    """One clip's tiles and their memories, built on its first frame."""

    grid: object  # j4r.tiling.TileGrid
    memories: object  # list, or SpilledMemories
    presence_ramp: tuple[float, float] = (0.0, 1.0)  # the network's (applied per frame)
    chroma_fill: bool = False  # the network's (how its luma is turned back into RGB)

    @classmethod
    def for_frame(
        cls,
        width: int,
        height: int,
        config: StageConfig,
        channels: int,
        device: str,
        presence_ramp: tuple[float, float] = (0.0, 1.0),
        chroma_fill: bool = False,
    ) -> TiledClip | None:
        grid = tiles_for(width, height, config, channels)
        if grid is None:
            return None
        if spills(width, height, config, channels):
            shapes = [(1, channels, r.size, c.size) for r, c in grid.tiles]
            memories = SpilledMemories(shapes, device)
            logger.info(
                "%dx%d: %d tiles, memories (%.0f MiB) spilled to a temp file",
                width, height, len(grid), state_bytes(width, height, config, channels) / MIB,
            )  # fmt: skip
        else:
            memories = [None] * len(grid)
        return cls(grid, memories, presence_ramp, chroma_fill)

    def close(self) -> None:
        if isinstance(self.memories, SpilledMemories):
            self.memories.close()
