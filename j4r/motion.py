"""Simulated camera motion: a still image becomes a clip that pans, zooms and rotates smoothly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class CameraPath:
    """Per-frame motion: pan ``(dy, dx)`` px, relative zoom and rotation (degrees) per frame."""

    pan_px: tuple[float, float]
    zoom: float
    rotate_deg: float
    shake_px: float = 0.0  # amplitude of a slow hand-held wobble on top of the pan


def random_path(
    rng: np.random.Generator,
    *,
    max_shift_px: float,
    max_zoom: float,
    max_rotate_deg: float,
    still_fraction: float = 0.0,
) -> CameraPath:
    if rng.random() < still_fraction:
        return CameraPath((0.0, 0.0), 0.0, 0.0)
    speed = rng.uniform(0.2, max_shift_px)
    heading = rng.uniform(0, 2 * math.pi)
    return CameraPath(
        pan_px=(speed * math.sin(heading), speed * math.cos(heading)),
        zoom=rng.uniform(-max_zoom, max_zoom),
        rotate_deg=rng.uniform(-max_rotate_deg, max_rotate_deg),
        shake_px=rng.uniform(0.0, 0.4),
    )


def path_extent_px(path: CameraPath, frames: int, size: int) -> float:
    """A bound on how far from the start centre a ``size`` crop may reach over ``frames``."""
    travel = math.hypot(*path.pan_px) * frames + path.shake_px
    growth = size * (abs(path.zoom) * frames + math.radians(abs(path.rotate_deg)) * frames)
    return travel + growth + size / math.sqrt(2) + 2


def render_path(
    image_chw: torch.Tensor,
    path: CameraPath,
    *,
    frames: int,
    height: int,
    width: int,
    centre_yx: tuple[float, float],
) -> torch.Tensor:
    """Sample ``(t, c, height, width)`` frames from ``image_chw`` along ``path`` (bilinear).

    ``centre_yx`` is where the first frame's centre lies in the image, in pixels.
    """
    _, src_h, src_w = image_chw.shape
    t = torch.arange(frames, dtype=torch.float32)
    wobble = path.shake_px * torch.sin(t * 0.9)
    cy = centre_yx[0] + path.pan_px[0] * t + wobble
    cx = centre_yx[1] + path.pan_px[1] * t + 0.7 * wobble
    scale = (1 + path.zoom) ** t
    angle = torch.deg2rad(path.rotate_deg * t)
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    scale = scale.view(-1, 1, 1)
    src_y = cy.view(-1, 1, 1) + scale * (cos * gy + sin * gx)
    src_x = cx.view(-1, 1, 1) + scale * (-sin * gy + cos * gx)
    grid = torch.stack([(2 * src_x + 1) / src_w - 1, (2 * src_y + 1) / src_h - 1], dim=-1)
    source = image_chw.unsqueeze(0).expand(frames, -1, -1, -1)
    return F.grid_sample(
        source, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
