"""Training batches synthesised on the fly: clean crops, a camera path, hybrid rain.

Every batch is a pure function of ``(seed, step)``, so a resumed run sees exactly the batches
an uninterrupted one would, and Ray Train workers can each draw their own shard by rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from j4r.color import rgb_to_luma
from j4r.config import ClipConfig, RainConfig, rain_config
from j4r.motion import path_extent_px, random_path, render_path
from j4r.rain import add_rain
from j4r.sources import CleanSource


@dataclass(frozen=True)
class Batch:
    """A batch of luma clips ``(b, t, 1, h, w)`` with the hybrid model's ground truth."""

    rainy: torch.Tensor
    clean: torch.Tensor
    streaks: torch.Tensor
    alpha: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                x.to(device, non_blocking=True)
                for x in (self.rainy, self.clean, self.streaks, self.alpha)
            )
        )


def _start_within(rng: np.random.Generator, extent: int, reach: float, drift: float) -> float:
    lo = reach - min(0.0, drift)
    hi = extent - reach - max(0.0, drift)
    return float(rng.uniform(lo, hi)) if hi > lo else extent / 2


class ClipSampler:
    """Draws rainy training clips from still photos with simulated camera motion."""

    def __init__(self, sources: list[CleanSource], clip: ClipConfig):
        if not sources:
            raise ValueError("no clean training content: install scikit-image")
        self.clip = clip
        self.rain_presets: tuple[RainConfig, ...] = (rain_config("light"), rain_config("heavy"))
        # A small pyramid per photo: rain scale varies relative to scene scale.
        self.images: list[torch.Tensor] = []
        for source in sources:
            luma = rgb_to_luma(source.rgb if not source.is_video else source.rgb[0])
            for factor in (1.0, 0.6):
                if factor == 1.0:
                    self.images.append(luma)
                else:
                    self.images.append(
                        F.interpolate(luma[None], scale_factor=factor, mode="area")[0]
                    )
        areas = np.array([img.shape[-1] * img.shape[-2] for img in self.images], dtype=np.float64)
        self.weights = np.sqrt(areas) / np.sqrt(areas).sum()

    def clip_at(self, rng: np.random.Generator, frames: int) -> tuple[torch.Tensor, int]:
        """One clean luma clip ``(t, 1, s, s)`` and the rain preset index to apply to it."""
        size = self.clip.size
        image = self.images[rng.choice(len(self.images), p=self.weights)]
        path = random_path(
            rng,
            max_shift_px=self.clip.max_shift_px,
            max_zoom=self.clip.max_zoom,
            max_rotate_deg=self.clip.max_rotate_deg,
            still_fraction=self.clip.still_fraction,
        )
        _, h, w = image.shape
        reach = path_extent_px(path, frames, size) - math.hypot(*path.pan_px) * frames
        # Start where the whole path stays inside the photo when it is large enough;
        # otherwise from the centre (reflection padding covers the rest).
        start = tuple(
            _start_within(rng, extent, reach, drift * (frames - 1))
            for extent, drift in ((h, path.pan_px[0]), (w, path.pan_px[1]))
        )
        clean = render_path(image, path, frames=frames, height=size, width=size, centre_yx=start)
        # Photometric jitter: exposure and contrast vary across real cameras.
        gain, offset = rng.uniform(0.7, 1.15), rng.uniform(-0.05, 0.08)
        clean = (clean * gain + offset).clamp(0.0, 1.0)
        if rng.random() < 0.5:
            clean = clean.flip(-1)
        preset = int(
            rng.choice(
                len(self.rain_presets), p=np.asarray(self.clip.rain_mix) / sum(self.clip.rain_mix)
            )
        )
        return clean, preset

    def batch(self, *, seed: int, step: int, batch_size: int, frames: int | None = None) -> Batch:
        """The batch for ``step``: deterministic in ``(seed, step)``."""
        frames = frames or self.clip.frames
        rng = np.random.default_rng([seed, step])
        samples = []
        for _ in range(batch_size):
            clean, preset = self.clip_at(rng, frames)
            samples.append(
                add_rain(clean, self.rain_presets[preset], seed=int(rng.integers(2**63)))
            )
        return Batch(
            rainy=torch.stack([s.rainy for s in samples]),
            clean=torch.stack([s.clean for s in samples]),
            streaks=torch.stack([s.streaks for s in samples]),
            alpha=torch.stack([s.alpha for s in samples]),
        )
