"""Hybrid rain synthesis: ``O = (1 − α)(B + S) + α A`` with ground truth for training.

Streaks come from a seeded probabilistic model: drops scattered uniformly per area, each drawn
as a line (the drop's motion during the exposure) along a wind angle with a length, thickness
and transparency taken from its depth layer: dense, thin, faint far layers and sparse, thick,
bright near ones. The ``heavy`` preset adds sharp 1-px line streaks, sparkle noise and opaque
drops (α = 1) that hide the background behind a bright rain-reliance value ``A``.

Counts scale with the frame's area (densities are per 10k pixels) so a 32 px training patch has
the same rain per pixel as a full frame. Rain is grey: the same ``S`` is added to every colour
channel, which leaves CbCr unchanged except where values clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from j4r.config import RainConfig


@dataclass(frozen=True)
class RainSample:
    """A rainy clip and its ground truth; every tensor is ``(t, c, h, w)`` float32 in [0, 1].

    ``streaks`` is the effective additive layer ``O − B`` where α = 0 (after clipping) and 0
    where α = 1; ``alpha`` is {0, 1} with one channel; ``reliance`` is ``A`` (one channel).
    """

    rainy: torch.Tensor
    clean: torch.Tensor
    streaks: torch.Tensor
    alpha: torch.Tensor
    reliance: torch.Tensor


def _gaussian_blur(images_n1hw: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0.3:
        return images_n1hw
    radius = max(1, math.ceil(2.5 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(images_n1hw, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def _splat_lines(
    rng: np.random.Generator,
    *,
    frames: int,
    height: int,
    width: int,
    density: float,
    length: tuple[float, float],
    intensity: tuple[float, float],
    angle_rad: float,
    angle_jitter_rad: float,
    per_pixel_peak: float,
    fall: float = 0.0,
    flat_ends: bool = False,
) -> np.ndarray:
    """Anti-aliased line segments splatted into ``(frames, h, w)`` float32 layers.

    ``per_pixel_peak`` scales the line's linear density so that after a Gaussian blur of
    width σ the line's centre reaches its sampled intensity (``sqrt(2π) σ`` for σ > 0.3).
    With ``fall`` > 0 the same drops appear in every frame, each moved ``fall`` of its own
    length further along its axis per frame (wrapping round the scatter box).
    """
    max_len = length[1]
    # Scatter centres over a box grown by the longest streak so borders get their share.
    box_h, box_w = height + max_len, width + max_len
    canvas = np.zeros(frames * height * width, dtype=np.float64)
    if fall > 0:
        frame, cy, cx, seg_len, value, theta = _falling_drops(
            rng, frames, box_h, box_w, density, length, intensity, angle_rad, angle_jitter_rad, fall
        )
        cy, cx = cy - max_len / 2, cx - max_len / 2
    else:
        count = rng.poisson(density * box_h * box_w / 1e4 * frames)
        frame = rng.integers(0, frames, count)
        cy = rng.uniform(-max_len / 2, height + max_len / 2, count)
        cx = rng.uniform(-max_len / 2, width + max_len / 2, count)
        seg_len = rng.uniform(*length, count)
        value = rng.uniform(*intensity, count)
        theta = angle_rad + rng.normal(0.0, angle_jitter_rad, count)
    if frame.size == 0:
        return canvas.reshape(frames, height, width).astype(np.float32)
    points = max(2, math.ceil(max_len * 2))  # about two samples per pixel of the longest streak
    u = np.linspace(-0.5, 0.5, points)
    # A soft taper at both ends: raindrop streaks fade in and out over the exposure; a flat
    # profile with hard ends is the other look (a drop crossing the whole exposure).
    envelope = np.ones_like(u) if flat_ends else np.clip(np.sin(np.pi * (u + 0.5)) * 1.6, 0, 1)
    ys = cy[:, None] + np.cos(theta)[:, None] * seg_len[:, None] * u[None, :]
    xs = cx[:, None] + np.sin(theta)[:, None] * seg_len[:, None] * u[None, :]
    spacing = seg_len / (points - 1)
    weight = (value * spacing * per_pixel_peak)[:, None] * envelope[None, :]
    frame_idx = np.broadcast_to(frame[:, None], ys.shape)
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = ys - y0, xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = (frame_idx * height + yy) * width + xx
            canvas += np.bincount(
                index[inside], weights=(weight * wy * wx)[inside], minlength=canvas.size
            )
    return canvas.reshape(frames, height, width).astype(np.float32)


def _falling_drops(
    rng: np.random.Generator,
    frames: int,
    box_h: float,
    box_w: float,
    density: float,
    length: tuple[float, float],
    intensity: tuple[float, float],
    angle_rad: float,
    angle_jitter_rad: float,
    fall: float,
) -> tuple[np.ndarray, ...]:
    """Drops drawn once and moved down their axis frame by frame.

    Returns ``(frame, cy, cx, length, value, θ)`` for every drop in every frame, the centres
    wrapped into ``[0, box_h) × [0, box_w)`` (a drop leaving the box comes back in at the top).
    """
    count = rng.poisson(density * box_h * box_w / 1e4)
    cy0, cx0 = rng.uniform(0, box_h, count), rng.uniform(0, box_w, count)
    seg_len = rng.uniform(*length, count)
    value = rng.uniform(*intensity, count)
    theta = angle_rad + rng.normal(0.0, angle_jitter_rad, count)
    step = seg_len * fall * rng.uniform(0.8, 1.2, count)  # drops differ a little in speed
    t = np.arange(frames)[:, None]
    cy = (cy0 + t * step * np.cos(theta)) % box_h
    cx = (cx0 + t * step * np.sin(theta)) % box_w
    return (
        np.broadcast_to(t, cy.shape).ravel(),
        cy.ravel(),
        cx.ravel(),
        np.tile(seg_len, frames),
        np.tile(value, frames),
        np.tile(theta, frames),
    )


def render_rain(
    config: RainConfig, *, frames: int, height: int, width: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rain for ``frames`` frames: additive streaks ``S``, occlusion ``α`` and reliance ``A``.

    Each is ``(t, 1, h, w)`` float32; streak drops are independent per frame (a drop falls far
    further than a streak's length between two frames) unless ``config.fall`` makes them
    persist and fall; opaque drops are always independent. The wind angle is shared by the clip.
    """
    rng = np.random.default_rng(seed)
    wind = math.radians(rng.uniform(*config.angle_deg))
    jitter = math.radians(config.angle_jitter_deg)
    streaks = torch.zeros(frames, 1, height, width)
    for density, length, sigma, intensity in config.layers:
        layer = _splat_lines(
            rng,
            frames=frames,
            height=height,
            width=width,
            density=density,
            length=length,
            intensity=intensity,
            angle_rad=wind,
            angle_jitter_rad=jitter,
            per_pixel_peak=math.sqrt(2 * math.pi) * sigma if sigma > 0.3 else 1.0,
            fall=config.fall,
            flat_ends=config.flat_ends,
        )
        streaks += _gaussian_blur(torch.from_numpy(layer)[:, None], sigma)
    if config.sharp_lines > 0:
        sharp = _splat_lines(
            rng,
            frames=frames,
            height=height,
            width=width,
            density=config.sharp_lines,
            length=(30.0, 80.0),
            intensity=(0.45, 0.85),
            angle_rad=wind,
            angle_jitter_rad=jitter / 2,
            per_pixel_peak=1.0,
            fall=config.fall,
            flat_ends=config.flat_ends,
        )
        streaks += torch.from_numpy(sharp)[:, None]
    if config.sparkle > 0:
        mask = rng.random((frames, 1, height, width)) < config.sparkle
        sparkle = mask * rng.uniform(0.4, 0.9, mask.shape)
        streaks += torch.from_numpy(sparkle.astype(np.float32))
    alpha = torch.zeros(frames, 1, height, width)
    reliance = torch.zeros(frames, 1, height, width)
    if config.occlusion > 0:
        alpha, reliance = _render_occlusions(rng, config, frames, height, width, wind)
    return streaks.clamp_(0.0, 1.0), alpha, reliance


