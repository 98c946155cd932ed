"""Splitting long videos into segments primed with warm-up frames, and measuring the seams.

A segment ``[start, stop)`` is processed from ``warm_start = start − K``: the K warm-up frames
go through the network to rebuild its recurrent memory and their outputs are discarded. With
enough warm-up the segment's frames match a continuous run; :func:`seam_error` measures how
closely, which is what the defaults are chosen from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Chosen from `derain seams` (README): 32 warm-up frames put a seam within 1 grey level of a
# continuous run; 1500-frame segments make that warm-up 2 % extra work.
DEFAULT_SEGMENT_FRAMES = 1500
DEFAULT_WARMUP_FRAMES = 32


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # first frame written by this segment
    stop: int | None  # one past the last (None: to the end of the video)
    warm_start: int  # first frame decoded (start − warm-up, clipped at 0)

    @property
    def warmup(self) -> int:
        return self.start - self.warm_start


def plan_segments(frames: int, *, segment_frames: int, warmup_frames: int) -> list[Segment]:
    """Cover a video of about ``frames`` frames with segments of ``segment_frames`` frames.

    ``frames`` is the container's count, which can be off: the last segment runs to the end of
    whatever decodes.
    """
    if segment_frames <= 0 or frames <= segment_frames:
        return [Segment(0, 0, None, 0)]
    count = math.ceil(frames / segment_frames)
    return [
        Segment(
            i,
            i * segment_frames,
            None if i == count - 1 else (i + 1) * segment_frames,
            max(0, i * segment_frames - warmup_frames),
        )
        for i in range(count)
    ]


def seam_error(model, rgb_t3hw, *, seam: int, warmup_values: list[int]) -> list[dict]:
    """For each warm-up length K: how far a segment starting at ``seam`` is from a continuous run.

    Returns, per K, the PSNR (dB, 8-bit scale; identical frames score 120 dB, see
    :mod:`j4r.metrics`) and max absolute difference (in 8-bit levels) between the segmented and
    the continuous outputs on the first frame after the seam and on the 8 frames after it.
    """
    import torch

    from j4r.metrics import psnr
    from j4r.model import derain_rgb_step

    def run(frames):
        memory, out = None, []
        for t in range(frames.shape[0]):
            rgb, _, memory = derain_rgb_step(model, frames[t : t + 1], memory)
            out.append(rgb)
        return (torch.cat(out) * 255).round()

    continuous = run(rgb_t3hw)
    window = slice(seam, min(seam + 8, rgb_t3hw.shape[0]))
    rows = []
    for warmup in warmup_values:
        segmented = run(rgb_t3hw[seam - warmup :])[warmup:]
        segmented = segmented[: window.stop - seam]
        reference = continuous[window]
        rows.append(
            {
                "warmup": warmup,
                "psnr_first_db": psnr(segmented[0], reference[0], data_range=255),
                "psnr_window_db": psnr(segmented, reference, data_range=255),
                "max_abs_levels": float((segmented - reference).abs().max()),
            }
        )
    return rows
