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
from j4r.rain import RainSample, add_rain, random_rain_config
from j4r.scenes import add_sprites, draw_structures
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


def dry_sample(clean_tchw: torch.Tensor) -> RainSample:
    """A rain-free clip as a training sample: the target is the input, no streaks, α = 0."""
    zeros = torch.zeros_like(clean_tchw[:, :1])
    return RainSample(clean_tchw, clean_tchw, zeros, zeros, zeros)


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

    def _canvas(
        self, rng: np.random.Generator, image: torch.Tensor, centre: tuple[float, float], half: int
    ) -> tuple[torch.Tensor, tuple[float, float]]:
        """The part of ``image`` a camera path around ``centre`` can see, padded by reflection.

        Structures are drawn into this canvas rather than the whole photo (a few hundred pixels
        instead of a megapixel); returns it and the path's start centre in its coordinates.
        """
        _, h, w = image.shape
        cy, cx = round(centre[0]), round(centre[1])
        top, left, bottom, right = cy - half, cx - half, cy + half, cx + half
        crop = image[:, max(0, top) : min(h, bottom), max(0, left) : min(w, right)]
        pads = (max(0, -left), max(0, right - w), max(0, -top), max(0, bottom - h))
        if any(pads):
            mode = "reflect" if max(pads) < min(crop.shape[-2:]) else "replicate"
            crop = F.pad(crop[None], pads, mode=mode)[0]
        return crop, (centre[0] - top, centre[1] - left)

    def clip_at(
        self, rng: np.random.Generator, frames: int
    ) -> tuple[torch.Tensor, RainConfig | None]:
        """One clean luma clip ``(t, 1, s, s)`` and the rain to put on it (None: keep it dry)."""
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
        extent = path_extent_px(path, frames, size)
        reach = extent - math.hypot(*path.pan_px) * frames
        # Start where the whole path stays inside the photo when it is large enough;
        # otherwise from the centre (reflection padding covers the rest).
        start = tuple(
            _start_within(rng, extent_px, reach, drift * (frames - 1))
            for extent_px, drift in ((h, path.pan_px[0]), (w, path.pan_px[1]))
        )
        canvas, centre = self._canvas(rng, image, start, math.ceil(extent) + 2)
        if rng.random() < self.clip.structure_probability:
            canvas = draw_structures(rng, canvas[0])[None]
        clean = render_path(canvas, path, frames=frames, height=size, width=size, centre_yx=centre)
        if rng.random() < self.clip.sprite_probability:
            clean = add_sprites(rng, clean, self.images)
        # Photometric jitter: exposure and contrast vary across real cameras; some clips are
        # night shots (dark, lifted only by lights and windows).
        gain, offset = rng.uniform(0.7, 1.15), rng.uniform(-0.05, 0.08)
        clean = (clean * gain + offset).clamp(0.0, 1.0)
        if rng.random() < self.clip.night_fraction:
            clean = clean.pow(rng.uniform(1.6, 2.8)) * rng.uniform(0.6, 1.0)
        if rng.random() < 0.5:
            clean = clean.flip(-1)
        if rng.random() < self.clip.clean_fraction:
            return clean, None
        if rng.random() < self.clip.preset_fraction:
            weights = np.asarray(self.clip.rain_mix) / sum(self.clip.rain_mix)
            return clean, self.rain_presets[int(rng.choice(len(self.rain_presets), p=weights))]
        return clean, random_rain_config(
            rng,
            photometric_probability=self.clip.photometric_probability,
            falling_probability=self.clip.falling_probability,
            downpour_probability=self.clip.downpour_probability,
            faint_probability=self.clip.faint_probability,
            veil_in_downpours_only=self.clip.veil_in_downpours_only,
        )

    def batch(self, *, seed: int, step: int, batch_size: int, frames: int | None = None) -> Batch:
        """The batch for ``step``: deterministic in ``(seed, step)``."""
        frames = frames or self.clip.frames
        rng = np.random.default_rng([seed, step])
        samples = []
        for _ in range(batch_size):
            clean, rain = self.clip_at(rng, frames)
            seed = int(rng.integers(2**63))
            samples.append(dry_sample(clean) if rain is None else add_rain(clean, rain, seed=seed))
        return Batch(
            rainy=torch.stack([s.rainy for s in samples]),
            clean=torch.stack([s.clean for s in samples]),
            streaks=torch.stack([s.streaks for s in samples]),
            alpha=torch.stack([s.alpha for s in samples]),
        )