def _render_occlusions(
    rng: np.random.Generator, config: RainConfig, frames: int, height: int, width: int, wind: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thick near drops: a binary α covering about ``config.occlusion`` of the pixels."""
    mean_len, mean_width = 14.0, 2.6  # coverage per drop ≈ length x width in pixels
    density = config.occlusion * 1e4 / (mean_len * mean_width)
    coverage = _splat_lines(
        rng,
        frames=frames,
        height=height,
        width=width,
        density=density,
        length=(6.0, 22.0),
        intensity=(1.0, 1.0),
        angle_rad=wind,
        angle_jitter_rad=math.radians(4.0),
        per_pixel_peak=math.sqrt(2 * math.pi) * 1.1,
    )
    blurred = _gaussian_blur(torch.from_numpy(coverage)[:, None], 1.1)
    alpha = (blurred > 0.5).float()
    level = torch.from_numpy(rng.uniform(*config.reliance, (frames, 1, 1, 1)).astype(np.float32))
    # Scattered light varies smoothly across a drop: a little low-frequency texture on A.
    texture = _gaussian_blur(
        torch.from_numpy(rng.normal(0, 0.05, alpha.shape).astype(np.float32)), 2.0
    )
    reliance = (level + texture).clamp(0.0, 1.0) * alpha
    return alpha, reliance


def _lens_drops(
    rng: np.random.Generator, config: RainConfig, clean_tchw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Defocused drops on the lens: soft discs fixed in the frame for the whole clip.

    Inside a drop the scene is a blurred, brightened copy of what lies behind it (α = 1 where
    the disc is mostly opaque). Returns the coverage ``(1, 1, h, w)`` and what the drop shows.
    """
    _, _, h, w = clean_tchw.shape
    count = rng.poisson(config.lens_drops * h * w / 1e4)
    coverage = torch.zeros(1, 1, h, w)
    if count == 0:
        return coverage, clean_tchw
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    for _ in range(count):
        radius = rng.uniform(3.0, 0.12 * min(h, w) + 3.0)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        aspect = rng.uniform(0.7, 1.3)
        dist = torch.sqrt(((yy - cy) * aspect) ** 2 + ((xx - cx) / aspect) ** 2) / radius
        coverage = torch.maximum(coverage, (1.5 - dist).clamp(0, 1)[None, None] * 2 - 1)
    coverage = coverage.clamp(0, 1)
    shown = _gaussian_blur(clean_tchw.flatten(0, 1)[:, None], rng.uniform(2.0, 5.0))
    shown = shown.view_as(clean_tchw) * rng.uniform(0.85, 1.1) + rng.uniform(0.02, 0.15)
    return coverage, shown.clamp(0, 1)


def add_rain(clean_tchw: torch.Tensor, config: RainConfig, *, seed: int) -> RainSample:
    """Apply the hybrid model to a clean clip ``(t, c, h, w)`` in [0, 1] (c = 1 luma or 3 RGB).

    Beyond the presets' streaks and drops: a veil (the haze of dense rain, counted in the
    streak layer: it adds to what the background shows) and drops on the lens (counted as
    occlusion, α = 1 where a drop is mostly opaque).
    """
    t, _, h, w = clean_tchw.shape
    streaks, alpha, reliance = render_rain(config, frames=t, height=h, width=w, seed=seed)
    if config.photometric > 0:
        light = float(np.random.default_rng([seed, 2]).uniform(*config.refracted_light))
        streaks = streaks * (1 - config.photometric + config.photometric * (light - clean_tchw))
    streaked = (clean_tchw + streaks).clamp(0.0, 1.0)
    rng = np.random.default_rng([seed, 1])
    if config.veil > 0:
        level = float(rng.uniform(0.55, 0.9))
        streaked = (1 - config.veil) * streaked + config.veil * level
    rainy = (1 - alpha) * streaked + alpha * reliance
    if config.lens_drops > 0:
        coverage, shown = _lens_drops(rng, config, clean_tchw)
        rainy = (1 - coverage) * rainy + coverage * shown
        drop = (coverage > 0.5).float().expand(t, 1, h, w)
        reliance = torch.where(drop.bool(), shown.mean(dim=1, keepdim=True), reliance)
        alpha = torch.maximum(alpha, drop)
        streaked = (1 - coverage) * streaked + coverage * shown
    effective_streaks = ((streaked - clean_tchw) * (1 - alpha)).mean(dim=1, keepdim=True)
    return RainSample(rainy, clean_tchw, effective_streaks, alpha, reliance)


def random_rain_config(
    rng: np.random.Generator,
    *,
    photometric_probability: float = 0.0,
    falling_probability: float = 0.0,
    downpour_probability: float = 0.0,
    faint_probability: float = 0.0,
    veil_in_downpours_only: bool = False,
) -> RainConfig:
    """Domain-randomised rain for training: one style per clip, drizzle to downpour.

    Angle from vertical to strongly slanted, 1-3 depth layers with streak widths of about
    1-4 px, lengths, transparency and blur drawn per layer, and, some of the time, sharp line
    streaks, sparkle, opaque drops, a veil and drops on the lens; with
    ``photometric_probability``, streaks that partly or wholly blend toward refracted light
    (drawn last, so that at 0 the configs are those of earlier training rounds); with
    ``falling_probability``, drops that persist and fall across frames, half of them flat
    streaks with hard ends; with ``downpour_probability``, a downpour (:func:`_downpour`). The
    new draws come after all the others, so at 0 the configs are those of earlier rounds. The
    fixed ``light`` and ``heavy`` presets lie inside this range. ``veil_in_downpours_only``
    keeps a veil for downpours alone (the haze of rain grows with its rate: drizzle makes
    none to speak of); it changes no draw. With ``faint_probability``, the streaks (downpours'
    too) at 25-60 % of their strength (:func:`fainter`), drawn after everything else.
    """
    strength = float(rng.uniform(0.0, 1.0))  # 0 drizzle .. 1 downpour
    angle = float(rng.uniform(-6, 6) if rng.random() < 0.4 else rng.uniform(-45, 45))
    n_layers = int(rng.integers(1, 4))
    layers = []
    for i in range(n_layers):
        near = i / (n_layers - 1) if n_layers > 1 else float(rng.uniform())
        density = float(rng.uniform(3, 35) * (1 - 0.85 * near) * (0.4 + strength))
        lo = float(rng.uniform(4, 18) * (1 + 1.5 * near))
        length = (lo, lo * float(rng.uniform(1.3, 2.8)))
        sigma = float(rng.uniform(0.3, 0.6) + near * rng.uniform(0.0, 1.2))
        peak = float(rng.uniform(0.1, 0.35) + near * rng.uniform(0.0, 0.4) * (0.5 + strength))
        intensity = (peak * float(rng.uniform(0.4, 0.8)), min(peak, 0.95))
        layers.append((density, length, sigma, intensity))
    chance = rng.random(5)
    photometric = 0.0
    if photometric_probability > 0 and rng.random() < photometric_probability:
        photometric = float(rng.uniform(0.5, 1.0))
    config = RainConfig(
        name="random",
        layers=tuple(layers),
        angle_deg=(angle, angle),
        angle_jitter_deg=float(rng.uniform(0.5, 6.0)),
        sharp_lines=float(rng.uniform(0.3, 3.0) * strength) if chance[0] < 0.3 else 0.0,
        sparkle=float(rng.uniform(0.0005, 0.005)) if chance[1] < 0.2 else 0.0,
        occlusion=float(rng.uniform(0.003, 0.04) * (0.3 + strength)) if chance[2] < 0.35 else 0.0,
        veil=float(rng.uniform(0.02, 0.12) * (0.3 + strength)) if chance[3] < 0.25 else 0.0,
        lens_drops=float(rng.uniform(0.3, 1.5)) if chance[4] < 0.12 else 0.0,
        photometric=photometric,
    )
    if veil_in_downpours_only:
        config = replace(config, veil=0.0)
    if falling_probability > 0 and rng.random() < falling_probability:
        config = replace(config, fall=float(rng.uniform(0.3, 3.0)), flat_ends=rng.random() < 0.5)
    if downpour_probability > 0 and rng.random() < downpour_probability:
        config = _downpour(rng, config)
    if faint_probability > 0 and rng.random() < faint_probability:
        config = fainter(config, float(rng.uniform(0.25, 0.6)))
    return config


def fainter(config: RainConfig, share: float) -> RainConfig:
    """``config`` with every streak layer at ``share`` of its strength: the same drops in the
    same places (the draws do not depend on intensity), fainter. Sharp lines, drops, veil and
    lens drops are left as they are."""
    layers = tuple(
        (density, length, sigma, (lo * share, hi * share))
        for density, length, sigma, (lo, hi) in config.layers
    )
    return replace(config, layers=layers)


def _downpour(rng: np.random.Generator, config: RainConfig) -> RainConfig:
    """Make ``config`` a downpour: its layers 1.5-4x denser and 1.2-2.5x longer, a dense
    sheet of long faint streaks over everything, and usually a haze.

    Streaks then change most of the frame (over flat grey: median 79 %, 10th percentile 53 %),
    where the randomised rain otherwise changes a median 11 % and rarely over 40 %: the sheet
    behind and the near streaks in front overlap, so few pixels show the background clean.
    """
    scale = float(rng.uniform(1.5, 4.0))
    stretch = float(rng.uniform(1.2, 2.5))
    layers = [
        (density * scale, (lo * stretch, min(hi * stretch, 150.0)), sigma, intensity)
        for density, (lo, hi), sigma, intensity in config.layers
    ]
    lo = float(rng.uniform(30, 70))
    peak = float(rng.uniform(0.06, 0.25))
    sheet = (float(rng.uniform(15, 90)), (lo, min(lo * 2.2, 150.0)), float(rng.uniform(0.3, 0.8)))
    layers.insert(0, (*sheet, (peak * 0.5, peak)))
    haze = float(rng.uniform(0.05, 0.35)) if rng.random() < 0.7 else config.veil
    return replace(
        config,
        name="downpour",
        layers=tuple(layers),
        veil=max(config.veil, haze),
        flat_ends=config.flat_ends or rng.random() < 0.5,
    )
