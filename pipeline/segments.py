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

    Returns, per K, the PSNR (dB, 8-bit scale) and max absolute difference (in 8-bit levels)
    between the segmented and the continuous outputs on the first frame after the seam and on
    the 8 frames after it.
    """
    import torch

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
        diff = segmented[: window.stop - seam] - continuous[window]
        mse_first = float((diff[0] ** 2).mean())
        mse_window = float((diff**2).mean())
        rows.append(
            {
                "warmup": warmup,
                "psnr_first_db": 10 * math.log10(255**2 / mse_first) if mse_first else math.inf,
                "psnr_window_db": 10 * math.log10(255**2 / mse_window) if mse_window else math.inf,
                "max_abs_levels": float(diff.abs().max()),
            }
        )
    return rows


def seams_command(args) -> int:
    """``derain seams``: seam error against warm-up length on held-out rainy footage."""
    import json

    from j4r.checkpoint import load_checkpoint
    from j4r.evaluate import build_eval_set

    model, info = load_checkpoint(args.checkpoint)
    warmups = [0, 1, 2, 4, 8, 16, 32]
    seam = max(warmups) + 8
    table = {}
    for preset in ("light", "heavy"):
        clip = next(
            c
            for c in build_eval_set(preset, frames=seam + 8, crop=args.crop)
            if c.name.startswith("bikes")
        )
        table[preset] = seam_error(model, clip.rainy, seam=seam, warmup_values=warmups)
    print(
        f"seam at frame {seam} of real footage (bikes.mp4) with synthetic rain; "
        f"{info.name} {info.version}"
    )
    print(
        "| rain | warm-up frames | PSNR first frame (dB) | PSNR 8 frames (dB) | max diff (levels) |"
    )
    print("|---|---:|---:|---:|---:|")
    for preset, rows in table.items():
        for r in rows:
            print(
                f"| {preset} | {r['warmup']} | {r['psnr_first_db']:.1f} | "
                f"{r['psnr_window_db']:.1f} | {r['max_abs_levels']:.0f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": info.version, "seam": seam, **table}, indent=2))
    return 0
