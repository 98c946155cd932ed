"""A second rain renderer, for evaluation only: deliberately unlike :mod:`j4r.rain`.

Differences from the training renderer, each on purpose:

* photometric streaks: a streak pixel is a blend of the background and the light the drop
  refracts from the scene (a bright blurred copy of the frame), ``O = (1 − τ) B + τ E``, not an
  added grey value, so a streak over a bright wall can be darker than the wall;
* profile: flat along the streak with hard ends and a raised-cosine cross-section, not a
  Gaussian line with tapered ends;
* motion: drops persist and fall through the frame from one frame to the next (coherent in
  time), instead of fresh independent streaks in every frame;
* per clip: near-vertical or wind-slanted sheets; heavy rain adds fog (a veil that also lowers
  contrast), bokeh drops on the lens with bright rims that show a blurred, flipped scene, and
  splashes on the lower part of the frame.

Everything is a pure function of the seed. RGB in, RGB out: rain here is slightly blue-white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ForeignStyle:
    name: str
    drops_per_mpx: float  # falling drops per megapixel of frame
    length_px: tuple[float, float]  # streak length (exposure x fall speed)
    width_px: tuple[float, float]  # streak cross-section width
    opacity: tuple[float, float]  # τ, blend toward the refracted light
    fog: tuple[float, float]  # veil strength range (0: none)
    lens_drops: int  # bokeh drops on the lens per clip
    splashes_per_frame_mpx: float  # splashes on the ground per frame and megapixel


FOREIGN_STYLES = {
    "light": ForeignStyle(
        "light", 7000.0, (14.0, 34.0), (1.0, 1.8), (0.15, 0.4), (0.0, 0.0), 0, 300.0
    ),
    "heavy": ForeignStyle(
        "heavy", 12000.0, (25.0, 70.0), (1.2, 3.2), (0.2, 0.5), (0.05, 0.14), 3, 1500.0
    ),
}


def _blur(images_nchw: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(
        -(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2)
    )
    taps = (taps / taps.sum()).to(images_nchw)
    c = images_nchw.shape[1]
    flat = F.pad(images_nchw, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(flat, taps.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, taps.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _streak_mask(
    h: int, w: int, drops: np.ndarray, angle: float, t: int, fall_px: float
) -> torch.Tensor:
    """Coverage ``(h, w)`` of the drops at frame ``t``: flat along, raised cosine across.

    ``drops`` rows: (y0, x0, length, width, opacity); a drop falls ``fall_px`` per frame along
    the rain direction and wraps around the frame so the density stays constant.
    """
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    direction = (math.cos(angle), math.sin(angle))  # (dy, dx) of the fall
    mask = torch.zeros(h, w)
    span_y, span_x = h + 120.0, w + 120.0
    for y0, x0, length, width, opacity in drops:
        cy = (y0 + direction[0] * fall_px * t) % span_y - 60.0
        cx = (x0 + direction[1] * fall_px * t) % span_x - 60.0
        top, bottom = int(max(0, cy - length)), int(min(h, cy + length + 1))
        left, right = int(max(0, cx - length)), int(min(w, cx + length + 1))
        if top >= bottom or left >= right:
            continue
        dy, dx = yy[top:bottom] - cy, xx[:, left:right] - cx
        along = dy * direction[0] + dx * direction[1]
        across = -dy * direction[1] + dx * direction[0]
        inside_len = ((length / 2 - along.abs()) / 0.75).clamp(0, 1)
        profile = torch.where(
            across.abs() < width,
            0.5 + 0.5 * torch.cos(math.pi * across / max(width, 1e-3)),
            torch.zeros(()),
        )
        mask[top:bottom, left:right] = torch.maximum(
            mask[top:bottom, left:right], opacity * inside_len * profile
        )
    return mask


def _lens_drops(
    rng: np.random.Generator, frame_3hw: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bokeh drops: discs with a bright rim showing the scene blurred and flipped."""
    _, h, w = frame_3hw.shape
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    cover = torch.zeros(h, w)
    rim = torch.zeros(h, w)
    for _ in range(count):
        r = float(rng.uniform(0.04, 0.1) * min(h, w))
        cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
        d = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
        cover = torch.maximum(cover, (1.0 - d).clamp(0, 0.15) / 0.15)
        rim = torch.maximum(rim, torch.exp(-((d - 0.92) ** 2) / 0.004))
    return cover, rim


def add_foreign_rain(clean_t3hw: torch.Tensor, preset: str, *, seed: int) -> torch.Tensor:
    """Rainy RGB clip ``(t, 3, h, w)`` in [0, 1] from a clean one, in the foreign style."""
    style = FOREIGN_STYLES[preset]
    rng = np.random.default_rng(seed)
    t, _, h, w = clean_t3hw.shape
    slanted = rng.random() < 0.5
    angle = math.radians(
        rng.uniform(18, 35) * rng.choice([-1, 1]) if slanted else rng.uniform(-4, 4)
    )
    n = rng.poisson(style.drops_per_mpx * (h + 120) * (w + 120) / 1e6)
    drops = np.stack(
        [
            rng.uniform(0, h + 120, n),
            rng.uniform(0, w + 120, n),
            rng.uniform(*style.length_px, n),
            rng.uniform(*style.width_px, n),
            rng.uniform(*style.opacity, n),
        ],
        axis=1,
    )
    fall_px = float(rng.uniform(0.6, 1.4) * style.length_px[1])
    tint = torch.tensor([0.96, 0.98, 1.0]).view(3, 1, 1)
    fog = float(rng.uniform(*style.fog)) if style.fog[1] > 0 else 0.0
    fog_level = float(rng.uniform(0.6, 0.85))
    lens_cover, lens_rim = _lens_drops(rng, clean_t3hw[0], style.lens_drops)
    out = torch.empty_like(clean_t3hw)
    for i in range(t):
        frame = clean_t3hw[i]
        # The light a drop refracts: a wide view of the scene, brightened and cooled.
        refracted = (_blur(frame[None], 6.0)[0] * 0.5 + 0.55).clamp(0, 1) * tint
        tau = _streak_mask(h, w, drops, angle, i, fall_px)[None]
        rainy = (1 - tau) * frame + tau * refracted
        if fog > 0:
            rainy = (1 - fog) * rainy + fog * fog_level * tint
        if style.splashes_per_frame_mpx > 0:
            k = rng.poisson(style.splashes_per_frame_mpx * h * w / 1e6)
            ys = rng.integers(int(h * 0.6), h, k)
            xs = rng.integers(0, w, k)
            for y, x in zip(ys, xs, strict=True):
                y0, y1, x0, x1 = max(0, y - 1), min(h, y + 1), max(0, x - 2), min(w, x + 3)
                rainy[:, y0:y1, x0:x1] = 0.5 * rainy[:, y0:y1, x0:x1] + 0.5 * 0.9
        if style.lens_drops:
            shown = _blur(frame.flip(-2)[None], 4.0)[0] * 0.9 + 0.08
            rainy = (1 - lens_cover) * rainy + lens_cover * shown
            rainy = rainy + 0.25 * lens_rim
        out[i] = rainy.clamp(0, 1)
    return out
